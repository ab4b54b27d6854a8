"""Merging as small pure functions over one tensor (mergekit 0.1.5 semantics).

A merge of k deltas δ_i with weights w_i is: sparsify each δ_i, weight it, then either sum
(task arithmetic) or elect a sign per entry and sum only the agreeing entries (TIES), and
finally normalize by the summed weights and scale by λ. Each step is one function here;
`pvutils.merging.registry` says which steps a named method uses, and the streaming engine
calls these same functions on row blocks of tensors that do not fit in memory.

Arithmetic is float32 in mergekit's order (each product rounded, then added; no fused
multiply-add), so task arithmetic and TIES equal mergekit's output bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from ..vectors import MergeError

TILE = 1 << 22  # entries per tile of the element-wise loops: cache-resident, few op calls
Blocks = torch.Tensor | Callable[[], Iterable[torch.Tensor]]


# --- one exact threshold ---------------------------------------------------------------


def magnitude_threshold(blocks: Blocks, keep: int, accelerate: str | None = None,
                        label: str = "tensor") -> float:
    """The exact `keep`-th largest |x| over a tensor, or over the tensors `blocks()` yields.

    A radix select on the float32 bit patterns (which order like the non-negative values
    they encode): one pass histograms the top 16 bits, a second the low 16 bits inside the
    one bin that holds the answer. Exact with ties, streams (memory: two histograms), so the
    same code serves a tensor, a tensor in row blocks and the authors' global trim.
    """
    chunks = (lambda: [blocks]) if isinstance(blocks, torch.Tensor) else blocks
    kernels = load_accelerator(accelerate)
    hist, total = np.zeros(1 << 16, dtype=np.int64), 0
    for t in chunks():
        hist += _histogram(t, -1, kernels)
        total += t.numel()
    if not 1 <= keep <= total:
        raise MergeError(f"{label}: cannot keep {keep} of {total} entries")
    if hist[0x7F80:].any():  # exponent all ones: Inf or NaN
        raise MergeError(f"{label} contains NaN or Inf")
    from_top = np.cumsum(hist[::-1])
    j = int(np.searchsorted(from_top, keep))
    high = (1 << 16) - 1 - j
    need = keep - (int(from_top[j - 1]) if j > 0 else 0)
    low_hist = sum(_histogram(t, high, kernels) for t in chunks())
    low = (1 << 16) - 1 - int(np.searchsorted(np.cumsum(low_hist[::-1]), need))
    return float(np.array([(high << 16) | low], dtype=np.int32).view(np.float32)[0])


def _histogram(t: torch.Tensor, high: int, kernels) -> np.ndarray:
    """65536-bin histogram of |x|'s top 16 bits, or (high >= 0) of the low 16 bits in bin high."""
    bits = t.detach().reshape(-1).float().contiguous().view(torch.int32)
    if kernels is not None and bits.numel() >= 1 << 18:  # below, allocation costs more
        rows = np.zeros((2 * kernels.threads(), 1 << 16), dtype=np.int64)
        kernels.bits_histogram(bits.numpy(), high, rows)
        return rows.sum(axis=0)
    bits = bits & 0x7FFFFFFF
    picked = bits >> 16 if high < 0 else bits[(bits >> 16) == high] & 0xFFFF
    return torch.bincount(picked, minlength=1 << 16).numpy()


def keep_count(density: float, numel: int) -> int:
    """mergekit's kept count: int(density · n), at least one entry."""
    return max(1, int(density * numel))


# --- sparsification ---------------------------------------------------------------------


def sparsify_magnitude(delta: torch.Tensor, density: float = 1.0,
                       threshold: float | None = None, rescale: str | None = None,
                       l1_scale: float | None = None) -> torch.Tensor:
    """Keep the `density` largest magnitudes (or every |x| >= a given `threshold`).

    Entries tied with the threshold are all kept (mergekit's argsort keeps an arbitrary
    subset of them; continuous deltas have no ties). In place on `delta`; `rescale` as in
    `sparsify_random`.
    """
    if threshold is None:
        if density >= 1:
            return delta
        threshold = magnitude_threshold(delta, keep_count(density, delta.numel()))
    before = l1_norm(delta) if rescale == "l1" and l1_scale is None else None
    delta.masked_fill_(delta.abs() < threshold, 0.0)
    return rescale_kept(delta, rescale, before, l1_scale, density)


def outlier_thresholds(blocks: Blocks, numel: int, density: float, gamma: float,
                       accelerate: str | None = None, label: str = "tensor"
                       ) -> tuple[float, float]:
    """Model Breadcrumbs' band (mergekit `magnitude_outliers`): drop the top `gamma`, keep
    the next `density`; returns (lowest kept |x|, lowest dropped outlier |x| or inf)."""
    target, top = int(density * numel), int(gamma * numel)
    top = numel - target - max(0, numel - target - top)  # shrink the outliers to fit
    if target == 0:
        return math.inf, math.inf
    low = magnitude_threshold(blocks, top + target, accelerate, label)
    high = magnitude_threshold(blocks, top, accelerate, label) if top > 0 else math.inf
    return low, high


