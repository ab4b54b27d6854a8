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
