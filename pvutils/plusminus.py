"""Does each dial turn both ways? Every vector's own trait at α = +1 and α = −1, on the
two measures that are independent of the data generator, with 95 % intervals.

- the contrast BFI (`evaluation.contrast_item_scores`): the keyed 1-5 answer of each of
  the trait's BFI items; its effect is the mean change over items, base → θ + α φ;
- the embedding judge (`judges.EmbeddingJudge`) on interview answers: each answer's
  position on the trait's low..high anchor axis; its effect is the change of the judge's
  1-5 score, 3 + 2 tanh(mean position / scale).

Every point stores one value per unit (item, or item × sample for answers), so the
effects are paired differences (the same items, the same sampling seed at the base and
at α) and their intervals a paired bootstrap over those units (scipy's `bootstrap`).
A vector passes at an α when its effect goes the way its level calls for (+ for high at
α = +1, − for low; the other way at α = −1) and the interval excludes zero.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .cache import Stage
from .evaluation import contrast_item_scores, interview
from .judges import EmbeddingJudge, get_judge
from .models import GENERATION_CODE
from .personas import direction, split_condition
from .sweeps import applying, run_sweep

ALPHAS = (1.0, -1.0)
MEASURES = ("contrast", "embedding")
FIELDS = ("model", "dtype", "device", "contrast_pairs", "n_samples", "eval_temperature",
          "eval_max_new_tokens", "eval_batch_size", "seed", "language")


def plusminus_points(targets: Mapping[str, Sequence[str]],
                     alphas: Sequence[float] = ALPHAS) -> list[dict]:
    """One point per (vector, trait it is measured on, α), plus the base once per trait.
    `targets` maps a vector's name to the traits to measure (its own, or all five)."""
    traits = dict.fromkeys(t for ts in targets.values() for t in ts)
    base = [{"vector": "base", "trait": t, "alpha": 0.0} for t in traits]
    return base + [{"vector": v, "trait": t, "alpha": float(a), "_uses": [v]}
                   for v, ts in targets.items() for t in ts for a in alphas]


def own_traits(names: Sequence[str]) -> dict[str, list[str]]:
    """Each condition vector measured on its own trait."""
    return {n: [split_condition(n)[0]] for n in names}


def unit_values(model, tokenizer, P, trait: str, judge) -> list[dict]:
    """The per-unit values of one trait at the model as it is now: the keyed answer of
    every item (contrast) and every answer's anchor-axis position (embedding)."""
    detail = contrast_item_scores(model, tokenizer, [trait], n_pairs=P.contrast_pairs)
    rows = [{"measure": "contrast", "unit": str(i), "value": float(k)}
            for i, k in zip(detail["item"], detail["keyed"], strict=True)]
    answers = interview(model, tokenizer, n_samples=P.n_samples, temperature=P.eval_temperature,
                        max_new_tokens=P.eval_max_new_tokens, seed=P.seed,
                        batch_size=P.eval_batch_size, dimensions=[trait], progress=False,
                        language=None if P.language == "en" else P.language)
    t = judge.positions(trait, [str(a) for a in answers["answer"]]).tolist()
    rows += [{"measure": "embedding", "unit": f"{i}/{s}", "value": float(x)}
             for i, s, x in zip(answers["item"], answers["sample"], t, strict=True)]
    return rows


PLUSMINUS = Stage("plusminus", FIELDS, grid=("sweep_conditions",),
                  code=(unit_values, plusminus_points, *GENERATION_CODE))


def plusminus_plan(profile, targets: Mapping[str, Sequence[str]],
                   alphas: Sequence[float] = ALPHAS):
    """The stage, its points and no extra key inputs (a `sweeps.Plan`)."""
    return PLUSMINUS, plusminus_points(targets, alphas), ()


def plusminus_sweep(model, tokenizer, vectors: Mapping[str, Any], profile,
                    targets: Mapping[str, Sequence[str]] | None = None,
                    alphas: Sequence[float] = ALPHAS, judge=None) -> pd.DataFrame:
    """θ + α φ for every vector in `targets` (default: each on its own trait) at each α,
    measured unit by unit. Rows: vector, trait, alpha, measure, unit, value."""
    P = PLUSMINUS.view(profile)
    targets = own_traits(list(vectors)) if targets is None else targets
    made: dict[str, Any] = {}

    def measure(point):
        if "judge" not in made:  # loaded only when a point is not cached
            made["judge"] = judge if judge is not None else get_judge("embedding")
        return unit_values(model, tokenizer, P, point["trait"], made["judge"])

    return run_sweep(plusminus_plan(P, targets, alphas), P, measure, applying(model, vectors),
                     vectors)


# --- effects with paired bootstrap intervals ---------------------------------------------


def _judge_scale() -> float:
    return float(inspect.signature(EmbeddingJudge).parameters["scale"].default)


