"""Which layers' weights carry the trait? Each vector added to one block of consecutive
decoder layers at a time (every other tensor left at the base), scored on its own trait.

The layer-wise curve (hidden-state similarity per layer) says where the states differ; it
cannot say which weights make the difference, since every layer's output carries the
change of all the layers before it. Restricting the vector is the direct test: a block's
effect alone, beside the whole vector's, on the contrast BFI (the RQ1 measure).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import stats
from .cache import Stage
from .evaluation import contrast_scores
from .merging import applied
from .personas import direction, split_condition
from .plans import CONTRAST, vector_points
from .plots import LEVEL_COLORS
from .sweeps import Plan, run_sweep

N_BLOCKS = 3  # early, middle, late thirds of the decoder layers
WHOLE = "whole vector"  # every tensor, the embeddings and the final norm included


def layer_blocks(n_layers: int, n_blocks: int = N_BLOCKS) -> dict[str, list[str]]:
    """Consecutive, near-equal blocks of decoder layers: label -> the tensor-name globs of
    `merging.applied(include=...)` (`model.layers.<i>.*`, the Llama / Qwen layout)."""
    if not 1 <= n_blocks <= n_layers:
        raise ValueError(f"need 1 <= n_blocks <= n_layers, got {n_blocks} blocks of "
                         f"{n_layers} layers")
    edges = np.linspace(0, n_layers, n_blocks + 1).round().astype(int)
    return {f"layers {a}–{b - 1}": [f"model.layers.{i}.*" for i in range(a, b)]
            for a, b in zip(edges[:-1], edges[1:], strict=True)}


def block_points(vectors: Sequence[str], n_layers: int) -> list[dict]:
    """The base once per trait, then each vector whole and restricted to each block (α 1)."""
    points = vector_points(list(vectors), ())
    for c in vectors:
        points.append({"condition": c, "alpha": 1.0, "block": WHOLE, "_uses": [c]})
        points += [{"condition": c, "alpha": 1.0, "block": label, "_uses": [c],
                    "_include": globs} for label, globs in layer_blocks(n_layers).items()]
    return points


def own_trait_score(model, tokenizer, P, point: Mapping[str, Any]) -> dict[str, Any]:
    """The point's own trait on the contrast BFI (the base points' too)."""
    trait, level = split_condition(point["condition"], allow_base=True)
    score = contrast_scores(model, tokenizer, [trait], n_pairs=P.contrast_pairs)[trait]
    return {"trait": trait, "level": level, "score": score}


BLOCKS = Stage("layer-blocks", CONTRAST, grid=("sweep_conditions",),
               code=(layer_blocks, block_points, own_trait_score))


def blocks_plan(profile, vectors: Sequence[str], n_layers: int) -> Plan:
    return BLOCKS, block_points(list(vectors), n_layers), ()


PLANS = {BLOCKS.name: blocks_plan}  # the stages of this module, by name (the key tests walk them)


def blocks_sweep(model, tokenizer, vectors: Mapping[str, Any], profile) -> pd.DataFrame:
    """The contrast score of each vector's own trait with the whole vector and with each
    block of its layers alone. Rows: condition, alpha, block, trait, level, score."""
    P = BLOCKS.view(profile)

    def apply(point):
        if not point.get("_uses"):
            return contextlib.nullcontext(model)
        return applied(model, [vectors[point["_uses"][0]]], [1.0],
                       include=point.get("_include"), reuse_buffers=True)

    plan = blocks_plan(P, list(vectors), model.config.num_hidden_layers)
    return run_sweep(plan, P, lambda point: own_trait_score(model, tokenizer, P, point),
                     apply, vectors)


def block_effects(rows: pd.DataFrame) -> pd.DataFrame:
    """Per vector and block: the signed effect (score minus the base's, > 0 toward the
    vector's level) and its share of the whole vector's effect.
    Rows: condition, block, effect, whole, share."""
    base = rows[rows.level == "base"].set_index("trait")["score"]
    out = []
    for (cond, block), sub in rows[rows.level != "base"].groupby(["condition", "block"],
                                                                 sort=False):
        trait = split_condition(cond)[0]
        out.append({"condition": cond, "block": block,
                    "effect": direction(cond) * (float(sub.score.iloc[0]) - base[trait])})
    table = pd.DataFrame(out)
    whole = table[table.block == WHOLE].set_index("condition")["effect"]
    table["whole"] = table.condition.map(whole)
    table["share"] = table.effect / table.whole
    return table


def block_summary(effects: pd.DataFrame) -> pd.DataFrame:
    """Per block: the mean signed effect over the vectors with its 95 % interval, and the
    mean share of the whole vector's effect over the vectors that move their trait the
    intended way when whole (a share of a wrong-way or null effect means nothing).
    Rows: block, effect, low, high, n (vectors), share, n_share (vectors in the share)."""
    moving = effects[effects.whole > 0]
    rows = []
    for block, sub in effects.groupby("block", sort=False):
        est, low, high = stats.mean_ci(sub.effect.to_numpy())
        share = moving[moving.block == block].share
        rows.append({"block": block, "effect": est, "low": low, "high": high, "n": len(sub),
                     "share": float(share.mean()) if len(share) else np.nan,
                     "n_share": len(share)})
    return pd.DataFrame(rows)


def blocks_reading(summary: pd.DataFrame) -> str:
    """One sentence from `block_summary`: the block with the largest effect, which blocks'
    intervals exclude zero, and whether the blocks' effects add up to the whole."""
    parts = summary[summary.block != WHOLE]
    if parts.empty:
        return "**Read from the table:** no block was swept."
    top = parts.loc[parts.effect.idxmax()]
    sure = [b for b, lo in zip(parts.block, parts.low, strict=True) if lo > 0]
    whole = summary.set_index("block").effect.get(WHOLE, np.nan)
    interval = (f" [{top.low:+.3f}, {top.high:+.3f}]" if np.isfinite(top.low)
                else f", no interval over {int(top.n)} vectors")
    return (f"**Read from the table:** the largest mean effect alone is {top.block}'s "
            f"({top.effect:+.3f}{interval}); intervals above zero: "
            f"{', '.join(sure) if sure else 'none'}. The blocks' effects sum to "
            f"{parts.effect.sum():+.3f}, the whole vector's is {whole:+.3f} (the blocks "
            "leave out the embeddings and the final norm, which the whole vector has).")


def plot_block_effects(effects: pd.DataFrame):
    """Each vector's signed effect with the whole vector and with each block alone; the bars
    and their 95 % intervals are `block_summary`'s, so the figure and the table agree."""
    summary = block_summary(effects)
    order = summary.block.tolist()
    data = effects.assign(level=effects.condition.map(lambda c: split_condition(c)[1]))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar(range(len(summary)), summary.effect, color="lightgrey")
    ax.errorbar(range(len(summary)), summary.effect,
                yerr=[summary.effect - summary.low, summary.high - summary.effect],
                fmt="none", color="black", lw=1)
    sns.stripplot(data=data, x="block", y="effect", order=order, hue="level",
                  palette=LEVEL_COLORS, dodge=False, ax=ax)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="", ylabel="trait shift toward the vector's level",
           title="The vector whole and one block of layers at a time (α = 1)")
    fig.tight_layout()
    return fig
