"""The book: every notebook executes in the smoke profile into the build directory (the
tracked notebooks stay untouched), the HTML builds with warnings as errors, and every page
loads in headless Chromium without errors.

The notebooks run once per session (a session fixture), two kernels at a time after
00_setup (PVUTILS_BOOK_JOBS=1: one at a time); set PVUTILS_BOOK_NO_RUN=1 to check an
already-built book without re-executing them.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import nbformat
import pytest

from pvutils import book, publish
from pvutils.artifacts import REPO_ROOT, read_json, write_json

pytestmark = pytest.mark.book
HTML = book.BUILD_DIR / "smoke" / "html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True).stdout


@pytest.fixture(scope="session")
def tree_before() -> str:
    return _git_status()


@pytest.fixture(scope="session")
def built_book(tree_before) -> Path:
    if not os.environ.get("PVUTILS_BOOK_NO_RUN"):
        # after 00_setup the chapters run two kernels at a time (one thread each on 2 cores)
        jobs = int(os.environ.get("PVUTILS_BOOK_JOBS", "2"))
        timings = book.run_notebooks("smoke", book.notebooks(), jobs=jobs)
        timings["total"] = round(sum(timings.values()), 1)
        write_json(book.EXECUTED_DIR / "smoke" / "notebook_timings.json", timings)
        print("notebook wall times (s):", timings)
    return book.build_book("smoke", warnings_as_errors=True)


def test_the_runner_and_the_build_leave_the_tracked_notebooks_alone(built_book, tree_before):
    """Every notebook went through the runner (and the book was built): `git status` is as
    it was, and each executed copy records the commit it ran at."""
    if os.environ.get("PVUTILS_BOOK_NO_RUN"):
        pytest.skip("the notebooks were not run in this session")
    assert _git_status() == tree_before
    run = json.loads((book.EXECUTED_DIR / "smoke" / "RUN.json").read_text())
    assert set(run["notebooks"]) >= {nb.stem for nb in book.notebooks()}
    assert run["notebooks"]["00_setup"]["commit"] not in ("", "unknown")


# the smoke book's worker runs this file in order (pytest -n: a file per worker), so
# nothing else writes _build/executed/smoke meanwhile
@pytest.mark.parametrize(("argv", "message"), [
    (["--profile", "nope"], "unknown profile 'nope'; choose one of"),
    (["--profile", "smoke", "--jobs", "0"], "--jobs 0: at least one kernel is needed"),
    (["--profile", "smoke", "--only", "07_rq7"], "no notebook named ['07_rq7']; notebooks:"),
    (["--profile", "smoke", "-p", "n_sample", "2"], "unknown notebook parameter(s) ['n_sample']"),
    (["--profile", "smoke", "--only", "01", "-p", "alphas", "abc"], "alphas='abc' is not a list"),
    (["--profile", "smoke", "--only", "02", "-p", "ties_density", "7"],
     "ties_density=7.0 is out of range"),
])
def test_book_command_rejects_bad_input_before_running_anything(argv, message, capsys):
    before = _git_status()
    executed = book.EXECUTED_DIR / "smoke"
    stamp = executed.stat().st_mtime_ns if executed.exists() else None
    assert book.cli_book(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert _git_status() == before
    assert (executed.stat().st_mtime_ns if executed.exists() else None) == stamp


def test_runner_writes_a_copy_and_leaves_the_tree_as_it_was(tmp_path):
    before = _git_status()
    source = REPO_ROOT / "book" / "merging_explained.ipynb"
    text = source.read_text()
    book.run_notebooks("smoke", [source], root=tmp_path)
    assert _git_status() == before and source.read_text() == text
    publish.check_executed(book.executed_path(source, "smoke", tmp_path), "smoke")


def test_with_jobs_setup_first_then_the_longest_chapter_then_the_results_page(tmp_path,
                                                                            monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # a value the caller set is kept
    paths = book.notebooks()
    last = {"01_rq1_scaling": 60.0, "06_vectors_vs_steering": 90.0, "03_rq3_negation": 35.0}
    write_json(tmp_path / "RUN.json", {"notebooks": {k: {"seconds": v} for k, v in last.items()}})
    assert book.schedule(paths, 1, tmp_path / "RUN.json") == [(paths, {})]
    (first, env1), (rest, env2), (summary, env3) = book.schedule(paths, 2, tmp_path / "RUN.json",
                                                                 hints={})
    assert sorted(first + rest + summary) == sorted(paths)  # each notebook once
    assert {nb.stem for nb in first} == {nb.stem for nb in paths
                                         if nb.parent.name == "book" or nb.stem.startswith("00")}
    # the results page reads every chapter's JSON: it runs alone, after all of them
    assert [nb.stem for nb in summary] == ["99_results"] and env1 == env3 == {}
    unrecorded = [nb.stem for nb in paths if nb in rest and nb.stem not in last]
    assert [nb.stem for nb in rest] == unrecorded + sorted(last, key=last.get, reverse=True)
    cores = len(os.sched_getaffinity(0))
    assert env2 == {"OMP_NUM_THREADS": str(max(1, cores // 2)), "MKL_NUM_THREADS": "3"}


def test_without_a_run_the_recorded_durations_order_the_chapters(tmp_path):
    """A fresh clone has no RUN.json: the durations file orders the chapters longest first
    (its seconds, where the run's own are missing), unknown ones before them; recording
    copies a run's seconds into it for that profile only."""
    paths = book.notebooks()
    chapters = [nb.stem for nb in paths if nb.stem[:2].isdigit() and nb.stem[:2] not in
                ("00", book.SUMMARY_PREFIX)]
    hints = {name: float(k) for k, name in enumerate(chapters[1:], start=1)}
    write_json(tmp_path / "RUN.json", {"notebooks": {chapters[1]: {"seconds": 100.0}}})
    _, (rest, _), _ = book.schedule(paths, 2, tmp_path / "RUN.json", hints=hints)
    assert [nb.stem for nb in rest] == [chapters[0], chapters[1], *reversed(chapters[2:])]

    runs = tmp_path / "executed"
    write_json(runs / "smoke" / "RUN.json", {"notebooks": {"01_rq1_scaling": {"seconds": 12.4}}})
    hints_file = tmp_path / "durations.json"
    write_json(hints_file, {"cpu": {"01_rq1_scaling": 900}})
    assert book.record_durations("smoke", root=runs, hints=hints_file) == {"01_rq1_scaling": 12}
    assert book.expected_seconds("cpu", hints_file) == {"01_rq1_scaling": 900}
    assert book.expected_seconds("paper", hints_file) == {"01_rq1_scaling": 12}  # smoke's
    with pytest.raises(ValueError, match="no run of profile 'paper'"):
        book.record_durations("paper", root=runs, hints=hints_file)
    write_json(runs / "cpu" / "RUN.json", {"notebooks": {"03_rq3_negation": {"seconds": 50}}})
    assert book.record_durations("cpu", root=runs, hints=hints_file) == {
        "01_rq1_scaling": 900, "03_rq3_negation": 50}  # a partial run keeps the others
    hints_file.write_text("{not json")
    with pytest.raises(ValueError, match="durations.json is not valid JSON"):
        book.expected_seconds("cpu", hints_file)


def test_the_committed_durations_name_every_chapter():
    names = {nb.stem for nb in book.notebooks()}
    for profile, seconds in read_json(book.DURATIONS).items():
        assert set(seconds) == names, profile


def _timing_notebook(path: Path, code: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import json, pathlib, time\nstart = time.time()\n" + code),
    ], metadata={"kernelspec": {"name": "python3", "language": "python",
                                "display_name": "Python 3"}})
    nbformat.write(nb, path)
    return path


