"""The dial: monotone fit of a synthetic sweep with a known answer, intervals, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from pvutils.calibrate import DialError, dial_alpha, invert, mergekit_config, monotone_fit
from pvutils.merging import load_config


def linear_sweep(slope=1.0, noise=0.0, n_items=8, seed=0):
    """score(α) = 2 + slope α per item (+ item noise that is the same at every α)."""
    alphas = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    offsets = np.random.default_rng(seed).normal(0, noise, size=n_items)
    return alphas, 2.0 + slope * alphas[:, None] + offsets[None, :]


def test_known_answer_on_a_linear_sweep():
    alphas, mat = linear_sweep()
    dial = dial_alpha(alphas, mat, 3.0, n_boot=200)
    assert dial.alpha == pytest.approx(1.0)
    assert (dial.lo, dial.hi) == pytest.approx((1.0, 1.0))  # identical items: no spread
    assert dial.reachable == pytest.approx((2.0, 4.0)) and dial.increasing
    assert dial.share_reached == 1.0


def test_interval_covers_the_answer_and_widens_with_item_noise():
    alphas, mat = linear_sweep(noise=0.3)
    dial = dial_alpha(alphas, mat, 3.0 + mat.mean() - (2.0 + 1.0), n_boot=500)
    assert dial.alpha == pytest.approx(1.0, abs=1e-9)
    assert dial.lo < 1.0 < dial.hi


def test_decreasing_vector_and_non_monotone_noise():
    alphas = np.array([0.0, 0.5, 1.0, 2.0])
    scores = np.array([3.0, 2.5, 2.75, 2.0])  # 2.5, 2.75 pool to 2.625 at 0.5 and 1
    x, fitted, increasing = monotone_fit(alphas, scores)
    assert not increasing and fitted.tolist() == pytest.approx([3.0, 2.625, 2.625, 2.0])
    assert invert(x, fitted, 2.625) == 0.5  # the first alpha on the plateau
    assert invert(x, fitted, 2.3125) == pytest.approx(1.5)
    assert invert(x, fitted, 3.5) is None


def test_unreachable_target_names_the_range():
    alphas, mat = linear_sweep()
    with pytest.raises(DialError, match=r"outside the range extraversion_high reaches: "
                                        r"2\.000\.\.4\.000 over alpha 0\.\.2"):
        dial_alpha(alphas, mat, 4.5, label="extraversion_high")


def test_mergekit_config_is_a_valid_pvutils_merge_config(tmp_path):
    config = mergekit_config("/models/base", tmp_path / "v.safetensors", 0.73)
    cfg, _ = load_config(yaml.safe_load(yaml.safe_dump(config)))
    assert cfg.merge_method == "task_arithmetic" and cfg.entries[0].parameters.weight == 0.73


def test_resamples_that_miss_the_target_make_the_interval_unbounded():
    """Items 0-3 rise from 2 to 4, items 4-7 stay at 2: target 2.9 is reached by the mean
    (at alpha 0.9) but not by resamples of only flat items, whose alpha lies past the end."""
    alphas = np.array([0.0, 1.0, 2.0])
    rising = 2.0 + alphas[:, None] * np.ones((1, 4))
    mat = np.hstack([rising, np.full((3, 4), 2.0)])
    dial = dial_alpha(alphas, mat, 2.9, n_boot=400)
    assert dial.alpha == pytest.approx(1.8)
    assert dial.hi == np.inf and dial.share_reached < 1.0
