"""The ablation driver: variant specs, the count with its interval, end to end on a tiny model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pvutils import ablation, plusminus, training
from pvutils.launch import parse_overrides
from pvutils.profiles import get_profile


def test_variant_specs_parse_to_profile_overrides():
    assert ablation.parse_variant("long=n_dialogues:128,train_epochs:1.5,use_lora:true") == (
        "long", {"n_dialogues": 128, "train_epochs": 1.5, "use_lora": True})
    assert ablation.parse_variant("a=alphas:[0.5, 1.0],seed:2") == (
        "a", {"alphas": [0.5, 1.0], "seed": 2})
    for bad in ("noequals", "=n_dialogues:3", "x=n_dialogues"):
        with pytest.raises(ValueError, match="variant"):
            ablation.parse_variant(bad)


def test_bad_variants_fail_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown profile field"):
        ablation.check_variants("smoke", {"x": {"n_dialogs": 3}})
    with pytest.raises(ValueError, match="n_dialogues"):
        ablation.check_variants("smoke", {"x": {"n_dialogues": 0}})
    f = tmp_path / "v.yaml"
    f.write_text("- just a list\n")
    with pytest.raises(ValueError, match="mapping"):
        ablation.load_variants(f)
    f.write_text("more:\n  n_dialogues: 128\n")
    assert ablation.load_variants(f) == {"more": {"n_dialogues": 128}}
    bundled = ablation.load_variants("recipe")
    assert bundled and not any(k.startswith("_") for k in bundled)
    ablation.check_variants("cpu", bundled)  # every bundled variant is a valid profile
    with pytest.raises(ValueError, match="no variants file"):
        ablation.load_variants(tmp_path / "missing.yaml")


def _rows(shifts, n=15, noise=0.02):
    rng = np.random.default_rng(0)
    base = 3 + rng.normal(0, noise, n)
    rows = [{"vector": "base", "trait": "openness", "alpha": 0.0, "measure": m,
             "unit": str(u), "value": base[u]} for m in plusminus.MEASURES for u in range(n)]
    for vector, d in shifts.items():
        for alpha in (1.0, -1.0):
            rows += [{"vector": vector, "trait": "openness", "alpha": alpha, "measure": m,
                      "unit": str(u), "value": base[u] + d * alpha + rng.normal(0, noise)}
                     for m in plusminus.MEASURES for u in range(n)]
    return pd.DataFrame(rows)


def test_the_count_interval_is_tight_when_every_effect_is_clear():
    # both move clearly the right way at both α; then the low one clearly the wrong way
    got = ablation.count_interval(_rows({"openness_high": 0.5, "openness_low": -0.5}), 200)
    assert got == {"right both ways": 2, "lo": 2.0, "hi": 2.0, "of": 2}
    got = ablation.count_interval(_rows({"openness_high": 0.5, "openness_low": 0.5}), 200)
    assert got == {"right both ways": 1, "lo": 1.0, "hi": 1.0, "of": 2}


def test_a_vanishing_effect_widens_the_count_interval():
    got = ablation.count_interval(_rows({"openness_high": 0.5, "openness_low": -0.001},
                                        noise=0.2), 400)
    assert got["lo"] <= 1 and got["hi"] == 2


def test_ablate_end_to_end_on_a_tiny_model(isolated_home, tiny_chat_dir, tmp_path,
                                           big5chat_csv, capsys):
    csv = big5chat_csv(tmp_path / "b5.csv", rows_per_condition=4)
    conds = "[extraversion_high]"  # one fine-tune per variant: seconds
    sets = [f"model={tiny_chat_dir}", "data_source=big5chat", f"big5chat_path={csv}",
            "n_dialogues=4", "train_batch_size=2", "max_length=64", f"conditions={conds}",
            f"sweep_conditions={conds}", "eval_batch_size=64"]
    argv = ["--profile", "smoke", "--variant", "hot=learning_rate:0.01", "--boot", "50"]
    for s in sets:
        argv += ["--set", s]
    assert ablation.cli_ablate(argv) == 0
    out = isolated_home / "ablation" / "smoke"
    comparison = pd.read_csv(out / "comparison.csv")
    assert list(comparison.variant) == ["default", "hot"]
    assert comparison["right both ways"].str.contains(r"^[01] of 1 \[[01], [01]\]$").all()
    for variant in ("default", "hot"):
        table = pd.read_csv(out / variant / "table.csv")
        assert list(table.vector) == ["extraversion_high"]
        effects = pd.read_csv(out / variant / "effects.csv")
        assert len(effects) == 2 * 2  # α x measures
        assert (effects.lo <= effects.effect).all() and (effects.effect <= effects.hi).all()
    assert "default" in capsys.readouterr().out
    # the variants' vectors live side by side under their own keys
    P = get_profile("smoke", **parse_overrides(sets))
    paths = {training.vector_path(P.replace(**o), "extraversion_high")
             for o in ({}, {"learning_rate": 0.01})}
    assert len(paths) == 2 and all(p.exists() for p in paths)


def test_ablate_reports_bad_input(capsys):
    assert ablation.cli_ablate(["--profile", "smoke", "--variant", "x=n_dialogs:2"]) == 1
    assert "unknown profile field" in capsys.readouterr().err


def test_the_report_holds_the_command_commit_and_every_table():
    table = pd.DataFrame([{"variant": "dpo", "right both ways": "7 of 10 [5, 9]"}])
    verdicts = {"dpo": pd.DataFrame([{"vector": "openness_low", "verdict": "both ways"}])}
    text = ablation.report(table, verdicts, "python -m pvutils ablate --variant dpo=x:1",
                           {"commit": "abc123", "dirty": True}, 90.0)
    assert "Command: `python -m pvutils ablate --variant dpo=x:1`" in text
    assert "`abc123` with uncommitted changes" in text and "Wall time: 1.5 min" in text
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
             if line.startswith("|")]
    assert ["dpo", "7 of 10 [5, 9]"] in cells and ["openness_low", "both ways"] in cells
    assert "## dpo: each vector at α = ±1" in text


def test_an_ablation_run_writes_its_record(tiny_profile, tmp_path, char_embedding_judge):
    """Two variants on the tiny model: each gets its ±1 table and shared-component table,
    and the README holds the comparison (one row per variant) and the commit."""
    fields = {f: getattr(tiny_profile, f) for f in ("model", "data_source", "big5chat_path",
                                                    "n_dialogues", "train_batch_size",
                                                    "max_length", "learning_rate")}
    base = {**fields, "conditions": ("openness_high", "openness_low"),
            "sweep_conditions": ("openness_high", "openness_low"), "n_samples": 1,
            "eval_max_new_tokens": 4}
    out = tmp_path / "ablation"
    table = ablation.run_ablation("smoke", {"sft": {}, "dpo": {"train_objective": "dpo"}},
                                  out, judge=char_embedding_judge, n_boot=50, base=base)
    assert table["variant"].tolist() == ["sft", "dpo"]
    for name in ("sft", "dpo"):
        share = pd.read_csv(out / name / "share.csv")
        assert share["vector"].tolist() == ["openness_high", "openness_low"]
        assert (out / name / "table.csv").exists()
    readme = (out / "README.md").read_text()
    assert "## dpo: the shared component" in readme and "Commit: `" in readme
