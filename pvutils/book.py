"""Execute the notebooks with papermill into a build directory and build the Jupyter Book.

Notebooks are sources: papermill writes executed copies to `_build/executed/<profile>/`
(result JSON beside them), never over the tracked files. A profile's book is assembled in
`_build/<profile>/src` from the book's files and that profile's executed copies (or the
published ones in `results/<profile>/`, `--from-results`) and built to
`_build/<profile>/html`. `make book` and the tests both come through here, so the book CI
builds is the book a reader builds.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import importlib.metadata
import importlib.resources
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from . import pages, progress
from .artifacts import REPO_ROOT, read_json, write_json
from .profiles import check_profile_name, field_names, get_profile

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
BUILD_DIR = REPO_ROOT / "_build"
EXECUTED_DIR = BUILD_DIR / "executed"  # <profile>/<book|notebooks>/<name>.ipynb + JSON
PUBLISHED_DIR = REPO_ROOT / "results"  # committed: the finished run of a profile
BOOK_FILES = ("_config.yml", "_toc.yml", "book")
QUIET_LIBRARIES = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                   "TRANSFORMERS_VERBOSITY": "error"}


def notebooks() -> list[Path]:
    """Every executable notebook: the explainer chapters in book/, then the research
    chapters in notebooks/ in order (their file names start with it)."""
    return sorted((REPO_ROOT / "book").glob("*.ipynb")) + sorted(
        NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")
    )


def select(only: Sequence[str] | None) -> list[Path]:
    """The notebooks whose names start with one of `only` (all when empty); a prefix that
    matches none is an error naming the valid ones."""
    every = notebooks()
    if not only:
        return every
    unknown = [p for p in only if not any(nb.stem.startswith(p) for nb in every)]
    if unknown:
        raise ValueError(f"no notebook named {unknown}; notebooks: {[nb.stem for nb in every]}")
    return [nb for nb in every if any(nb.stem.startswith(p) for p in only)]


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The names and defaults of a notebook's `parameters` cell."""
    import papermill as pm  # heavy (nbclient, jupyter); only needed to run notebooks

    return {name: p["default"] for name, p in pm.inspect_notebook(str(path)).items()}


def check_run(profile: str, paths: Sequence[Path], parameters: dict[str, Any]) -> None:
    """Fail before anything executes: unknown profile, parameter or field value."""
    check_profile_name(profile)
    declared = {nb.stem: notebook_parameters(nb) for nb in paths}
    every = set().union(*declared.values())
    unknown = sorted(set(parameters) - every)
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {unknown} for {list(declared)}; "
                         f"parameters: {sorted(every)}")
    fields = set(field_names())
    get_profile(profile, **{k: v for k, v in parameters.items() if k in fields})


def executed_path(nb: Path, profile: str, root: Path = EXECUTED_DIR) -> Path:
    return root / profile / nb.relative_to(REPO_ROOT)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Environment variables for the kernels papermill starts (they inherit ours)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def revision() -> dict[str, Any]:
    """The commit the notebooks run at, and whether tracked files differ from it."""
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": _git("rev-parse", "HEAD") or "unknown", "dirty": bool(dirty)}


