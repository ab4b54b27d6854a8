"""Chapter 06's sentences: each states counts a reader can check against its table."""

from __future__ import annotations

import math

import pandas as pd

from pvutils import readings


def test_dose_reading_counts_shifts_and_sure_dials():
    summary = pd.DataFrame([
        {"method": "vector", "condition": "openness_high", "rho_lo": 0.3, "shift": 0.2},
        {"method": "vector", "condition": "openness_low", "rho_lo": -1.0, "shift": -0.05},
        {"method": "P2", "condition": "openness_high", "rho_lo": math.nan, "shift": 0.04},
        {"method": "P2", "condition": "openness_low", "rho_lo": math.nan, "shift": 0.01}])
    text = readings.dose_reading(summary)
    assert "strongest setting: vector 1 of 2; P2 2 of 2." in text
    assert "above zero: vector 1 of 2; P2 n/a (fewer than 3 strengths)." in text


def test_pareto_reading_lists_the_front_and_the_cost_at_the_top():
    cost = pd.DataFrame([
        {"method": "vector", "condition": "c", "strength": 0.0, "factual_lost": 0.0,
         "perplexity_ratio": 1.0, "front": True},
        {"method": "vector", "condition": "c", "strength": 2.0, "factual_lost": 0.4,
         "perplexity_ratio": 1.5, "front": True},
        {"method": "vector", "condition": "d", "strength": 2.0, "factual_lost": 0.2,
         "perplexity_ratio": 1.1, "front": False},
        {"method": "NPTI", "condition": "c", "strength": 1.0, "factual_lost": 0.1,
         "perplexity_ratio": 1.2, "front": False}])
    text = readings.pareto_reading(cost)
    assert "front (every dial but P2): vector@0 (c); vector@2 (c)." in text
    # the vector's strongest settings lose 0.4 and 0.2 of the questions: mean 0.30
    assert "vector 0.30 (perplexity × 1.30); NPTI 0.10 (perplexity × 1.20)." in text


def test_leakage_reading_counts_intervals_excluding_zero():
    leak = pd.DataFrame([
        {"method": "vector", "condition": "openness_high", "trait": "openness",
         "effect": 0.2, "lo": 0.1, "hi": 0.3, "intended": True},
        {"method": "vector", "condition": "openness_high", "trait": "neuroticism",
         "effect": -0.15, "lo": -0.2, "hi": -0.05, "intended": False},
        {"method": "vector", "condition": "openness_high", "trait": "extraversion",
         "effect": 0.05, "lo": -0.02, "hi": 0.1, "intended": False}])
    text = readings.leakage_reading(leak)
    assert "intended trait 1 of 1, other traits 1 of 2." in text
    assert "vector openness_high on neuroticism, -0.150 [-0.200, -0.050]." in text


def test_calibration_reading_checks_the_measured_score_against_the_target():
    dials = pd.DataFrame({"target": [3.0, 3.1, 3.2], "lo": [0.1, -math.inf, 0.2],
                          "hi": [0.4, math.inf, 0.5], "measured": [3.005, 3.2, math.nan]})
    text = readings.calibration_reading(dials)
    assert "within 0.01 of its target for 1 of 2 checked targets" in text
    assert "unbounded for 1 of 3" in text


def test_lowrank_reading_takes_the_median_of_defined_shares():
    kept = pd.DataFrame([
        {"condition": "a_high", "label": "r=4", "megabytes": 6.0, "kept": 0.5},
        {"condition": "b_high", "label": "r=4", "megabytes": 6.0, "kept": 0.9},
        {"condition": "c_low", "label": "r=4", "megabytes": 6.0, "kept": math.nan},
        {"condition": "a_high", "label": "full", "megabytes": 500.0, "kept": 1.0}])
    text = readings.lowrank_reading(kept)
    assert "r=4 (6 MB): median 0.70 of 2." in text
    assert "No share for c_low" in text


def test_bridge_reading_names_each_vectors_best_layer():
    bridge = pd.DataFrame([
        {"condition": "a_high", "layer": 0, "cosine": 0.1},
        {"condition": "a_high", "layer": 1, "cosine": 0.4},
        {"condition": "b_low", "layer": 0, "cosine": -0.2},
        {"condition": "b_low", "layer": 1, "cosine": 0.0}])
    text = readings.bridge_reading(bridge, layer=1)
    assert "a_high +0.40 at layer 1; b_low +0.00 at layer 1." in text
    assert "At the steering layer (1): mean +0.20 over 2 vectors." in text
    one = readings.bridge_reading(bridge[bridge.condition == "a_high"], layer=0)
    assert one.endswith("At the steering layer (0): mean +0.10 over 1 vector.")