def sparsify_outliers(delta: torch.Tensor, density: float, gamma: float = 0.01,
                      band: tuple[float, float] | None = None, rescale: str | None = None,
                      l1_scale: float | None = None) -> torch.Tensor:
    """Model Breadcrumbs: zero the `gamma` largest magnitudes and all below the next
    `density` (`band`: the whole tensor's, when this is one row block). In place.

    On a whole tensor, magnitudes tied across an edge of the band are split as mergekit
    splits them (`outlier_band_mask`); a row block keeps every entry tied with an edge."""
    if density >= 1:
        return delta
    before = l1_norm(delta) if rescale == "l1" and l1_scale is None else None
    magnitude = delta.abs()
    if band is None:
        drop = outlier_band_mask(magnitude, density, gamma).logical_not_()
    else:
        drop = (magnitude < band[0]) | (magnitude >= band[1])
    delta.masked_fill_(drop, 0.0)
    return rescale_kept(delta, rescale, before, l1_scale, density)


def outlier_band_mask(magnitude: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """The entries mergekit's `magnitude_outliers` keeps: positions [n_bot, n − n_top) of
    the ascending sort of |δ| (float32). The band's edges come from the exact threshold;
    only when equal magnitudes straddle an edge does the order among them matter, and then
    it is torch's (unstable) sort of the same tensor, as in mergekit, that decides."""
    n = magnitude.numel()
    low, high = outlier_thresholds(magnitude, n, density, gamma)
    keep = (magnitude >= low) & (magnitude < high)
    target, top = int(density * n), int(gamma * n)
    bottom = max(0, n - target - top)
    if math.isinf(low) or (int((magnitude < low).sum()) == bottom
                           and int((magnitude < high).sum()) == bottom + target):
        return keep  # no tie across an edge: the band is the sort's slice
    order = torch.sort(magnitude.reshape(-1).float(), descending=False).indices
    keep = torch.zeros(n, dtype=torch.bool)
    keep[order[bottom:bottom + target]] = True
    return keep.view(magnitude.shape)


def sparsify_random(delta: torch.Tensor, density: float, rescale: str | None = "l1",
                    generator: torch.Generator | None = None,
                    l1_scale: float | None = None) -> torch.Tensor:
    """DARE: keep each entry with probability `density`, then rescale the survivors.

    `rescale`: "l1" restores the tensor's L1 norm (mergekit's `rescale: true`; pass the
    whole tensor's `l1_scale` when this is one row block), "inverse" divides by the density
    (the DARE paper, PEFT, the authors' code), None keeps them. In place on `delta`.
    """
    if density >= 1:
        return delta
    before = l1_norm(delta) if rescale == "l1" and l1_scale is None else None
    delta.masked_fill_(torch.rand(delta.shape, generator=generator) >= density, 0.0)
    return rescale_kept(delta, rescale, before, l1_scale, density)


def della_keep_probabilities(delta: torch.Tensor, density: float,
                             epsilon: float) -> torch.Tensor:
    """DELLA's MagPrune: per row, keep probability rising linearly with the magnitude rank
    from density − ε (smallest) to density + ε (largest); a 1-D tensor is one row."""
    if not (0 < density - epsilon and density + epsilon < 1):
        raise MergeError(f"della needs 0 < density ± epsilon < 1, got density {density}, "
                         f"epsilon {epsilon}")
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).float()  # 0 = smallest magnitude
    span = max(rows.shape[1] - 1, 1)
    return ((density - epsilon) + ranks / span * (2 * epsilon)).reshape(delta.shape)


def sparsify_della(delta: torch.Tensor, density: float, epsilon: float = 0.15,
                   rescale: str | None = "l1", generator: torch.Generator | None = None,
                   l1_scale: float | None = None) -> torch.Tensor:
    """DELLA: drop at random with magnitude-ranked keep probabilities, then rescale
    ("inverse" divides each survivor by its own probability: E[result] = delta)."""
    if density >= 1:
        return delta
    probs = della_keep_probabilities(delta, density, epsilon)
    before = l1_norm(delta) if rescale == "l1" and l1_scale is None else None
    delta.masked_fill_(torch.rand(delta.shape, generator=generator) >= probs, 0.0)
    return rescale_kept(delta, rescale, before, l1_scale, probs)


def rescale_kept(kept: torch.Tensor, rescale: str | None, before: float | None,
             l1_scale: float | None, probability) -> torch.Tensor:
    if rescale == "inverse":
        return kept.div_(probability)
    if rescale == "l1":
        return kept.mul_(l1_scale if l1_scale is not None else l1_ratio(before, kept))
    return kept


def l1_norm(t: torch.Tensor) -> float:
    return float(t.abs().sum())


