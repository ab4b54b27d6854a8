"""One harness for four trait dials: personality vectors (α), activation steering (c),
NPTI (γ) and P2 prompting (intensity), on the same model, items and measure.

Every sweep point stores the likelihood-contrast answer of all 44 BFI items, so each
number below comes with a 95 % interval from a bootstrap over items (paired across the
strengths of a dial: one resample of items is used for all of them):

- `monotonicity`: Spearman's ρ between strength and the intended trait's score;
- `resolution`: how many strength levels are told apart at the interval;
- `leakage`: each dial's effect on all five traits (off-diagonal = what bleeds);
- `pareto_front`: which settings no other setting beats on both trait shift and
  capability lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .baselines import BIPOLAR_ADJECTIVES, P2_TEMPLATE, npti_intervention, npti_neurons
from .bfi import ITEMS_BY_NUMBER
from .capability import capability
from .evaluation import REAL_PERSON_PROMPT, contrast_item_scores
from .merging import applied
from .personas import split_condition
from .pointcache import run_points as run_sweep
from .profiles import TRAITS
from .steering import condition_direction, steered

# (context manager that puts the model at the point, system prompt) for (condition, strength)
PointFactory = Callable[[str, float], tuple[contextlib.AbstractContextManager, str]]


# --- the four dials as point factories -------------------------------------------------


def vector_dial(model, vectors: Mapping[str, Any]) -> PointFactory:
    """θ + α φ_condition (in place, restored on exit)."""
    def at(condition: str, alpha: float):
        if alpha == 0:
            return contextlib.nullcontext(model), REAL_PERSON_PROMPT
        return applied(model, [vectors[condition]], [alpha], reuse_buffers=True), \
            REAL_PERSON_PROMPT
    return at


def steering_dial(model, directions: Mapping[str, Any], layer: int) -> PointFactory:
    """c × the steering direction toward the condition, added at `layer`."""
    def at(condition: str, c: float):
        return steered(model, condition_direction(directions, condition), c, layer), \
            REAL_PERSON_PROMPT
    return at


def npti_dial(model, tokenizer, neurons: dict[str, Any] | None = None) -> PointFactory:
    """NPTI toward the condition's level with strength γ; each trait's neurons are found
    on first use (only sweep points not yet cached need them) and kept in `neurons`."""
    neurons = {} if neurons is None else neurons

    def at(condition: str, gamma: float):
        trait, level = split_condition(condition)
        if gamma == 0:
            return contextlib.nullcontext(model), REAL_PERSON_PROMPT
        if trait not in neurons:
            neurons[trait] = npti_neurons(model, tokenizer, trait)
        return npti_intervention(model, neurons[trait], gamma, level), REAL_PERSON_PROMPT
    return at


P2_INTENSITIES = ("a bit", "", "very")  # intensity 1, 2, 3; 0 = no P2 prompt


def p2_intensity_prompt(trait: str, level: str, intensity: int, k: int = 5) -> str:
    """P2's template with the wanted pole's first `k` adjectives, all at one intensity
    (1 "a bit", 2 unmodified, 3 "very"); intensity 0 is the plain interview frame."""
    if intensity not in range(len(P2_INTENSITIES) + 1):
        raise ValueError(f"P2 intensity must be 0..{len(P2_INTENSITIES)}, got {intensity}")
    if intensity == 0:
        return REAL_PERSON_PROMPT
    pole = 1 if level == "high" else 0
    words = [f"{P2_INTENSITIES[intensity - 1]} {pair[pole]}".strip()
             for pair in BIPOLAR_ADJECTIVES[trait][:k]]
    adjectives = ", ".join(words[:-1]) + " and " + words[-1]
    return f"{P2_TEMPLATE.format(adjectives=adjectives)} {REAL_PERSON_PROMPT}"


def p2_dial(model) -> PointFactory:
    def at(condition: str, intensity: float):
        trait, level = split_condition(condition)
        return contextlib.nullcontext(model), p2_intensity_prompt(trait, level, int(intensity))
    return at


# --- the sweep ----------------------------------------------------------------------------


def dose_sweep(model, tokenizer, method: str, at: PointFactory, conditions: Sequence[str],
               strengths: Sequence[float], cache_file: str | Path | None = None,
               n_pairs: int | None = None,
               extra: Callable[[Any, Any], Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Every (condition, strength): all five trait scores and the 44 item answers.

    `extra(model, tokenizer)` adds measures taken at the point (e.g. capability).
    Rows: method, condition, strength, trait, level, <five traits>, items (+ extra).
    """
    points = [{"method": method, "condition": c, "strength": float(s)}
              for c in conditions for s in strengths]

    def evaluate(point):
        trait, level = split_condition(point["condition"])
        ctx, system = at(point["condition"], point["strength"])
        with ctx:
            detail = contrast_item_scores(model, tokenizer, system_prompt=system,
                                          n_pairs=n_pairs)
            more = dict(extra(model, tokenizer)) if extra else {}
        keyed = detail.groupby("dimension")["keyed"].mean().to_dict()
        items = {str(i): float(r) for i, r in zip(detail["item"], detail["raw"], strict=True)}
        return {"trait": trait, "level": level, **keyed, "items": items, **more}

    return run_sweep(points, evaluate, cache_file, desc=f"{method} dose")


