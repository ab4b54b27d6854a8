"""The setup chapter's titles count what their figures show; its sweep grid stays legible."""

import matplotlib.pyplot as plt
import pandas as pd

from pvutils import plots
from pvutils.setupplots import persona_shift_title


def test_persona_shift_title_counts_positive_shifts_and_intervals_above_zero():
    shift = pd.DataFrame({"condition": ["a_high", "a_low", "b_high"],
                          "shift": [0.30, 0.05, -0.10],
                          "stderr": [0.10, 0.05, 0.01]})
    # a_high: 0.30 - 0.196 > 0; a_low: 0.05 - 0.098 < 0; b_high: negative
    assert persona_shift_title(shift).startswith(
        "2 of 3 vectors move their answers toward their persona at α = 1 (1 with")


def test_alpha_sweep_wraps_its_panels_and_titles_them_by_name():
    conditions = [f"{t}_{lv}" for t in ("openness", "conscientiousness", "extraversion",
                                        "agreeableness", "neuroticism") for lv in ("high", "low")]
    df = pd.DataFrame([{"condition": c, "alpha": a, "score": 3 + a / 10, "level": c[-3:]}
                       for c in conditions for a in (0.5, 1.0)])
    grid = plots.plot_alpha_sweep(df, col="condition")
    assert grid.axes.shape == (10,) and len({round(ax.get_position().y0, 3)
                                             for ax in grid.axes}) == 2  # two rows of five
    assert [ax.get_title() for ax in grid.axes] == conditions
    plt.close(grid.figure)


def test_transfer_figure_has_one_marker_set_per_grid_point():
    grid = pd.DataFrame([{"condition": c, "alpha": a, "beta": b, "score": 3 + b, "fidelity": a}
                         for c in ("openness_high", "openness_low")
                         for a in (0.0, 1.0) for b in (0.0, 1.0)])
    fig = plots.plot_transfer(grid)
    top, bottom = fig.axes[:2]
    assert [t.get_text() for t in top.get_legend().get_texts()] == [
        "α = 0, β = 0", "α = 0, β = 1", "α = 1, β = 0", "α = 1, β = 1"]
    assert [t.get_text() for t in bottom.get_xticklabels()] == ["openness_high", "openness_low"]
    plt.close(fig)


def test_page_setup_shows_whole_tables():
    """A chapter's 68-row, 24-column table is shown whole, every row and column, every cell
    in full (pandas cuts at 60 rows and 20 columns by default)."""
    keep = [x for o in ("max_colwidth", "max_columns", "max_rows", "min_rows")
            for x in (f"display.{o}", pd.get_option(f"display.{o}"))]
    with pd.option_context(*keep):  # restored after the test
        plots.page_setup()
        long_text = "x" * 120
        table = pd.DataFrame({f"c{j}": [f"{long_text}{i}" if j == 0 else i for i in range(68)]
                              for j in range(24)})
        html = table._repr_html_()
        assert html.count("<tr") == 68 + 1 and "c23" in html and f"{long_text}67" in html
        assert "..." not in repr(table)
