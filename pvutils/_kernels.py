"""Compiled (numba) loops for merging, imported only when a merge needs them.

Element-wise torch steps each make a full pass (and often a new tensor) over every delta;
TIES needs ~15 of them per vector. These kernels fuse the trim threshold (an exact radix
select), trim + sign election + disjoint merge, and task arithmetic's
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
def first_pass(x, base, subtract, first_bin, out, low_out):  # pragma: no cover - compiled
    """Optionally x -= base; histogram |x|'s top 16 bits into `out`, and the low 16 bits of
    entries whose top bits fall in the guessed bins first_bin.. into `low_out`."""
    chunks, n_guess = out.shape[0], low_out.shape[1]
    n = x.shape[0]
    bits = x.view(np.int32)
    step = (n + chunks - 1) // chunks
    for c in numba.prange(chunks):
        row, low = out[c], low_out[c]
        for j in range(c * step, min(n, (c + 1) * step)):
            if subtract:
                x[j] = x[j] - base[j]
            b = bits[j] & 0x7FFFFFFF
            top = b >> 16
            row[top] += 1
            if first_bin <= top < first_bin + n_guess:
                low[top - first_bin, b & 0xFFFF] += 1


@numba.njit(parallel=True, cache=True)
def ties(deltas, weights, thresholds, by_count, normalize, out, bad):  # pragma: no cover
    """mergekit's TIES per entry: trim, weight, elect the sign, disjoint mean or sum."""
    k, n = deltas.shape
    one = np.float32(1.0)
    for j in numba.prange(n):
        votes = np.float32(0.0)
        for i in range(k):
            v = deltas[i, j]
            if not abs(v) < np.inf:
                bad[i] = 1
            if abs(v) >= thresholds[i]:
                wv = v * weights[i]
                votes += np.sign(wv) if by_count else wv
        elected = one if votes >= 0 else -one
        mixed = np.float32(0.0)
        divisor = np.float32(0.0)
        for i in range(k):
            v = deltas[i, j]
            if abs(v) >= thresholds[i]:
                wv = v * weights[i]
                if wv * elected > 0:
                    mixed += wv
                    divisor += weights[i]
        if normalize:
            if divisor == 0:
                divisor = one
            mixed = mixed / divisor
        out[j] = mixed


@numba.njit(parallel=True, cache=True)
def weighted_difference(acc, x, base, weight, subtract, first):  # pragma: no cover
    """acc (+)= weight · (x − base): one task-arithmetic term in one pass."""
    for j in numba.prange(acc.shape[0]):
        d = x[j] - base[j] if subtract else x[j]
        if first:
            acc[j] = d * weight
        else:
            acc[j] = acc[j] + d * weight
