"""Publish a finished run: the executed notebooks and result JSON of a profile, checked
(every notebook executed without error, in that profile, at one clean commit) and copied
to `results/<profile>/` with a RUN.md, to be committed on purpose; `make book RUN=0`
builds the book from there without running a model."""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

from .artifacts import REPO_ROOT, read_json
from .book import EXECUTED_DIR, PUBLISHED_DIR, executed_path, notebooks
from .profiles import check_profile_name


def check_executed(path: Path, profile: str) -> None:
    """An executed copy ran every code cell without error, in `profile`; else ValueError."""
    nb = nbformat.read(path, as_version=4)
    ran = nb.metadata.get("papermill", {}).get("parameters", {}).get("profile")
    if ran != profile:
        raise ValueError(f"{path.name}: executed in profile {ran!r}, not {profile!r}")
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.strip():
            if cell.execution_count is None:
                raise ValueError(f"{path.name}: a cell did not run")
            if any(o.output_type == "error" for o in cell.outputs):
                raise ValueError(f"{path.name}: a cell raised an error")


def publish(profile: str, source: Path | None = None, dest: Path | None = None,
            allow_dirty: bool = False) -> Path:
    """Copy a finished run (every notebook executed without error in `profile`, all at one
    clean commit) to `results/<profile>/` with a RUN.md; nothing is copied otherwise."""
    check_profile_name(profile)
    source = source or EXECUTED_DIR / profile
    dest = dest or PUBLISHED_DIR / profile
    manifest = source / "RUN.json"
    runs = read_json(manifest)["notebooks"] if manifest.exists() else {}
    missing = [nb.stem for nb in notebooks() if nb.stem not in runs
               or not executed_path(nb, profile, source.parent).exists()]
    if missing:
        raise ValueError(f"not executed in profile {profile}: {missing}; run "
                         f"`python -m pvutils book --profile {profile}` first")
    for nb in notebooks():
        check_executed(executed_path(nb, profile, source.parent), profile)
    commits = {r["commit"] for r in runs.values()}
    if len(commits) != 1:
        raise ValueError(f"the notebooks ran at different commits {sorted(commits)}; rerun them")
    if not allow_dirty and any(r["dirty"] for r in runs.values()):
        raise ValueError("some notebooks ran with uncommitted changes; commit and rerun "
                         "(or pass --allow-dirty)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{profile}.tmp-", dir=dest.parent if
                                dest.parent.exists() else None))
    for nb in notebooks():
        rel = nb.relative_to(REPO_ROOT)
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, tmp / rel)
    for result in source.glob("*.json"):
        shutil.copy2(result, tmp / result.name)
    (tmp / "RUN.md").write_text(_run_md(profile, runs, commits.pop()))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(str(tmp), dest)
    return dest


def _run_md(profile: str, runs: dict, commit: str) -> str:
    """The run page: command, commit, machine, wall time of the whole run (first start to
    last finish) and of each notebook. Runs recorded before machines were (no `machine`,
    `started` or `jobs`) get the notebook table only."""
    rows = "\n".join(f"| {name} | {r['seconds']:.0f} | {r.get('started', '')} | "
                     f"{r['finished']} | {r['parameters']} |" for name, r in runs.items())
    head = [f"# Published run: profile `{profile}`", "",
            f"Commit `{commit}`. Rebuild the book from these files with "
            f"`make book RUN=0 PROFILE={profile}`."]
    jobs = sorted({r["jobs"] for r in runs.values() if "jobs" in r})
    if jobs:
        head += ["", "Command: " + ", ".join(f"`python -m pvutils book --profile {profile} "
                                            f"--jobs {j}`" for j in jobs)
                 + " (notebook parameters in the table)."]
    machines: list[dict] = []
    for r in runs.values():
        if "machine" in r and r["machine"] not in machines:
            machines.append(r["machine"])
    for m in machines:
        libs = ", ".join(f"{k} {m[k]}" for k in ("python", "torch", "transformers", "trl")
                         if k in m)
        gpus = "; ".join(m.get("gpus") or ()) or "no GPU"
        head += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
                     f"{gpus}; {libs}."]
    if all("started" in r for r in runs.values()) and runs:
        first = min(datetime.datetime.fromisoformat(r["started"]) for r in runs.values())
        last = max(datetime.datetime.fromisoformat(r["finished"]) for r in runs.values())
        head += ["", f"Wall time from the first notebook's start to the last one's finish: "
                     f"{_duration((last - first).total_seconds())}, on the artifacts present "
                     f"when it started (cached stages are read, not recomputed; what each "
                     f"costs from empty artifacts is on the book's rerun page)."]
    return ("\n".join(head) + "\n\n| notebook | seconds | started (UTC) | finished (UTC) | "
            "parameters |\n| --- | --- | --- | --- | --- |\n" + rows + "\n")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s")


def cli_publish(argv: list[str]) -> int:
    """`python -m pvutils publish --profile cpu`: copy + check a finished run."""
    parser = argparse.ArgumentParser(prog="python -m pvutils publish")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--allow-dirty", action="store_true")
    args = parser.parse_args(argv)
    try:
        dest = publish(args.profile, allow_dirty=args.allow_dirty)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    where = dest.relative_to(REPO_ROOT) if dest.is_relative_to(REPO_ROOT) else dest
    print(f"published to {where}; commit it with `git add {where}`")
    return 0
