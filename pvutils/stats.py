"""The chapters' statistics: correlations per group, their 95 % intervals, and the tables
each question reports.

Pure functions of sweep tables (pandas DataFrames); correlations come from pandas and
scipy, intervals from `scipy.stats.bootstrap` (percentile, a fixed seed, so a page and a
test that recompute one get the same bounds) or the exact binomial interval for a count.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .personas import direction, split_condition

CONFIDENCE = 0.95
N_RESAMPLES = 2000  # bootstrap resamples of every interval (seconds at most per table)
MIN_N = 4  # fewer entries than this get no bootstrap interval (3 points resample to
# themselves, two of them, or a constant: a 3-point interval would look falsely certain)
SEED = 0  # the resampling seed: a rerun (and a test) reproduces every interval

Interval = tuple[float, float, float]  # (estimate, low, high)


def bootstrap_ci(statistic, *samples, paired: bool = True, vectorized: bool = False,
                 n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Interval:
    """`statistic(*samples)` and its 95 % percentile-bootstrap interval (scipy), resampling
    the samples' entries together when `paired`. Resamples where the statistic is undefined
    (a constant resample has no correlation) are left out. NaN bounds when a sample has
    fewer than `MIN_N` entries (a bootstrap of so few would look certain) or no resample
    is defined."""
    arrays = [np.asarray(x, dtype=float) for x in samples]
    estimate = float(statistic(*arrays))
    if min(len(a) for a in arrays) < MIN_N or not np.isfinite(estimate):
        return estimate, np.nan, np.nan
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(arrays, statistic, paired=paired, vectorized=vectorized,
                              n_resamples=n_resamples, method="percentile",
                              confidence_level=CONFIDENCE, rng=np.random.default_rng(seed))
    dist = np.asarray(res.bootstrap_distribution, dtype=float)
    if not np.isfinite(dist).any():
        return estimate, np.nan, np.nan
    tail = (1 - CONFIDENCE) / 2
    low, high = np.nanquantile(dist, [tail, 1 - tail])
    return estimate, float(low), float(high)


def _pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson r along `axis` (vectorized over resamples); NaN where either is constant."""
    x = x - x.mean(axis=axis, keepdims=True)
    y = y - y.mean(axis=axis, keepdims=True)
    with np.errstate(all="ignore"):
        r = (x * y).sum(axis) / np.sqrt((x * x).sum(axis) * (y * y).sum(axis))
    return np.where(np.isfinite(r), r, np.nan)