SLOW_AFTER_MARK = 15  # s; 2 s was too short for a failure to be recorded under CI load


def test_jobs_run_kernels_side_by_side_and_an_error_starts_no_more(tmp_path):
    """Two kernels at once: `slow` waits for `bad`, which runs after `quick` in the other
    kernel; after `bad` fails `never` is not started, `slow` finishes and is recorded."""
    book.BUILD_DIR.mkdir(exist_ok=True)
    src = Path(tempfile.mkdtemp(prefix="jobs-", dir=book.BUILD_DIR))  # the runner's notebooks
    try:  # lie in the checkout (ignored here)
        mark = tmp_path / "bad-started"
        slow = _timing_notebook(src / "slow.ipynb", (
            f"while not pathlib.Path({str(mark)!r}).exists() and time.time() < start + 120:\n"
            # long enough after bad's mark for its failure to be recorded on a loaded
            # machine (papermill writes the failed notebook first), so `never` sees it
            f"    time.sleep(0.1)\ntime.sleep({SLOW_AFTER_MARK})\n"
            "pathlib.Path('slow.json').write_text(json.dumps([start, time.time()]))"))
        quick = _timing_notebook(src / "quick.ipynb",
                                 "pathlib.Path('quick.json').write_text(json.dumps([start]))")
        bad = _timing_notebook(src / "bad.ipynb",
                               f"pathlib.Path({str(mark)!r}).touch()\nraise ValueError('no')")
        never = _timing_notebook(src / "never.ipynb", "pass")
        with pytest.raises(Exception, match="ValueError"):
            book.run_notebooks("smoke", [slow, quick, bad, never], root=tmp_path, jobs=2)
        ran = book.executed_path(slow, "smoke", tmp_path).parent
        slow_start, slow_end = json.loads((ran / "slow.json").read_text())
        assert slow_end - slow_start < 100  # slow saw bad's mark: they ran side by side
        assert slow_end - mark.stat().st_mtime >= SLOW_AFTER_MARK - 0.1
        assert (ran / "quick.json").exists()
        assert not book.executed_path(never, "smoke", tmp_path).exists()
        run = json.loads((tmp_path / "smoke" / "RUN.json").read_text())
        assert set(run["notebooks"]) == {"slow", "quick"}
    finally:
        shutil.rmtree(src)