def statistic(measure: str, scale: float | None = None) -> Callable:
    """The effect of one measure from paired unit values (x at α, y at the base): the
    mean difference (contrast), or the difference of the judge's 1-5 scores (embedding)."""
    if measure == "contrast":
        return lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis)
    if measure == "embedding":
        s = _judge_scale() if scale is None else scale
        return lambda x, y, axis=-1: 2.0 * (np.tanh(np.mean(x, axis=axis) / s)
                                            - np.tanh(np.mean(y, axis=axis) / s))
    raise ValueError(f"unknown measure {measure!r}; measures are {', '.join(MEASURES)}")


def paired_effect(x: np.ndarray, y: np.ndarray, stat: Callable, n_boot: int = 1000,
                  seed: int = 0) -> tuple[float, float, float]:
    """(effect, 95 % low, high): a percentile bootstrap over paired units."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need at least 2 paired units, got {len(x)} and {len(y)}")
    if np.ptp(x - y) == 0:  # identical differences: every resample gives the same effect
        value = float(stat(x, y))
        return value, value, value
    res = stats.bootstrap((x, y), stat, paired=True, vectorized=True, n_resamples=n_boot,
                          method="percentile", random_state=seed)
    return float(stat(x, y)), float(res.confidence_interval.low), \
        float(res.confidence_interval.high)


def expected_sign(vector: str, alpha: float) -> float:
    """The way a condition vector should move its own trait at α (NaN for other vectors)."""
    try:
        return float(direction(vector)) * float(np.sign(alpha))
    except ValueError:
        return float("nan")


def effect_table(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                 expected: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Per (vector, trait, α, measure): the effect vs the base with its interval, the
    expected sign (`expected`: vector → sign at α = +1; default: its level's), whether it
    goes that way, and whether the interval excludes zero on that side.
    Rows: vector, trait, alpha, measure, effect, lo, hi, n, expected, right_way, sure."""
    # sorted: a lookup by (trait, measure) on an unsorted index warns and is slow
    base = rows[rows.vector == "base"].set_index(["trait", "measure", "unit"])["value"]
    base = base.sort_index()
    out = []
    for (vector, trait, alpha, measure), sub in rows[rows.vector != "base"].groupby(
            ["vector", "trait", "alpha", "measure"], sort=False):
        y = base.loc[trait, measure].reindex(sub["unit"]).to_numpy()
        if np.isnan(y).any():
            raise ValueError(f"the base lacks units of {trait}/{measure} that {vector} has")
        effect, lo, hi = paired_effect(sub["value"].to_numpy(), y, statistic(measure),
                                       n_boot, seed)
        sign = (expected[vector] * np.sign(alpha) if expected and vector in expected
                else expected_sign(vector, alpha))
        out.append({"vector": vector, "trait": trait, "alpha": alpha, "measure": measure,
                    "effect": effect, "lo": lo, "hi": hi, "n": len(sub), "expected": sign,
                    "right_way": bool(effect * sign > 0),
                    "sure": bool(min(lo * sign, hi * sign) > 0)})
    return pd.DataFrame(out)


def verdict(effects: pd.DataFrame) -> pd.DataFrame:
    """The must-show table: one row per vector, effect [low, high] per measure and α, and
    the verdict: "both ways" (right way at +1 and −1 on both measures, every interval
    excluding zero), else what fails."""
    rows = []
    for vector, sub in effects.groupby("vector", sort=False):
        row: dict[str, Any] = {"vector": vector}
        for r in sub.itertuples():
            row[f"{r.measure} α={r.alpha:+g}"] = f"{r.effect:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]"
        wrong = [f"{r.measure} α={r.alpha:+g}" for r in sub.itertuples() if not r.right_way]
        unsure = [f"{r.measure} α={r.alpha:+g}" for r in sub.itertuples()
                  if r.right_way and not r.sure]
        row["verdict"] = ("both ways" if not wrong and not unsure else
                          "; ".join(([f"wrong way: {', '.join(wrong)}"] if wrong else [])
                                    + ([f"interval spans 0: {', '.join(unsure)}"]
                                       if unsure else [])))
        rows.append(row)
    return pd.DataFrame(rows)


def summary(effects: pd.DataFrame) -> dict[str, int]:
    """How many vectors pass: the right way at every α on every measure (`right both
    ways`), and with every interval excluding zero (`sure both ways`), of `vectors`."""
    by = effects.groupby("vector")
    return {"vectors": int(by.ngroups), "right both ways": int(by["right_way"].all().sum()),
            "sure both ways": int(by["sure"].all().sum()),
            **{f"right at α={a:+g}": int(effects[effects.alpha == a].groupby("vector")
                                          ["right_way"].all().sum())
               for a in sorted(effects.alpha.unique(), reverse=True)}}


def summary_sentence(counts: Mapping[str, int]) -> str:
    """`summary`'s counts as the sentence under the ±1 table: right both ways, and sure."""
    n = counts["vectors"]
    right, sure = counts["right both ways"], counts["sure both ways"]
    by_alpha = ", ".join(f"{v} of {n} {k.removeprefix('right ')}" for k, v in counts.items()
                         if k.startswith("right at"))
    return (f"{right} of {n} vectors move their own trait the way their level calls for at "
            f"both α on both measures ({by_alpha}); {sure} of {n} do so with every "
            "interval clear of zero.")
