"""The streaming engine: the functions of `functional.py` over tensor sources, in row blocks.

A tensor of more than `block_elements` entries is merged in row blocks, so a 128256 × 4096
embedding never needs k float32 copies at once. A step that needs the whole tensor (a
magnitude threshold, an L1 norm) gets it from a streaming pass over the blocks first; the
global TIES trim of the authors' code is the same pass over every tensor of a vector.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..vectors import MergeError, TensorSource, check_finite
from . import functional as F
from .options import MergeParams, check_weights
from .registry import SPARSIFICATIONS, Context


class Input:
    """One term of a merge: a vector, or a model minus the (shared) base."""

    def __init__(self, source: TensorSource, base: TensorSource | None = None):
        self.source, self.base = source, base
        self.label = source.label if base is None else f"{source.label} − {base.label}"

    def read(self, name: str, span: tuple[int, int], out: torch.Tensor,
             start: int | None = None) -> torch.Tensor:
        """The float32 delta block, or its flat entries from `start` on (a tile), read
        into the flat buffer `out` (the base's block is read once, `cli.LastBlock`)."""
        if start is None:
            self.source.read_into(name, span, out)
        else:
            self.source.read_tile(name, span, start, out)
        if self.base is not None:
            base = self.base.block(name, span).reshape(-1)
            out.sub_(base if start is None else base[start:start + out.numel()])
        return out


class Engine:
    """Merges named tensors of k inputs; `merge(name)` yields (first row, end row, delta)."""

    def __init__(self, inputs: Sequence[Input], weights: Sequence[float], params: MergeParams):
        self.inputs, self.params = list(inputs), params
        self.weights = check_weights(weights, len(self.inputs))
        k = len(self.inputs)
        self.density = params.per_vector("density", k)
        self.gamma = params.per_vector("gamma", k)
        self.epsilon = params.per_vector("epsilon", k)
        self._stats: dict = {}
        self._pool: torch.Tensor | None = None

    # --- blocks ------------------------------------------------------------------------

    def spans(self, name: str) -> list[tuple[int, int]]:
        shape = self.inputs[0].source.shape(name)
        limit = self.params.block_elements
        if len(shape) < 2 or math.prod(shape) <= limit:
            return [(0, -1)]  # the whole tensor
        per = max(1, limit // math.prod(shape[1:]))
        return [(a, min(a + per, shape[0])) for a in range(0, shape[0], per)]

    def block_shape(self, name: str, span: tuple[int, int]) -> tuple[int, ...]:
        shape = self.inputs[0].source.shape(name)
        return shape if span[1] < 0 else (min(span[1], shape[0]) - span[0], *shape[1:])

    def buffers(self, n: int) -> torch.Tensor:
        """k reused float32 rows of n entries (no page faults after the first tensor)."""
        k = len(self.inputs)
        if self._pool is None or self._pool.numel() < k * n:
            self._pool = torch.empty(k * n)
        return self._pool[:k * n].view(k, n)

    def raw(self, i: int, name: str, span: tuple[int, int], out: torch.Tensor | None = None,
            check: bool = True) -> torch.Tensor:
        if out is None:
            out = torch.empty(math.prod(self.block_shape(name, span)))
        delta = self.inputs[i].read(name, span, out)
        if check:
            check_finite(delta, name, self.inputs[i].label)
        return delta

    def generator(self, name: str, block: int, i: int) -> torch.Generator:
        """A seed per (run, tensor, block, vector): masks do not depend on read order."""
        seed = self.params.seed
        for salt in (name, block, i):
            seed = (seed * 1_000_003 + zlib.crc32(str(salt).encode())) % (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    # --- sparsification -----------------------------------------------------------------

    def sparsify(self, i: int, name: str, block: int, d: torch.Tensor,
                 whole: bool) -> torch.Tensor:
        """The method's sparsification of one block (then dare_ties' optional trim)."""
        d = self.primary(i, name, block, d, whole)
        return self.trim(i, name, d, whole) if self.params.method == "dare_ties" else d

    def primary(self, i: int, name: str, block: int, d: torch.Tensor,
                whole: bool) -> torch.Tensor:
        """The registry's sparsification of vector i's block (the TIES trim for ties)."""
        kind = self.params.sparsification
        if self.params.spec.sparsification == "magnitude":
            return self.trim(i, name, d, whole)  # TIES: per tensor or the global threshold
        if kind is None or self.density[i] >= 1:
            return d
        sparsification = SPARSIFICATIONS[kind]
        context = self.context(i, name, block, sparsification)
        if not whole:
            context.l1_scale = self.stat(i, name, "l1")
        if sparsification.statistic is not None and not whole:  # whole: the function's own
            context.stat = self.stat(i, name, "stat")
        return sparsification.apply(d, self.density[i], context)

    def context(self, i: int, name: str, block: int, sparsification) -> Context:
        p = self.params
        return Context(gamma=self.gamma[i], epsilon=self.epsilon[i], rescale=p.rescale_mode,
                       generator=self.generator(name, block, i) if sparsification.random
                       else None, accelerate=p.accelerate, label=self.where(i, name))

    def trims(self, i: int) -> float:
        """What the TIES magnitude trim keeps of vector i (1: no trim)."""
        return self.density[i] if self.params.method == "ties" else self.params.trim_density

    def trim(self, i: int, name: str, d: torch.Tensor, whole: bool) -> torch.Tensor:
        """The TIES trim: per tensor, or against the vector's global threshold."""
        if self.params.thresholds is None and self.trims(i) >= 1:
            return d
        return F.sparsify_magnitude(d, threshold=self.threshold(i, name, d, whole))

    def threshold(self, i: int, name: str, d: torch.Tensor, whole: bool) -> float:
        """The trim's magnitude threshold (0 = keep all) for the block `d` of vector i."""
        if self.params.thresholds is not None:
            return float(self.params.thresholds[i])
        if self.trims(i) >= 1:
            return 0.0
        if whole:
            return F.magnitude_threshold(d, F.keep_count(self.trims(i), d.numel()),
                                         self.params.accelerate, self.where(i, name))
        return self.stat(i, name, "trim")

    def where(self, i: int, name: str) -> str:
        return f"{self.inputs[i].label}: tensor {name!r}"

    def stat(self, i: int, name: str, what: str):
        """A whole-tensor statistic of a tensor merged in row blocks (streamed, cached)."""
        key = (what, i, name)
        if key not in self._stats:
            self._stats[key] = self._compute_stat(i, name, what)
        return self._stats[key]

    def _compute_stat(self, i: int, name: str, what: str):
        spans, density = self.spans(name), self.density[i]
        numel = math.prod(self.inputs[0].source.shape(name))
        raw = lambda: (self.raw(i, name, s) for s in spans)  # noqa: E731
        if what == "trim":  # the TIES trim: of the deltas, or of dare_ties' dropped deltas
            blocks = raw if self.params.method == "ties" else lambda: (  # noqa: E731
                self.primary(i, name, b, self.raw(i, name, s), False)
                for b, s in enumerate(spans))
            return F.magnitude_threshold(blocks, F.keep_count(self.trims(i), numel),
                                         self.params.accelerate, self.where(i, name))
        sparsification = SPARSIFICATIONS[self.params.sparsification]
        context = self.context(i, name, 0, sparsification)
        if what == "stat":
            return sparsification.statistic(raw, numel, density, context)
        return self._l1_scale(i, name, spans, sparsification)

    def _l1_scale(self, i: int, name: str, spans, sparsification) -> float | None:
        """mergekit's L1 rescale over a tensor in blocks: Σ|δ| / Σ|sparsify(δ)|."""
        if self.params.rescale_mode != "l1":
            return None
        before = after = 0.0
        for block, span in enumerate(spans):
            d = self.raw(i, name, span)
            before += F.l1_norm(d)
            context = self.context(i, name, block, sparsification)
            context.rescale = None
            if sparsification.statistic is not None:
                context.stat = self.stat(i, name, "stat")
            after += F.l1_norm(sparsification.apply(d, self.density[i], context))
        return F.l1_ratio(before, after)

    # --- merging ------------------------------------------------------------------------

    def merge(self, name: str) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (first row, end row, merged float32 delta) per row block of `name`."""
        self._stats.clear()
        spans = self.spans(name)
        for block, span in enumerate(spans):
            shape = self.block_shape(name, span)
            mixed = self.merge_block(name, block, span, len(spans) == 1, math.prod(shape))
            if self.params.lambda_ != 1:
                mixed.mul_(self.params.lambda_)
            yield span[0], span[1], mixed.view(shape)
        self._stats.clear()

    def merge_block(self, name: str, block: int, span, whole: bool, n: int) -> torch.Tensor:
        p = self.params
        if p.sparsification is None and not p.spec.consensus:
            return self.task_arithmetic(name, span, n)
        bufs = self.buffers(n)
        if p.accelerate is not None and p.spec.name == "ties":
            return self.compiled_ties(name, span, whole, bufs)
        check = not (p.spec.name == "ties" and whole and p.thresholds is None)
        deltas = [self.sparsify(i, name, block, self.raw(i, name, span, bufs[i], check), whole)
                  for i in range(len(self.inputs))]
        if p.spec.consensus:
            mixed, divisor = F.ties_merge(deltas, self.weights, p.majority_sign_method)
        else:
            mixed, divisor = F.weighted_sum(deltas, self.weights), F.weight_total(self.weights)
        return F.normalize(mixed, divisor) if p.do_normalize else mixed

    def task_arithmetic(self, name: str, span, n: int) -> torch.Tensor:
        """Σ w_i δ_i tile by tile where every source reads a tile cheaply (each tile of the
        sum stays in cache while the k deltas' tiles are read into it), else one delta in
        memory at a time. NaN / Inf in any input reach the sum, so one check of the result
        replaces k checks of the inputs."""
        mixed = torch.empty(n)
        if all(inp.source.tiles_cheaply(name) for inp in self.inputs):
            tile = self.buffers(min(F.TILE, n))[0]
            for a in range(0, n, F.TILE):
                part = tile[:min(F.TILE, n - a)]
                deltas = (inp.read(name, span, part, a) for inp in self.inputs)
                F.weighted_sum(deltas, self.weights, out=mixed[a:a + part.numel()])
        else:
            buf = self.buffers(n)[0]
            deltas = (self.raw(i, name, span, buf, check=False) for i in range(len(self.inputs)))
            F.weighted_sum(deltas, self.weights, out=mixed)
        if not math.isfinite(float(mixed.sum())):
            for i in range(len(self.inputs)):
                self.raw(i, name, span)  # raises, naming the source
        if self.params.do_normalize:
            F.normalize(mixed, F.weight_total(self.weights))
        return mixed

    def compiled_ties(self, name: str, span, whole: bool, bufs: torch.Tensor) -> torch.Tensor:
        """TIES with the compiled kernel: trim, weight, elect, disjoint merge in one pass."""
        thresholds = np.zeros(len(self.inputs), dtype=np.float32)
        for i in range(len(self.inputs)):
            d = self.raw(i, name, span, bufs[i], check=not whole)
            thresholds[i] = self.threshold(i, name, d, whole)
        out = torch.empty(bufs.shape[1])
        bad = np.zeros(len(self.inputs), dtype=np.int8)
        kernels = F.load_accelerator(self.params.accelerate)
        kernels.ties(bufs.numpy(), np.asarray(self.weights, dtype=np.float32), thresholds,
                     self.params.majority_sign_method == "frequency", self.params.do_normalize,
                     out.numpy(), bad)
        for i in np.flatnonzero(bad):
            raise MergeError(f"{self.where(i, name)} contains NaN or Inf")
        return out

    # --- the authors' global trim ---------------------------------------------------------

    def global_thresholds(self, names: Sequence[str], densities: Sequence[float]) -> list[float]:
        """Per vector, one magnitude threshold over all `names` keeping `densities[i]` (for
        dare_ties over the dropped deltas, same seeds as the merge)."""
        out = []
        for i, fraction in enumerate(densities):
            total = sum(math.prod(self.inputs[i].source.shape(n)) for n in names)
            out.append(F.magnitude_threshold(lambda i=i: self._dropped_blocks(i, names),
                                             F.keep_count(fraction, total),
                                             self.params.accelerate, self.inputs[i].label))
        return out

    def _dropped_blocks(self, i: int, names: Sequence[str]) -> Iterator[torch.Tensor]:
        for name in names:
            self._stats.clear()
            spans = self.spans(name)
            for block, span in enumerate(spans):
                d = self.raw(i, name, span)
                if self.params.method == "dare_ties":
                    d = self.primary(i, name, block, d, len(spans) == 1)
                yield d
        self._stats.clear()
