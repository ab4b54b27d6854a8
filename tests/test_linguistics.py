"""Linguistic features: counts and rates with known answers, offline lexicons only."""

from __future__ import annotations

import math

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
