"""Compiled (numba) loops for merging, imported only when a merge needs them.

Element-wise torch steps each make a full pass (and often a new tensor) over every delta;
TIES needs ~15 of them per vector. These kernels fuse the trim threshold (a sample-bracketed
exact selection, with a radix-select histogram as the fallback), trim + sign election +
disjoint merge, and task arithmetic's
subtract-weight-accumulate into one pass each. Arithmetic is plain float32 in mergekit's
order (no fast-math, no fused multiply-add), so results equal mergekit's bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np

threads = numba.get_num_threads


@numba.njit(parallel=True, cache=True)
def bits_histogram(bits, high, out):  # pragma: no cover - compiled
    """Histogram of |x|'s top 16 bits (high < 0) or, inside bin `high`, its low 16 bits."""
    chunks = out.shape[0]
    n = bits.shape[0]
    step = (n + chunks - 1) // chunks
    for c in numba.prange(chunks):
        row = out[c]
        for j in range(c * step, min(n, (c + 1) * step)):
            b = bits[j] & 0x7FFFFFFF
            if high < 0:
                row[b >> 16] += 1
            elif (b >> 16) == high:
                row[b & 0xFFFF] += 1


@numba.njit(parallel=True, cache=True)
def ties(deltas, weights, thresholds, by_count, normalize, out, bad):  # pragma: no cover
    """mergekit's TIES per entry: trim, weight, elect the sign, disjoint mean or sum.

    Tiles of entries with the vector loop outside and the entry loop inside, written with
    selects instead of branches: the inner loops vectorise (the trim mask is ~random, so a
    branch per entry mispredicts often). Adding +0.0 for a trimmed entry leaves the float32
    sums bit-identical to skipping it.
    """
    k, n = deltas.shape
    tile = 4096
    zero, one = np.float32(0.0), np.float32(1.0)
    for t in numba.prange((n + tile - 1) // tile):
        a = t * tile
        m = min(n, a + tile) - a
        votes = np.zeros(m, dtype=np.float32)
        for i in range(k):
            w, th = weights[i], thresholds[i]
            nonfinite = 0
            for j in range(m):
                v = deltas[i, a + j]
                nonfinite += not abs(v) < np.inf
                wv = v * w
                s = np.sign(wv) if by_count else wv
                votes[j] += s if abs(v) >= th else zero
            if nonfinite:
                bad[i] = 1
        mixed = np.zeros(m, dtype=np.float32)
        divisor = np.zeros(m, dtype=np.float32)
        for i in range(k):
            w, th = weights[i], thresholds[i]
            for j in range(m):
                v = deltas[i, a + j]
                wv = v * w
                elected = one if votes[j] >= zero else -one
                agree = abs(v) >= th and wv * elected > zero
                mixed[j] += wv if agree else zero
                divisor[j] += w if agree else zero
        for j in range(m):
            if normalize:
                d = divisor[j] if divisor[j] != zero else one
                out[a + j] = mixed[j] / d
            else:
                out[a + j] = mixed[j]


@numba.njit(parallel=True, cache=True)
def bracket_pass(x, base, subtract, lo, hi, buf, counts):  # pragma: no cover - compiled
    """Optionally x -= base; per chunk, count |x| > hi, copy the |x| in [lo, hi] into the
    chunk's slice of `buf` (branch-free compaction), and count non-finite entries.

    One pass of a sample-bracketed selection: a sample says where the k-th largest |x|
    lies, this pass narrows the search to the few entries inside the bracket.
    """
    chunks = counts.shape[0]
    n = x.shape[0]
    cap = buf.shape[0] // chunks - 1  # the slot after the last is a write sink
    step = (n + chunks - 1) // chunks
    for c in numba.prange(chunks):
        above = 0
        inside = 0
        nonfinite = 0
        start = c * (cap + 1)
        for j in range(c * step, min(n, (c + 1) * step)):
            if subtract:
                x[j] = x[j] - base[j]
            v = abs(x[j])
            nonfinite += not v < np.inf
            above += v > hi
            buf[start + min(inside, cap)] = v
            inside += v >= lo and v <= hi
        counts[c, 0] = above
        counts[c, 1] = inside
        counts[c, 2] = nonfinite


@numba.njit(parallel=True, cache=True)
def weighted_difference(acc, x, base, weight, subtract, first):  # pragma: no cover
    """acc (+)= weight · (x − base): one task-arithmetic term in one pass."""
    for j in numba.prange(acc.shape[0]):
        d = x[j] - base[j] if subtract else x[j]
        if first:
            acc[j] = d * weight
        else:
            acc[j] = acc[j] + d * weight
