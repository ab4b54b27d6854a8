"""Cosine similarity between personality vectors: over the model, per layer, per module.

Streams one tensor of every vector at a time, with Gram matrices accumulated in float64,
so ten 8B-parameter vectors never need to be in memory together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from . import cache, progress
from .artifacts import read_json, write_json
from .tensorio import MergeError, check_compatible, open_tensors

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def layer_of(name: str) -> str:
    """'12' for `model.layers.12.mlp.up_proj.weight`, else the module name (`embed_tokens`)."""
    found = _LAYER.search(name)
    if found:
        return found.group(1)
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 else parts[0]


def module_of(name: str) -> str:
    """The module a parameter belongs to (its name without `.weight` / `.bias`)."""
    return re.sub(r"\.(weight|bias)$", "", name)


def cosine_similarity_table(vectors: Mapping[str, str | Path | Mapping[str, torch.Tensor]],
                            by: str = "model"):
    """Cosine similarity between vectors, over all parameters or per layer / module.

    `by="model"` returns a square DataFrame (name × name); `by="layer"` or `"module"` a long
    one with columns vector_a, vector_b, layer|module, cosine (each unordered pair once).
    Streams: one tensor of every vector at a time, Gram matrices accumulated in float64.
    """
    import pandas as pd  # heavy (0.5 s, 60 MB): not loaded by every merge that imports this

    if by not in ("model", "layer", "module"):
        raise MergeError(f"by must be 'model', 'layer' or 'module', not {by!r}")
    if len(vectors) < 1:
        raise MergeError("cosine_similarity_table needs at least one vector")
    names = list(vectors)
    sources = [open_tensors(vectors[n]) for n in names]
    for src, label in zip(sources, names, strict=True):
        src.label = label if not isinstance(vectors[label], (str, Path)) else src.label
    for src in sources[1:]:
        check_compatible(sources[0], src, allow_float32=True)
    group_of: Callable[[str], str] = {"model": lambda n: "all", "layer": layer_of,
                                      "module": module_of}[by]
    grams: dict[str, torch.Tensor] = {}
    for key in sources[0].keys():
        if not sources[0].dtype(key).is_floating_point:
            continue
        stacked = torch.stack([s.get(key).reshape(-1).float() for s in sources])
        gram = (stacked @ stacked.T).double()
        group = group_of(key)
        grams[group] = grams[group] + gram if group in grams else gram
    k = len(names)
    if by == "model":
        cos = _cosine(grams["all"])
        return pd.DataFrame(cos.numpy(), index=names, columns=names)
    rows = []
    for group, gram in grams.items():
        cos = _cosine(gram)
        for i in range(k):
            for j in range(i + 1, k):
                rows.append({"vector_a": names[i], "vector_b": names[j], by: group,
                             "cosine": float(cos[i, j])})
    table = pd.DataFrame(rows, columns=["vector_a", "vector_b", by, "cosine"])
    if by == "layer":
        order = {g: (0, int(g)) if g.isdigit() else (1, 0) for g in grams}
        table = table.sort_values(by, key=lambda c: c.map(order), kind="stable")
    return table.reset_index(drop=True)


def _cosine(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))


# no profile field: the key is the vectors' identities (their fine-tunes' keys) and `by`
COSINES = cache.Stage("cosines", (), code=(cosine_similarity_table, _cosine, layer_of,
                                           module_of))


def cosines_key(ids: Sequence[tuple[str, str]], by: str) -> str:
    """The cached table's key: the code, each (name, identity) in order, and `by`."""
    return COSINES.key(None, [list(pair) for pair in ids], by)


def cached_cosine_table(vectors: Mapping[str, str | Path | Mapping[str, torch.Tensor]],
                        by: str = "model", *, profile_name: str):
    """`cosine_similarity_table`, cached under `<artifacts>/cosines/<key>/`: reading ten
    135M-parameter vectors takes half a minute on 2 cores, a warm rerun none.
    `profile_name` is recorded as a user of the entry (`cache prune --profile`)."""
    import pandas as pd  # as above

    key = cosines_key([(n, cache.identity(v)) for n, v in vectors.items()], by)
    file = COSINES.entry(key) / "table.json"
    progress.log(f"stage {COSINES.name} [key {key}]: {len(vectors)} vectors by {by}, "
                 + ("cached" if file.exists() else "to compute"))
    if not file.exists():
        table = cosine_similarity_table(vectors, by)
        write_json(file, table.to_dict("split"))
    cache.touch(file.parent, COSINES.name, profile_name, {"vectors": len(vectors), "by": by})
    return pd.DataFrame(**read_json(file))
