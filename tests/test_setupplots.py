"""The setup chapter's titles count what their figures show."""

import pandas as pd

from pvutils.setupplots import persona_shift_title


def test_persona_shift_title_counts_positive_shifts_and_intervals_above_zero():
    shift = pd.DataFrame({"condition": ["a_high", "a_low", "b_high"],
                          "shift": [0.30, 0.05, -0.10],
                          "stderr": [0.10, 0.05, 0.01]})
    # a_high: 0.30 - 0.196 > 0; a_low: 0.05 - 0.098 < 0; b_high: negative
    assert persona_shift_title(shift).startswith(
        "2 of 3 vectors move their answers toward their persona at α = 1 (1 with")
