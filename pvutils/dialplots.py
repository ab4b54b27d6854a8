"""Chapter 06's figures: the four dials' dose-response, the Pareto front of trait shift
against capability lost, and the leakage heatmaps (tables from `harness`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .harness import intervals, keyed_matrix
from .personas import split_condition
from .profiles import TRAITS


def plot_dose(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0):
    """One panel per method: the intended trait's score vs strength, 95 % item intervals."""
    methods = list(dict.fromkeys(table["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.2), sharey=True,
                             squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        for condition, rows in table[table["method"] == method].groupby("condition"):
            strengths, mat = keyed_matrix(rows, split_condition(condition)[0])
            ci = intervals(mat, n_boot, seed)
            line = ax.plot(strengths, mat.mean(axis=1), marker="o", label=condition)[0]
            ax.fill_between(strengths, ci[:, 0], ci[:, 1], alpha=0.2, color=line.get_color())
        ax.set_title(method)
        ax.set_xlabel("strength")
    axes[0][0].set_ylabel("intended trait score (1-5)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_pareto(cap: pd.DataFrame):
    """Trait shift vs capability lost (perplexity ratio, factual answers lost), by method;
    circled: the Pareto front on shift and perplexity."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, cost in zip(axes, ("perplexity_ratio", "factual_lost"), strict=True):
        sns.scatterplot(data=cap, x=cost, y="shift", hue="method", style="condition", ax=ax,
                        legend=ax is axes[-1])
        front = cap[cap["front"]]
        ax.scatter(front[cost], front["shift"], s=160, facecolors="none", edgecolors="black")
        ax.axhline(0, color="grey", lw=0.8)
    axes[0].set_xlabel("perplexity / perplexity at strength 0")
    axes[1].set_xlabel("share of factual answers lost")
    axes[0].set_ylabel("shift toward the intended pole")
    axes[1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def plot_leakage(leak: pd.DataFrame):
    """Heatmap per method: effect of each condition (rows) on each trait (columns), with
    the 95 % interval in each cell."""
    methods = list(dict.fromkeys(leak["method"]))
    n_rows = leak["condition"].nunique()
    fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods), 2.2 + 0.5 * n_rows),
                             squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        part = leak[leak["method"] == method]
        effect = part.pivot(index="condition", columns="trait", values="effect")[list(TRAITS)]
        text = part.assign(label=[f"{e:+.2f}\n[{lo:+.2f}, {hi:+.2f}]" for e, lo, hi in
                                  zip(part["effect"], part["lo"], part["hi"], strict=True)])
        labels = text.pivot(index="condition", columns="trait", values="label")[list(TRAITS)]
        sns.heatmap(effect, annot=labels, fmt="", cmap="RdBu_r", center=0, ax=ax,
                    annot_kws={"size": 7}, cbar_kws={"label": "score change"})
        ax.set_title(method)
    fig.tight_layout()
    return fig
