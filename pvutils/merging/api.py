"""Entry points over tensors, dicts and vector files: the engine with validated parameters."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..vectors import MergeError, TensorSource, check_compatible, open_vector
from . import functional as F
from .engine import Engine, Input
from .options import MergeParams, check_weights, parse_params

TensorLike = str | Path | Mapping[str, torch.Tensor] | TensorSource
TRIM_SCOPES = ("per_tensor", "global")


def merge_deltas(deltas: Sequence[torch.Tensor], weights: Sequence[float],
                 method: str = "task_arithmetic", **params: Any) -> torch.Tensor:
    """One tensor's merged delta (float32) from k deltas and their weights.

    `params` are `MergeParams` fields: `density` (one or one per delta), `drop_rate`,
    `gamma`, `epsilon`, `majority_sign_method`, `disjoint`, `normalize`, `lambda_`,
    `rescale`, `mask_strategy`, `seed`, `trim_density`, `thresholds`, `accelerate`.
    """
    if len(deltas) == 0:
        raise MergeError("merge_deltas needs at least one delta")
    if len(deltas) != len(weights):
        raise MergeError(f"{len(deltas)} deltas but {len(weights)} weights")
    for i, d in enumerate(deltas):
        if not isinstance(d, torch.Tensor):
            raise MergeError(f"delta {i} is a {type(d).__name__}, not a tensor")
        if d.shape != deltas[0].shape:
            raise MergeError(f"delta {i} has shape {list(d.shape)}, delta 0 has "
                             f"{list(deltas[0].shape)}")
    vectors = [{"delta": d} for d in deltas]
    return merge_vectors(vectors, weights, method, **params)["delta"]


def merge_vectors(vectors: Sequence[TensorLike], weights: Sequence[float],
                  method: str = "task_arithmetic", trim_scope: str = "per_tensor",
                  include: str | Sequence[str] | None = None,
                  exclude: str | Sequence[str] | None = None,
                  **params: Any) -> dict[str, torch.Tensor]:
    """The merged delta (float32) of whole vectors (dicts, vector files or sources)."""
    sources = open_all(vectors)
    names = select_names(sources[0].keys(), include, exclude)
    inputs = [Input(s) for s in sources]
    return dict(iter_merged_deltas(inputs, weights, names, method, trim_scope, **params))


def iter_merged_blocks(inputs: Sequence[Input], weights: Sequence[float],
                       names: Sequence[str], method: str = "task_arithmetic",
                       trim_scope: str = "per_tensor", **params: Any
                       ) -> Iterator[tuple[str, int, int, torch.Tensor]]:
    """Yield (name, first row, end row, merged float32 delta); end row −1 = whole tensor."""
    opts = parse_params(method, params)
    if not inputs:
        raise MergeError("nothing to merge: no vectors given")
    check_weights(weights, len(inputs))
    if trim_scope not in TRIM_SCOPES:
        raise MergeError(f"trim_scope must be one of {list(TRIM_SCOPES)}, got {trim_scope!r}")
    names = [n for n in names if inputs[0].source.dtype(n).is_floating_point]
    engine = Engine(inputs, weights, opts)
    if trim_scope == "global" and opts.thresholds is None:
        engine = Engine(inputs, weights, with_global_thresholds(engine, names, opts))
    for name in names:
        for start, stop, block in engine.merge(name):
            yield name, start, stop, block


def with_global_thresholds(engine: Engine, names: Sequence[str],
                           opts: MergeParams) -> MergeParams:
    """`opts` with one trim threshold per vector over all `names` (the authors' code)."""
    fractions = [engine.trims(i) for i in range(len(engine.inputs))]
    if opts.spec.sparsification != "magnitude" and opts.method != "dare_ties" or \
            all(f >= 1 for f in fractions):
        return opts  # nothing is trimmed
    thresholds = tuple(engine.global_thresholds(names, fractions))
    return opts.model_copy(update={"thresholds": thresholds})


def iter_merged_deltas(inputs: Sequence[Input], weights: Sequence[float],
                       names: Sequence[str], method: str = "task_arithmetic",
                       trim_scope: str = "per_tensor", **params: Any
                       ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, merged float32 delta) one tensor at a time."""
    name, parts = None, []
    for n, _, _, block in iter_merged_blocks(inputs, weights, names, method, trim_scope,
                                             **params):
        if n != name and parts:
            yield name, parts[0] if len(parts) == 1 else torch.cat(parts)
            parts = []
        name = n
        parts.append(block)
    if parts:
        yield name, parts[0] if len(parts) == 1 else torch.cat(parts)


def global_thresholds(vectors: Sequence[TensorLike], names: Sequence[str] | None,
                      densities: Sequence[float], method: str = "ties",
                      **params: Any) -> list[float]:
    """Per vector, the one magnitude threshold over all `names` that keeps `densities[i]`
    (the authors' `param_value_mask_rate`, 0.8 = keep 20%), exact and streamed."""
    sources = open_all(vectors)
    names = list(sources[0].keys()) if names is None else list(names)
    for d in densities:
        parse_params("ties", {"density": d})
    opts = parse_params(method, params)
    engine = Engine([Input(s) for s in sources], [1.0] * len(sources), opts)
    return engine.global_thresholds(names, densities)


def select_names(names: Sequence[str], include: str | Sequence[str] | None = None,
                 exclude: str | Sequence[str] | None = None) -> list[str]:
    """Names matching any `include` glob (default all) and no `exclude` glob."""
    inc = [include] if isinstance(include, str) else list(include or [])
    exc = [exclude] if isinstance(exclude, str) else list(exclude or [])
    chosen = [n for n in names
              if (not inc or any(fnmatch.fnmatchcase(n, p) for p in inc))
              and not any(fnmatch.fnmatchcase(n, p) for p in exc)]
    if not chosen:
        raise MergeError(f"include={inc} / exclude={exc} select no tensor "
                         f"(names look like {list(names)[:2]})")
    return chosen


def open_all(vectors: Sequence[TensorLike]) -> list[TensorSource]:
    """Tensor sources for a list of vectors, checked against each other."""
    if isinstance(vectors, (str, Path, Mapping)):
        raise MergeError("pass a list of vectors, e.g. [vector] — not a single vector")
    sources = [open_vector(v) for v in vectors]  # a model directory is refused
    if not sources:
        raise MergeError("nothing to merge: no vectors given")
    for i, src in enumerate(sources):
        if src.label == "in-memory vector":
            src.label = f"vector {i}"
    for src in sources[1:]:
        check_compatible(sources[0], src, what="vector", allow_float32=True)
    return sources


# --- single-tensor helpers the book uses ------------------------------------------------


def trim_by_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES's trim of one tensor: keep its `density` largest magnitudes (a new tensor)."""
    parse_params("ties", {"density": density})
    return F.sparsify_magnitude(delta.clone(), density)


def dare_drop(delta: torch.Tensor, density: float, rescale: str | None = "l1",
              strategy: str = "random", seed: int = 0) -> torch.Tensor:
    """DARE on one tensor: keep each entry with probability `density`, rescale (see
    `functional.sparsify_random`); `strategy="magnitude"` keeps the largest instead."""
    return merge_deltas([delta], [1.0], "dare_linear", density=density,
                        rescale=rescale or False, mask_strategy=strategy, seed=seed)
