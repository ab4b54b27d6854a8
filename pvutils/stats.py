"""The chapters' statistics: correlations per group and the tables each question reports.

Pure functions of sweep tables (pandas DataFrames); correlations come from pandas and
scipy, never a hand-written formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .personas import direction, split_condition


def spearman_by(df: pd.DataFrame, group: str | list[str], x: str, y: str) -> pd.DataFrame:
    """Spearman rho (and p) of `y` against `x` within each group; NaN where `x` is constant."""
    def one(sub: pd.DataFrame) -> pd.Series:
        rho, p = stats.spearmanr(sub[x], sub[y]) if sub[x].nunique() > 1 else (np.nan, np.nan)
        return pd.Series({"spearman": rho, "p": p, "n": len(sub)}, dtype=object)

    out = df.groupby(group)[[x, y]].apply(one).reset_index()
    return out.astype({"spearman": float, "p": float, "n": int})


def composition_correlation(df: pd.DataFrame, traits: Sequence[str]) -> pd.DataFrame:
    """Per trait: Pearson r between the intended level (+1 high, -1 low) and the score.

    `df` has one row per merged profile with columns `target_<trait>` (+1/-1) and
    `<trait>` (the measured score). This is the paper's trait-score correlation for
    composition; its mean over traits is the headline number. NaN where either is constant.
    """
    rows = []
    for trait in traits:
        target, score = df[f"target_{trait}"], df[trait]
        constant = target.nunique() < 2 or score.nunique() < 2
        rows.append({"trait": trait, "pearson_r": np.nan if constant else target.corr(score)})
    return pd.DataFrame(rows)


def dial_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """RQ1 per vector: Spearman ρ(α, score), the sign its level calls for, whether it moves
    that way, ρ signed toward the level (1 = a perfect dial), and the score's range."""
    swept = sweep[sweep.level != "base"]
    rho = spearman_by(swept, "condition", "alpha", "score")
    sign = rho["condition"].map(direction)
    rho["expected sign"] = sign.map({1: "+", -1: "-"})
    rho["moves as intended"] = np.sign(rho["spearman"]) == sign
    rho["signed spearman"] = rho["spearman"] * sign
    span = swept.groupby("condition")["score"].agg(lambda s: s.max() - s.min())
    rho["score range"] = rho["condition"].map(span)
    return rho


def composition_table(comp: pd.DataFrame, traits: Sequence[str]) -> pd.DataFrame:
    """RQ2: `composition_correlation` per (method, α), one row per trait."""
    return pd.concat([
        composition_correlation(sub, traits).assign(method=method, alpha=alpha)
        for (method, alpha), sub in comp.groupby(["method", "alpha"])
    ], ignore_index=True)


def inversion_table(neg: pd.DataFrame) -> pd.DataFrame:
    """RQ3 per vector: the trait score of the base, at α = +1 and at α = −1; `inverted`
    when −1 lands on the other side of the base from +1."""
    base = neg[neg.level == "base"].set_index("trait")["score"]
    rows = []
    for cond, sub in neg[neg.level != "base"].groupby("condition"):
        trait = split_condition(cond)[0]
        by_alpha = sub.set_index("alpha")["score"]
        plus, minus = by_alpha[1.0] - base[trait], by_alpha[-1.0] - base[trait]
        rows.append({"condition": cond, "base": base[trait], "α = +1": by_alpha[1.0],
                     "α = -1": by_alpha[-1.0], "inverted": bool(plus * minus < 0)})
    return pd.DataFrame(rows)


def carry_table(grid: pd.DataFrame) -> pd.DataFrame:
    """RQ4 per (vector, domain α): how far the trait moves toward the vector's level and
    how much character fidelity changes, from β = 0 to the largest β."""
    rows = []
    for (cond, alpha), sub in grid.groupby(["condition", "alpha"]):
        sub = sub.sort_values("beta")
        rows.append({"condition": cond, "α (domain)": alpha,
                     "trait change β=0→max": direction(cond)
                     * (sub.score.iloc[-1] - sub.score.iloc[0]),
                     "fidelity change β=0→max": sub.fidelity.iloc[-1] - sub.fidelity.iloc[0]})
    return pd.DataFrame(rows)


def layer_thirds(df: pd.DataFrame) -> dict[str, Any]:
    """The layer-wise summary: per vector, the mean cosine over the first and last third
    of the layers, and the mean token-wise spread there."""
    n_layers = df.layer.max()
    first, last = df[df.layer <= n_layers // 3], df[df.layer > 2 * n_layers // 3]
    return {"early": first.groupby("condition").cosine.mean(),
            "late": last.groupby("condition").cosine.mean(),
            "sd_early": float(first.cosine_sd.mean()), "sd_late": float(last.cosine_sd.mean())}