def _spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman rho along `axis`: Pearson r of average ranks (as `scipy.stats.spearmanr`)."""
    return _pearson(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis)


def spearman_ci(x, y, seed: int = SEED) -> Interval:
    """Spearman rho of paired observations, bootstrapped over the pairs."""
    return bootstrap_ci(_spearman, x, y, vectorized=True, seed=seed)


def pearson_ci(x, y, seed: int = SEED) -> Interval:
    """Pearson r of paired observations, bootstrapped over the pairs."""
    return bootstrap_ci(_pearson, x, y, vectorized=True, seed=seed)


def mean_ci(x, seed: int = SEED) -> Interval:
    """The mean and its bootstrap interval over the entries."""
    return bootstrap_ci(lambda a, axis=-1: np.mean(a, axis=axis), x, vectorized=True, seed=seed)


def difference_ci(a, b, seed: int = SEED) -> Interval:
    """mean(a) - mean(b) of two independent samples, each resampled on its own."""
    return bootstrap_ci(lambda u, v, axis=-1: np.mean(u, axis=axis) - np.mean(v, axis=axis),
                        a, b, paired=False, vectorized=True, seed=seed)


def proportion_ci(k: int, n: int) -> Interval:
    """k of n as a share with its exact (Clopper-Pearson) interval; NaN for n = 0."""
    if n == 0:
        return np.nan, np.nan, np.nan
    ci = stats.binomtest(int(k), int(n)).proportion_ci(CONFIDENCE, method="exact")
    return k / n, float(ci.low), float(ci.high)


def rows_ci(statistic, n: int, seed: int = SEED) -> Interval:
    """A statistic of `n` rows (it takes an index array, shape (..., n)), bootstrapped over
    the rows: for numbers computed from several columns of the same rows at once."""
    return bootstrap_ci(lambda idx, axis=-1: statistic(idx.astype(int)), np.arange(n),
                        vectorized=True, seed=seed)


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
        _, low, high = pearson_ci(target, score) if not constant else (0, np.nan, np.nan)
        rows.append({"trait": trait, "pearson_r": np.nan if constant else target.corr(score),
                     "low": low, "high": high})
    return pd.DataFrame(rows)


def _mean_r(tables: Sequence[pd.DataFrame], traits: Sequence[str]):
    """The statistic "mean over tables and traits of Pearson r(target, score)" of a row
    index: row i of every table is the same profile, so one index resamples profiles."""
    if len({len(t) for t in tables}) != 1:
        raise ValueError("the tables must hold the same profiles (one row each)")
    arrays = [(t[[f"target_{x}" for x in traits]].to_numpy(float),
               t[list(traits)].to_numpy(float)) for t in tables]

    def mean_r(idx: np.ndarray) -> np.ndarray:
        r = np.stack([_pearson(np.moveaxis(tg[idx], -1, 0), np.moveaxis(sc[idx], -1, 0))
                      for tg, sc in arrays])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples stay NaN
            return np.nanmean(r, axis=(0, 1))

    return mean_r


def mean_composition_ci(tables: pd.DataFrame | Sequence[pd.DataFrame],
                        traits: Sequence[str]) -> Interval:
    """The mean over traits (and over `tables`, e.g. one per α) of `composition_correlation`,
    bootstrapped over the profiles: resampling a profile moves every trait's r together."""
    tables = [tables] if isinstance(tables, pd.DataFrame) else list(tables)
    return rows_ci(_mean_r(tables, traits), len(tables[0]))


def composition_gain_ci(treated: Sequence[pd.DataFrame], plain: Sequence[pd.DataFrame],
                        traits: Sequence[str]) -> Interval:
    """Mean trait-score r of `treated` tables minus that of `plain` ones (e.g. with and
    without DARE), bootstrapped over the same resampled profiles (paired)."""
    a, b = _mean_r(treated, traits), _mean_r(plain, traits)
    if len(treated[0]) != len(plain[0]):
        raise ValueError("the tables must hold the same profiles (one row each)")
    return rows_ci(lambda idx: a(idx) - b(idx), len(treated[0]))


