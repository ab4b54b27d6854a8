"""Merging personality vectors: task arithmetic, TIES, DARE — over tensors, files or a model.

The core is `merge_deltas`, a pure function over one tensor's deltas that follows mergekit's
`generalized_task_arithmetic` semantics (mergekit 0.1.5):

- each delta δ_i is sparsified first (TIES: keep its `density` largest magnitudes;
  DARE: drop entries with probability p = 1 − density), then multiplied by its weight w_i;
- TIES-style methods elect a sign per entry from the *weighted* deltas (sign of Σ w_i δ_i,
  ties going to +) and keep only the entries that agree;
- `normalize` divides by Σ w_i (over the agreeing entries for TIES; the "disjoint mean");
  it defaults to true for `ties` and false otherwise; then everything is scaled by `lambda`.

Around it: `merge_vectors` (dicts of tensors), `applied` (in place on a loaded model, for
sweeps), `merge_from_config` / `python -m pvutils merge` (a mergekit YAML, written tensor by
tensor). The TIES trim can be `per_tensor` (mergekit, PEFT) or `global` (one magnitude
threshold per vector over the whole model, as in the paper authors' code), found exactly by
streaming, never by concatenating the model.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import shutil
import weakref
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import atomic_dir
from .outputs import check_local_path, check_output, report_error, write_marker
from .vectors import (
    DeltaSource,
    DictSource,
    MergeError,
    SafetensorsSource,
    StreamingSafetensorsWriter,
    TensorSource,
    _parse_dtype,
    check_compatible,
    check_finite,
    check_vector,
    check_vectors_for_model,
    check_weights,
    open_tensors,
    open_vector,
    weights_fingerprint,
)
from .writer import parse_size

__all__ = [
    "METHODS", "MergeError", "merge_deltas", "merge_vectors", "applied", "release_buffers",
    "merge_from_config",
    "magnitude_threshold", "global_thresholds", "iter_merged_deltas", "cli_merge",
]

METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
DEFAULT_NORMALIZE = {"task_arithmetic": False, "ties": True, "dare_linear": False,
                     "dare_ties": False}
SIGN_METHODS = {"total": "total", "sum": "total", "frequency": "frequency", "count": "frequency"}
TensorLike = str | Path | Mapping[str, torch.Tensor] | TensorSource


# --- pure functions over one tensor ---------------------------------------------------

CHUNK_ELEMENTS = 1 << 25  # tensors above this (32M entries) are merged in row blocks


def merge_deltas(deltas: Sequence[torch.Tensor], weights: Sequence[float],
                 method: str = "task_arithmetic", **params: Any) -> torch.Tensor:
    """One tensor's merged delta (float32) from k deltas and their weights.

    Params: `density` (float or one per delta; TIES keep fraction, DARE keep probability),
    `drop_rate` (DARE p = 1 − density), `majority_sign_method` ("total" | "frequency"),
    `disjoint` ("mean" | "sum": TIES disjoint mean = normalize true), `normalize`,
    `lambda_`, `rescale` (DARE: True/"l1" = mergekit's L1-norm matching, "inverse" = the DARE
    paper's 1/(1−p), False), `mask_strategy` ("random" | "magnitude"), `seed`,
    `trim_density` (dare_ties only: an extra TIES magnitude trim after the drop, as in the
    authors' code), `thresholds` (one magnitude threshold per delta: the global trim).
    """
    opts = MergeOptions.from_params(method, params)
    if len(deltas) == 0:
        raise MergeError("merge_deltas needs at least one delta")
    if len(deltas) != len(weights):
        raise MergeError(f"{len(deltas)} deltas but {len(weights)} weights")
    shape = deltas[0].shape
    for i, d in enumerate(deltas):
        if not isinstance(d, torch.Tensor):
            raise MergeError(f"delta {i} is a {type(d).__name__}, not a tensor")
        if d.shape != shape:
            raise MergeError(f"delta {i} has shape {list(d.shape)}, delta 0 has {list(shape)}")
    sources = [DictSource({"delta": d}, f"delta {i}") for i, d in enumerate(deltas)]
    merger = _TensorMerger(sources, _check_weights(weights), opts)
    parts = [chunk for _, _, chunk in merger.merge("delta")]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass
class MergeOptions:
    """Validated merge parameters (one place that knows defaults and allowed ranges)."""

    method: str = "task_arithmetic"
    density: float | tuple[float, ...] = 1.0
    majority_sign_method: str = "total"
    normalize: bool = False
    lambda_: float = 1.0
    rescale: str | None = None  # None | "l1" | "inverse"
    mask_strategy: str = "random"
    seed: int = 0
    trim_density: float = 1.0
    thresholds: tuple[float, ...] | None = None

    @classmethod
    def from_params(cls, method: str, params: Mapping[str, Any]) -> MergeOptions:
        if method not in METHODS:
            raise MergeError(f"unknown merge method {method!r}; choose one of {list(METHODS)}")
        known = {"density", "drop_rate", "majority_sign_method", "disjoint", "normalize",
                 "lambda_", "lambda", "rescale", "mask_strategy", "seed", "trim_density",
                 "thresholds"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise MergeError(f"unknown merge parameter(s) {unknown}; known: {sorted(known)}")
        dare = method.startswith("dare")
        density, drop = params.get("density"), params.get("drop_rate")
        if drop is not None:
            if not dare:
                raise MergeError(f"drop_rate applies to dare_linear / dare_ties, not {method}")
            if density is not None:
                raise MergeError("give either drop_rate or density (= 1 − drop_rate), not both")
            drops = list(drop) if isinstance(drop, Sequence) else [drop]
            for p in drops:
                if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
                    raise MergeError(f"drop_rate must be in [0, 1), got {p!r}")
            # round: 1 - 0.8 is 0.19999999999999996, which would keep one entry too few
            keep = [round(1 - p, 12) for p in drops]
            density = tuple(keep) if isinstance(drop, Sequence) else keep[0]
        density = 1.0 if density is None else density
        if isinstance(density, Sequence):
            density = tuple(_check_fraction(d, "density") for d in density)
        else:
            density = _check_fraction(density, "density")
        sign = params.get("majority_sign_method", "total")
        if sign not in SIGN_METHODS:
            raise MergeError(f"majority_sign_method must be one of {list(SIGN_METHODS)}, "
                             f"got {sign!r}")
        normalize, disjoint = params.get("normalize"), params.get("disjoint")
        if normalize is not None and not isinstance(normalize, bool):
            raise MergeError(f"normalize must be true or false, got {normalize!r}")
        if disjoint is not None:
            if disjoint not in ("mean", "sum"):
                raise MergeError(f"disjoint must be 'mean' or 'sum', got {disjoint!r}")
            if method not in ("ties", "dare_ties"):
                raise MergeError(f"disjoint applies to ties / dare_ties, not {method}")
            if normalize is not None and normalize != (disjoint == "mean"):
                raise MergeError("disjoint='mean' means normalize=true and 'sum' means "
                                 "normalize=false; they disagree here")
            normalize = disjoint == "mean"
        if normalize is None:
            normalize = DEFAULT_NORMALIZE[method]
        lam = params.get("lambda_", params.get("lambda", 1.0))
        if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not math.isfinite(lam):
            raise MergeError(f"lambda must be a finite number, got {lam!r}")
        rescale = params.get("rescale", dare)
        if rescale not in (True, False, None, "l1", "inverse"):
            raise MergeError(f"rescale must be true/false, 'l1' or 'inverse', got {rescale!r}")
        rescale = "l1" if rescale is True else (rescale or None)
        if rescale and not dare:
            raise MergeError(f"rescale applies to dare_linear / dare_ties, not {method}")
        strategy = params.get("mask_strategy", "random")
        if strategy not in ("random", "magnitude"):
            raise MergeError(f"mask_strategy must be 'random' or 'magnitude', got {strategy!r}")
        seed = params.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise MergeError(f"seed must be an integer, got {seed!r}")
        trim = params.get("trim_density")
        if trim is not None and method != "dare_ties":
            raise MergeError(f"trim_density applies to dare_ties only (use density for {method})")
        trim = 1.0 if trim is None else _check_fraction(trim, "trim_density")
        thresholds = params.get("thresholds")
        return cls(method=method, density=density, majority_sign_method=SIGN_METHODS[sign],
                   normalize=normalize, lambda_=float(lam), rescale=rescale,
                   mask_strategy=strategy, seed=seed, trim_density=trim,
                   thresholds=None if thresholds is None else tuple(map(float, thresholds)))

    def densities(self, k: int) -> tuple[float, ...]:
        dens = self.density if isinstance(self.density, tuple) else (self.density,) * k
        if len(dens) != k:
            raise MergeError(f"{len(dens)} densities for {k} vectors")
        return dens

    def trim_fractions(self, k: int) -> tuple[float, ...]:
        """What the TIES trim keeps per vector (1 = no trim)."""
        if self.method == "ties":
            return self.densities(k)
        return (self.trim_density,) * k if self.method == "dare_ties" else (1.0,) * k


def _check_fraction(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise MergeError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def _check_weights(weights: Sequence[float]) -> list[float]:
    for w in weights:
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise MergeError(f"weights must be finite numbers, got {w!r}")
    return [float(w) for w in weights]


class _TensorMerger:
    """mergekit's generalized task arithmetic, one tensor at a time, in row blocks.

    Per delta: DARE drop (+ rescale), then the TIES magnitude trim; then weights, sign
    election, disjoint sum, normalisation and λ. Statistics that span a whole tensor (its
    magnitude threshold, its L1 norms) come from streaming passes over the row blocks when a
    tensor is split, so a 128256 × 4096 embedding never needs k float32 copies at once.
    The hot path works in place on freshly read tensors: on this CPU a new 100 MB tensor
    costs several times more (page faults) than the arithmetic done on it.
    """

    def __init__(self, sources: Sequence[TensorSource], weights: list[float],
                 opts: MergeOptions):
        self.sources, self.weights, self.opts = list(sources), weights, opts
        self.k = len(sources)
        self.dens = opts.densities(self.k)
        self.trims = opts.trim_fractions(self.k)
        self.dare = opts.method.startswith("dare")
        self._stats: dict = {}
        self._pool: torch.Tensor | None = None

    def spans(self, name: str) -> list[tuple[int, int]]:
        shape = self.sources[0].shape(name)
        if len(shape) < 2 or math.prod(shape) <= CHUNK_ELEMENTS:
            return [(0, -1)]  # the whole tensor
        per = max(1, CHUNK_ELEMENTS // math.prod(shape[1:]))
        return [(a, min(a + per, shape[0])) for a in range(0, shape[0], per)]

    def read(self, i: int, name: str, span: tuple[int, int], check: bool = True
             ) -> torch.Tensor:
        """A float32 block of delta i that the caller may modify in place."""
        src = self.sources[i]
        d = src.get(name) if span[1] < 0 else src.get_rows(name, *span)
        if check:
            check_finite(d, name, src.label)
        if d.dtype != torch.float32:
            return d.float()
        return d if getattr(src, "fresh", False) else d.clone()

    def _seed(self, name: str, block: int, i: int) -> int:
        return _mix_seed(_mix_seed(_mix_seed(self.opts.seed, name), block), i)

    def drop(self, i: int, name: str, block: int, d: torch.Tensor, whole: bool,
             l1: bool = True) -> torch.Tensor:
        """The DARE step on one block, in place (identity for task arithmetic and TIES)."""
        density = self.dens[i]
        if not self.dare or density >= 1:
            return d
        opts = self.opts
        before = float(d.abs().sum()) if opts.rescale == "l1" and l1 and whole else None
        if opts.mask_strategy == "magnitude":
            magnitude = d.abs()
            if whole:
                t = kth_largest(magnitude.reshape(-1), max(1, int(density * d.numel())))
            else:
                t = self.threshold(i, name, "drop")
            d.masked_fill_(magnitude < t, 0.0)
            del magnitude
        else:
            gen = torch.Generator().manual_seed(self._seed(name, block, i))
            d.masked_fill_(torch.rand(d.shape, generator=gen) >= density, 0.0)
        if opts.rescale == "inverse":
            d.div_(density)
        elif opts.rescale == "l1" and l1:
            if whole:
                after = float(d.abs().sum())
                if before >= 1e-7 and after >= 1e-7:  # mergekit's guard for empty tensors
                    d.mul_(before / after)
            else:
                d.mul_(self.l1_scale(i, name))
        return d

    def l1_scale(self, i: int, name: str) -> float:
        """mergekit's `rescale` over a split tensor: restore its L1 norm after the drop."""
        key = ("l1", i, name)
        if key not in self._stats:
            before = after = 0.0
            for block, span in enumerate(self.spans(name)):
                d = self.read(i, name, span)
                before += float(d.abs().sum())
                after += float(self.drop(i, name, block, d, whole=False, l1=False).abs().sum())
            ok = before >= 1e-7 and after >= 1e-7
            self._stats[key] = before / after if ok else 1.0
        return self._stats[key]

    def threshold(self, i: int, name: str, stage: str) -> float:
        """The magnitude threshold of a split tensor: DARE-magnitude drop or TIES trim."""
        key = (stage, i, name)
        if key not in self._stats:
            spans = self.spans(name)
            fraction = self.dens[i] if stage == "drop" else self.trims[i]
            keep = max(1, int(fraction * math.prod(self.sources[0].shape(name))))
            if stage == "drop":
                blocks = lambda: (self.read(i, name, s) for s in spans)  # noqa: E731
            else:
                blocks = lambda: (  # noqa: E731
                    self.drop(i, name, b, self.read(i, name, s), whole=False)
                    for b, s in enumerate(spans))
            self._stats[key] = magnitude_threshold(blocks, keep)
        return self._stats[key]

    def weighted(self, i: int, name: str, block: int, span, whole: bool) -> torch.Tensor:
        """w_i · trim(drop(δ_i)) for one block."""
        d = self.drop(i, name, block, self.read(i, name, span), whole)
        if self.opts.method in ("ties", "dare_ties"):
            fraction = self.trims[i]
            if self.opts.thresholds is not None:
                d.masked_fill_(d.abs() < self.opts.thresholds[i], 0.0)
            elif fraction < 1 and whole:
                magnitude = d.abs()
                t = kth_largest(magnitude.reshape(-1), max(1, int(fraction * d.numel())))
                d.masked_fill_(magnitude < t, 0.0)
                del magnitude
            elif fraction < 1:
                d.masked_fill_(d.abs() < self.threshold(i, name, "trim"), 0.0)
        return d.mul_(self.weights[i])

    def weight_sum(self) -> torch.Tensor:
        """Σ w_i as mergekit's float32 divisor (a tensor: dividing by a Python float would
        multiply by its reciprocal and round differently)."""
        total = torch.tensor(self.weights, dtype=torch.float32).sum()
        return total if abs(float(total)) >= 1e-8 else torch.tensor(1.0)

    def block_shape(self, name: str, span) -> tuple[int, ...]:
        shape = self.sources[0].shape(name)
        return shape if span[1] < 0 else (min(span[1], shape[0]) - span[0], *shape[1:])

    def buffer(self, numel: int) -> torch.Tensor:
        """A reused float32 scratch buffer (no page faults after the first tensor)."""
        if self._pool is None or self._pool.numel() < numel:
            self._pool = torch.empty(numel)
        return self._pool[:numel]

    def ta_block(self, name: str, span) -> torch.Tensor:
        """Σ w_i (θ_i − θ_base) with the compiled kernel: each model is read into one reused
        buffer and subtracted, weighted and accumulated in a single pass."""
        kernels, shape = _compiled(), self.block_shape(name, span)
        n = math.prod(shape)
        buf, mixed = self.buffer(n), torch.empty(n)
        for i, src in enumerate(self.sources):
            weight = np.float32(self.weights[i])
            if isinstance(src, DeltaSource) and src.finetuned.dtype(name) == torch.float32 \
                    and src.base.dtype(name) == torch.float32:
                src.finetuned.read_into(name, span, buf)
                base = src.base.block(name, span).reshape(-1).contiguous()
                kernels.weighted_difference(mixed.numpy(), buf.numpy(), base.numpy(), weight,
                                            True, i == 0)
            else:
                src.read_into(name, span, buf)
                kernels.weighted_difference(mixed.numpy(), buf.numpy(), buf.numpy(), weight,
                                            False, i == 0)
        if not math.isfinite(float(mixed.sum())):
            for i in range(self.k):
                self.read(i, name, span)  # raises, naming the source
        return mixed.view(shape)

    def ties_block(self, name: str, span, whole: bool) -> torch.Tensor:
        """TIES on one block with the compiled kernels: the k deltas are read into one
        reused (k, n) buffer, then trimmed, weighted, elected and merged in one pass."""
        shape = self.block_shape(name, span)
        n = math.prod(shape)
        buf = self.buffer(self.k * n).view(self.k, n)
        thresholds = np.zeros(self.k, dtype=np.float32)
        for i, src in enumerate(self.sources):
            label = f"{src.label}: tensor {name!r}"
            fused = self.trims[i] < 1 and whole and self.opts.thresholds is None
            if fused and isinstance(src, DeltaSource) and \
                    src.finetuned.dtype(name) == src.base.dtype(name) == torch.float32:
                # fine-tuned − base and the trim's histogram in one pass
                src.finetuned.read_into(name, span, buf[i])
                base = src.base.block(name, span)
                keep = max(1, int(self.trims[i] * n))
                thresholds[i] = _ties_threshold(buf[i], keep, base.contiguous(), label)
                continue
            src.read_into(name, span, buf[i])
            if self.opts.thresholds is not None:
                thresholds[i] = self.opts.thresholds[i]
            elif fused:
                keep = max(1, int(self.trims[i] * n))
                thresholds[i] = _ties_threshold(buf[i], keep, None, label)
            elif self.trims[i] < 1:
                thresholds[i] = self.threshold(i, name, "trim")
        out = torch.empty(n)
        bad = np.zeros(self.k, dtype=np.int8)
        _compiled().ties(buf.numpy(), np.asarray(self.weights, dtype=np.float32), thresholds,
                         self.opts.majority_sign_method == "frequency", self.opts.normalize,
                         out.numpy(), bad)  # λ: applied by the caller
        for i in np.flatnonzero(bad):
            raise MergeError(f"{self.sources[i].label}: tensor {name!r} contains NaN or Inf")
        return out.view(shape)

    def merge(self, name: str) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (first row, end row, merged float32 delta) per row block of `name`."""
        self._stats.clear()
        opts, consensus = self.opts, self.opts.method in ("ties", "dare_ties")
        spans = self.spans(name)
        whole = len(spans) == 1
        for block, span in enumerate(spans):
            if opts.method == "ties" and _compiled() is not None:
                mixed = self.ties_block(name, span, whole)
            elif opts.method == "task_arithmetic" and _compiled() is not None:
                mixed = self.ta_block(name, span)
                if opts.normalize:
                    mixed.div_(self.weight_sum())
            elif consensus:
                work = [self.weighted(i, name, block, span, whole) for i in range(self.k)]
                mixed, divisor = _disjoint_sum(work, self.weights, opts.majority_sign_method)
                del work
                if opts.normalize:
                    divisor[divisor == 0] = 1
                    mixed.div_(divisor)
                del divisor
            elif not self.dare:
                # task arithmetic: NaN / Inf in any input reach the sum, so one check of the
                # result replaces k checks of the inputs; add_(alpha) fuses weight and sum
                mixed = self.read(0, name, span, check=False).mul_(self.weights[0])
                for i in range(1, self.k):
                    mixed.add_(self.read(i, name, span, check=False), alpha=self.weights[i])
                if not math.isfinite(float(mixed.sum())):
                    for i in range(self.k):
                        self.read(i, name, span)  # raises, naming the source
                if opts.normalize:
                    mixed.div_(self.weight_sum())
            else:
                mixed = self.weighted(0, name, block, span, whole)
                for i in range(1, self.k):
                    mixed.add_(self.weighted(i, name, block, span, whole))
                if opts.normalize:
                    mixed.div_(self.weight_sum())
            if opts.lambda_ != 1:
                mixed.mul_(opts.lambda_)
            yield span[0], span[1], mixed
        self._stats.clear()


def _disjoint_sum(weighted: list[torch.Tensor], weights: Sequence[float],
                  sign_method: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Σ of the weighted deltas that agree with the elected sign, and Σ of their weights.

    Same as PEFT's `calculate_majority_sign_mask` + `disjoint_merge` applied to the
    *weighted* deltas (as mergekit does), but in place over the list instead of a stacked
    (k, …) copy: with e = ±1 the elected sign, an entry agrees iff e·d > 0, and the sum of
    agreeing entries is e · Σ relu(e·d) (exact: multiplying by ±1 does not round).
    Consumes `weighted`.
    """
    if sign_method == "total":
        elected = weighted[0].clone()
        for d in weighted[1:]:
            elected.add_(d)
    else:
        elected = weighted[0].sign()
        for d in weighted[1:]:
            elected.add_(d.sign())
    positive = elected >= 0  # ties go to +, as in mergekit and PEFT
    elected.fill_(-1.0).masked_fill_(positive, 1.0)
    del positive
    mixed = divisor = None
    for d, w in zip(weighted, weights, strict=True):
        agree_part = d.mul_(elected).clamp_(min=0)  # relu(e·d)
        if mixed is None:
            mixed, divisor = agree_part, (agree_part > 0).float().mul_(w)
        else:
            mixed.add_(agree_part)
            divisor.add_(agree_part > 0, alpha=w)
    weighted.clear()
    return mixed.mul_(elected), divisor


def trim_by_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` fraction of largest-magnitude entries (mergekit: at least one).

    Entries tied with the k-th largest magnitude are all kept (mergekit breaks such ties
    arbitrarily; they are rare in real deltas, and zero entries change nothing).
    """
    _check_fraction(density, "density")
    if density >= 1 or delta.numel() == 0:
        return delta
    keep = max(1, int(density * delta.numel()))
    threshold = kth_largest(delta.abs().reshape(-1).float(), keep)
    return delta.where(delta.abs() >= threshold, 0.0)


def kth_largest(values: torch.Tensor, k: int) -> float:
    """The exact k-th largest of a 1-D float tensor, faster than `torch.kthvalue` on big ones.

    `torch.kthvalue` is a single-threaded quickselect (~0.9 s per 28M entries here); we
    bracket the answer with quantiles of a random sample, count what lies above the bracket,
    and select exactly inside the small bracket. If the bracket misses, we fall back to
    `kthvalue`: slower, never wrong.
    """
    n = values.numel()
    if not 1 <= k <= n:
        raise MergeError(f"k = {k} outside 1..{n}")
    if n <= 1 << 17:
        return float(torch.kthvalue(values, n - k + 1).values)
    m = 1 << 15
    gen = torch.Generator().manual_seed(n * 31 + k)
    sample = values[torch.randint(n, (m,), generator=gen)].sort().values
    q = 1 - k / n  # the threshold's quantile from below
    spread = 6 * math.sqrt(m * q * (1 - q)) + 4
    lo_rank, hi_rank = int(q * m - spread), int(q * m + spread) + 1
    lo = float(sample[lo_rank]) if lo_rank >= 0 else -math.inf
    hi = float(sample[hi_rank]) if hi_rank < m else math.inf
    above = int((values > hi).sum()) if hi != math.inf else 0
    inside = values[(values >= lo) & (values <= hi)]
    need = k - above
    if 1 <= need <= inside.numel():
        return float(torch.kthvalue(inside, inside.numel() - need + 1).values)
    return float(torch.kthvalue(values, n - k + 1).values)


def dare_drop(delta: torch.Tensor, density: float, rescale: str | None = "l1",
              strategy: str = "random", seed: int = 0) -> torch.Tensor:
    """DARE on one tensor: keep each entry with probability `density` (= 1 − p), rescale.

    `rescale="inverse"` divides by the density (DARE paper, PEFT, the authors' code);
    `"l1"` restores the tensor's L1 norm (mergekit 0.1.5's `rescale: true`); None keeps
    the survivors as they are. `strategy="magnitude"` keeps the largest entries instead.
    """
    opts = MergeOptions.from_params("dare_linear", {"density": density, "rescale": rescale,
                                                    "mask_strategy": strategy, "seed": seed})
    merger = _TensorMerger([DictSource({"delta": delta})], [1.0], opts)
    if merger.spans("delta") != [(0, -1)]:
        raise MergeError("dare_drop takes tensors up to CHUNK_ELEMENTS; use merge_vectors")
    return merger.drop(0, "delta", 0, merger.read(0, "delta", (0, -1)), whole=True)


def _mix_seed(seed: int, salt: int | str) -> int:
    """A seed per (run, tensor name, block, vector): masks do not depend on read order."""
    return (seed * 1_000_003 + zlib.crc32(str(salt).encode())) % (2**63 - 1)


# --- compiled kernels (pvutils._kernels, numba) -------------------------------------------

USE_COMPILED = True  # False: plain torch everywhere (same results; tests compare the two)


def _compiled():
    """The numba kernels, or None when switched off or numba is not installed."""
    if not USE_COMPILED:
        return None
    try:
        from . import _kernels
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return _kernels


def _bits(tensor: torch.Tensor):
    return tensor.detach().reshape(-1).view(torch.int32).numpy()


def _histogram(tensor: torch.Tensor, high: int = -1):
    """65536-bin numpy histogram of |x|'s bit pattern (see `magnitude_threshold`)."""
    kernels = _compiled()
    if kernels is None or tensor.dtype != torch.float32 or not tensor.is_contiguous():
        bits = tensor.detach().float().abs().reshape(-1).view(torch.int32)
        if high >= 0:
            bits = bits[(bits >> 16) == high] & 0xFFFF
        else:
            bits = bits >> 16
        return torch.bincount(bits, minlength=1 << 16).numpy()
    rows = np.zeros((2 * kernels.threads(), 1 << 16), dtype=np.int64)
    kernels.bits_histogram(_bits(tensor), high, rows)
    return rows.sum(axis=0)


def _ties_threshold(row: torch.Tensor, keep: int, base: torch.Tensor | None, label: str
                    ) -> float:
    """Exact keep-th largest |row| (compiled); with `base`, first row -= base in the same pass.

    Sample-bracketed selection: a 4096-entry sample brackets the answer (±4 sd of the
    sample quantile); one compiled pass counts the entries above the bracket and gathers
    the few inside it, and a partition of those gives the exact value. When the bracket
    misses (rare), the exact radix select over the bit patterns decides. (numpy rather than
    torch for the small steps: under load, torch's thread pool wake-ups cost milliseconds.)
    """
    kernels = _compiled()
    x = row.numpy()
    n = x.size
    b = None if base is None else base.reshape(-1).numpy()
    if n <= 1 << 14:  # small: an exact selection costs less than a pass with a sample
        if b is not None:
            np.subtract(x, b, out=x)
        if not np.isfinite(x.sum()) and not np.isfinite(x).all():
            raise MergeError(f"{label} contains NaN or Inf")
        return float(np.partition(np.abs(x), n - keep)[n - keep])
    m = 4096
    idx = np.random.default_rng(n).integers(0, n, size=m)
    sample = np.sort(np.abs(x[idx] if b is None else x[idx] - b[idx]))
    rank = m - keep / n * m  # where the answer sits in the ascending sample
    spread = 4 * math.sqrt(m * (keep / n) * (1 - keep / n)) + 8
    low_rank, high_rank = int(rank - spread), int(rank + spread) + 1
    lo = np.float32(0.0) if low_rank <= 0 else sample[low_rank]
    hi = np.float32(np.inf) if high_rank >= m else sample[high_rank]
    chunks = 2 * kernels.threads()
    cap = min(n, int(n * (high_rank - max(low_rank, 0) + 1) / m * 1.5) + 1024) // chunks + 1
    buf = np.empty(chunks * (cap + 1), dtype=np.float32)
    counts = np.zeros((chunks, 3), dtype=np.int64)
    kernels.bracket_pass(x, np.zeros(0, dtype=np.float32) if b is None else b, b is not None,
                         lo, hi, buf, counts)
    if counts[:, 2].any():
        raise MergeError(f"{label} contains NaN or Inf")
    above, inside = int(counts[:, 0].sum()), counts[:, 1]
    if (inside <= cap).all() and above < keep <= above + int(inside.sum()):
        values = np.concatenate([buf[c * (cap + 1):c * (cap + 1) + inside[c]]
                                 for c in range(chunks)])
        at = values.size - (keep - above)
        return float(np.partition(values, at)[at])
    return magnitude_threshold(lambda: iter([row]), keep, label)  # the bracket missed


# --- global trim: one exact threshold over a whole vector, streamed ----------------------


def magnitude_threshold(chunks, keep: int, label: str = "magnitude_threshold") -> float:
    """The exact `keep`-th largest |x| over the tensors yielded by `chunks()` (called twice).

    A two-pass radix select on the float32 bit patterns (which order like the non-negative
    values they encode): pass 1 histograms the top 16 bits, pass 2 the low 16 bits inside
    the one bin that holds the answer. Memory: two 65536-bin histograms and one tensor.
    """
    if keep < 1:
        raise MergeError(f"keep = {keep} must be at least 1")
    hist, total = np.zeros(1 << 16, dtype=np.int64), 0
    for tensor in chunks():
        hist += _histogram(tensor)
        total += tensor.numel()
    if keep > total:
        raise MergeError(f"cannot keep {keep} of {total} entries")
    return _select(hist, keep, lambda high: sum(_histogram(t, high) for t in chunks()), label)


def _select(hist, keep: int, low_histogram, label: str) -> float:
    """The radix select's arithmetic on the two histograms (numpy: no thread pool wake-ups)."""
    if hist[0x7F80:].any():  # exponent all ones: Inf or NaN
        raise MergeError(f"{label} contains NaN or Inf")
    from_top = np.cumsum(hist[::-1])
    j = int(np.searchsorted(from_top, keep))
    high = (1 << 16) - 1 - j
    need = keep - (int(from_top[j - 1]) if j > 0 else 0)
    from_top2 = np.cumsum(low_histogram(high)[::-1])
    low = (1 << 16) - 1 - int(np.searchsorted(from_top2, need))
    return float(np.array([(high << 16) | low], dtype=np.int32).view(np.float32)[0])


def global_thresholds(sources: Sequence[TensorLike], names: Sequence[str] | None,
                      densities: Sequence[float], method: str = "ties",
                      **params: Any) -> list[float]:
    """Per vector, the one magnitude threshold over all `names` that keeps `densities[i]`.

    This is the authors' `param_value_mask_rate` (0.8 = keep 20%) computed exactly without
    concatenating the model: one tensor in memory at a time. For dare_ties it is taken over
    the dropped deltas (same seeds as the merge), as in the authors' DARE-then-TIES code.
    """
    srcs = [open_tensors(s) for s in sources]
    names = list(srcs[0].keys()) if names is None else list(names)
    if method == "dare_ties":
        opts = MergeOptions.from_params(method, {**params, "trim_density": 0.5})
    else:
        opts = MergeOptions.from_params("task_arithmetic", {})
    merger = _TensorMerger(srcs, [1.0] * len(srcs), opts)
    out = []
    for i, fraction in enumerate(densities):
        _check_fraction(fraction, "density")
        total = sum(math.prod(srcs[i].shape(n)) for n in names)

        def blocks(i=i):
            for n in names:
                merger._stats.clear()
                spans = merger.spans(n)
                for b, span in enumerate(spans):
                    yield merger.drop(i, n, b, merger.read(i, n, span), whole=len(spans) == 1)
            merger._stats.clear()

        out.append(magnitude_threshold(blocks, max(1, int(fraction * total))))
    return out


# --- over whole vectors ----------------------------------------------------------------


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


def iter_merged_blocks(sources: Sequence[TensorSource], weights: Sequence[float],
                       names: Sequence[str], method: str = "task_arithmetic",
                       trim_scope: str = "per_tensor", **params: Any
                       ) -> Iterator[tuple[str, int, int, torch.Tensor]]:
    """Yield (name, first row, end row, merged float32 delta); end row −1 = whole tensor."""
    opts = MergeOptions.from_params(method, params)
    if not sources:
        raise MergeError("nothing to merge: no vectors given")
    if len(sources) != len(weights):
        raise MergeError(f"{len(sources)} vectors but {len(weights)} weights")
    weights = _check_weights(weights)
    if trim_scope not in ("per_tensor", "global"):
        raise MergeError(f"trim_scope must be 'per_tensor' or 'global', got {trim_scope!r}")
    names = [n for n in names if sources[0].dtype(n).is_floating_point]
    fractions = opts.trim_fractions(len(sources))
    if trim_scope == "global" and opts.thresholds is None and any(f < 1 for f in fractions):
        extra = {k: v for k, v in params.items() if k != "trim_density"}
        opts.thresholds = tuple(global_thresholds(sources, names, fractions, method, **extra))
    merger = _TensorMerger(sources, weights, opts)
    for name in names:
        for start, stop, block in merger.merge(name):
            yield name, start, stop, block


def iter_merged_deltas(sources: Sequence[TensorSource], weights: Sequence[float],
                       names: Sequence[str], method: str = "task_arithmetic",
                       trim_scope: str = "per_tensor", **params: Any
                       ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, merged float32 delta) one tensor at a time."""
    name, parts = None, []
    for n, _, _, block in iter_merged_blocks(sources, weights, names, method, trim_scope,
                                             **params):
        if n != name and parts:
            yield name, parts[0] if len(parts) == 1 else torch.cat(parts)
            parts = []
        name = n
        parts.append(block)
    if parts:
        yield name, parts[0] if len(parts) == 1 else torch.cat(parts)


def merge_vectors(vectors: Sequence[TensorLike], weights: Sequence[float],
                  method: str = "task_arithmetic", trim_scope: str = "per_tensor",
                  include: str | Sequence[str] | None = None,
                  exclude: str | Sequence[str] | None = None,
                  **params: Any) -> dict[str, torch.Tensor]:
    """The merged delta (float32) of whole vectors (dicts, vector files or sources)."""
    sources = _open_all(vectors)
    names = select_names(sources[0].keys(), include, exclude)
    return dict(iter_merged_deltas(sources, weights, names, method, trim_scope, **params))


def _open_all(vectors: Sequence[TensorLike]) -> list[TensorSource]:
    if isinstance(vectors, (str, Path, Mapping)):
        raise MergeError("pass a list of vectors, e.g. [vector] — not a single vector")
    sources = [open_vector(v) for v in vectors]
    if not sources:
        raise MergeError("nothing to merge: no vectors given")
    for i, src in enumerate(sources):
        if src.label == "in-memory vector":
            src.label = f"vector {i}"
    for src in sources[1:]:
        check_compatible(sources[0], src, what="vector", allow_float32=True)
    return sources


@contextlib.contextmanager
def applied(model: torch.nn.Module, vectors: Sequence[TensorLike], weights: Sequence[float],
            method: str = "task_arithmetic", trim_scope: str = "per_tensor",
            include: str | Sequence[str] | None = None,
            exclude: str | Sequence[str] | None = None, reuse_buffers: bool = False,
            allow_foreign_base: bool = False, **params: Any) -> Iterator[torch.nn.Module]:
    """Temporarily set θ = θ_model + merge(vectors): α sweeps without writing models.

    Each touched parameter gets a new tensor (θ + Δ) while its old tensor is kept aside, so
    leaving the block (normally or by an exception) puts back the very same storage:
    bitwise equal, with no round-off from subtracting Δ. Tied parameters (SmolLM2's lm_head
    is embed_tokens) are one Parameter object and are updated once.

    `reuse_buffers=True` keeps the merged tensors after exit and writes the next merge into
    them: no fresh allocation (its page faults cost more than the add on a CPU), at the
    price of one extra copy of the touched weights held until `release_buffers(model)` or
    until the model is gone. The sweeps use it.
    """
    sources = _open_all(vectors)
    params_by_name = dict(model.named_parameters(remove_duplicate=False))
    required = select_names([n for n, _ in model.named_parameters()], include, exclude)
    check_vectors_for_model(model, sources, required, allow_foreign_base)
    names, seen = [], set()
    for n in select_names(sources[0].keys(), include, exclude):
        if id(params_by_name[n]) not in seen:  # a tied parameter is applied once
            seen.add(id(params_by_name[n]))
            names.append(n)
    originals: dict[str, torch.Tensor] = {}
    opts = MergeOptions.from_params(method, params)
    spares = _SPARES.setdefault(model, {}) if reuse_buffers else {}
    try:
        with torch.no_grad():
            if method == "task_arithmetic":
                # θ + Σ w_i φ_i straight into the new tensor,
                # one pass per vector instead of copying, scaling and adding
                _apply_task_arithmetic(params_by_name, sources, weights, names, opts,
                                       originals, spares)
                _check_merged_finite(params_by_name, names)
                yield model
                return
            new, current = None, None
            for name, start, stop, block in iter_merged_blocks(sources, weights, names, method,
                                                               trim_scope, **params):
                param = params_by_name[name]
                if name != current:
                    if current is not None:
                        originals[current] = params_by_name[current].data
                        params_by_name[current].data = new
                    current, new = name, _spare_or_new(spares, name, param.data)
                rows = slice(None) if stop < 0 else slice(start, stop)
                block = block.to(param.device)
                if param.dtype == torch.float32:
                    torch.add(param.data[rows], block, out=new[rows])
                else:
                    new[rows] = (param.data[rows].float() + block).to(param.dtype)
            if current is not None:
                originals[current] = params_by_name[current].data
                params_by_name[current].data = new
            del new
            _check_merged_finite(params_by_name, names)
        yield model
    finally:
        for name, tensor in originals.items():
            if reuse_buffers:
                spares[name] = params_by_name[name].data
            params_by_name[name].data = tensor


_SPARES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {name: tensor}


def _check_merged_finite(params_by_name, names) -> None:
    """Every merged weight finite in the model's dtype before anything is scored with it."""
    for name in names:
        check_finite(params_by_name[name].data, name, "merged model (weights × vectors "
                     f"overflow {_dtype_name(params_by_name[name].dtype)})")


def release_buffers(model: torch.nn.Module) -> None:
    """Free the merged tensors `applied(..., reuse_buffers=True)` kept for `model`."""
    _SPARES.pop(model, None)


def _spare_or_new(spares: dict, name: str, like: torch.Tensor) -> torch.Tensor:
    spare = spares.pop(name, None)
    if spare is not None and spare.shape == like.shape and spare.dtype == like.dtype \
            and spare.device == like.device:
        return spare
    return torch.empty_like(like)


# in-memory deltas already checked, by id (a WeakSet would compare tensors elementwise)
_CHECKED_FINITE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _check_delta_once(delta: torch.Tensor, fresh: bool, name: str, label: str) -> None:
    """NaN/Inf check of a delta, once per in-memory tensor: a sweep applies the same loaded
    vector dozens of times, and the check is a full pass as costly as the add itself."""
    if fresh:
        check_finite(delta, name, label)
    elif _CHECKED_FINITE.get(id(delta)) is not delta:
        check_finite(delta, name, label)
        _CHECKED_FINITE[id(delta)] = delta


def _apply_task_arithmetic(params_by_name, sources, weights, names, opts, originals,
                           spares) -> None:
    weights = check_weights(_check_weights(weights), params_by_name[names[0]].dtype)
    if len(weights) != len(sources):
        raise MergeError(f"{len(sources)} vectors but {len(weights)} weights")
    total = sum(weights)
    scale = opts.lambda_ / (total if opts.normalize and abs(total) >= 1e-8 else 1.0)
    small = [n for n in names if params_by_name[n].numel() < SMALL_TENSOR]
    large = [n for n in names if params_by_name[n].numel() >= SMALL_TENSOR]
    with _torch_threads(1):
        _add_deltas(params_by_name, sources, weights, scale, small, originals, spares)
    _add_deltas(params_by_name, sources, weights, scale, large, originals, spares)


SMALL_TENSOR = 1 << 22  # below this an elementwise op is faster on one thread


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with `n` intra-op threads: a memory-bound add on a small tensor is dominated by
    waking the other threads (on 2 busy cores: 1.7 s vs 0.25 s for SmolLM2's 272 tensors)."""
    before = torch.get_num_threads()
    if before <= n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _add_deltas(params_by_name, sources, weights, scale, names, originals, spares) -> None:
    for name in names:
        param = params_by_name[name]
        new = _spare_or_new(spares, name, param.data)
        for i, src in enumerate(sources):
            delta = src.get(name)
            _check_delta_once(delta, getattr(src, "fresh", False), name, src.label)
            delta = delta.to(param.device)
            if i == 0:
                torch.add(param.data, delta, alpha=weights[0] * scale, out=new)
            else:
                new.add_(delta, alpha=weights[i] * scale)
        # finite θ and δ with finite weights overflow only where the dtype's range is small
        if new.dtype in (torch.float16, torch.float8_e4m3fn, torch.float8_e5m2) and \
                not math.isfinite(float(new.float().sum())):
            raise MergeError(f"merged tensor {name!r} overflowed {new.dtype}")
        originals[name] = param.data
        param.data = new


# --- the mergekit YAML path -------------------------------------------------------------

CONFIG_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype",
               "tokenizer_source", "trim_scope", "include", "exclude", "seed", "rescale",
               "mask_strategy", "majority_sign_method", "disjoint", "trim_density",
               "max_shard_size"}
SHARED_PARAMS = {"normalize", "lambda", "rescale", "int8_mask", "trim_scope", "mask_strategy",
                 "seed", "majority_sign_method", "disjoint", "trim_density"}
WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt",
                        "*.index.json", "pvutils-manifest.json")


@dataclass
class MergePlan:
    method: str
    base: str
    entries: list[dict]  # {"model" or "vector": str, "weight": float, "density": float}
    params: dict
    trim_scope: str = "per_tensor"
    include: list[str] | None = None
    exclude: list[str] | None = None
    dtype: str | None = None
    max_shard_size: int = 5 * 10**9


def parse_config(config: str | Path | Mapping) -> MergePlan:
    """Validate a mergekit-style config (YAML file, YAML text or dict) into a plan."""
    if isinstance(config, Mapping):
        data, where = dict(config), "merge config"
    else:
        import yaml

        path = Path(config)
        if not path.is_file():
            raise MergeError(f"{path}: no such merge config (a YAML file)")
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            kind = "malformed YAML" if isinstance(err, yaml.YAMLError) else "not a text file"
            raise MergeError(f"{where}: {kind} ({_one_line(err)})") from None
    if not isinstance(data, dict):
        raise MergeError(f"{where}: expected a mapping with merge_method, base_model, models")
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise MergeError(f"{where}: unknown key(s) {unknown}; known: {sorted(CONFIG_KEYS)}")
    method = data.get("merge_method")
    if method not in METHODS:
        raise MergeError(f"{where}: merge_method must be one of {list(METHODS)}, got {method!r}")
    base = data.get("base_model")
    if not isinstance(base, (str, Path)) or not str(base):
        raise MergeError(f"{where}: base_model is required (a model directory)")
    if data.get("tokenizer_source") not in (None, "base"):
        raise MergeError(f"{where}: only tokenizer_source: base is supported")
    shared = data.get("parameters") or {}
    if not isinstance(shared, dict):
        raise MergeError(f"{where}: parameters must be a mapping")
    bad = sorted(set(shared) - SHARED_PARAMS)
    if bad:
        raise MergeError(f"{where}: unknown parameters {bad}; known: {sorted(SHARED_PARAMS)}")
    merged = {**{k: data[k] for k in SHARED_PARAMS & set(data)}, **shared}
    merged.pop("int8_mask", None)  # mergekit's memory option; the result is the same
    trim_scope = merged.pop("trim_scope", "per_tensor")
    for key, value in merged.items():
        if key in ("normalize",) and not isinstance(value, bool):
            raise MergeError(f"{where}: parameters.{key} must be true or false, got {value!r}")
        if key == "lambda":
            merged[key] = check_weights([value], where=f"{where}: parameters.lambda")[0]
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise MergeError(f"{where}: models must be a non-empty list")
    entries = []
    for i, item in enumerate(models):
        if not isinstance(item, dict) or ("model" in item) == ("vector" in item):
            raise MergeError(f"{where}: models[{i}] needs exactly one of 'model' or 'vector'")
        extra = sorted(set(item) - {"model", "vector", "parameters"})
        if extra:
            raise MergeError(f"{where}: models[{i}] has unknown key(s) {extra}")
        p = item.get("parameters") or {}
        if not isinstance(p, dict) or sorted(set(p) - {"weight", "density"}):
            raise MergeError(f"{where}: models[{i}].parameters may hold weight and density only")
        if "model" in item and str(item["model"]) == str(base):
            continue  # mergekit ignores the base model listed among the models
        if "weight" not in p:
            raise MergeError(f"{where}: models[{i}].parameters.weight is required")
        weight = check_weights([p["weight"]], where=f"{where}: models[{i}].parameters.weight")[0]
        density = _number(p.get("density", 1.0))
        for key, value in (("weight", weight), ("density", density)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise MergeError(f"{where}: models[{i}].parameters.{key} must be a number "
                                 f"(per-tensor lists are not supported), got {value!r}")
        if not math.isfinite(weight):
            raise MergeError(f"{where}: models[{i}].parameters.weight must be finite")
        if not 0 < density <= 1:
            raise MergeError(f"{where}: models[{i}].parameters.density must be in (0, 1], "
                             f"got {density!r}")
        kind = "model" if "model" in item else "vector"
        entries.append({kind: str(item[kind]), "weight": float(weight),
                        "density": float(density)})
    if not entries:
        raise MergeError(f"{where}: no models besides the base to merge")
    include, exclude = data.get("include"), data.get("exclude")
    for key, globs in (("include", include), ("exclude", exclude)):
        if globs is not None and not isinstance(globs, str) and not (
                isinstance(globs, list) and all(isinstance(g, str) for g in globs)):
            raise MergeError(f"{where}: {key} must be a glob or a list of globs, got {globs!r}")
    dtype = data.get("out_dtype") or data.get("dtype")
    if dtype is not None:
        _parse_dtype(dtype)
    plan = MergePlan(method=method, base=str(base), entries=entries, params=merged,
                     trim_scope=trim_scope, dtype=dtype,
                     include=[include] if isinstance(include, str) else include,
                     exclude=[exclude] if isinstance(exclude, str) else exclude)
    if "max_shard_size" in data:
        plan.max_shard_size = parse_size(data["max_shard_size"], f"{where}: max_shard_size")
    # validate the parameters now, before any file is opened
    MergeOptions.from_params(method, {**_method_params(plan), "density": 1.0})
    return plan


def _number(value: Any) -> Any:
    """YAML reads `1e30` (no dot) as a string: a numeric string is a number."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def _method_params(plan: MergePlan) -> dict:
    params = dict(plan.params)
    if "lambda" in params:
        params["lambda_"] = params.pop("lambda")
    params["density"] = tuple(e["density"] for e in plan.entries)
    return params


class _LastTensorCache(TensorSource):
    """A source that remembers the tensor read last: the base is read once per name even
    though every model's delta and the output need it."""

    def __init__(self, inner: TensorSource):
        self.inner, self.label = inner, inner.label
        self._name: str | None = None
        self._tensor: torch.Tensor | None = None

    def keys(self):
        return self.inner.keys()

    def shape(self, name):
        return self.inner.shape(name)

    def dtype(self, name):
        return self.inner.dtype(name)

    def get(self, name):
        return self.get_rows(name, 0, -1)

    def get_rows(self, name, start, stop):
        if (name, start, stop) != self._name:
            self._name, self._tensor = None, None
            inner = self.inner
            tensor = inner.get(name) if stop < 0 else inner.get_rows(name, start, stop)
            self._name, self._tensor = (name, start, stop), tensor
        return self._tensor


def merge_from_config(config: str | Path | Mapping, out_dir: str | Path,
                      overwrite: bool = False, allow_foreign_base: bool = False) -> Path:
    """Run a mergekit-style merge and write a loadable model directory, tensor by tensor.

    Output weights are θ_base + merged delta in `dtype` (default: the base's), sharded like
    `save_pretrained` when larger than `max_shard_size`; config, tokenizer and generation
    config are copied from the base. Nothing is left at `out_dir` if anything fails.
    """
    plan = parse_config(config)
    base_dir = Path(_resolve_local_model(plan.base, "base_model"))
    inputs = [base_dir, *[e.get("model") or e["vector"] for e in plan.entries]]
    check_output(out_dir, inputs + ([] if isinstance(config, Mapping) else [config]), overwrite)
    base = _LastTensorCache(SafetensorsSource(base_dir))
    sources: list[TensorSource] = []
    for entry in plan.entries:
        if "model" in entry:
            model = SafetensorsSource(_resolve_local_model(entry["model"], "model"))
            sources.append(DeltaSource(model, base))
        else:
            check_local_path(entry["vector"], "vector", MergeError)
            sources.append(open_vector(entry["vector"]))
    names = base.keys()
    chosen = select_names(names, plan.include, plan.exclude)
    for src in sources:
        if not isinstance(src, DeltaSource):
            check_vector(base.inner, src, chosen, lambda: [weights_fingerprint(base.inner)],
                         allow_foreign_base)
    out_dtype = _parse_dtype(plan.dtype) if plan.dtype else None
    for i, entry in enumerate(plan.entries):  # within what the output dtype holds
        check_weights([entry["weight"]], out_dtype or torch.float32,
                      f"models[{i}].parameters.weight (out_dtype {plan.dtype or 'float32'})")
    specs = [(n, base.shape(n), out_dtype if out_dtype and base.dtype(n).is_floating_point
              else base.dtype(n)) for n in names]
    merged = iter_merged_blocks(sources, [e["weight"] for e in plan.entries], chosen,
                                plan.method, plan.trim_scope, **_method_params(plan))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        _copy_model_files(base_dir, tmp, out_dtype)
        write_marker(tmp, "merge")  # after the copy: a base that is itself an output has one
        pending = next(merged, None)
        shards = _plan_shards(specs, plan.max_shard_size)
        weight_map = {}
        for shard_name, shard_specs in shards:
            writer = StreamingSafetensorsWriter(tmp / shard_name, shard_specs, {"format": "pt"})
            for name, _, dtype in shard_specs:
                if pending is None or pending[0] != name:  # not merged: the base's tensor
                    tensor = base.get(name).to(dtype)
                    check_finite(tensor, name, f"{base.label} (in {_dtype_name(dtype)})")
                    writer.write(name, tensor)
                while pending is not None and pending[0] == name:
                    _, start, stop, block = pending
                    rows = base.get(name) if stop < 0 else base.get_rows(name, start, stop)
                    pending = next(merged, None)
                    last = pending is None or pending[0] != name
                    block = block.add_(rows).to(dtype)
                    check_finite(block, name, f"merged model (overflows {_dtype_name(dtype)})")
                    writer.write_part(name, block, last=last)
                weight_map[name] = shard_name
            writer.close()
        if pending is not None:
            raise MergeError(f"internal: merged tensor {pending[0]!r} was not written")
        if len(shards) > 1:
            total = sum(math.prod(s) * torch.empty((), dtype=d).element_size()
                        for _, s, d in specs)
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        _write_config_copy(config, tmp)
    return out_dir


def _resolve_local_model(name: str, field_name: str) -> str:
    from .models import ModelError, resolve_model_dir

    check_local_path(name, field_name, MergeError)
    try:
        resolved = resolve_model_dir(name)
    except ModelError as err:
        raise MergeError(f"{field_name} {name!r}: {err}") from err
    if not Path(resolved).is_dir():
        raise MergeError(f"{field_name} {name!r} is not a local model directory; merging reads "
                         "local safetensors only (download the model first)")
    return resolved


def _plan_shards(specs, max_bytes: int):
    shards, current, size = [], [], 0
    for spec in specs:
        nbytes = math.prod(spec[1]) * torch.empty((), dtype=spec[2]).element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        return [("model.safetensors", shards[0])]
    n = len(shards)
    return [(f"model-{i + 1:05d}-of-{n:05d}.safetensors", s) for i, s in enumerate(shards)]


def _copy_model_files(base_dir: Path, out: Path, out_dtype: torch.dtype | None) -> None:
    """Config, tokenizer, generation config, chat template: everything but the weights."""
    for item in sorted(base_dir.iterdir()):
        if item.is_file() and not any(fnmatch.fnmatch(item.name, p)
                                      for p in WEIGHT_FILE_PATTERNS):
            shutil.copy2(item, out / item.name)
    cfg = out / "config.json"
    if out_dtype is not None and cfg.exists():
        data = json.loads(cfg.read_text())
        name = str(out_dtype).removeprefix("torch.")
        for key in ("torch_dtype", "dtype"):
            if key in data:
                data[key] = name
        cfg.write_text(json.dumps(data, indent=2) + "\n")


def _write_config_copy(config: str | Path | Mapping, out: Path) -> None:
    import yaml

    data = config if isinstance(config, Mapping) else yaml.safe_load(Path(config).read_text())
    (out / "mergekit_config.yml").write_text(yaml.safe_dump(dict(data), sort_keys=False))


def cli_merge(argv: list[str]) -> int:
    """`python -m pvutils merge CONFIG.yml OUT_DIR`: a mergekit-compatible merge."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pvutils merge",
                                     description="merge models / vectors from a mergekit YAML")
    parser.add_argument("config", help="mergekit-style YAML (task_arithmetic, ties, dare_*)")
    parser.add_argument("out_dir", help="output model directory (written atomically)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output that pvutils wrote")
    parser.add_argument("--allow-foreign-base", action="store_true",
                        help="merge vectors made from another base model")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        out = merge_from_config(args.config, args.out_dir, overwrite=args.overwrite,
                                allow_foreign_base=args.allow_foreign_base)
    except ValueError as err:
        return report_error(err)
    print(out)
    return 0