def keyed_matrix(rows: pd.DataFrame, trait: str) -> tuple[np.ndarray, np.ndarray]:
    """(strengths sorted, matrix strengths × the trait's items of keyed 1-5 answers)."""
    rows = rows.sort_values("strength")
    numbers = sorted(n for n, it in ITEMS_BY_NUMBER.items() if it.dimension == trait)
    mat = np.array([[_keyed(n, items[str(n)]) for n in numbers] for items in rows["items"]])
    return rows["strength"].to_numpy(float), mat


def _keyed(number: int, raw: float) -> float:
    return 6.0 - raw if ITEMS_BY_NUMBER[number].reverse else raw


# --- measures with bootstrap intervals ---------------------------------------------------


def item_bootstrap(matrix: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, strengths): the per-strength mean over items resampled with replacement,
    one resample shared by all strengths (the items are the same at every strength)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, matrix.shape[1], size=(n_boot, matrix.shape[1]))
    return matrix[:, idx].mean(axis=2).T


def monotonicity(strengths: Sequence[float], matrix: np.ndarray, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, float]:
    """Spearman ρ of strength vs mean score, with its 95 % item-bootstrap interval."""
    strengths = np.asarray(strengths, float)
    if len(strengths) < 3:
        raise ValueError(f"monotonicity needs at least 3 strengths, got {len(strengths)}")
    rho = _spearman(strengths, matrix.mean(axis=1))
    boot = [_spearman(strengths, b) for b in item_bootstrap(matrix, n_boot, seed)]
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return {"rho": rho, "rho_lo": float(lo), "rho_hi": float(hi)}


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(y) == 0:
        return 0.0  # a flat response has no rank order (scipy would return nan)
    return float(stats.spearmanr(x, y).statistic)


