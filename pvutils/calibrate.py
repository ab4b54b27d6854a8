"""Calibration: which α gives a wanted trait score? (`python -m pvutils dial`)

The α → score curve comes from the cached item-level vector sweep (`harness.dose_sweep`),
fitted monotone by isotonic regression (scipy's; its direction read off the data, since
some vectors move their trait the wrong way) and inverted by linear interpolation between
the fitted points. The interval is a bootstrap over the BFI items of the trait: resample
items, refit, invert. Targets outside the fitted curve's range are refused, naming it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import isotonic_regression

from . import harness
from .artifacts import artifacts_dir
from .cache import Stage
from .evaluation import contrast_scores
from .harness import dose_plan, dose_sweep, item_bootstrap, keyed_matrix, vector_dial
from .merging import applied, merge_from_config
from .models import load_model, load_tokenizer, resolve_model_dir
from .personas import split_condition
from .plans import CONTRAST
from .profiles import get_profile
from .sweeps import Plan, point_files, run_sweep
from .training import vector_path


class DialError(ValueError):
    """A target the dial cannot reach, or a sweep it cannot fit."""


@dataclass(frozen=True)
class Dial:
    alpha: float
    lo: float  # 95 % item-bootstrap interval of alpha (±inf: resamples miss the target)
    hi: float
    reachable: tuple[float, float]  # fitted scores at the ends of the swept alphas
    increasing: bool
    share_reached: float  # share of bootstrap refits that could reach the target


def monotone_fit(alphas: Sequence[float], scores: Sequence[float],
                 increasing: bool | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """(alphas sorted, isotonic fit of the scores, direction). Direction from the sign of
    the least-squares slope unless given."""
    x, y = np.asarray(alphas, float), np.asarray(scores, float)
    if len(x) < 2 or len(np.unique(x)) != len(x):
        raise DialError(f"the sweep needs at least two distinct alphas, got {x.tolist()}")
    order = np.argsort(x)
    x, y = x[order], y[order]
    if increasing is None:
        increasing = bool(np.polyfit(x, y, 1)[0] >= 0)
    fitted = isotonic_regression(y, increasing=increasing).x
    return x, np.asarray(fitted), increasing


def invert(x: np.ndarray, fitted: np.ndarray, target: float) -> float | None:
    """The first α (walking up) where the monotone fit reaches `target`, linearly
    interpolated between fitted points; None when the fit never reaches it."""
    f = fitted if fitted[-1] >= fitted[0] else -fitted
    t = target if fitted[-1] >= fitted[0] else -target
    if not f[0] <= t <= f[-1]:
        return None
    i = int(np.searchsorted(f, t, side="left"))
    if i == 0 or f[i] == f[i - 1]:
        return float(x[i])
    return float(x[i - 1] + (t - f[i - 1]) * (x[i] - x[i - 1]) / (f[i] - f[i - 1]))


def dial_alpha(alphas: Sequence[float], matrix: np.ndarray, target: float,
               n_boot: int = 1000, seed: int = 0, label: str = "the vector") -> Dial:
    """α reaching `target` on the monotone fit of mean score (rows of `matrix`: alphas,
    columns: items), with a 95 % item-bootstrap interval."""
    x, fitted, increasing = monotone_fit(alphas, matrix.mean(axis=1))
    low, high = float(fitted.min()), float(fitted.max())
    alpha = invert(x, fitted, target)
    if alpha is None:
        raise DialError(f"target {target} is outside the range {label} reaches: "
                        f"{low:.3f}..{high:.3f} over alpha {x[0]:g}..{x[-1]:g}")
    order = np.argsort(np.asarray(alphas, float))
    found = []
    for boot in item_bootstrap(matrix[order], n_boot, seed):
        refit = monotone_fit(x, boot, increasing)[1]
        a = invert(x, refit, target)
        if a is None:  # this resample's curve misses the target: alpha lies past an end
            a = -np.inf if (target < refit.min()) == increasing else np.inf
        found.append(a)
    found = np.asarray(found)
    lo, hi = np.quantile(found, [0.025, 0.975], method="inverted_cdf")  # no inf - inf
    return Dial(alpha, float(lo), float(hi), (low, high), increasing,
                float(np.isfinite(found).mean()))


def mergekit_config(base: str | Path, vector: str | Path, alpha: float) -> dict:
    """The task-arithmetic merge θ + αφ as a mergekit-style config for `pvutils merge`."""
    return {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
            "models": [{"vector": str(vector), "parameters": {"weight": round(alpha, 6)}}]}


def vector_dose(profile, condition: str, vector: Path, model=None, tokenizer=None):
    """The cached item-level α sweep of one vector (the model is loaded only when a point
    is missing): α = 0 (the base) and the profile's alphas."""
    P = harness.DOSE["vector"].view(profile)
    plan = dose_plan(P, "vector", [condition], sorted({0.0, *P.alphas}), {condition: [condition]})
    inputs = {condition: vector}
    files = [f for part in harness.split_off(plan) for f in point_files(part, P, inputs)]
    if model is None and not all(f.exists() for f in files):
        model = load_model(P.model, dtype=P.dtype, device=P.device)
        tokenizer = load_tokenizer(P.model)
    return dose_sweep(model, tokenizer, plan, P, vector_dial(model, inputs), inputs)


