"""Dose-response, resolution, leakage and Pareto measures: known answers on synthetic sweeps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pvutils import get_profile
from pvutils.bench import CPU_BENCH, SMOKE_BENCH, Bench, bench_plans, bench_settings
from pvutils.bfi import ITEMS_BY_NUMBER
from pvutils.evaluation import REAL_PERSON_PROMPT
from pvutils.harness import (
    capability_table,
    dose_measure,
    dose_plan,
    dose_summary,
    dose_sweep,
    leakage,
    monotonicity,
    p2_intensity_prompt,
    pareto_front,
    resolution,
    split_off,
    vector_dial,
)


def raw_for(keyed: dict[str, float]) -> dict[str, float]:
    """Item answers (raw 1-5) giving each trait the keyed score asked for."""
    out = {}
    for n, it in ITEMS_BY_NUMBER.items():
        k = keyed.get(it.dimension, 3.0)
        out[str(n)] = 6.0 - k if it.reverse else k
    return out


def test_strictly_rising_items_have_rho_one_with_a_degenerate_interval():
    mat = np.array([[1.0, 2.0, 1.5], [2.0, 3.0, 2.5], [3.0, 4.0, 3.5], [4.0, 5.0, 4.5]])
    m = monotonicity([0.0, 0.5, 1.0, 2.0], mat, n_boot=200)
    assert m == {"rho": 1.0, "rho_lo": 1.0, "rho_hi": 1.0}
    assert monotonicity([0, 1, 2, 3], mat[::-1], n_boot=200)["rho"] == -1.0


def test_flat_response_has_rho_zero_and_one_level():
    mat = np.full((4, 8), 3.0)
    assert monotonicity([0, 1, 2, 3], mat, n_boot=50)["rho"] == 0.0
    assert resolution([0, 1, 2, 3], mat, n_boot=50) == 1


def test_resolution_counts_separated_levels_only():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, size=(1, 10))
    # levels 1, 1.005 (indistinguishable), 2, 3 -> three distinguishable levels
    mat = np.array([[1.0], [1.005], [2.0], [3.0]]) + noise
    assert resolution([0.0, 0.1, 0.5, 1.0], mat, n_boot=300) == 3
    # order of rows is taken from the strengths, not the row order
    assert resolution([1.0, 0.5, 0.1, 0.0], mat[::-1], n_boot=300) == 3


def synthetic_table(method="vector"):
    rows = []
    for condition, trait, sign in (("extraversion_high", "extraversion", 1),
                                   ("agreeableness_low", "agreeableness", -1)):
        for s in (0.0, 1.0, 2.0):
            keyed = {trait: 3.0 + sign * 0.5 * s}
            if trait == "extraversion":
                keyed["neuroticism"] = 3.0 - 0.25 * s  # leaks into neuroticism
            rows.append({"method": method, "condition": condition, "strength": s,
                         "items": raw_for(keyed)})
    return pd.DataFrame(rows)


def test_leakage_matrix_recovers_the_planted_effects():
    table = leakage(synthetic_table(), n_boot=100).set_index(["condition", "trait"])
    assert table.loc[("extraversion_high", "extraversion"), "effect"] == pytest.approx(1.0)
    assert table.loc[("extraversion_high", "neuroticism"), "effect"] == pytest.approx(-0.5)
    assert table.loc[("agreeableness_low", "agreeableness"), "effect"] == pytest.approx(-1.0)
    zero = table.loc[("agreeableness_low", "openness")]
    assert (zero["effect"], zero["lo"], zero["hi"]) == pytest.approx((0.0, 0.0, 0.0))
    assert table["intended"].sum() == 2
    at_one = leakage(synthetic_table(), strength=1.0, n_boot=50).set_index(["condition", "trait"])
    assert at_one.loc[("extraversion_high", "extraversion"), "effect"] == pytest.approx(0.5)


def test_dose_summary_signs_the_shift_toward_the_intended_pole():
    summary = dose_summary(synthetic_table(), n_boot=100).set_index("condition")
    assert summary.loc["extraversion_high", "shift"] == pytest.approx(1.0)
    assert summary.loc["agreeableness_low", "shift"] == pytest.approx(1.0)
    assert summary.loc["agreeableness_low", "rho"] == 1.0
    assert summary["resolution"].tolist() == [3, 3]


def test_pareto_front_known_points():
    gain = [1.0, 2.0, 2.0, 0.5, 3.0]
    cost = [0.1, 0.5, 0.3, 0.2, 1.0]
    # (2.0, 0.5) is beaten by (2.0, 0.3); (0.5, 0.2) by (1.0, 0.1)
    assert pareto_front(gain, cost).tolist() == [True, False, True, False, True]


def test_p2_intensity_prompts():
    assert p2_intensity_prompt("extraversion", "high", 0) == REAL_PERSON_PROMPT
    very = p2_intensity_prompt("extraversion", "low", 3)
    assert very.count("very ") == 5 and "introverted" in very and "extraverted" not in very
    assert "very" not in p2_intensity_prompt("extraversion", "high", 2)
    with pytest.raises(ValueError, match="intensity must be 0..3"):
        p2_intensity_prompt("extraversion", "high", 4)


def test_capability_table_is_relative_to_the_dial_off():
    dose = pd.DataFrame([
        {"method": "vector", "condition": "extraversion_low", "strength": s, "extraversion": e}
        for s, e in ((0.0, 3.0), (1.0, 2.5), (2.0, 2.0))])
    capab = pd.DataFrame([
        {"method": "vector", "condition": "extraversion_low", "strength": s, "perplexity": p,
         "factual": f, "n_questions": 4} for s, p, f in ((0.0, 10.0, 1.0), (1.0, 12.0, 0.75),
                                                         (2.0, 11.0, 0.5))])
    table = capability_table(dose, capab)
    assert table["shift"].tolist() == [0.0, 0.5, 1.0]  # toward "low": a falling score
    assert table["perplexity_ratio"].tolist() == [1.0, 1.2, 1.1]
    assert table["factual_lost"].tolist() == [0.0, 0.25, 0.5]
    assert table["front"].tolist() == [True, False, True]  # (0.5, 1.2) is beaten by (1, 1.1)


def test_the_front_is_per_condition_and_leaves_prompt_dials_out():
    """Shifts of different traits are not compared, and P2 (perplexity read without its
    prompt: ratio 1 by construction) is never on the front, however far it shifts."""
    rows = [("vector", "extraversion_high", 0.0, 3.0, 10.0), ("vector", "extraversion_high",
            1.0, 3.5, 10.5), ("vector", "openness_high", 0.0, 3.0, 10.0),
            ("vector", "openness_high", 1.0, 3.2, 11.0), ("P2", "extraversion_high", 0.0, 3.0,
            10.0), ("P2", "extraversion_high", 3.0, 4.5, 10.0)]
    dose = pd.DataFrame([{"method": m, "condition": c, "strength": s,
                          c.split("_")[0]: score} for m, c, s, score, _ in rows])
    capab = pd.DataFrame([{"method": m, "condition": c, "strength": s, "perplexity": p,
                           "factual": 1.0} for m, c, s, _, p in rows])
    table = capability_table(dose.fillna(3.0), capab).set_index(["method", "condition",
                                                                   "strength"])
    # pooled, P2 at 3 (shift 1.5, ×1.0) would beat every other point, and extraversion's
    # α 1 (0.5, ×1.05) openness's (0.2, ×1.1); per condition without P2, all four stand
    assert pareto_front(table["shift"], table["perplexity_ratio"]).sum() == 1
    assert table["front"].sum() == 4
    assert not table.loc[("P2", "extraversion_high"), "front"].any()
    assert table.loc[("P2", "extraversion_high", 3.0), "perplexity_ratio"] == 1.0


def test_bench_settings_smoke_defaults_and_overrides():
    assert bench_settings("smoke") == Bench(**SMOKE_BENCH)
    assert bench_settings("cpu") == Bench(**CPU_BENCH)
    assert bench_settings("paper") == Bench()
    mine = bench_settings("smoke", ranks=[16], n_questions=None)
    assert mine.ranks == (16,) and mine.n_questions == SMOKE_BENCH["n_questions"]
    with pytest.raises(ValueError, match="unknown chapter-06 setting"):
        bench_settings("cpu", rank=4)


def test_bench_plans_start_every_dial_off_and_share_the_vector_points():
    smoke = get_profile("smoke")
    plans = bench_plans(smoke, bench_settings("smoke"), ["extraversion_high"], layer=3)
    assert set(plans) == {f"{k}-{d}" for k in ("dose", "capability")
                          for d in ("vector", "steering", "NPTI", "P2")}
    for stage, points, _ in plans.values():
        assert points[0]["strength"] == 0.0 and stage.name.split("-")[1] == points[0]["method"]
    vector = plans["dose-vector"][1]
    assert [p["strength"] for p in vector] == [0.0, *smoke.alphas]
    assert vector == dose_plan(smoke, "vector", ["extraversion_high"], [0.0, *smoke.alphas],
                               {"extraversion_high": ["extraversion_high"]})[1]
    assert {p["layer"] for p in plans["capability-steering"][1]} == {3}
    on, off = split_off(plans["capability-NPTI"])
    assert [p["strength"] for p in on[1]] == list(smoke.npti_gammas)
    assert {p["npti_prompts"] for p in on[1]} == {SMOKE_BENCH["npti_prompts"]}
    assert off[0].name == "capability-off" and off[1] == [{"n_questions": 3}]


def test_zero_vector_sweep_scores_like_the_base(tiny_chat_model, isolated_home):
    model, tok = tiny_chat_model
    zero = {n: p.detach().new_zeros(p.shape) for n, p in model.named_parameters()}
    vectors, smoke = {"extraversion_high": zero}, get_profile("smoke")
    plan = dose_plan(smoke, "vector", ["extraversion_high"], [0.0, 1.0],
                     {"extraversion_high": ["extraversion_high"]})
    table = dose_sweep(model, tok, plan, smoke, vector_dial(model, vectors), vectors)
    assert len(table) == 2 and len(table["items"][0]) == 44
    assert table["extraversion"][0] == pytest.approx(table["extraversion"][1], abs=1e-6)
    # a point's row is the measure applied to that point directly
    direct = dose_measure(model, tok, vector_dial(model, vectors), plan[1][1],
                          smoke.contrast_pairs)
    assert table["items"][1] == pytest.approx(direct["items"], abs=1e-9)
    again = dose_sweep(None, None, plan, smoke, None, vectors)  # cached: no factory called
    assert again.equals(table)
    # every dial off is the same base model: another dial's strength 0 is that row again
    off = dose_sweep(None, None, dose_plan(smoke, "P2", ["extraversion_low"], [0]), smoke, None)
    assert off["items"][0] == table["items"][0]
    assert (off["method"][0], off["trait"][0], off["level"][0]) == ("P2", "extraversion", "low")


def test_the_bench_describes_itself_in_words():
    text = Bench(steering_coefficients=(1.0, 2.0), p2_intensities=(3,), n_questions=20,
                 n_conditions=4, bridge_chats=32).describe()
    assert text.startswith("4 vectors; steering at c = 1, 2 (layers probed every 3 at c = 2)")
    assert "P2 at intensity 3" in text and "NPTI's neurons from all prompts" in text
    assert "low-rank copies at rank 4, 16, 64" in text and text.endswith(
        "the bridge on 32 chats per condition")
    assert Bench().describe().startswith("all swept vectors")
