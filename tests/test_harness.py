"""Dose-response, resolution, leakage and Pareto measures: known answers on synthetic sweeps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pvutils.bfi import ITEMS_BY_NUMBER
from pvutils.evaluation import REAL_PERSON_PROMPT
from pvutils.harness import (
    dose_summary,
    dose_sweep,
    leakage,
    monotonicity,
    p2_intensity_prompt,
    pareto_front,
    resolution,
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


def test_zero_vector_sweep_scores_like_the_base(tiny_chat_model, tmp_path):
    model, tok = tiny_chat_model
    zero = {n: p.detach().new_zeros(p.shape) for n, p in model.named_parameters()}
    table = dose_sweep(model, tok, "vector", vector_dial(model, {"extraversion_high": zero}),
                       ["extraversion_high"], [0.0, 1.0], tmp_path / "c.json", n_pairs=1)
    assert len(table) == 2 and len(table["items"][0]) == 44
    assert table["extraversion"][0] == pytest.approx(table["extraversion"][1], abs=1e-6)
    again = dose_sweep(model, tok, "vector", None, ["extraversion_high"], [0.0, 1.0],
                       tmp_path / "c.json")  # cached: the factory is never called
    assert again["extraversion"].tolist() == table["extraversion"].tolist()