def default_targets(x: np.ndarray, fitted: np.ndarray, n: int = 3) -> list[float]:
    """`n` targets evenly inside the fitted curve's range, its ends left out."""
    return np.linspace(fitted[0], fitted[-1], n + 2)[1:-1].round(3).tolist()


def dial_table(dose: pd.DataFrame, targets: Sequence[float] | None = None,
               n_boot: int = 1000, seed: int = 0, n_targets: int = 3) -> pd.DataFrame:
    """Dial every vector of a dose table (its `method == "vector"` rows) to each target
    (default: `n_targets` evenly inside its reachable range).
    Rows: condition, target, alpha, lo, hi, resamples_reaching, note; a target out of reach
    has NaN there and the reason in `note`, an interval past the swept range (too few
    resamples reach the target) is ±inf, and `note` says so."""
    rows = []
    for condition, part in dose[dose["method"] == "vector"].groupby("condition", sort=False):
        strengths, mat = keyed_matrix(part, split_condition(condition)[0])
        x, fitted, _ = monotone_fit(strengths, mat.mean(axis=1))
        for target in default_targets(x, fitted, n_targets) if targets is None else targets:
            try:
                d = dial_alpha(strengths, mat, target, n_boot, seed, label=condition)
            except DialError as err:
                rows.append({"condition": condition, "target": target, "note": str(err)})
                continue
            unbounded = not (np.isfinite(d.lo) and np.isfinite(d.hi))
            rows.append({"condition": condition, "target": target, "alpha": d.alpha,
                         "lo": d.lo, "hi": d.hi, "resamples_reaching": d.share_reached,
                         "note": f"interval unbounded: {d.share_reached:.0%} of the item "
                                 "resamples reach the target" if unbounded else None})
    columns = ["condition", "target", "alpha", "lo", "hi", "resamples_reaching", "note"]
    return pd.DataFrame(rows).reindex(columns=columns)


def rescore(model, tokenizer, vectors, point, n_pairs: int | None = None) -> dict[str, float]:
    """The contrast score of the condition's trait with θ + α φ (the point's alpha)."""
    trait = split_condition(point["condition"])[0]
    with applied(model, [vectors[point["condition"]]], [point["alpha"]], reuse_buffers=True):
        return {"measured": contrast_scores(model, tokenizer, [trait], n_pairs=n_pairs)[trait]}


DIAL_CHECK = Stage("dial-check", CONTRAST, grid=("sweep_conditions",), code=(rescore,))


def dial_check_plan(profile, table: pd.DataFrame) -> Plan:
    """One point per dialled (condition, alpha) of a `dial_table`."""
    dialled = table.dropna(subset=["alpha"])
    return DIAL_CHECK, [{"condition": c, "alpha": float(a), "_uses": [c]}
                        for c, a in zip(dialled["condition"], dialled["alpha"], strict=True)], ()


def check_dials(model, tokenizer, vectors, table: pd.DataFrame, profile) -> pd.DataFrame:
    """`table` with `measured`: the score of the model merged at each returned alpha."""
    P = DIAL_CHECK.view(profile)
    plan = dial_check_plan(P, table)
    if not plan[1]:
        return table.assign(measured=np.nan)
    checks = run_sweep(plan, P, lambda point: rescore(model, tokenizer, vectors, point,
                                                      P.contrast_pairs), inputs=vectors)
    return table.merge(checks, on=["condition", "alpha"], how="left")


def cli_dial(argv: list[str]) -> int:
    """python -m pvutils dial --trait extraversion --level high --target 4.0 [--yaml]"""
    ap = argparse.ArgumentParser(prog="python -m pvutils dial", description=__doc__.split("\n")[0])
    ap.add_argument("--trait", required=True)
    ap.add_argument("--level", required=True, choices=("high", "low"))
    ap.add_argument("--target", required=True, type=float, help="wanted 1-5 trait score")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--yaml", action="store_true", help="print the merge config, write nothing")
    ap.add_argument("--out", help="merged model directory (default: under the artifacts)")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    args = ap.parse_args(argv)
    profile = get_profile(args.profile)
    condition = f"{args.trait}_{args.level}"
    vector = vector_path(profile.name, condition)
    if not vector.exists():
        raise SystemExit(f"no vector {vector}; run `python -m pvutils train-vectors "
                         f"--profile {profile.name}` first")
    table = vector_dose(profile, condition, vector)
    alphas, mat = keyed_matrix(table, args.trait)
    try:
        dial = dial_alpha(alphas, mat, args.target, args.boot, profile.seed, condition)
    except DialError as err:
        raise SystemExit(f"dial: {err}") from None
    print(f"{condition}: alpha = {dial.alpha:.3f} for {args.trait} = {args.target} "
          f"(95% CI {dial.lo:.3f}..{dial.hi:.3f}; reachable {dial.reachable[0]:.3f}.."
          f"{dial.reachable[1]:.3f}; {dial.share_reached:.0%} of resamples reach it)")
    config = mergekit_config(resolve_model_dir(profile.model), vector, dial.alpha)
    if args.yaml:
        print(yaml.safe_dump(config, sort_keys=False), end="")
        return 0
    out = Path(args.out) if args.out else (artifacts_dir() / profile.name / "dialled"
                                           / f"{condition}-{args.target:g}")
    print(f"merged model: {merge_from_config(config, out)}")
    return 0
