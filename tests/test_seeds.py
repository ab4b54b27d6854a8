"""The seed study: one profile per seed, vectors keyed apart, the table's verdicts."""

from __future__ import annotations

import pandas as pd

from pvutils import seeds, training
from pvutils.profiles import get_profile


def test_each_seed_trains_the_study_conditions_under_its_own_key():
    P = get_profile("smoke", seed_study_conditions=("extraversion_high", "openness_low"),
                    seed_study_seeds=(0, 3, 0, 5))
    profiles = seeds.seed_profiles(P)
    assert list(profiles) == [0, 3, 5]  # each seed once
    assert all(Q.conditions == ("extraversion_high", "openness_low") for Q in profiles.values())
    assert profiles[0].replace(conditions=P.conditions) == P
    keys = {training.train_key(Q, "openness_low") for Q in profiles.values()}
    assert len(keys) == 3
    assert training.train_key(profiles[0], "openness_low") == training.train_key(P, "openness_low")


def test_the_table_says_whether_direction_holds():
    dials = pd.DataFrame([
        {"condition": "extraversion_high", "seed": s, "signed spearman": r,
         "moves as intended": r > 0} for s, r in [(0, 0.9), (1, 0.7), (2, 0.8)]] + [
        {"condition": "openness_low", "seed": s, "signed spearman": r,
         "moves as intended": r > 0} for s, r in [(0, 0.5), (1, -0.4), (2, 0.6)]])
    effects = pd.DataFrame(
        [{"vector": "extraversion_high", "seed": s, "right_way": True} for s in range(3)]
        + [{"vector": "openness_low", "seed": s, "right_way": s != 1} for s in range(3)])
    table = seeds.seed_table(dials, effects).set_index("condition")
    assert table.loc["extraversion_high", "RQ1 holds"]
    assert table.loc["extraversion_high", "ρ range"] == 0.9 - 0.7
    assert table.loc["extraversion_high", "±1 outcome"] == "right under every seed"
    assert not table.loc["openness_low", "RQ1 holds"]
    assert table.loc["openness_low", "±1 right (seeds)"] == "2 of 3"
    assert table.loc["openness_low", "±1 outcome"] == "depends on the seed"
    summary = seeds.seed_summary(table.reset_index())
    assert "3 training seeds" in summary and "for 1 of 2 conditions (extraversion_high)" in summary
    assert "not for openness_low" in summary
    assert "right under every seed for 1 (extraversion_high)" in summary
    assert "depends on the seed for 1 (openness_low)" in summary


def test_a_dial_right_under_no_seed_is_not_counted_as_consistent_success():
    dials = pd.DataFrame([{"condition": "agreeableness_low", "seed": s, "signed spearman": 0.2,
                           "moves as intended": True} for s in range(3)])
    effects = pd.DataFrame([{"vector": "agreeableness_low", "seed": s, "right_way": False}
                            for s in range(3)])
    table = seeds.seed_table(dials, effects)
    assert table["±1 outcome"].tolist() == ["not right under any seed"]
    summary = seeds.seed_summary(table)
    assert "right under every seed for 0" in summary
    assert "not right under any seed for 1 (agreeableness_low)" in summary


def test_train_seeds_trains_each_seed_beside_the_default(isolated_home, tiny_chat_dir, tmp_path,
                                                         big5chat_csv):
    csv = big5chat_csv(tmp_path / "b5.csv", rows_per_condition=4)
    P = get_profile("smoke", model=str(tiny_chat_dir), data_source="big5chat",
                    big5chat_path=str(csv), n_dialogues=4, train_batch_size=2, max_length=64,
                    seed_study_conditions=("openness_low",), seed_study_seeds=(0, 1))
    got = seeds.train_seeds(P)
    assert got[0]["openness_low"] == training.vector_path(P, "openness_low")
    assert got[1]["openness_low"] != got[0]["openness_low"]
    assert all(p.exists() for v in got.values() for p in v.values())


def test_three_of_four_checks_right_is_not_right():
    """`right_way` is per (measure, α): one wrong check makes the seed's ±1 check wrong."""
    dials = pd.DataFrame([{"condition": "openness_high", "seed": 0, "signed spearman": 0.5,
                           "moves as intended": True}])
    effects = pd.DataFrame([{"vector": "openness_high", "seed": 0, "right_way": r}
                            for r in (True, True, True, False)])
    assert seeds.seed_table(dials, effects)["±1 outcome"].tolist() == [
        "not right under any seed"]


def test_a_condition_without_a_plus_minus_one_check_is_named_as_unchecked():
    dials = pd.DataFrame([{"condition": c, "seed": s, "signed spearman": 0.4,
                           "moves as intended": True}
                          for c in ("openness_high", "neuroticism_low") for s in range(2)])
    effects = pd.DataFrame([{"vector": "openness_high", "seed": s, "right_way": True}
                            for s in range(2)])
    table = seeds.seed_table(dials, effects)
    summary = seeds.seed_summary(table)
    assert "right under every seed for 1 (openness_high)" in summary
    assert "No ±1 check was run for neuroticism_low." in summary
