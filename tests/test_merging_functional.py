"""The pure per-tensor merge functions, the registry's newer methods and the accelerator."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pvutils.merging import MergeError, functional, magnitude_threshold, merge_deltas
from pvutils.merging.registry import METHODS, SPARSIFICATIONS


def mergekit_magnitude_outliers(delta: torch.Tensor, density: float, gamma: float):
    """mergekit 0.1.5 `sparsify.magnitude_outliers`, written out: sort ascending, drop the
    top `gamma` (shrunk to fit), keep the next `density` fraction."""
    if density >= 1:
        return delta.clone()
    n = delta.numel()
    target, top = int(density * n), int(gamma * n)
    bottom = max(0, n - target - top)
    order = delta.abs().reshape(-1).double().argsort()
    mask = torch.zeros(n, dtype=delta.dtype)
    mask[order[bottom:bottom + target]] = 1
    return delta * mask.view_as(delta)


def distinct(seed: int, shape) -> torch.Tensor:
    """Random entries with distinct magnitudes (no ties, so every rule has one answer)."""
    gen = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    magnitudes = (torch.randperm(n, generator=gen).double() + 1) / n
    signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    return (magnitudes * signs).float().view(shape)


# --- the one threshold ------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.sampled_from([1, 7, 1000, 70_001]),
       frac=st.floats(1e-5, 1.0), rounded=st.booleans(), pieces=st.integers(1, 4))
def test_magnitude_threshold_is_the_sorted_kth_value(seed, n, frac, rounded, pieces):
    """Exact with ties and zeros, the same over a tensor and over its pieces streamed."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(n, generator=gen)
    if rounded:
        values = (values * 4).round() / 4  # many equal magnitudes, many zeros
    keep = max(1, int(frac * n))
    want = float(values.abs().sort(descending=True).values[keep - 1])
    assert magnitude_threshold(values, keep) == want
    chunks = list(values.chunk(pieces))
    assert magnitude_threshold(lambda: chunks, keep) == want


def test_magnitude_threshold_refuses_nan_and_bad_counts():
    with pytest.raises(MergeError, match="tensor 'w' contains NaN or Inf"):
        magnitude_threshold(torch.tensor([1.0, math.inf]), 1, label="tensor 'w'")
    with pytest.raises(MergeError, match="cannot keep 3 of 2"):
        magnitude_threshold(torch.ones(2), 3)


def test_the_accelerator_equals_the_pure_functions():
    """accelerate="numba": the same threshold and the same TIES merge, bit for bit."""
    gen = torch.Generator().manual_seed(1)
    big = (torch.randn(600_000, generator=gen) * 8).round() / 8  # ties at every threshold
    for keep in (1, 1000, 300_000, 600_000):
        assert magnitude_threshold(big, keep, "numba") == magnitude_threshold(big, keep)
    deltas = [torch.randn(700, 500, generator=gen) for _ in range(4)]
    weights = [0.5, -1.0, 0.8, 0.3]
    for params in ({"density": 0.2}, {"density": 0.5, "majority_sign_method": "frequency"},
                   {"density": (0.3, 1.0, 0.6, 0.9), "normalize": False, "lambda_": 0.6}):
        pure = merge_deltas(deltas, weights, "ties", **params)
        fast = merge_deltas(deltas, weights, "ties", accelerate="numba", **params)
        assert torch.equal(pure, fast), params


# --- sparsification ---------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), density=st.floats(0.01, 1.0), gamma=st.floats(0.0, 0.3),
       shape=st.sampled_from([(1,), (17,), (9, 13)]))
def test_breadcrumbs_equals_mergekit_magnitude_outliers(seed, density, gamma, shape):
    delta = distinct(seed, shape)
    want = mergekit_magnitude_outliers(delta, density, gamma)
    assert torch.equal(functional.sparsify_outliers(delta.clone(), density, gamma), want)


@pytest.mark.parametrize("density, gamma", [(0.2, 0.05), (0.5, 0.01), (0.9, 0.05)])
def test_breadcrumbs_splits_ties_at_the_band_edges_as_mergekit(density, gamma):
    """Equal magnitudes across an edge of the band: mergekit keeps positions
    [n_bot, n − n_top) of torch's (unstable) ascending sort of |δ|, and so do we."""
    gen = torch.Generator().manual_seed(5)
    delta = (torch.randn(300, 70, generator=gen) * 8).round() / 8  # few distinct values
    n = delta.numel()
    target, top = int(density * n), int(gamma * n)
    bottom = max(0, n - target - top)
    order = torch.sort(delta.abs().reshape(-1), descending=False).indices
    mask = torch.zeros(n)
    mask[order[bottom:bottom + target]] = 1
    want = delta * mask.view_as(delta)
    low = float(delta.abs().reshape(-1)[order[bottom]])
    assert int((delta.abs() == low).sum()) > 1  # the edge is tied
    assert torch.equal(functional.sparsify_outliers(delta.clone(), density, gamma), want)
    merged = merge_deltas([delta], [1.0], "breadcrumbs", density=density, gamma=gamma)
    assert torch.equal(merged, want)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), density=st.floats(0.05, 0.95), gamma=st.floats(0.0, 0.1),
       consensus=st.booleans())
