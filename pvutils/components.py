"""The component every personality vector shares, and what is left of each trait without it.

Ten vectors fine-tuned from one base on answers of one generator share a large common
direction (fluent, friendly, person-like answers): the paper's "shared subspace". Here it
is made explicit: the mean of the vectors, how much of each vector it explains, and the
trait-specific parts — a vector minus the mean, and (φ_high − φ_low) / 2 per trait, in
which everything the two levels of a trait share cancels.

Pure functions over name → tensor mappings (or anything `vectors.open_tensors` reads),
one tensor of every vector at a time, accumulated in float64 so ten 135M-parameter vectors
never sit in memory together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from . import cache
from .artifacts import read_json, write_json
from .personas import split_condition
from .vectors import TensorSource, check_compatible, open_tensors, save_vector, vector_metadata

VectorLike = str | Path | Mapping[str, torch.Tensor] | TensorSource


def _sources(vectors: Mapping[str, VectorLike]) -> dict[str, TensorSource]:
    if not vectors:
        raise ValueError("need at least one vector")
    sources = {name: open_tensors(v) for name, v in vectors.items()}
    first = next(iter(sources.values()))
    for src in list(sources.values())[1:]:
        check_compatible(first, src, allow_float32=True)
    return sources


def _float_keys(src: TensorSource) -> list[str]:
    return [k for k in src.keys() if src.dtype(k).is_floating_point]


def mean_and_gram(vectors: Mapping[str, VectorLike]
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str]]:
    """(the element-wise mean, the Gram matrix of all dot products in float64, the names)
    in one streaming pass: each tensor of all vectors is stacked once, in float32 (the
    mean of n float32 values and a float32 matrix product per tensor, summed over tensors
    in float64, are exact far beyond what a cosine needs, at half the memory)."""
    sources = _sources(vectors)
    names = list(sources)
    gram = torch.zeros(len(names), len(names), dtype=torch.float64)
    mean = {}
    for key in _float_keys(sources[names[0]]):
        tensors = [sources[n].get(key) for n in names]
        stacked = torch.stack([t.reshape(-1).float() for t in tensors])
        gram += (stacked @ stacked.T).double()
        mean[key] = stacked.mean(dim=0).reshape(tensors[0].shape)
    return mean, gram, names


def mean_vector(vectors: Mapping[str, VectorLike]) -> dict[str, torch.Tensor]:
    """The shared component: the element-wise mean of the vectors, in float32."""
    return mean_and_gram(vectors)[0]


def combine(terms: Mapping[str, float],
            vectors: Mapping[str, VectorLike]) -> dict[str, torch.Tensor]:
    """Σ coefficient · vector over `terms` (name → coefficient), in float32."""
    sources = _sources({name: vectors[name] for name in terms})
    first = next(iter(sources.values()))
    return {key: sum(c * sources[name].get(key).double() for name, c in terms.items()).float()
            for key in _float_keys(first)}


def minus_shared(vectors: Mapping[str, VectorLike]) -> dict[str, dict[str, torch.Tensor]]:
    """Each vector minus the mean of all of them: φ_p − φ̄ (its part no other vector has)."""
    names = list(vectors)
    n = len(names)
    weight = {other: -1.0 / n for other in names}
    return {name: combine({**weight, name: 1.0 - 1.0 / n}, vectors) for name in names}


def trait_axes(vectors: Mapping[str, VectorLike]) -> dict[str, dict[str, torch.Tensor]]:
    """(φ_high − φ_low) / 2 for every trait whose two vectors are given: the trait's axis,
    with everything the two levels share cancelled. Adding it raises the trait."""
    by_trait: dict[str, dict[str, str]] = {}
    for name in vectors:
        trait, level = split_condition(name)
        by_trait.setdefault(trait, {})[level] = name
    return {trait: combine({pair["high"]: 0.5, pair["low"]: -0.5}, vectors)
            for trait, pair in by_trait.items() if {"high", "low"} <= set(pair)}


def shared_share(vectors: Mapping[str, VectorLike]) -> pd.DataFrame:
    """Per vector: its norm, its cosine with the mean, the mean's norm relative to its own,
    and the share of its squared norm along the mean direction (cos²)."""
    _, gram, names = mean_and_gram(vectors)
    return share_table(gram, names)


def share_table(gram: torch.Tensor, names: Sequence[str]) -> pd.DataFrame:
    """`shared_share` from the Gram matrix: the mean's products follow from it
    (φ̄ · φ_i = Σ_j G_ij / n, ‖φ̄‖² = Σ G / n²)."""
    n = len(names)
    norms = gram.diagonal().sqrt()
    mean_dot = gram.sum(dim=1) / n
    mean_norm = float(gram.sum().clamp_min(0).sqrt() / n)
    cos = mean_dot / (norms * mean_norm).clamp_min(1e-300)
    return pd.DataFrame({
        "vector": list(names),
        "norm": norms.numpy(),
        "cosine_with_mean": cos.numpy(),
        "mean_norm_ratio": (mean_norm / norms.clamp_min(1e-300)).numpy(),
        "share_along_mean": (cos ** 2).numpy(),
    })


# --- the components as vector files (a cached stage) -------------------------------------


def _metadata(vector: VectorLike, kind: str) -> dict[str, str]:
    """A component keeps the base its vectors were made from (so `applied` checks it)."""
    meta = vector_metadata(vector) if isinstance(vector, (str, Path)) else {}
    return {**{k: v for k, v in meta.items() if k.startswith("base_")}, "component": kind}


def _save(tensors: Mapping[str, torch.Tensor], path: Path, key: str, kind: str,
          like: VectorLike) -> Path:
    save_vector(tensors, path, _metadata(like, kind))
    # the kind is part of the identity: φ − φ̄ of extraversion_high and the extraversion
    # axis (also named extraversion_high) are different inputs of every sweep
    write_json(path.with_suffix(".json"), {"key": f"{key}/{kind}/{path.stem}",
                                           "component": kind})
    return path


def component_files(vectors: Mapping[str, VectorLike], specific: Sequence[str] | None = None,
                    profile_name: str = "cpu") -> dict[str, Any]:
    """The shared component and trait-specific parts of `vectors` as vector files:
    {"shared": {"shared": φ̄}, "specific": {name: φ − φ̄}, "axis": {"<trait>_high":
    (φ_high − φ_low)/2}, "share": `shared_share`'s table, from the same pass}, for the
    names in `specific` (default: all) and the axis of each of their traits whose two
    levels are both in `vectors` (`part_names`). Cached under
    `<artifacts>/components/<key>/` (key: the vectors' identities), one part in memory at
    a time besides the mean."""
    names = list(vectors)
    wanted = part_names(names if specific is None else specific, names)
    key = components_key({n: cache.identity(vectors[n]) for n in names})
    entry = COMPONENTS.entry(key)
    like = vectors[names[0]]
    out: dict[str, Any] = {"shared": {"shared": entry / "shared.safetensors"},
                           "specific": {}, "axis": {}}
    mean: dict[str, torch.Tensor] = {}

    def the_mean() -> dict[str, torch.Tensor]:
        if not mean:
            tensors, gram, _ = mean_and_gram(vectors)
            mean.update(tensors)
            write_json(entry / "share.json", share_table(gram, names).to_dict("records"))
        return mean

    if not (out["shared"]["shared"].exists() and (entry / "share.json").exists()):
        _save(the_mean(), out["shared"]["shared"], key, "shared", like)
    for name in wanted["specific"]:
        path = out["specific"][name] = entry / "specific" / f"{name}.safetensors"
        if not path.exists():
            part = combine({name: 1.0, "__mean__": -1.0}, {name: vectors[name],
                                                           "__mean__": the_mean()})
            _save(part, path, key, "specific", like)
    for high in wanted["axis"]:
        low = high.replace("_high", "_low")
        path = out["axis"][high] = entry / "axis" / f"{high}.safetensors"
        if not path.exists():
            part = combine({high: 0.5, low: -0.5}, vectors)
            _save(part, path, key, "axis", like)
    out["share"] = pd.DataFrame(read_json(entry / "share.json"))
    cache.touch(entry, COMPONENTS.name, profile_name, {"vectors": len(names)})
    return out


def components_key(ids: Mapping[str, str]) -> str:
    """The components' key: the code and the identity of every vector (name → identity)."""
    return COMPONENTS.key(None, sorted(ids.items()))


def part_names(specific: Sequence[str], available: Sequence[str]) -> dict[str, list[str]]:
    """Which parts `component_files` makes: φ − φ̄ of each name in `specific` that is
    `available`, and the axis (named `<trait>_high`: adding it raises the trait) of each of
    their traits whose high and low vectors are both available."""
    names = [n for n in specific if n in available]
    traits = dict.fromkeys(split_condition(n)[0] for n in names)
    return {"specific": names,
            "axis": [f"{t}_high" for t in traits
                     if f"{t}_high" in available and f"{t}_low" in available]}

# no profile field: the key is the identities of the vectors (the fine-tunes' keys)
COMPONENTS = cache.Stage("components", (), code=(mean_and_gram, share_table, combine, _save))


def effect_share(effects: pd.DataFrame, vectors: list[str], shared: str = "shared",
                 alpha: float = 1.0) -> pd.DataFrame:
    """Per vector and measure: its effect on its own trait at `alpha`, the shared
    component's effect (φ̄ at the same α) on that trait, and their ratio: the share of the
    vector's effect that the mean of all vectors already has. `effects` is a
    `plusminus.effect_table` holding both. The share is NaN where the vector's own interval
    holds zero: a ratio over an effect indistinguishable from none means nothing. Rows:
    vector, trait, measure, effect, shared effect, share."""
    at = effects[effects.alpha == alpha]
    own = at[at.vector.isin(vectors)][["vector", "trait", "measure", "effect", "lo", "hi"]]
    mean = at[at.vector == shared][["trait", "measure", "effect"]].rename(
        columns={"effect": "shared effect"})
    out = own.merge(mean, on=["trait", "measure"], how="left")
    clear = (out["lo"] > 0) | (out["hi"] < 0)
    share = (out["shared effect"] / out["effect"]).where(clear)
    return out.drop(columns=["lo", "hi"]).assign(share=share)
