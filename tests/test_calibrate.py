"""The dial: monotone fit of a synthetic sweep with a known answer, intervals, refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from pvutils import get_profile
from pvutils.bfi import ITEMS_BY_NUMBER
from pvutils.calibrate import (
    DialError,
    check_dials,
    dial_alpha,
    dial_table,
    invert,
    mergekit_config,
    monotone_fit,
)
from pvutils.evaluation import contrast_scores
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


def dose_rows(condition: str, alphas, scores) -> pd.DataFrame:
    """A vector dose table whose trait items all answer `score` (keyed) at each alpha."""
    trait = condition.rsplit("_", 1)[0]
    rows = []
    for a, score in zip(alphas, scores, strict=True):
        items = {str(n): (6.0 - score if it.reverse else score) if it.dimension == trait else 3.0
                 for n, it in ITEMS_BY_NUMBER.items()}
        rows.append({"method": "vector", "condition": condition, "strength": a, "items": items})
    return pd.DataFrame(rows)


def test_dial_table_known_answers_and_default_targets():
    dose = pd.concat([dose_rows("extraversion_high", [0.0, 1.0, 2.0], [2.0, 3.0, 4.0]),
                      dose_rows("agreeableness_low", [0.0, 2.0], [3.0, 2.0]),
                      dose_rows("agreeableness_low", [1.0], [3.0]).assign(method="P2")])
    table = dial_table(dose, n_boot=50).set_index(["condition", "target"])
    # default: three targets evenly inside each reachable range, the ends left out
    assert table.loc["extraversion_high"].index.tolist() == [2.5, 3.0, 3.5]
    assert table.loc["extraversion_high", "alpha"].tolist() == pytest.approx([0.5, 1.0, 1.5])
    assert table.loc["agreeableness_low"].index.tolist() == [2.75, 2.5, 2.25]
    assert table.loc["agreeableness_low", "alpha"].tolist() == pytest.approx([0.5, 1.0, 1.5])
    assert table["note"].isna().all()
    given = dial_table(dose, targets=[3.0, 9.0], n_boot=50).set_index(["condition", "target"])
    assert given.loc[("extraversion_high", 3.0), "alpha"] == pytest.approx(1.0)
    assert np.isnan(given.loc[("extraversion_high", 9.0), "alpha"])
    assert "outside the range extraversion_high reaches" in given.loc[("extraversion_high", 9.0),
                                                                      "note"]


def test_dial_check_of_a_zero_vector_measures_the_base(tiny_chat_model, isolated_home):
    model, tok = tiny_chat_model
    zero = {n: p.detach().new_zeros(p.shape) for n, p in model.named_parameters()}
    smoke = get_profile("smoke")
    table = pd.DataFrame([{"condition": "extraversion_high", "target": 3.0, "alpha": 1.5},
                          {"condition": "extraversion_high", "target": 9.0, "alpha": np.nan}])
    checked = check_dials(model, tok, {"extraversion_high": zero}, table, smoke)
    base = contrast_scores(model, tok, ["extraversion"], n_pairs=smoke.contrast_pairs)
    assert checked["measured"][0] == pytest.approx(base["extraversion"], abs=1e-6)
    assert np.isnan(checked["measured"][1])  # an unreachable target is not re-scored
    again = check_dials(None, None, {"extraversion_high": zero}, table, smoke)  # cached
    assert again.equals(checked)


def test_an_interval_past_the_swept_range_is_unbounded_and_says_so():
    """At α = 1 the extraversion items split 2 / 4 (mean 3): a target just under 3 is missed
    by every resample whose items fall lower, so α's interval runs past the swept range."""
    dose = dose_rows("extraversion_high", [0.0, 1.0], [2.0, 3.0])
    mine = [n for n, it in ITEMS_BY_NUMBER.items() if it.dimension == "extraversion"]
    items = dict(dose.iloc[1]["items"])
    for k, n in enumerate(mine):
        keyed = 2.0 if k % 2 else 4.0
        items[str(n)] = 6.0 - keyed if ITEMS_BY_NUMBER[n].reverse else keyed
    dose.at[1, "items"] = items
    row = dial_table(dose, targets=[2.99], n_boot=200).iloc[0]
    assert row.alpha == pytest.approx(0.99, abs=0.02)
    assert np.isinf(row.hi) and 0.2 < row.resamples_reaching < 0.8
    assert row.note.startswith("interval unbounded:")