def fidelity_gain_ci(model: Mapping[str, Any], base: Mapping[str, Any]) -> tuple[Interval, int]:
    """Pooled keyword rate (per 100 words) of `model` minus `base`, bootstrapped over the
    held-out prompts they both answered (paired: a prompt is resampled for both); and the
    number of prompts."""
    k1, w1, k0, w0 = (np.asarray(row[c], dtype=float) for row in (model, base)
                      for c in ("fidelity_keywords", "fidelity_words"))

    def rate(k: np.ndarray, w: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return 100 * k[idx].sum(-1) / np.maximum(w[idx].sum(-1), 1)

    def gain(idx: np.ndarray) -> np.ndarray:
        return rate(k1, w1, idx) - rate(k0, w0, idx)

    return rows_ci(gain, len(k1)), len(k1)


def dial_table(sweep: pd.DataFrame, with_base: bool = True) -> pd.DataFrame:
    """RQ1 per vector: Spearman ρ(α, score), the sign its level calls for, whether it moves
    that way, ρ signed toward the level (1 = a perfect dial) with its 95 % interval over the
    α points, and the score's range. The dial starts at the base model: `with_base` adds
    the base (α = 0) of the vector's trait as a point, so a *low* vector whose scores fall
    with α but all lie above the base does not count as lowering its trait."""
    swept = sweep[sweep.level != "base"]
    if with_base:
        base = sweep[sweep.level == "base"]
        swept = pd.concat([swept] + [base[base.trait == split_condition(c)[0]].assign(
            condition=c) for c in swept.condition.unique()], ignore_index=True)
    rho = spearman_by(swept, "condition", "alpha", "score")
    sign = rho["condition"].map(direction)
    rho["expected sign"] = sign.map({1: "+", -1: "-"})
    rho["moves as intended"] = np.sign(rho["spearman"]) == sign
    rho["signed spearman"] = rho["spearman"] * sign
    bounds = {c: spearman_ci(sub.alpha, sub.score)[1:] for c, sub in swept.groupby("condition")}
    low, high = (rho["condition"].map(lambda c, i=i: bounds[c][i]) * sign for i in (0, 1))
    rho["signed low"], rho["signed high"] = np.fmin(low, high), np.fmax(low, high)
    span = swept.groupby("condition")["score"].agg(lambda s: s.max() - s.min())
    rho["score range"] = rho["condition"].map(span)
    return rho


def dial_summary(rho: pd.DataFrame) -> dict[str, Interval]:
    """The RQ1 headline of a dial table: the mean signed ρ over vectors (interval over the
    vectors) and the share of vectors moving as intended (exact binomial interval)."""
    signed = rho["signed spearman"].dropna()
    return {"mean_signed_rho": mean_ci(signed),
            "share_moving": proportion_ci(int(rho["moves as intended"].sum()), len(rho))}


def composition_table(comp: pd.DataFrame, traits: Sequence[str]) -> pd.DataFrame:
    """RQ2: `composition_correlation` per (method, α), one row per trait."""
    return pd.concat([
        composition_correlation(sub, traits).assign(method=method, alpha=alpha)
        for (method, alpha), sub in comp.groupby(["method", "alpha"])
    ], ignore_index=True)


def inversion_table(neg: pd.DataFrame) -> pd.DataFrame:
    """RQ3 per vector: the trait score of the base, at α = +1 and at α = −1. `inverted` is
    the paper's claim: α = −1 moves the trait against the vector's level (down from the
    base for a high vector, up for a low one); `both ways` also needs α = +1 to move it
    the intended way (so the two land on opposite sides of the base)."""
    base = neg[neg.level == "base"].set_index("trait")["score"]
    rows = []
    for cond, sub in neg[neg.level != "base"].groupby("condition"):
        trait = split_condition(cond)[0]
        by_alpha = sub.set_index("alpha")["score"]
        plus, minus = by_alpha[1.0] - base[trait], by_alpha[-1.0] - base[trait]
        inverted = bool(direction(cond) * minus < 0)
        rows.append({"condition": cond, "base": base[trait], "α = +1": by_alpha[1.0],
                     "α = -1": by_alpha[-1.0], "inverted": inverted,
                     "both ways": inverted and bool(direction(cond) * plus > 0)})
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


def composition_summary(comp: pd.DataFrame, traits: Sequence[str]) -> pd.DataFrame:
    """RQ2 per (method, α): the mean trait-score r over the traits and its interval over
    the profiles."""
    rows = []
    for (method, alpha), sub in comp.groupby(["method", "alpha"]):
        est, low, high = mean_composition_ci(sub.sort_values("profile"), traits)
        rows.append({"method": method, "alpha": alpha, "mean r": est, "low": low, "high": high,
                     "profiles": len(sub)})
    return pd.DataFrame(rows)


def rate_table(df: pd.DataFrame, group: str, rate: str = "disclaimer_rate",
               n: str = "n_answers") -> pd.DataFrame:
    """Per group: pooled count, total, share and its exact binomial interval (the rows
    hold a rate over `n` answers each)."""
    rows = []
    for key, sub in df.groupby(group, sort=False):
        k = int(round(float((sub[rate] * sub[n]).sum())))
        total = int(sub[n].sum())
        share, low, high = proportion_ci(k, total)
        rows.append({group: key, "answers": total, "with it": k, "share": share, "low": low,
                     "high": high})
    return pd.DataFrame(rows)
