"""The chapters' figures (seaborn) and the caption line every figure carries."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def caption(profile, n: int | None = None, extra: str = "") -> str:
    """The caption line every figure carries: profile, model and sample size."""
    parts = [f"profile `{profile.name}`", f"model {profile.model}"]
    if n is not None:
        parts.append(f"n = {n}")
    return "; ".join(parts) + (f". {extra}" if extra else "")


def plot_alpha_sweep(
    df: pd.DataFrame,
    x: str = "alpha",
    y: str = "score",
    hue: str = "level",
    col: str = "trait",
    title: str = "",
    baseline: Mapping[str, float] | None = None,
):
    """Trait score against the scaling coefficient, one panel per trait."""
    grid = sns.relplot(data=df, x=x, y=y, hue=hue, col=col, kind="line", marker="o",
                       height=2.8, aspect=0.9, facet_kws={"sharey": False})
    grid.set_axis_labels(x.replace("_", " "), "trait score (1-5)")
    if baseline:
        for trait, ax in grid.axes_dict.items():
            if trait in baseline:
                ax.axhline(baseline[trait], color="grey", ls="--", lw=1, label="base model")
    if title:
        grid.figure.suptitle(title, y=1.04)
    return grid


def plot_layerwise(df: pd.DataFrame, hue: str = "model", title: str = ""):
    """Hidden-state cosine similarity to the base model by layer."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    sns.lineplot(data=df, x="layer", y="cosine", hue=hue, marker="o", ax=ax)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("cosine similarity to base (mean over tokens)")
    if title:
        ax.set_title(title)
    return fig


def plot_matrix(
    matrix: pd.DataFrame, title: str = "", fmt: str = ".2f", center: float | None = None
):
    """A labelled heatmap (e.g. the 10 x 10 vector cosine matrix)."""
    fig, ax = plt.subplots(figsize=(7, 5.6))
    sns.heatmap(matrix, annot=True, fmt=fmt, cmap="vlag", center=center, ax=ax,
                annot_kws={"size": 7}, cbar_kws={"label": "cosine similarity"})
    if title:
        ax.set_title(title)
    return fig
