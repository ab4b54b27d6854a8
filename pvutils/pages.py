"""The reader's view of the assembled book: plumbing hidden, the paper named on every page.

`book.assemble` copies the executed notebooks and the prose pages into the build tree and
then calls `polish_tree` on that copy (never on the tracked sources). Pure functions on
one notebook or one page below; cell tags are the ones myst-nb reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

PAPER_URL = "https://arxiv.org/abs/2509.19727"
PAPER_KEY = "sun2025personality"  # its entry in book/references.bib
HEADER = (f"*This book accompanies {{cite:t}}`{PAPER_KEY}` ([arXiv:2509.19727]({PAPER_URL})); "
          f"every work cited is listed under {{doc}}`References </book/bibliography>`.*")
HIDDEN_TAGS = {"remove-cell", "remove-input", "hide-input", "hide-cell"}
PARAMETER_TAGS = {"parameters", "injected-parameters"}  # papermill's
# rich outputs that make a cell a figure or a summary: its code is plumbing to a reader
SHOWN_MIMES = ("image/png", "image/svg+xml", "text/html", "text/markdown")
# the notebook progress tables of transformers' Trainer (NotebookProgressCallback)
_TRAINER = re.compile(r"<progress|Training Loss|TrainOutput\(")


def is_trainer_output(output: dict) -> bool:
    """A Trainer progress table or its TrainOutput: training plumbing, never a result."""
    data = output.get("data", {})
    text = "".join(data.get("text/html", "")) + "".join(data.get("text/plain", ""))
    return bool(data) and bool(_TRAINER.search(text))


def is_setup(source: str) -> bool:
    """Whether a cell opens with imports: as a chapter's first code cell (imports, profile,
    model loading) it is plumbing to a reader; its printed lines stay shown."""
    first = next((line for line in source.splitlines() if line.strip()), "")
    return first.startswith(("import ", "from "))


def _tags(cell) -> list[str]:
    return cell.setdefault("metadata", {}).setdefault("tags", [])


def polish_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """In place: parameter cells removed from the page, Trainer tables dropped, the input
    of every cell that shows a figure or a table, and of the setup cell, hidden behind a
    toggle, and the paper's header under the first heading."""
    first_code = True  # the chapter's setup, if any, is its first code cell after the parameters
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = _tags(cell)
        if PARAMETER_TAGS & set(tags):
            tags.append("remove-cell")
            continue
        setup, first_code = first_code and is_setup(cell.source), False
        cell.outputs = [o for o in cell.get("outputs", []) if not is_trainer_output(o)]
        shows = any(m in o.get("data", {}) for o in cell.outputs for m in SHOWN_MIMES)
        if (shows or setup) and not HIDDEN_TAGS & set(tags):
            tags.append("hide-input")
    first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    if first is not None:
        first.source = add_header(first.source)
    return nb


def add_header(text: str) -> str:
    """`text` with the paper's header after its first `# ` heading (once; at the top when
    it has none)."""
    if PAPER_URL in text:
        return text
    lines = text.splitlines()
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), 0)
    return "\n".join([*lines[:at], "", HEADER, "", *lines[at:]]).strip("\n") + "\n"


def polish_tree(root: Path) -> None:
    """Polish every notebook and prose page of an assembled book tree in place."""
    for path in sorted(root.glob("*/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.write(polish_notebook(nb), path)
    for path in sorted((root / "book").glob("*.md")):
        path.write_text(add_header(path.read_text()))
