"""The optional accelerator of `pvutils.merging` (`accelerate="numba"`): compiled loops.

Only imported when asked for (numba takes ~0.7 s to import). Each kernel computes what a
pure function of `pvutils.merging.functional` computes, and the tests hold them equal:
`bits_histogram` is the histogram pass of `magnitude_threshold`, `ties` is
`sparsify_magnitude` + `ties_merge` + `normalize` fused into one pass over the k deltas.
Arithmetic is plain float32 in mergekit's order (no fast-math, no fused multiply-add).
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
