"""What chapter 06's tables say, one sentence each, written from the tables themselves.

A reader of the bench chapter sees a figure per question; these sentences state what the
run's numbers show beneath each figure, so the prose never claims more than the data (a
dial "works" here only where its interval says so). Each function takes the table the
chapter displays and returns Markdown.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _count(mask: pd.Series) -> str:
    return f"{int(mask.sum())} of {len(mask)}"


def _listing(parts: list[str]) -> str:
    return "; ".join(parts) if parts else "none"


def dose_reading(summary: pd.DataFrame) -> str:
    """Per method (`harness.dose_summary` rows): how many conditions shift their trait the
    intended way from off to the strongest setting, and for how many ρ's whole interval
    lies above zero (a dial a user can rely on)."""
    shifted, sure = [], []
    for method, rows in summary.groupby("method", sort=False):
        shifted.append(f"{method} {_count(rows['shift'] > 0)}")
        swept = rows.dropna(subset=["rho_lo"])
        sure.append(f"{method} {_count(swept['rho_lo'] > 0)}" if len(swept)
                    else f"{method} n/a (fewer than 3 strengths)")
    return (f"**Read from the table:** shifted the intended way at the strongest setting: "
            f"{_listing(shifted)}. With ρ's 95 % interval above zero: {_listing(sure)}.")


def pareto_reading(cost: pd.DataFrame) -> str:
    """The Pareto front's points and, per method, the share of factual questions lost at
    its strongest setting (mean over conditions) (`harness.capability_table` rows)."""
    front = [f"{r.method}@{r.strength:g} ({r.condition})"
             for r in cost[cost["front"]].itertuples(index=False)]
    top = cost.loc[cost.groupby(["method", "condition"], sort=False)["strength"].idxmax()]
    lost = top.groupby("method", sort=False)["factual_lost"].mean()
    ppl = top.groupby("method", sort=False)["perplexity_ratio"].mean()
    costs = [f"{m} {lost[m]:.2f} (perplexity × {ppl[m]:.2f})" for m in lost.index]
    return (f"**Read from the table:** on each vector's front (every dial but P2): "
            f"{_listing(front)}. Share of factual "
            f"questions lost at each method's strongest setting, mean over conditions: "
            f"{_listing(costs)}.")


def leakage_reading(leak: pd.DataFrame) -> str:
    """How many intended and how many off-target changes have an interval that excludes
    zero (`harness.leakage` rows), and the largest off-target one."""
    excludes = (leak["lo"] > 0) | (leak["hi"] < 0)
    own, other = leak[leak["intended"]], leak[~leak["intended"]]
    text = (f"**Read from the figure:** changes whose interval excludes zero: intended "
            f"trait {_count(excludes[own.index])}, other traits "
            f"{_count(excludes[other.index])}.")
    if len(other):
        big = other.loc[other["effect"].abs().idxmax()]
        text += (f" The largest off-target change in size: {big['method']} {big['condition']} on "
                 f"{big['trait']}, {big['effect']:+.3f} [{big['lo']:+.3f}, {big['hi']:+.3f}].")
    return text


def calibration_reading(dials: pd.DataFrame, tolerance: float = 0.01) -> str:
    """How many dialled targets the model at the returned α meets within `tolerance`, and
    how many α intervals are unbounded (`calibrate.check_dials` rows)."""
    if dials.empty:
        return "**Read from the table:** no target was dialled."
    checked = dials.dropna(subset=["measured"])
    met = (checked["measured"] - checked["target"]).abs() <= tolerance
    open_ = ~np.isfinite(dials["lo"]) | ~np.isfinite(dials["hi"])
    return (f"**Read from the table:** the model at the returned α scores within "
            f"{tolerance:g} of its target for {_count(met)} checked targets; the α interval "
            f"is unbounded for {_count(open_)} (some item resamples never reach the target: "
            f"the α is a point estimate there).")


def lowrank_reading(kept: pd.DataFrame) -> str:
    """Per rank (`lowrank.kept_table` rows): the median share of the full vector's shift
    kept, over the vectors whose full shift goes the intended way (others have no share)."""
    ranked = kept[kept["label"] != "full"]
    parts = []
    for label, rows in ranked.groupby("label", sort=False):
        shares = rows["kept"].dropna()
        mb = rows["megabytes"].median()
        parts.append(f"{label} ({mb:.0f} MB): median {shares.median():.2f} of {len(shares)}"
                     if len(shares) else f"{label}: no vector with a share")
    undefined = ranked.loc[ranked["kept"].isna(), "condition"].unique().tolist()
    text = f"**Read from the table:** share kept, {_listing(parts)}."
    if undefined:
        text += (f" No share for {', '.join(undefined)}: the full vector does not move "
                 f"its trait the intended way at this α.")
    return text


def bridge_reading(bridge: pd.DataFrame, layer: int | None = None) -> str:
    """Per condition (`steering.bridge_sweep` rows): the layer where the vector's residual
    shift is most aligned with the steering direction, and the cosine there; with `layer`,
    the mean cosine at the steering layer too."""
    best = bridge.loc[bridge.groupby("condition", sort=False)["cosine"].idxmax()]
    parts = [f"{r.condition} {r.cosine:+.2f} at layer {int(r.layer)}"
             for r in best.itertuples(index=False)]
    text = f"**Read from the figure:** the highest cosine per vector: {_listing(parts)}."
    if layer is not None and (bridge["layer"] == layer).any():
        at = bridge.loc[bridge["layer"] == layer, "cosine"]
        vectors = "vector" if len(at) == 1 else "vectors"
        text += f" At the steering layer ({layer}): mean {at.mean():+.2f} over {len(at)} {vectors}."
    return text
