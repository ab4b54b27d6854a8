"""Linguistic features: counts and rates with known answers, offline lexicons only."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pvutils import linguistics as lx


@pytest.fixture(scope="module")
def table():
    return lx.linguistic_features([
        "I love my friends and we always have fun at parties!",
        "I worry a lot. Maybe I am nervous and afraid. I feel sad and lonely.",
        "",
    ])


def test_one_row_per_text_with_every_group(table):
    assert len(table) == 3
    expected = {"word_count", "words_per_sentence", "flesch_reading_ease", "vader_compound",
                "pronoun_i", "pronoun_we", "pronoun_you", "tentative", "certainty",
                *lx.EMPATH_GROUPS}
    assert expected <= set(table.columns)
    for features in lx.TRAIT_FEATURES.values():
        assert set(features) <= set(table.columns)


def test_counts_and_rates_per_100_words(table):
    social, anxious, _ = table.to_dict("records")
    assert social["word_count"] == 11
    assert social["pronoun_i"] == pytest.approx(200 / 11)  # "I", "my"
    assert social["pronoun_we"] == pytest.approx(100 / 11)  # "we"
    assert social["certainty"] == pytest.approx(100 / 11)  # "always"
    assert anxious["word_count"] == 15
    assert anxious["words_per_sentence"] == pytest.approx(5)
    assert anxious["tentative"] == pytest.approx(100 / 15)  # "maybe"
    assert anxious["pronoun_i"] == pytest.approx(300 / 15)


def test_groups_point_the_right_way(table):
    social, anxious, _ = table.to_dict("records")
    assert social["vader_compound"] > 0 > anxious["vader_compound"]
    assert social["social"] > anxious["social"] == 0
    assert social["posemo"] > anxious["posemo"]
    assert anxious["anxiety"] > social["anxiety"] == 0
    assert anxious["sadness"] > social["sadness"] == 0


def test_empty_text_has_zero_counts(table):
    empty = table.iloc[2]
    assert empty["word_count"] == 0 and empty["social"] == 0
    assert math.isnan(empty["flesch_reading_ease"])


def test_flesch_formula_on_a_hand_counted_sentence():
    # "The cat sat on the mat." 6 words, 1 sentence, 6 syllables
    assert lx.flesch_reading_ease("The cat sat on the mat.") == pytest.approx(
        206.835 - 1.015 * 6 - 84.6 * 1.0)
    assert [lx.syllables(w) for w in ("cat", "water", "beautiful")] == [1, 2, 3]


def _shift_table(values: dict[str, list[float]]) -> pd.DataFrame:
    """A sweep table: every expected feature 0 except `social`, as given per condition."""
    features = set(lx.expected_directions().feature)
    rows = [{"condition": cond, "alpha": 0.0 if cond == "base" else 2.0,
             **dict.fromkeys(features, 0.0), "social": v}
            for cond, vs in values.items() for v in vs]
    return pd.DataFrame(rows)


def test_shifts_are_judged_against_the_stated_direction():
    # extraversion: social words expected up for the high vector, down for the low one
    table = _shift_table({"base": [0, 1, 0, 1], "extraversion_high": [4, 5, 4, 5],
                          "extraversion_low": [4, 5, 4, 5]})
    shifts = lx.feature_shifts(table).set_index(["feature", "vector"])
    high, low = shifts.loc[("social", "high")], shifts.loc[("social", "low")]
    assert high.change == pytest.approx(4.0) and 3 <= high.ci_low <= 4 <= high.ci_high <= 5
    assert (high.expected, high.verdict) == ("up", "as expected")
    assert (low.expected, low.verdict) == ("down", "opposite")
    # a feature that does not move has an interval holding 0
    assert shifts.loc[("posemo", "high")].verdict == "unclear"
    assert set(shifts.trait) == {"extraversion"}  # only traits with vectors in the table


def test_trait_frame_starts_each_vector_at_the_base():
    table = _shift_table({"base": [1, 2], "extraversion_high": [3], "openness_low": [0]})
    frame = lx.trait_frame(table, "extraversion")
    assert sorted(frame.groupby("level").size().items()) == [("high", 3)]
    assert (frame[frame.alpha == 0].condition == "base").all()


def test_plan_has_the_base_once_then_each_vector_at_each_alpha():
    from pvutils.profiles import get_profile

    P = get_profile("smoke", linguistic_alphas=(1.0, 2.0))
    stage, points, extra = lx.linguistic_plan(P, ["extraversion_high", "extraversion_low"])
    assert points[0] == {"condition": "base", "alpha": 0.0}
    assert len(points) == 1 + 2 * 2 and extra == (lx.SELF_DESCRIPTION_PROMPT,)
    assert all(p["_uses"] == [p["condition"]] for p in points[1:])
