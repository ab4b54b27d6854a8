"""Execute the notebooks with papermill and build the Jupyter Book.

`make book` and the tests both come through here, so the book CI builds is the book a
reader builds.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .artifacts import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def notebooks() -> list[Path]:
    """Every executable notebook: the explainer chapters in book/, then the research
    chapters in notebooks/ in order (their file names start with it)."""
    return sorted((REPO_ROOT / "book").glob("*.ipynb")) + sorted(
        NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")
    )


def run_notebook(path: Path, profile: str, parameters: dict | None = None) -> float:
    """Execute one notebook in place with papermill; a cell error raises. Returns seconds."""
    import papermill as pm

    start = time.perf_counter()
    pm.execute_notebook(
        str(path),
        str(path),
        parameters={"profile": profile, **(parameters or {})},
        cwd=str(path.parent),
        kernel_name="python3",
        progress_bar=False,
        log_output=False,
    )
    return time.perf_counter() - start


MATHJAX_DIR = REPO_ROOT / "_vendor" / "mathjax"  # `mathjax_path` in _config.yml points here


def vendor_mathjax(dest: Path = MATHJAX_DIR) -> Path:
    """Copy MathJax 3 (the `django-static-mathjax` wheel: static files only) next to the
    book, so formulas render for a reader without internet; a CDN would leave raw TeX."""
    import importlib.resources

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


def build_book(warnings_as_errors: bool = True) -> Path:
    """`jupyter-book build` of the repository root (notebooks are not re-executed)."""
    vendor_mathjax()
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe), "build", str(REPO_ROOT), "--builder", "html"]
    if warnings_as_errors:
        cmd += ["-W", "-n", "--keep-going"]
    subprocess.run(cmd, check=True)
    return REPO_ROOT / "_build" / "html" / "index.html"


def cli_book(argv: list[str]) -> int:
    """`python -m pvutils book --profile smoke [--only 00_setup] [--no-run]`."""
    parser = argparse.ArgumentParser(prog="python -m pvutils book")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes to execute")
    parser.add_argument("--no-run", action="store_true", help="only build the HTML")
    args = parser.parse_args(argv)
    if not args.no_run:
        for nb in notebooks():
            if args.only and not any(nb.stem.startswith(p) for p in args.only):
                continue
            print(f"executing {nb.name} (profile {args.profile}) ...", flush=True)
            print(f"  done in {run_notebook(nb, args.profile):.0f} s", flush=True)
    print(build_book())
    return 0
