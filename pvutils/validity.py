"""Do the measures measure the trait? A second inventory nothing was developed on (the IPIP
50-item Big-Five markers, Goldberg 1992) scored by likelihood on the swept models, and the
agreement between every pair of measures across the swept conditions.

The contrast BFI's answer pairs, the embedding judge's anchors and the persona judge's
prompts were all written for this project; the IPIP items and their generic agree/disagree
answers were not tuned on anything here, so a vector that moves its trait on the BFI but not
on the IPIP has moved the BFI, not (only) the trait.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import stats
from .bfi import ipip_answer_pairs, ipip_items
from .cache import Stage
from .likelihood import answer_logprobs
from .personas import direction, split_condition
from .plans import vector_points
from .sweeps import Plan, applying, run_sweep


def ipip_item_scores(model, tokenizer, dimensions: Sequence[str] | None = None,
                     system_prompt: str | None = None, batch_size: int = 64,
                     n_pairs: int | None = None) -> pd.DataFrame:
    """One row per IPIP item: p(agree) over the generic answer pairs (softmax of the two
    answers' mean token log-probabilities, as the contrast BFI), raw 1 + 4p, keyed score.
    `system_prompt` None: the interview's "you are a real person" prompt; `n_pairs` the
    first n answer pairs only (None: all), as the contrast BFI's `contrast_pairs`."""
    if system_prompt is None:
        from .evaluation import REAL_PERSON_PROMPT  # evaluation loads the merging stack

        system_prompt = REAL_PERSON_PROMPT
    if n_pairs is not None and n_pairs < 1:
        raise ValueError(f"n_pairs must be at least 1, got {n_pairs}")
    items, pairs = ipip_items(dimensions), ipip_answer_pairs()[:n_pairs]
    seqs = [(it.question, answer) for it in items for pair in pairs for answer in pair]
    lp = answer_logprobs(model, tokenizer, system_prompt, seqs, batch_size, True)
    p = torch.sigmoid(lp[0::2] - lp[1::2]).reshape(len(items), len(pairs)).mean(1).tolist()
    rows = []
    for it, p_agree in zip(items, p, strict=True):
        raw = 1.0 + 4.0 * p_agree
        rows.append(dict(item=it.number, dimension=it.dimension, reverse=it.reverse,
                         p_agree=p_agree, raw=raw, keyed=6.0 - raw if it.reverse else raw))
    return pd.DataFrame(rows)


IPIP = Stage("validity-ipip", ("model", "dtype", "device", "contrast_pairs"),
             grid=("interview_alphas", "sweep_conditions"),
             code=(ipip_item_scores, vector_points))


def ipip_plan(profile, vectors: Sequence[str]) -> Plan:
    """The interview's points (each vector at the interview alphas, and the base)."""
    return IPIP, vector_points(list(vectors), IPIP.view(profile).interview_alphas), ()


def ipip_sweep(model, tokenizer, vectors: Mapping[str, Any], profile) -> pd.DataFrame:
    """The IPIP items of each vector's own trait at every interview point, cached per point.
    Rows: condition, alpha, trait, level, item, keyed (1-5, keyed for the trait)."""
    P = IPIP.view(profile)

    def measure(point):
        trait, level = point["condition"].rsplit("_", 1)
        items = ipip_item_scores(model, tokenizer, [trait], n_pairs=P.contrast_pairs)
        return [{"trait": trait, "level": level, "item": int(r.item), "keyed": float(r.keyed)}
                for r in items.itertuples()]

    return run_sweep(ipip_plan(P, vectors), P, measure, applying(model, vectors), vectors)


PLANS = {IPIP.name: ipip_plan}  # the stages of this module, by name (the key tests walk them)


def trait_effect(items: pd.DataFrame) -> pd.DataFrame:
    """Per vector and α: the item-wise shift from the base of its trait, signed toward the
    vector's level (> 0: moved the intended way), with its interval over the items."""
    base = items[items.level == "base"].set_index(["trait", "item"])["keyed"]
    rows = []
    for (cond, alpha), sub in items[items.level != "base"].groupby(["condition", "alpha"]):
        trait = split_condition(cond)[0]
        shift = direction(cond) * (sub.set_index("item")["keyed"]
                                   - base.loc[trait].reindex(sub["item"]).to_numpy())
        est, low, high = stats.mean_ci(shift.to_numpy())
        rows.append({"condition": cond, "alpha": alpha, "signed shift": est, "low": low,
                     "high": high, "n items": len(shift)})
    return pd.DataFrame(rows)


def point_scores(contrast: pd.DataFrame, interviews: pd.DataFrame,
                 ipip: pd.DataFrame) -> pd.DataFrame:
    """One row per (condition, α) of the interview grid, one column per measure: the
    contrast BFI, each judge, and the IPIP mean."""
    keys = ["condition", "alpha", "trait", "level"]
    judged = interviews.pivot_table(index=keys, columns="judge", values="score").reset_index()
    judged.columns.name = None
    ip = ipip.groupby(keys, as_index=False)["keyed"].mean().rename(columns={"keyed": "IPIP"})
    cb = contrast[keys + ["score"]].rename(columns={"score": "contrast BFI"})
    return judged.merge(cb, on=keys, how="left").merge(ip, on=keys, how="left")


def shifts_from_base(points: pd.DataFrame, measures: Sequence[str]) -> pd.DataFrame:
    """Each measure minus the base model's value of the same trait, for the swept points
    (so points of different traits are comparable: all start at 0)."""
    base = points[points.level == "base"].set_index("trait")[list(measures)]
    swept = points[points.level != "base"].copy()
    for m in measures:
        swept[m] = swept[m] - swept["trait"].map(base[m])
    return swept


def agreement(shifts: pd.DataFrame, measures: Sequence[str]) -> pd.DataFrame:
    """Spearman ρ between every pair of measures across the swept points (their shifts
    from the base), with a 95 % interval over the points."""
    rows = []
    for a, b in combinations(measures, 2):
        both = shifts[[a, b]].dropna()
        est, low, high = stats.spearman_ci(both[a], both[b]) if len(both) > 1 \
            else (np.nan, np.nan, np.nan)
        rows.append({"measures": f"{a} ~ {b}", "spearman": est, "low": low, "high": high,
                     "n points": len(both)})
    return pd.DataFrame(rows)


def corroboration(agree: pd.DataFrame, measure: str = "contrast BFI",
                  others: Sequence[str] = ("IPIP", "embedding")) -> str:
    """One sentence per independent measure: does it agree with `measure` (the headline's)
    across the points? From `agreement`'s rows; an interval holding zero is said to be no
    corroboration, so a verdict resting on `measure` is read as resting on it alone."""
    rows = agree.set_index("measures")
    parts = []
    for other in others:
        key = next((k for k in (f"{measure} ~ {other}", f"{other} ~ {measure}") if k in rows.index),
                   None)
        if key is None:
            continue
        r = rows.loc[key]
        n = int(r["n points"])
        if not np.isfinite(r["low"]):
            parts.append(f"{other} cannot be judged: ρ = {r['spearman']:+.2f} over {n} points, "
                         "too few for an interval")
            continue
        word = ("corroborates it" if r["low"] > 0 else "contradicts it" if r["high"] < 0
                else "does not corroborate it (the interval holds zero)")
        parts.append(f"{other} {word}: ρ = {r['spearman']:+.2f} [{r['low']:+.2f}, "
                     f"{r['high']:+.2f}] over {n} points")
    return f"Against the {measure}: " + "; ".join(parts) + "." if parts else ""