def test_every_notebook_executed_without_errors(built_book):
    assert built_book.exists()
    names = [nb.stem for nb in book.notebooks()]
    assert "00_setup" in names and "merging_explained" in names
    for path in book.notebooks():
        publish.check_executed(book.executed_path(path, "smoke"), "smoke")
    for result in ("00_setup", "01_rq1_scaling", "05_layerwise"):
        assert (book.EXECUTED_DIR / "smoke" / f"{result}.json").exists()


def test_the_smoke_results_page_is_rederived_from_its_stored_rows(built_book,
                                                                  results_rederived):
    """The results page of this very build, from the rows its RQ1 chapter stored."""
    results_rederived(book.EXECUTED_DIR / "smoke")


def test_setup_page_shows_the_models_reply(built_book):
    page = (HTML / "notebooks" / "00_setup.html").read_text()
    assert "USER: Tell me a little about yourself." in page
    assert "MODEL: " in page


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served_book(built_book):
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)"
)
def test_every_page_loads_cleanly_in_chromium(served_book):
    """Crawl from index.html: no console errors, no failed requests, no broken internal
    links, every image decoded. Screenshots go to _build/screenshots/."""
    from playwright.sync_api import sync_playwright

    shots = book.BUILD_DIR / "smoke" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    seen: set[str] = set()
    queue = [served_book + "index.html"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        # The book is read offline here: requests leaving localhost are aborted; only
        # failures of the book's own files (MathJax included) count.
        page.route(
            "**/*",
            lambda route: (
                route.continue_() if route.request.url.startswith(served_book) else route.abort()
            ),
        )

        def on_console(msg):
            origin = (msg.location or {}).get("url", "")
            if msg.type == "error" and (origin.startswith(served_book) or not origin):
                problems.append(f"{page.url}: console error: {msg.text} ({origin})")

        page.on("console", on_console)
        page.on("pageerror", lambda e: problems.append(f"{page.url}: page error: {e}"))
        page.on(
            "response",
            lambda r: (
                r.url.startswith(served_book)
                and r.status >= 400
                and problems.append(f"{page.url}: HTTP {r.status} for {r.url}")
            ),
        )
        while queue:
            url = queue.pop()
            if url in seen:
                continue
            seen.add(url)
            page.goto(url, wait_until="load")
            page.wait_for_load_state("networkidle")
            broken = page.eval_on_selector_all(
                "img",
                "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)",
            )
            problems += [f"{url}: image did not load: {src}" for src in broken]
            # formulas come from the book's own MathJax: every one must be typeset
            n_math = page.eval_on_selector_all(".math", "els => els.length")
            if n_math:
                typeset = page.evaluate(
                    "() => window.MathJax && MathJax.startup ? MathJax.startup.promise.then("
                    "() => document.querySelectorAll('mjx-container').length) : -1"
                )
                if typeset < n_math:
                    problems.append(f"{url}: {n_math} formulas, {typeset} typeset by MathJax")
            for href in page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)"):
                target = urljoin(url, href).split("#")[0]
                if not target.startswith(served_book):
                    continue
                local = HTML / urlparse(target).path.lstrip("/")
                if local.is_dir():
                    local = local / "index.html"
                if not local.exists():
                    problems.append(f"{url}: broken link to {href}")
                elif target.endswith(".html") and target not in seen:
                    queue.append(target)
            name = urlparse(url).path.strip("/").replace("/", "__") or "index"
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        browser.close()
    assert len(seen) >= 2, f"the crawl reached only {sorted(seen)}"
    assert not problems, "\n".join(problems)


def test_pages_show_results_not_plumbing(built_book):
    """The reader's view (pvutils.pages): every chapter names the paper, no parameters cell
    is rendered, figures are numbered with their caption, the bibliography lists the paper."""
    from pvutils import pages

    for nb in book.notebooks():
        page = (HTML / nb.relative_to(REPO_ROOT).with_suffix(".html")).read_text()
        assert pages.PAPER_URL in page, nb.stem
        assert 'profile = "cpu"' not in page and "injected-parameters" not in page, nb.stem
    linguistic = (HTML / "notebooks" / "07_linguistic.html").read_text()
    assert 'class="caption-number"' in linguistic and "Extraversion." in linguistic
    references = (HTML / "book" / "bibliography.html").read_text()
    assert "Personality vector: modulating personality" in references