def machine() -> dict[str, Any]:
    """Where the notebooks ran, for the run page: CPU model, the cores this process may
    use, memory, GPUs, and the versions of the libraries that set the numbers."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in
                 Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpus = []
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        gpus = [g for g in listed.stdout.splitlines() if g.strip()]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for lib in ("torch", "transformers", "trl"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[lib] = importlib.metadata.version(lib)
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(memory, 1),
            "gpus": gpus, "python": platform.python_version(), **versions}


def _kernel_env(root: Path) -> dict[str, str]:
    """The kernels import this checkout's pvutils and write results beside the copies; the
    libraries' own bars (loading weights, dataset maps) would land in the copies' stderr.
    The same values however often it is nested, so concurrent runs restore nothing else."""
    path = [str(REPO_ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(filter(None, path))),
            "PVUTILS_RESULTS": str(root), **QUIET_LIBRARIES}


_RECORDING = threading.Lock()  # kernels may finish together: one RUN.json update at a time


def run_notebook(path: Path, profile: str, parameters: dict | None = None,
                 root: Path = EXECUTED_DIR, jobs: int = 1) -> float:
    """Execute one notebook with papermill into `root/<profile>/` (never in place); a cell
    error raises. Its result JSON goes beside it and `RUN.json` records the run (commit,
    seconds, start and finish, the kernels at a time, the machine). Returns seconds."""
    import papermill as pm  # heavy (nbclient, jupyter); only needed to run notebooks

    out = executed_path(path, profile, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    start, started = time.perf_counter(), datetime.datetime.now(datetime.UTC)
    with _env(**_kernel_env(root)):
        pm.execute_notebook(str(path), str(out),
                            parameters={"profile": profile, **(parameters or {})},
                            kernel_name="python3", progress_bar=False, log_output=False,
                            # the kernel's own cwd (nbclient), not papermill's `cwd`: that
                            # chdirs the whole process, and side-by-side kernels then start
                            # in each other's (or the checkout's) directory
                            resources={"metadata": {"path": str(out.parent)}})
    seconds = time.perf_counter() - start
    manifest = root / profile / "RUN.json"
    with _RECORDING:
        run = read_json(manifest) if manifest.exists() else {"profile": profile, "notebooks": {}}
        run["notebooks"][path.stem] = {
            **revision(), "seconds": round(seconds, 1), "parameters": parameters or {},
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "jobs": jobs, "machine": machine(),
        }
        write_json(manifest, run)
    return seconds


SUMMARY_PREFIX = "99"  # a chapter numbered 99 reads every other chapter's result JSON


# seconds each notebook took in a run from empty artifacts, by profile: the order of the
# chapters when this checkout has no run of its own yet (a fresh clone, CI), like
# pytest-split's durations file; refresh with `python -m pvutils book --record-durations`
DURATIONS = NOTEBOOK_DIR / "durations.json"


def expected_seconds(profile: str, hints: Path = DURATIONS) -> dict[str, float]:
    """The recorded seconds of `profile`'s notebooks (else the smoke profile's: their order
    is what counts, and it is much the same)."""
    table = _read_hints(hints)
    return table.get(profile) or table.get("smoke") or {}


def _read_hints(hints: Path) -> dict:
    try:
        return read_json(hints) if hints.exists() else {}
    except ValueError as err:
        raise ValueError(f"{hints} is not valid JSON ({err}); `git checkout` it") from err


def record_durations(profile: str, root: Path = EXECUTED_DIR, hints: Path = DURATIONS) -> dict:
    """Copy the seconds of the last run of `profile` (its RUN.json) into `hints`, over
    what it held for those notebooks (a run of some chapters keeps the others' seconds)."""
    manifest = root / profile / "RUN.json"
    if not manifest.exists():
        raise ValueError(f"no run of profile {profile!r} at {manifest}; run the book first")
    runs = read_json(manifest)["notebooks"]
    table = _read_hints(hints)
    table[profile] = {**table.get(profile, {}),
                      **{name: round(run["seconds"]) for name, run in runs.items()}}
    write_json(hints, table)
    return table[profile]


def schedule(paths: Sequence[Path], jobs: int, manifest: Path,
             hints: dict[str, float] | None = None) -> list[tuple[list, dict]]:
    """(notebooks, kernel environment) per phase. One job: one phase, in order. More: 00 and
    the explainers on all cores, then the chapters (they only read 00's artifacts) at cores //
    jobs threads per kernel, longest first by the last run in `manifest`, else by `hints`
    (`expected_seconds`), unknown first, so the longest chapter does not run alone at the
    end; then the summary chapters (`SUMMARY_PREFIX`), which read the others' results."""
    if jobs <= 1:
        return [(list(paths), {})]
    first = [nb for nb in paths if nb.parent != NOTEBOOK_DIR or nb.stem.startswith("00")]
    summary = [nb for nb in paths
               if nb.parent == NOTEBOOK_DIR and nb.stem.startswith(SUMMARY_PREFIX)]
    last = read_json(manifest)["notebooks"] if manifest.exists() else {}
    hints = expected_seconds(manifest.parent.name) if hints is None else hints

    def seconds(nb: Path) -> float:
        return last.get(nb.stem, {}).get("seconds", hints.get(nb.stem, float("inf")))

    rest = sorted((nb for nb in paths if nb not in first and nb not in summary),
                  key=lambda nb: -seconds(nb))
    threads = str(max(1, len(os.sched_getaffinity(0)) // jobs))
    env = {k: os.environ.get(k, threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return [phase for phase in [(first, {}), (rest, env), (summary, {})] if phase[0]]


def run_notebooks(profile: str, paths: Sequence[Path], parameters: dict | None = None,
                  root: Path = EXECUTED_DIR, jobs: int = 1) -> dict[str, float]:
    """Run `paths`, each with the parameters it declares, `jobs` kernels at a time (see
    `schedule`); the chapter, its stages and their bars are shown on stderr. After an error
    no notebook starts; it is raised once the running ones finish. Returns seconds each."""
    parameters = parameters or {}
    times: dict[str, float] = {}
    failed = threading.Event()
    log = root / profile / "progress.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")

    def one(nb: Path) -> None:
        if failed.is_set():
            return
        mine = {k: v for k, v in parameters.items() if k in notebook_parameters(nb)}
        tag = f"[{list(paths).index(nb) + 1}/{len(paths)}] {nb.stem}"
        print(f"{tag} (profile {profile}" + "".join(f", {k}={v!r}" for k, v in mine.items())
              + ")", file=sys.stderr, flush=True)
        try:
            times[nb.stem] = run_notebook(nb, profile, mine, root, jobs)
        except BaseException:
            failed.set()
            raise
        print(f"{tag} done in {times[nb.stem]:.0f} s", file=sys.stderr, flush=True)

    with _env(**{progress.ENV: str(log)}, **_kernel_env(root)), progress.tail(log):
        for batch, env in schedule(paths, jobs, root / profile / "RUN.json"):
            with _env(**env), ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                for done in as_completed([pool.submit(one, nb) for nb in batch]):
                    if done.exception():
                        raise done.exception()
    return {nb.stem: times[nb.stem] for nb in paths}


MATHJAX_DIR = REPO_ROOT / "_vendor" / "mathjax"  # `mathjax_path` in _config.yml points here


def vendor_mathjax(dest: Path = MATHJAX_DIR) -> Path:
    """Copy MathJax 3 (the `django-static-mathjax` wheel: static files only) next to the
    book, so formulas render for a reader without internet; a CDN would leave raw TeX."""
    es5 = importlib.resources.files("mathjax") / "static" / "mathjax" / "es5"
    script, fonts = es5 / "tex-mml-chtml.js", es5 / "output" / "chtml" / "fonts" / "woff-v2"
    if (dest / "tex-mml-chtml.js").exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "output" / "chtml").mkdir(parents=True)
    shutil.copyfile(str(script), tmp / "tex-mml-chtml.js")
    shutil.copytree(str(fonts), tmp / "output" / "chtml" / "fonts" / "woff-v2")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def assemble(executed: Path, dest: Path) -> list[str]:
    """The book's source tree in `dest`: the tracked book files with every notebook taken
    from `executed` (a profile's executed or published copies), polished for the reader
    (`pages.polish_tree`). Returns the notebooks that
    had no executed copy (their pages show the source without outputs)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in BOOK_FILES:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        else:
            shutil.copy2(src, dest / name)
    missing = []
    for nb in notebooks():
        rel = nb.relative_to(REPO_ROOT)
        copy = executed / rel
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if not copy.exists():
            missing.append(nb.stem)
        shutil.copy2(copy if copy.exists() else nb, dest / rel)
    pages.polish_tree(dest)  # the reader's view: plumbing hidden, the paper on every page
    shutil.copytree(vendor_mathjax(), dest / "_vendor" / "mathjax")
    return missing


def build_book(profile: str = "smoke", executed: Path | None = None,
               out: Path | None = None, warnings_as_errors: bool = True) -> Path:
    """`jupyter-book build` of a profile's assembled tree (notebooks are not re-executed).
    Returns `<out>/html/index.html` (`out` defaults to `_build/<profile>`)."""
    executed = executed or EXECUTED_DIR / profile
    out = out or BUILD_DIR / profile
    missing = assemble(executed, out / "src")
    if missing:
        print(f"not executed in profile {profile} (shown without outputs): {missing}",
              file=sys.stderr)
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe), "build", str(out / "src"), "--builder", "html", "--path-output", str(out)]
    if warnings_as_errors:
        cmd += ["-W", "-n", "--keep-going"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if os.environ.get(
        "PVUTILS_QUIET_BUILD") else None)
    html = out / "html"
    shutil.rmtree(html, ignore_errors=True)
    os.replace(out / "_build" / "html", html)
    return html / "index.html"


# --- command line ------------------------------------------------------------------------


def _value(text: str) -> Any:
    """A `-p` value: a Python literal (numbers, lists, None) or else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def cli_book(argv: list[str]) -> int:
    """`python -m pvutils book --profile smoke [--only 00_setup] [-p NAME VALUE] [--no-run]
    [--from-results] [--jobs 2]`."""
    parser = argparse.ArgumentParser(prog="python -m pvutils book")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes to execute")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="a notebook parameter (papermill -p)")
    parser.add_argument("--no-run", action="store_true",
                        help="only build the HTML from the executed copies")
    parser.add_argument("--from-results", action="store_true",
                        help="build from the published run in results/<profile>/ (no model)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="kernels at a time for the chapters after 00_setup")
    parser.add_argument("--record-durations", action="store_true",
                        help=f"store the last run's seconds in {DURATIONS.relative_to(REPO_ROOT)}"
                             " (the chapter order of a checkout without a run) and exit")
    args = parser.parse_args(argv)
    parameters = {name: _value(value) for name, value in args.parameter}
    try:
        if args.record_durations:
            print(record_durations(args.profile))
            return 0
        if args.jobs < 1:
            raise ValueError(f"--jobs {args.jobs}: at least one kernel is needed")
        paths = select(args.only)
        if args.from_results:
            source = PUBLISHED_DIR / args.profile
            if not (source / "RUN.md").exists():
                raise ValueError(f"no published run at {source}; publish one with "
                                 f"`python -m pvutils publish --profile {args.profile}`")
            print(build_book(args.profile, executed=source))
            return 0
        if not args.no_run:
            check_run(args.profile, paths, parameters)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.no_run:
        run_notebooks(args.profile, paths, parameters, jobs=args.jobs)
    print(build_book(args.profile))
    return 0
