"""The chapters' figures (seaborn), their one palette and colour scales, the caption line
every figure carries, and `figure`: a numbered figure with its caption in the book.

One palette for the three kinds of model (`LEVEL_COLORS`: a high vector, a low vector,
the base) and one colour scale per quantity (`SCALES`), so a colour means the same on
every page.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

# colour-blind-safe (Okabe-Ito vermillion and blue, a neutral grey)
LEVEL_COLORS: dict[str, str] = {"high": "#D55E00", "low": "#0072B2", "base": "#6E6E6E"}
# quantity -> heatmap colour scale: the same limits wherever the quantity is drawn
SCALES: dict[str, dict] = {
    "cosine": {"cmap": "vlag", "vmin": -1.0, "vmax": 1.0, "center": 0.0},
    "correlation": {"cmap": "vlag", "vmin": -1.0, "vmax": 1.0, "center": 0.0},
    "score": {"cmap": "vlag", "vmin": 1.0, "vmax": 5.0, "center": 3.0},  # the 1-5 trait scale
    "change": {"cmap": "vlag", "center": 0.0},  # signed differences: symmetric around 0
    "weight": {"cmap": "vlag", "vmin": -1.0, "vmax": 1.0, "center": 0.0},  # toy tensors
}


def page_setup() -> None:
    """The look every chapter shares: seaborn's whitegrid theme, and pandas tables shown
    whole: long cells wrap instead of ending in "...", and tables of up to 400 rows and
    any number of columns are not cut to their head and tail (called in each chapter's
    setup)."""
    sns.set_theme(style="whitegrid", context="notebook")
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.max_columns", None)
    pd.set_option("display.max_rows", 400)
    pd.set_option("display.min_rows", 400)


def level_palette(levels: Sequence[str]) -> dict[str, str] | None:
    """The palette for a `level` hue (None when some value is not high / low / base)."""
    levels = list(dict.fromkeys(levels))
    return {lv: LEVEL_COLORS[lv] for lv in levels} if set(levels) <= set(LEVEL_COLORS) else None


def figure(name: str, fig, caption: str) -> None:
    """Show `fig` as a numbered figure with `caption` under it (a myst-nb `glue:figure`,
    labelled `fig-<name>`: cite it in prose as {numref}`fig-<name>`); in JupyterLab the same
    output is an HTML figure. Closes `fig`, so it is not drawn a second time."""
    from IPython.display import display  # notebook-only: the library runs without IPython
    from myst_nb import glue  # notebook-only: the library runs without myst-nb

    fig = getattr(fig, "figure", fig)  # a seaborn FacetGrid holds its figure
    glue(name, fig, display=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    png = base64.b64encode(buf.getvalue()).decode()
    plt.close(fig)
    text = " ".join(caption.split())
    # the book renders text/markdown first (nb_mime_priority_overrides in _config.yml)
    display({"text/markdown": f"```{{glue:figure}} {name}\n:name: fig-{name}\n\n{text}\n```",
             "text/html": f'<figure><img src="data:image/png;base64,{png}"/>'
                          f"<figcaption>{html.escape(text)}</figcaption></figure>"}, raw=True)


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
    col_wrap: int = 5,
):
    """Trait score against the scaling coefficient, one panel per trait (at most
    `col_wrap` panels a row, each titled by its value alone, so long names do not collide)."""
    grid = sns.relplot(data=df, x=x, y=y, hue=hue, col=col, kind="line", marker="o",
                       height=2.8, aspect=0.9, facet_kws={"sharey": False},
                       col_wrap=min(col_wrap, df[col].nunique()),
                       palette=level_palette(df[hue]) if hue in df else None)
    grid.set_axis_labels(x.replace("_", " "), "trait score (1-5)")
    grid.set_titles("{col_name}", size=9)
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
    matrix: pd.DataFrame, title: str = "", fmt: str = ".2f", center: float | None = None,
    scale: str = "cosine", label: str = "cosine similarity",
):
    """A labelled heatmap (e.g. the 10 x 10 vector cosine matrix) on the quantity's
    shared colour scale (`SCALES`), with its colour bar."""
    fig, ax = plt.subplots(figsize=(7, 5.6))
    colours = {**SCALES[scale], **({} if center is None else {"center": center})}
    sns.heatmap(matrix, annot=True, fmt=fmt, ax=ax, annot_kws={"size": 7},
                cbar_kws={"label": label}, **colours)
    if title:
        ax.set_title(title)
    return fig


def plot_features(frame: pd.DataFrame, expected: Mapping[str, int], title: str = ""):
    """The linguistic analysis of one trait: each expected feature's mean against α for
    the high and the low vector (both start at the base, α = 0), 95 % bootstrap intervals
    over answers; each panel's title states the expected direction for the high vector."""
    features = list(expected)
    ncols = min(2, len(features))  # two panels a row: readable at the book's text width
    nrows = -(-len(features) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(features):]:
        ax.set_visible(False)
    for ax, feature in zip(axes.flat, features):
        sns.pointplot(data=frame, x="alpha", y=feature, hue="level", ax=ax, dodge=0.15,
                      errorbar=("ci", 95), palette=level_palette(frame["level"]),
                      native_scale=True, linestyle="-", markersize=4)
        arrow = "up" if expected[feature] > 0 else "down"
        ax.set(title=f"{feature.replace('_', ' ')} (high: {arrow})", xlabel="α", ylabel="")
        if ax.get_legend():
            ax.get_legend().remove()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, title="vector", loc="center left",
                   bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        fig.suptitle(title, y=1.05)
    fig.tight_layout()
    return fig


def plot_transfer(grid: pd.DataFrame):
    """RQ4 in one figure: per vector (x), the trait score (top) and character fidelity
    (bottom) at each (domain α, personality β) of the grid, one marker colour per point of
    the grid (rows: condition, alpha, beta, score, fidelity)."""
    df = grid.assign(setting=[f"α = {a:g}, β = {b:g}" for a, b in zip(grid.alpha, grid.beta)])
    order = list(dict.fromkeys(df.sort_values(["alpha", "beta"]).setting))
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.9 * df.condition.nunique()), 6.4),
                             sharex=True)
    for ax, (value, label) in zip(axes, [("score", "trait score (contrast BFI, 1-5)"),
                                         ("fidelity", "character fidelity")]):
        sns.pointplot(data=df, x="condition", y=value, hue="setting", hue_order=order,
                      palette="mako", linestyles="none", dodge=0.5, ax=ax)
        ax.set(xlabel="", ylabel=label)
        ax.legend_.remove()
    axes[0].legend(title="domain α, personality β", fontsize=8, ncols=min(len(order), 4),
                   loc="upper center", bbox_to_anchor=(0.5, 1.3))
    axes[1].tick_params(axis="x", rotation=35)
    fig.tight_layout()
    return fig
