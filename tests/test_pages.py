"""The reader's view of the assembled book: which cells are hidden, which outputs dropped,
and the paper's header on every page."""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from pvutils import pages


def _notebook():
    png = new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})
    trainer = new_output("display_data", data={
        "text/html": "<div><progress value='1' max='1'></progress> [1/1 00:26, Epoch 1/1]"
                     "<table><tr><th>Step</th><th>Training Loss</th></tr></table></div>",
        "text/plain": "<IPython.core.display.HTML object>"})
    table = new_output("execute_result", data={"text/html": "<table><tr><td>1</td></tr></table>",
                                               "text/plain": "   a\n0  1"}, execution_count=5)
    stream = new_output("stream", name="stdout", text="4 inputs\n")
    cells = [
        new_markdown_cell("# A chapter\n\nProse."),
        new_code_cell('profile = "cpu"', metadata={"tags": ["parameters"]}),
        new_code_cell('profile = "smoke"', metadata={"tags": ["injected-parameters"]}),
        new_code_cell("\nimport pvutils\nP = pvutils.get_profile()", outputs=[stream]),
        new_code_cell("train()", outputs=[stream, trainer]),
        new_code_cell("plot()", outputs=[png]),
        new_code_cell("summary", outputs=[table]),
        new_code_cell("secret()", outputs=[png], metadata={"tags": ["remove-input"]}),
        new_code_cell("import tempfile\ndemo()", outputs=[stream]),  # a demo, not the setup
    ]
    return new_notebook(cells=cells)


def test_parameter_cells_are_removed_and_figure_and_table_inputs_hidden():
    nb = pages.polish_notebook(_notebook())
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert "remove-cell" in tags[1] and "remove-cell" in tags[2]
    assert tags[3] == ["hide-input"]  # the setup cell: imports and loading
    assert "hide-input" not in tags[4]  # a call with printed output stays readable
    assert "hide-input" in tags[5] and "hide-input" in tags[6]
    assert tags[7] == ["remove-input"]  # an author's own choice is kept
    assert tags[8] == []  # later cells that import are shown: their code is the point


def test_trainer_tables_are_dropped_and_other_outputs_kept():
    nb = pages.polish_notebook(_notebook())
    train = nb.cells[4]
    assert [o.output_type for o in train.outputs] == ["stream"]
    assert len(nb.cells[5].outputs) == 1 and len(nb.cells[6].outputs) == 1


def test_header_goes_under_the_first_heading_once():
    text = pages.add_header("# Title\n\nBody.\n")
    lines = text.splitlines()
    assert lines[0] == "# Title" and pages.PAPER_URL in lines[2] and lines[-1] == "Body."
    assert pages.add_header(text) == text
    assert pages.PAPER_URL in pages.add_header("No heading.").splitlines()[0]


def test_polish_tree_rewrites_the_copies(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book").mkdir()
    nbformat.write(_notebook(), tmp_path / "notebooks" / "01_x.ipynb")
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    pages.polish_tree(tmp_path)
    nb = nbformat.read(tmp_path / "notebooks" / "01_x.ipynb", as_version=4)
    assert pages.PAPER_URL in nb.cells[0].source
    assert pages.PAPER_URL in (tmp_path / "book" / "intro.md").read_text()