def l1_ratio(before: float, after: torch.Tensor | float) -> float:
    """mergekit's L1 rescale factor, 1 when either norm is ~0 (an emptied tensor)."""
    after = float(after.abs().sum()) if isinstance(after, torch.Tensor) else after
    return before / after if before >= 1e-7 and after >= 1e-7 else 1.0


# --- combining --------------------------------------------------------------------------


def weighted_sum(deltas: Iterable[torch.Tensor], weights: Sequence[float],
                 base: torch.Tensor | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """base + Σ w_i δ_i in float32, accumulated in order; `deltas` may be a generator (one
    delta in memory at a time). Tiled: the product and the add of a tile stay in cache."""
    scratch = None
    for i, (d, w) in enumerate(zip(deltas, weights, strict=True)):
        flat = d.reshape(-1)
        if out is None:
            out = torch.empty(d.shape, dtype=torch.float32, device=d.device)
        acc, first = out.reshape(-1), base.reshape(-1) if base is not None else None
        direct = i == 0 and acc.dtype == torch.float32  # the first product goes straight in
        if direct:  # two whole-tensor ops: each op call can wait ms for a busy thread
            torch.mul(flat, w, out=acc)
            if first is not None:
                acc.add_(first)  # fl(w δ) + θ: the same sum as θ + fl(w δ)
            continue
        if scratch is None:
            scratch = torch.empty(min(TILE, flat.numel()), dtype=torch.float32, device=d.device)
        for a in range(0, flat.numel(), TILE):
            b = min(a + TILE, flat.numel())
            tmp = torch.mul(flat[a:b], w, out=scratch[:b - a])
            if i > 0:
                acc[a:b].add_(tmp)
            elif first is None:
                acc[a:b].copy_(tmp)
            else:
                torch.add(first[a:b], tmp, out=acc[a:b])
    if out is None:
        raise MergeError("nothing to merge: no deltas given")
    return out


def elect_sign(weighted: Sequence[torch.Tensor], method: str = "total") -> torch.Tensor:
    """±1 per entry: the sign of Σ w_i δ_i ("total") or of Σ sign(w_i δ_i) ("frequency");
    a tie (0) goes to +, as in mergekit and PEFT."""
    votes = weighted[0].clone() if method == "total" else weighted[0].sign()
    for d in weighted[1:]:
        votes.add_(d if method == "total" else d.sign())
    return torch.where(votes >= 0, 1.0, -1.0)


def disjoint_merge(weighted: Sequence[torch.Tensor], weights: Sequence[float],
                   elected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ of the weighted deltas whose sign agrees with `elected`, and Σ of their weights
    (the divisor of the disjoint mean; 1 where nothing agrees)."""
    mixed = torch.zeros_like(elected)
    divisor = torch.zeros_like(elected)
    for d, w in zip(weighted, weights, strict=True):
        agree = d.sign() == elected
        mixed.add_(d * agree)
        divisor.add_(torch.tensor(w, dtype=torch.float32) * agree)
    return mixed, divisor.masked_fill_(divisor == 0, 1.0)


def ties_merge(deltas: Sequence[torch.Tensor], weights: Sequence[float],
               method: str = "total") -> tuple[torch.Tensor, torch.Tensor]:
    """Weight, elect and disjoint-merge k sparsified deltas, tile by tile (the k weighted
    copies of a tile fit in cache). Returns the agreeing sum and its divisor."""
    shape = deltas[0].shape
    flat = [d.reshape(-1) for d in deltas]
    n = flat[0].numel()
    mixed, divisor = torch.empty(n), torch.empty(n)
    for a in range(0, n, TILE):
        b = min(a + TILE, n)
        weighted = [d[a:b] * w for d, w in zip(flat, weights, strict=True)]
        mixed[a:b], divisor[a:b] = disjoint_merge(weighted, weights,
                                                  elect_sign(weighted, method))
    return mixed.view(shape), divisor.view(shape)


def weight_total(weights: Sequence[float]) -> torch.Tensor:
    """Σ w_i as mergekit's float32 divisor, 1 when ~0 (a tensor: dividing by a Python
    float would multiply by its reciprocal and round differently)."""
    total = torch.tensor(list(weights), dtype=torch.float32).sum()
    return total if abs(float(total)) >= 1e-8 else torch.tensor(1.0)


def normalize(mixed: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """The (disjoint) mean: divide the merged delta by its summed weights, in place."""
    return mixed.div_(divisor)


# --- the optional accelerator -----------------------------------------------------------


def load_accelerator(accelerate: str | None):
    """The compiled kernels for `accelerate="numba"`, None for plain torch."""
    if accelerate is None:
        return None
    if accelerate != "numba":
        raise MergeError(f"accelerate must be 'numba' or None, got {accelerate!r}")
    from .. import _kernels  # numba: 0.7 s to import, so only when asked for

    return _kernels
