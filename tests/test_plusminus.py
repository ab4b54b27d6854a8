"""The ±1 table: points, paired effects with bootstrap intervals, verdicts, the cached sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pvutils import bfi, plusminus
from pvutils.profiles import get_profile


def test_points_measure_the_base_once_per_trait():
    pts = plusminus.plusminus_points({"extraversion_high": ["extraversion"],
                                      "extraversion_low": ["extraversion"],
                                      "shared": ["extraversion", "openness"]})
    base = [p for p in pts if p["vector"] == "base"]
    assert [p["trait"] for p in base] == ["extraversion", "openness"]
    assert all("_uses" not in p for p in base)
    assert len(pts) == 2 + 2 * (1 + 1 + 2)
    assert {p["alpha"] for p in pts if p["vector"] != "base"} == {1.0, -1.0}
    assert all(p["_uses"] == [p["vector"]] for p in pts if p["vector"] != "base")


def test_effects_are_the_reference_formulas():
    rng = np.random.default_rng(1)
    x, y = rng.normal(3.4, 0.3, 40), rng.normal(3.0, 0.3, 40)
    effect, lo, hi = plusminus.paired_effect(x, y, plusminus.statistic("contrast"), 500)
    assert effect == pytest.approx(x.mean() - y.mean())
    assert lo < effect < hi
    s = 1.5  # the judge's default scale
    effect, _, _ = plusminus.paired_effect(x, y, plusminus.statistic("embedding"), 200)
    judged = [3 + 2 * np.tanh(v.mean() / s) for v in (x, y)]
    assert effect == pytest.approx(judged[0] - judged[1])


def test_a_constant_shift_has_a_zero_width_interval():
    y = np.linspace(1, 5, 9)
    assert plusminus.paired_effect(y + 0.25, y, plusminus.statistic("contrast")) == \
        pytest.approx((0.25, 0.25, 0.25))
    with pytest.raises(ValueError, match="paired units"):
        plusminus.paired_effect([1.0], [2.0], plusminus.statistic("contrast"))


def _rows(shifts: dict[tuple[str, float], float], n: int = 12, noise: float = 0.05):
    """Unit values: the base at 3 (± noise), each (vector, α) shifted by its value."""
    rng = np.random.default_rng(0)
    base = 3 + rng.normal(0, noise, n)
    rows = [{"vector": "base", "trait": "extraversion", "alpha": 0.0, "measure": m,
             "unit": str(u), "value": base[u]} for m in plusminus.MEASURES for u in range(n)]
    for (vector, alpha), d in shifts.items():
        rows += [{"vector": vector, "trait": "extraversion", "alpha": alpha, "measure": m,
                  "unit": str(u), "value": base[u] + d + rng.normal(0, noise)}
                 for m in plusminus.MEASURES for u in range(n)]
    return pd.DataFrame(rows)


def test_verdicts_follow_the_level_and_the_sign_of_alpha():
    rows = _rows({("extraversion_high", 1.0): 0.5, ("extraversion_high", -1.0): -0.5,
                  ("extraversion_low", 1.0): 0.5, ("extraversion_low", -1.0): 0.5})
    eff = plusminus.effect_table(rows, 300)
    high = eff[eff.vector == "extraversion_high"]
    assert high.right_way.all() and high.sure.all()
    assert (high.lo < high.effect).all() and (high.effect < high.hi).all()
    low = eff[eff.vector == "extraversion_low"].set_index(["measure", "alpha"])
    assert not low.loc[("contrast", 1.0), "right_way"]  # a low vector that raises the trait
    assert low.loc[("contrast", -1.0), "right_way"]
    table = plusminus.verdict(eff).set_index("vector")["verdict"]
    assert table["extraversion_high"] == "both ways"
    assert table["extraversion_low"].startswith("wrong way: contrast α=+1")
    assert plusminus.summary(eff) == {"vectors": 2, "right both ways": 1, "sure both ways": 1,
                                      "right at α=+1": 1, "right at α=-1": 2}


def test_an_interval_that_spans_zero_is_not_sure():
    rows = _rows({("extraversion_high", 1.0): 0.004, ("extraversion_high", -1.0): -0.5},
                 noise=0.2)
    eff = plusminus.effect_table(rows, 300)
    weak = eff[eff.alpha == 1.0]
    assert (weak.lo < 0).all() and (weak.hi > 0).all() and not weak.sure.any()
    assert eff[eff.alpha == -1.0].sure.all()
    assert plusminus.verdict(eff)["verdict"].iloc[0] != "both ways"
    assert plusminus.summary(eff)["sure both ways"] == 0


def test_the_sweep_stores_one_value_per_unit_and_is_cached(tiny_chat_model, isolated_home,
                                                           char_embedding_judge):
    model, tok = tiny_chat_model
    torch.manual_seed(0)
    vec = {n: 0.05 * torch.randn_like(p) for n, p in model.named_parameters()}
    P = get_profile("smoke", eval_batch_size=64)
    rows = plusminus.plusminus_sweep(model, tok, {"extraversion_high": vec}, P,
                                     judge=char_embedding_judge)
    items = {str(it.number) for it in bfi.items_for(["extraversion"])}
    for _, sub in rows.groupby(["vector", "alpha"]):
        assert set(sub[sub.measure == "contrast"].unit) == items
        assert len(sub[sub.measure == "embedding"]) == len(items) * P.n_samples
    assert set(rows.vector) == {"base", "extraversion_high"}
    contrast = rows[rows.measure == "contrast"]
    assert contrast.value.between(1, 5).all()

    class Refuses:
        def positions(self, *a):
            raise AssertionError("a cached point was recomputed")

    again = plusminus.plusminus_sweep(model, tok, {"extraversion_high": vec}, P, judge=Refuses())
    pd.testing.assert_frame_equal(rows, again)
    eff = plusminus.effect_table(rows, 100)
    assert len(eff) == 4 and set(eff.expected) == {1.0, -1.0}


def test_the_summary_sentence_states_both_counts():
    counts = {"vectors": 10, "right both ways": 5, "sure both ways": 0, "right at α=+1": 6,
              "right at α=-1": 6}
    assert plusminus.summary_sentence(counts) == (
        "5 of 10 vectors move their own trait the way their level calls for at both α on "
        "both measures (6 of 10 at α=+1, 6 of 10 at α=-1); 0 of 10 do so with every "
        "interval clear of zero.")
