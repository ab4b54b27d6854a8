"""The book: every notebook executes in the smoke profile into the build directory (the
tracked notebooks stay untouched), the HTML builds with warnings as errors, and every page
loads in headless Chromium without errors.

The notebooks run once per session (a session fixture); set PVUTILS_BOOK_NO_RUN=1 to
check an already-built book without re-executing them.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from pvutils import book
from pvutils.artifacts import REPO_ROOT, write_json

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
        timings = book.run_notebooks("smoke", book.notebooks())
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


def test_runner_writes_a_copy_and_leaves_the_tree_as_it_was(tmp_path):
    before = _git_status()
    source = REPO_ROOT / "book" / "merging_explained.ipynb"
    text = source.read_text()
    book.run_notebooks("smoke", [source], root=tmp_path)
    assert _git_status() == before and source.read_text() == text
    book.check_executed(book.executed_path(source, "smoke", tmp_path), "smoke")


def test_every_notebook_executed_without_errors(built_book):
    assert built_book.exists()
    names = [nb.stem for nb in book.notebooks()]
    assert "00_setup" in names and "merging_explained" in names
    for path in book.notebooks():
        book.check_executed(book.executed_path(path, "smoke"), "smoke")
    for result in ("00_setup", "01_rq1_scaling", "05_layerwise"):
        assert (book.EXECUTED_DIR / "smoke" / f"{result}.json").exists()


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
