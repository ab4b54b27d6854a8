"""The `cache` command: list what is stored, prune it, never another profile's entry."""

from __future__ import annotations

import json

from pvutils import cache
from pvutils.artifacts import write_json


def _entry(home, stage, key, profiles, last_used="2026-12-01T00:00:00+00:00", size=10):
    entry = home / stage / key
    (entry / "points").mkdir(parents=True)
    (entry / "points" / "p.json").write_bytes(b"x" * size)
    for p in profiles:
        cache.touch(entry, stage, p, {"n_samples": 2})
    meta = json.loads((entry / cache.META).read_text())
    write_json(entry / cache.META, {**meta, "last_used": last_used})
    return entry


def test_touch_records_each_profile_once(isolated_home):
    entry = _entry(isolated_home, "rq1-contrast", "abc", ["smoke", "smoke", "cpu"])
    meta = json.loads((entry / cache.META).read_text())
    assert meta["profiles"] == ["smoke", "cpu"] and meta["stage"] == "rq1-contrast"


def test_list_shows_stage_key_summary_size_and_total(isolated_home, capsys):
    _entry(isolated_home, "rq1-contrast", "abc123", ["smoke"], size=1000)
    _entry(isolated_home, "vectors", "def456", ["cpu"], size=2048)
    assert cache.cli_cache([]) == 0
    out = capsys.readouterr().out
    assert "rq1-contrast" in out and "abc123" in out and "n_samples=2" in out
    sizes = sorted(e["size"] for e in cache.entries())
    assert sizes[0] >= 1000 and sizes[1] >= 2048
    assert "2 entries" in out
    assert cache.cli_cache(["--profile", "cpu"]) == 0
    assert "abc123" not in capsys.readouterr().out


def test_prune_needs_a_profile_and_spares_other_profiles(isolated_home, capsys):
    mine = _entry(isolated_home, "data", "a1", ["smoke"])
    shared = _entry(isolated_home, "data", "b2", ["smoke", "cpu"])
    theirs = _entry(isolated_home, "vectors", "c3", ["cpu"])
    assert cache.cli_cache(["prune"]) == 2
    assert "needs --profile" in capsys.readouterr().err and mine.exists()
    assert cache.cli_cache(["prune", "--profile", "smoke"]) == 0
    assert not mine.exists() and shared.exists() and theirs.exists()
    assert json.loads((shared / cache.META).read_text())["profiles"] == ["cpu"]


def test_prune_by_age_and_stage(isolated_home):
    old = _entry(isolated_home, "data", "old", ["cpu"], last_used="2020-01-01T00:00:00+00:00")
    new = _entry(isolated_home, "data", "new", ["cpu"], last_used="2999-01-01T00:00:00+00:00")
    other = _entry(isolated_home, "vectors", "v", ["cpu"], last_used="2020-01-01T00:00:00+00:00")
    gone = cache.prune(older_than_days=30, profile="cpu", stage="data")
    assert [e["key"] for e in gone] == ["old"]
    assert not old.exists() and new.exists() and other.exists()
