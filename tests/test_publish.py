"""Publishing a finished run: copy + check, nothing copied when the run is incomplete."""

from __future__ import annotations

import json

import nbformat
import pytest

from pvutils import book, publish
from pvutils.artifacts import REPO_ROOT


def _fake_run(root, profile="cpu", commit="abc", dirty=False, error_in=None, skip=None):
    """Executed copies as papermill leaves them, plus the runner's RUN.json."""
    runs = {}
    for path in book.notebooks():
        if path.stem == skip:
            continue
        cell = nbformat.v4.new_code_cell("x = 1", execution_count=1)
        if path.stem == error_in:
            cell.outputs = [nbformat.v4.new_output("error", ename="E", evalue="e", traceback=[])]
        nb = nbformat.v4.new_notebook(cells=[cell])
        nb.metadata["papermill"] = {"parameters": {"profile": profile}}
        out = book.executed_path(path, profile, root)
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
        runs[path.stem] = {"commit": commit, "dirty": dirty, "seconds": 1.0,
                           "parameters": {}, "finished": "2026-12-01T00:00:00+00:00"}
    (root / profile / "01_rq1_scaling.json").write_text("{}")
    (root / profile / "RUN.json").write_text(json.dumps({"profile": profile, "notebooks": runs}))
    return root / profile


def test_a_finished_run_is_copied_with_its_results_and_a_run_page(tmp_path):
    source = _fake_run(tmp_path / "executed")
    dest = publish.publish("cpu", source=source, dest=tmp_path / "results" / "cpu")
    for path in book.notebooks():
        assert (dest / path.relative_to(REPO_ROOT)).exists()
    assert (dest / "01_rq1_scaling.json").exists()
    assert "Commit `abc`" in (dest / "RUN.md").read_text()


def test_the_run_page_names_the_command_machine_and_whole_wall_time(tmp_path):
    source = _fake_run(tmp_path / "executed")
    run = json.loads((source / "RUN.json").read_text())
    here = book.machine()
    for i, r in enumerate(run["notebooks"].values()):  # one a minute, 90 s each
        start = 60 * i
        r.update(jobs=2, machine=here, seconds=90.0,
                 started=f"2026-12-01T01:{start // 60:02d}:00+00:00",
                 finished=f"2026-12-01T01:{start // 60 + 1:02d}:30+00:00")
    (source / "RUN.json").write_text(json.dumps(run))
    page = (publish.publish("cpu", source=source, dest=tmp_path / "results" / "cpu")
            / "RUN.md").read_text()
    assert "`python -m pvutils book --profile cpu --jobs 2`" in page
    assert f"{here['cores']} cores" in page and here["cpu"] in page
    # the first starts at 01:00:00, the last (n − 1 minutes later) ends 90 s after it
    n = len(run["notebooks"])
    assert f"finish: {n} min 30 s, on the artifacts present" in page


@pytest.mark.parametrize(("kw", "message"), [
    ({"skip": "03_rq3_negation"}, r"not executed in profile cpu: \['03_rq3_negation'\]"),
    ({"error_in": "02_rq2_composition"}, "02_rq2_composition.ipynb: a cell raised an error"),
    ({"profile": "smoke"}, "executed in profile 'smoke', not 'cpu'"),
    ({"dirty": True}, "uncommitted changes"),
])
def test_an_incomplete_or_mixed_run_is_refused_and_nothing_is_copied(tmp_path, kw, message):
    source = _fake_run(tmp_path / "executed", **kw)
    if kw.get("profile") == "smoke":  # a smoke run filed under cpu
        source = source.rename(tmp_path / "executed" / "cpu")
    dest = tmp_path / "results" / "cpu"
    with pytest.raises(ValueError, match=message):
        publish.publish("cpu", source=source, dest=dest)
    assert not dest.exists()


def test_notebooks_run_at_different_commits_are_refused(tmp_path):
    source = _fake_run(tmp_path / "executed")
    run = json.loads((source / "RUN.json").read_text())
    run["notebooks"]["05_layerwise"]["commit"] = "def"
    (source / "RUN.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="different commits"):
        publish.publish("cpu", source=source, dest=tmp_path / "results" / "cpu")
