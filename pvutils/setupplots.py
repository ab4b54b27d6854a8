"""The setup chapter's figures of the dials: the ±1 effects, the shared component, the
seeds. Titles are built from the numbers they show, so they say only what the data say."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .plusminus import summary

LABELS = {"contrast": "contrast BFI (1-5)", "embedding": "embedding judge (1-5)"}
ALPHA_COLORS = {1.0: "#4c72b0", -1.0: "#dd8452"}


def plusminus_title(effects: pd.DataFrame, what: str = "vectors") -> str:
    """'k of n <what> move their trait the right way at α = +1 and −1 on both measures
    (m with every interval excluding 0)'."""
    s = summary(effects)
    return (f"{s['right both ways']} of {s['vectors']} {what} move their own trait the "
            f"right way at α = +1 and −1 on both measures ({s['sure both ways']} with every "
            "95 % interval excluding 0)")


def plot_plusminus(effects: pd.DataFrame, title: str | None = None):
    """Each vector's effect on its own trait, signed so that up is the right way
    (the way its level calls for at that α), with its 95 % interval; one panel per measure."""
    measures = list(dict.fromkeys(effects.measure))
    vectors = list(dict.fromkeys(effects.vector))
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 + 0.55 * len(vectors)
                                                        * len(measures), 3.8), squeeze=False)
    width = 0.38
    for ax, measure in zip(axes[0], measures, strict=True):
        sub = effects[effects.measure == measure]
        for k, alpha in enumerate(sorted(sub.alpha.unique(), reverse=True)):
            rows = sub[sub.alpha == alpha].set_index("vector").reindex(vectors)
            sign = rows["expected"].to_numpy()
            y = rows["effect"].to_numpy() * sign
            lo, hi = np.minimum(rows.lo * sign, rows.hi * sign), np.maximum(rows.lo * sign,
                                                                           rows.hi * sign)
            x = np.arange(len(vectors)) + (k - 0.5) * width
            ax.bar(x, y, width, color=ALPHA_COLORS.get(alpha, "grey"), label=f"α = {alpha:+g}")
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", color="black", lw=1)
        ax.axhline(0, color="grey", lw=1)
        ax.set_xticks(range(len(vectors)), vectors, rotation=40, ha="right")
        ax.set(ylabel=f"effect toward the level\n{LABELS.get(measure, measure)}",
               title=measure)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title if title is not None else plusminus_title(effects), fontsize=10)
    fig.tight_layout()
    return fig


def plot_shared_share(share: pd.DataFrame):
    """Each vector's cosine with the mean of all vectors (the shared component)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    sns.barplot(data=share, x="vector", y="cosine_with_mean", color="#8172b3", ax=ax)
    ax.tick_params(axis="x", rotation=40)
    for label in ax.get_xticklabels():
        label.set_ha("right")
    lo, hi = share.cosine_with_mean.min(), share.cosine_with_mean.max()
    ax.set(xlabel="", ylabel="cosine with the mean vector", ylim=(0, 1),
           title=f"Each vector's cosine with the mean of all {len(share)}: {lo:.2f} to {hi:.2f}")
    fig.tight_layout()
    return fig


def plot_seeds(dials: pd.DataFrame):
    """The signed Spearman ρ (α vs the vector's own trait, + = the intended way) of each
    training seed, per condition."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.stripplot(data=dials, x="condition", y="signed spearman", hue="seed", size=8,
                  jitter=0.1, ax=ax, palette="deep")
    ax.axhline(0, color="grey", lw=1)
    held = dials.groupby("condition")["moves as intended"].agg(lambda s: s.all() or not s.any())
    ax.set(xlabel="", ylabel="signed ρ (RQ1 contrast sweep)", ylim=(-1.05, 1.05),
           title=f"Direction the same under every seed for {int(held.sum())} of {len(held)} "
                 "conditions")
    fig.tight_layout()
    return fig


def rq1_kinds_title(dials: pd.DataFrame) -> str:
    """'Moves its trait the intended way over α: raw φ k of n, φ − φ̄ …' from the RQ1 dial
    tables of each kind of vector (a `kind` column)."""
    parts = [f"{kind} {int(sub['moves as intended'].sum())} of {len(sub)}"
             for kind, sub in dials.groupby("kind", sort=False)]
    return "Vectors that move their own trait the intended way over α: " + ", ".join(parts)


def persona_shift_title(shift: pd.DataFrame) -> str:
    """'k of n vectors move their answers toward their persona at α = 1 (m with the 95 %
    interval above 0)': the interval is mean ± 1.96 standard errors over the prompts."""
    low = shift["shift"] - 1.96 * shift["stderr"]
    return (f"{int((shift['shift'] > 0).sum())} of {len(shift)} vectors move their answers "
            f"toward their persona at α = 1 ({int((low > 0).sum())} with the 95 % interval "
            "above 0)")


def plot_persona_shift(shift: pd.DataFrame):
    """Each vector's persona log-likelihood shift with its 95 % interval (normal
    approximation over the held-out prompts); the title counts what the bars show."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    sns.barplot(data=shift, x="condition", y="shift", color="#4c72b0", ax=ax)
    ax.errorbar(range(len(shift)), shift["shift"], yerr=1.96 * shift["stderr"], fmt="none",
                color="black")
    ax.axhline(0, color="grey", lw=1)
    ax.set(xlabel="", ylabel="persona log-likelihood shift (nats/token)",
           title=persona_shift_title(shift))
    ax.tick_params(axis="x", rotation=35)
    return fig
