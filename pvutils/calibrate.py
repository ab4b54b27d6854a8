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
import yaml
from scipy.optimize import isotonic_regression

from .artifacts import artifacts_dir
from .harness import dose_sweep, item_bootstrap, keyed_matrix, vector_dial
from .merging import merge_from_config
from .models import load_model, load_tokenizer, resolve_model_dir
from .pointcache import chapter_cache as sweep_cache
from .profiles import get_profile
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
    """The cached item-level α sweep of one vector (computed when missing): α = 0 (the
    base) and the profile's alphas."""
    cache = sweep_cache(profile, "dose-vector", {condition: vector})
    alphas = sorted({0.0, *profile.alphas})
    if model is None and not cache.exists():
        model = load_model(profile.model, dtype=profile.dtype, device=profile.device)
        tokenizer = load_tokenizer(profile.model)
    return dose_sweep(model, tokenizer, "vector", vector_dial(model, {condition: vector})
                      if model is not None else None, [condition], alphas, cache,
                      n_pairs=profile.contrast_pairs)


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
