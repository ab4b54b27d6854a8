"""The validity checks: IPIP-50 scored by likelihood, the signed trait effect, agreement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sst

from pvutils import validity
from pvutils.bfi import ipip_answer_pairs, ipip_items


def test_ipip_scores_are_the_keyed_agree_probability(tiny_chat_model, reference_logprob):
    model, tok = tiny_chat_model
    table = validity.ipip_item_scores(model, tok, ["neuroticism"], system_prompt="Be a person.")
    assert list(table.item) == [it.number for it in ipip_items(["neuroticism"])]
    it = ipip_items(["neuroticism"])[1]  # item 9, reverse-keyed for neuroticism
    p = np.mean([torch.sigmoid(torch.tensor(
        reference_logprob(model, tok, "Be a person.", it.question, agree)
        - reference_logprob(model, tok, "Be a person.", it.question, disagree))).item()
        for agree, disagree in ipip_answer_pairs()])
    row = table.set_index("item").loc[it.number]
    assert row.reverse and row.p_agree == pytest.approx(p, abs=1e-4)
    assert row.keyed == pytest.approx(6 - (1 + 4 * p), abs=1e-3)


def _items(shift_high: float, shift_low: float) -> pd.DataFrame:
    rows = [{"condition": "extraversion_base", "alpha": 0.0, "trait": "extraversion",
             "level": "base", "item": i, "keyed": 3.0 + 0.1 * i} for i in range(10)]
    for cond, shift in [("extraversion_high", shift_high), ("extraversion_low", shift_low)]:
        rows += [{"condition": cond, "alpha": 1.0, "trait": "extraversion",
                  "level": cond.rsplit("_", 1)[1], "item": i, "keyed": 3.0 + 0.1 * i + shift
                  + 0.01 * (-1) ** i} for i in range(10)]
    return pd.DataFrame(rows)


def test_trait_effect_is_signed_toward_the_level():
    effect = validity.trait_effect(_items(+0.5, -0.3)).set_index("condition")
    assert effect.loc["extraversion_high", "signed shift"] == pytest.approx(0.5)
    assert effect.loc["extraversion_low", "signed shift"] == pytest.approx(0.3)  # down = intended
    assert (effect.low > 0).all() and (effect["n items"] == 10).all()
    backwards = validity.trait_effect(_items(-0.5, 0.0)).set_index("condition")
    assert backwards.loc["extraversion_high", "high"] < 0


def test_agreement_is_spearman_of_the_shifts_across_points():
    rng = np.random.default_rng(0)
    n = 12
    points = pd.DataFrame({"condition": [f"c{i}" for i in range(n)], "trait": "extraversion",
                           "level": "high", "alpha": 1.0, "a": rng.normal(size=n)})
    points["b"] = points.a * 2 + 0.1 * rng.normal(size=n)
    points["c"] = rng.normal(size=n)
    base = pd.DataFrame([{"condition": "extraversion_base", "trait": "extraversion",
                          "level": "base", "alpha": 0.0, "a": 1.0, "b": 5.0, "c": 0.0}])
    shifts = validity.shifts_from_base(pd.concat([base, points]), ["a", "b", "c"])
    assert shifts.a.tolist() == pytest.approx((points.a - 1.0).tolist())
    table = validity.agreement(shifts, ["a", "b", "c"]).set_index("measures")
    assert table.loc["a ~ b", "spearman"] == pytest.approx(
        sst.spearmanr(points.a, points.b).statistic)
    assert table.loc["a ~ b", "low"] > 0.5
    assert table.loc["a ~ c", "low"] < table.loc["a ~ c", "spearman"] < table.loc["a ~ c", "high"]


def test_point_scores_put_every_measure_beside_each_point():
    keys = {"condition": "extraversion_high", "alpha": 1.0, "trait": "extraversion",
            "level": "high"}
    contrast = pd.DataFrame([{**keys, "score": 3.2}])
    interviews = pd.DataFrame([{**keys, "judge": "embedding", "score": 3.5},
                               {**keys, "judge": "persona", "score": 4.0}])
    ipip = pd.DataFrame([{**keys, "item": i, "keyed": v} for i, v in [(1, 3.0), (6, 4.0)]])
    row = validity.point_scores(contrast, interviews, ipip).iloc[0]
    assert (row["contrast BFI"], row.embedding, row.persona, row.IPIP) == (3.2, 3.5, 4.0, 3.5)


def test_corroboration_reads_each_interval_against_zero():
    agree = pd.DataFrame([
        {"measures": "contrast BFI ~ IPIP", "spearman": -0.05, "low": -0.56, "high": 0.44,
         "n points": 20},
        {"measures": "contrast BFI ~ embedding", "spearman": 0.43, "low": 0.02, "high": 0.73,
         "n points": 20},
        {"measures": "IPIP ~ embedding", "spearman": -0.9, "low": -0.95, "high": -0.8,
         "n points": 20}])
    text = validity.corroboration(agree)
    assert "IPIP does not corroborate it (the interval holds zero): ρ = -0.05" in text
    assert "embedding corroborates it: ρ = +0.43 [+0.02, +0.73] over 20 points" in text
    assert "contradicts it" in validity.corroboration(agree, "IPIP", ["embedding"])
    assert validity.corroboration(agree, "persona") == ""
    few = pd.DataFrame([{"measures": "contrast BFI ~ IPIP", "spearman": -1.0, "low": np.nan,
                         "high": np.nan, "n points": 2}])
    assert validity.corroboration(few) == (
        "Against the contrast BFI: IPIP cannot be judged: ρ = -1.00 over 2 points, too few "
        "for an interval.")