def intervals(matrix: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(strengths, 2): the 95 % item-bootstrap interval of each strength's mean score."""
    return np.percentile(item_bootstrap(matrix, n_boot, seed), [2.5, 97.5], axis=0).T


def resolution(strengths: Sequence[float], matrix: np.ndarray, n_boot: int = 1000,
               seed: int = 0) -> int:
    """Strength levels told apart: walking up the strengths, a level counts when its
    interval does not overlap the interval of the last level counted."""
    order = np.argsort(np.asarray(strengths, float))
    ci = intervals(matrix, n_boot, seed)[order]
    count, last = 1, ci[0]
    for lo, hi in ci[1:]:
        if lo > last[1] or hi < last[0]:
            count, last = count + 1, (lo, hi)
    return count


def dose_summary(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per method and condition: ρ with interval, resolution, and the signed shift of the
    intended trait from the weakest to the strongest setting (+ = the intended way);
    ρ is NaN for dials swept at fewer than 3 strengths.
    Rows: method, condition, trait, rho, rho_lo, rho_hi, resolution, shift."""
    out = []
    for (method, condition), rows in table.groupby(["method", "condition"], sort=False):
        trait, level = split_condition(condition)
        strengths, mat = keyed_matrix(rows, trait)
        sign = 1.0 if level == "high" else -1.0
        means = mat.mean(axis=1)
        rho = (monotonicity(sign * strengths, mat, n_boot, seed) if len(strengths) >= 3
               else dict.fromkeys(("rho", "rho_lo", "rho_hi"), float("nan")))
        out.append({"method": method, "condition": condition, "trait": trait, **rho,
                    "resolution": resolution(strengths, mat, n_boot, seed),
                    "shift": float(sign * (means[-1] - means[0]))})
    return pd.DataFrame(out)


def leakage(table: pd.DataFrame, strength: float | None = None, n_boot: int = 1000,
            seed: int = 0) -> pd.DataFrame:
    """Each condition's effect on all five traits: score at `strength` (default: the
    strongest swept) minus score at the weakest, with 95 % paired item-bootstrap intervals.
    Rows: method, condition, trait, effect, lo, hi, intended (the condition's own trait)."""
    out = []
    for (method, condition), rows in table.groupby(["method", "condition"], sort=False):
        own, _ = split_condition(condition)
        rows = rows.sort_values("strength")
        top = rows["strength"].max() if strength is None else float(strength)
        pair = pd.concat([rows.iloc[[0]], rows[rows["strength"] == top]])
        if len(pair) != 2:
            raise ValueError(f"{method}/{condition}: no sweep point at strength {top}")
        for trait in TRAITS:
            _, mat = keyed_matrix(pair, trait)
            boot = item_bootstrap(mat, n_boot, seed)
            diff = boot[:, 1] - boot[:, 0]
            lo, hi = np.percentile(diff, [2.5, 97.5])
            out.append({"method": method, "condition": condition, "trait": trait,
                        "effect": float(mat[1].mean() - mat[0].mean()), "lo": float(lo),
                        "hi": float(hi), "intended": trait == own})
    return pd.DataFrame(out)


def pareto_front(gain: Sequence[float], cost: Sequence[float]) -> np.ndarray:
    """Mask of the points no other point beats: at least as much gain and at most as much
    cost, strictly better in one."""
    gain, cost = np.asarray(gain, float), np.asarray(cost, float)
    better_eq = (gain[None, :] >= gain[:, None]) & (cost[None, :] <= cost[:, None])
    strictly = (gain[None, :] > gain[:, None]) | (cost[None, :] < cost[:, None])
    return ~(better_eq & strictly).any(axis=1)



def capability_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per sweep point: shift of the intended trait toward its pole and capability lost,
    both relative to the same method's strength-0 point of that condition.
    Rows: method, condition, strength, shift, factual_lost, perplexity_ratio, front
    (whether no point beats it on shift and perplexity both)."""
    out = []
    for (method, condition), rows in table.groupby(["method", "condition"], sort=False):
        trait, level = split_condition(condition)
        sign = 1.0 if level == "high" else -1.0
        rows = rows.sort_values("strength")
        ref = rows.iloc[0]
        for row in rows.itertuples(index=False):
            out.append({"method": method, "condition": condition, "strength": row.strength,
                        "shift": sign * (getattr(row, trait) - ref[trait]),
                        "factual_lost": ref["factual"] - row.factual,
                        "perplexity_ratio": row.perplexity / ref["perplexity"]})
    frame = pd.DataFrame(out)
    frame["front"] = pareto_front(frame["shift"], frame["perplexity_ratio"])
    return frame


# --- figures ------------------------------------------------------------------------------


def plot_dose(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0):
    """One panel per method: the intended trait's score vs strength, 95 % item intervals."""
    import matplotlib.pyplot as plt  # plotting only where a figure is drawn

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
    import matplotlib.pyplot as plt
    import seaborn as sns

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
    import matplotlib.pyplot as plt
    import seaborn as sns

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


def capability_sweep(model, tokenizer, method: str, at: PointFactory, conditions: Sequence[str],
                     strengths: Sequence[float], cache_file: str | Path | None = None,
                     n_questions: int | None = None) -> pd.DataFrame:
    """`capability.capability` at every (condition, strength) of a dial (its own cache, so
    the trait sweep can be shared with `pvutils dial`).
    Rows: method, condition, strength, perplexity, factual."""
    points = [{"method": method, "condition": c, "strength": float(s),
               "n_questions": n_questions} for c in conditions for s in strengths]

    def evaluate(point):
        ctx, system = at(point["condition"], point["strength"])
        persona = system.removesuffix(REAL_PERSON_PROMPT).strip()  # P2's adjectives, if any
        with ctx:
            return capability(model, tokenizer, n_questions=point["n_questions"],
                              persona=persona)

    return run_sweep(points, evaluate, cache_file, desc=f"{method} capability")