def test_breadcrumbs_merge_is_the_weighted_sum_of_bands(seed, density, gamma, consensus):
    deltas = [distinct(seed + i, (11, 9)) for i in range(3)]
    weights = [0.7, -0.4, 1.2]
    kept = [mergekit_magnitude_outliers(d, density, gamma).double() * w
            for d, w in zip(deltas, weights)]
    if consensus:  # breadcrumbs_ties: TIES's sign election over the bands, no normalizing
        elected = torch.where(sum(kept) >= 0, 1.0, -1.0).double()
        want = sum(k * (k.sign() == elected) for k in kept)
    else:
        want = sum(kept)
    method = "breadcrumbs_ties" if consensus else "breadcrumbs"
    got = merge_deltas(deltas, weights, method, density=density, gamma=gamma)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)


def test_della_keeps_by_magnitude_rank_and_rescales_to_the_input_in_expectation():
    """4000 rows with the same 20 magnitudes: column j is kept with probability
    density − ε + 2ε · rank_j / 19; with 1/p rescaling each column's mean is the input."""
    density, eps, rows = 0.5, 0.2, 4000
    row = distinct(3, (20,))
    delta = row.repeat(rows, 1)
    ranks = row.abs().argsort().argsort().double()
    p = density - eps + 2 * eps * ranks / 19
    gen = torch.Generator().manual_seed(0)
    out = functional.sparsify_della(delta.clone(), density, eps, "inverse", gen)
    kept = (out != 0).double().mean(0)
    assert (kept - p).abs().max() < 4 * math.sqrt(0.25 / rows)  # 4 sd of a frequency
    mean = out.double().mean(0)
    assert ((mean - row.double()).abs() / row.double().abs()).max() < 4 * math.sqrt(
        (1 - p.min()) / p.min() / rows)
    l1 = functional.sparsify_della(delta.clone(), density, eps, "l1", gen)
    assert float(l1.abs().sum()) == pytest.approx(float(delta.abs().sum()), rel=1e-5)
    with pytest.raises(MergeError, match="density ± epsilon"):
        functional.sparsify_della(delta.clone(), 0.9, 0.2)


@pytest.mark.parametrize("method, params", [
    ("ties", {}), ("breadcrumbs", {"gamma": 0.05}), ("breadcrumbs_ties", {}),
    ("dare_linear", {"mask_strategy": "magnitude", "rescale": True}),
    ("dare_ties", {"mask_strategy": "magnitude", "trim_density": 0.5}),
])
def test_row_blocks_equal_whole_tensors(method, params):
    """A tensor merged in row blocks (its whole-tensor statistics streamed) equals the
    tensor merged whole."""
    deltas = [distinct(i, (64, 50)) for i in range(3)]
    weights = [0.7, -0.4, 1.2]
    whole = merge_deltas(deltas, weights, method, density=0.4, **params)
    blocked = merge_deltas(deltas, weights, method, density=0.4, block_elements=500, **params)
    torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["dare_linear", "della_linear"])
def test_row_blocks_keep_the_l1_rescale_over_the_whole_tensor(method):
    """Random masks are drawn per block, but `rescale: true` restores the whole tensor's
    L1 norm, as mergekit does on the tensor at once."""
    delta = distinct(0, (100, 50))
    got = merge_deltas([delta], [1.0], method, density=0.3, block_elements=500)
    assert float(got.abs().sum()) == pytest.approx(float(delta.abs().sum()), rel=1e-5)
    assert float((got != 0).float().mean()) == pytest.approx(0.3, abs=0.02)


def test_every_registered_sparsification_has_a_function():
    used = {m.sparsification for m in METHODS.values()} - {None}
    assert used <= set(SPARSIFICATIONS)


# --- combining --------------------------------------------------------------------------


def test_weighted_sum_rounds_each_product_then_adds():
    """mergekit's order, not a fused multiply-add: fl(fl(w0 d0) + fl(w1 d1))."""
    gen = torch.Generator().manual_seed(2)
    d0, d1, base = (torch.randn(3000, generator=gen) for _ in range(3))
    got = functional.weighted_sum([d0, d1], [0.3, -0.7], base=base)
    assert torch.equal(got, (base + d0 * 0.3) + d1 * -0.7)
    assert torch.equal(functional.weighted_sum(iter([d0, d1]), [0.3, -0.7]),
                       d0 * 0.3 + d1 * -0.7)


def test_elect_sign_and_disjoint_merge_known_answers():
    weighted = [torch.tensor([1.0, 2.0, 0.0]), torch.tensor([-3.0, 1.0, 0.0])]
    assert functional.elect_sign(weighted, "total").tolist() == [-1.0, 1.0, 1.0]
    assert functional.elect_sign(weighted, "frequency").tolist() == [1.0, 1.0, 1.0]
    mixed, divisor = functional.disjoint_merge(weighted, [1.0, 3.0],
                                               torch.tensor([-1.0, 1.0, 1.0]))
    assert mixed.tolist() == [-3.0, 3.0, 0.0]
    assert divisor.tolist() == [3.0, 4.0, 1.0]  # nothing agrees: 1, not 0
