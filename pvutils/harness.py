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

Each dial's sweep is a cached stage (`dose-<dial>`, `capability-<dial>`) run by
`sweeps.run_sweep`; `bench` sets them up for chapter 06.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .baselines import (
    BIPOLAR_ADJECTIVES,
    NPTI_PROMPTS,
    P2_TEMPLATE,
    npti_intervention,
    npti_neurons,
    npti_texts,
)
from .bfi import ITEMS_BY_NUMBER
from .cache import Stage
from .capability import capability
from .evaluation import REAL_PERSON_PROMPT, contrast_item_scores
from .merging import applied
from .models import GENERATION_CODE
from .personas import split_condition
from .plans import CONTRAST
from .profiles import TRAITS
from .steering import condition_direction, steered
from .sweeps import Plan, run_sweep

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


def npti_dial(model, tokenizer, neurons: dict[str, Any] | None = None,
              n_prompts: int | None = None) -> PointFactory:
    """NPTI toward the condition's level with strength γ; each trait's neurons are found
    on first use (only sweep points not yet cached need them) from the first `n_prompts`
    NPTI prompts (None: all) and kept in `neurons`."""
    neurons = {} if neurons is None else neurons
    prompts = NPTI_PROMPTS[:n_prompts]

    def at(condition: str, gamma: float):
        trait, level = split_condition(condition)
        if gamma == 0:
            return contextlib.nullcontext(model), REAL_PERSON_PROMPT
        if trait not in neurons:
            neurons[trait] = npti_neurons(model, tokenizer, trait,
                                          texts=npti_texts(tokenizer, trait, prompts))
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


# --- the sweeps ---------------------------------------------------------------------------


def item_answers(model, tokenizer, system: str | None,
                 n_pairs: int | None = None) -> dict[str, Any]:
    """The five trait scores and the 44 raw item answers of the model as it is now."""
    detail = contrast_item_scores(model, tokenizer, system_prompt=system, n_pairs=n_pairs)
    keyed = detail.groupby("dimension")["keyed"].mean().to_dict()
    items = {str(i): float(r) for i, r in zip(detail["item"], detail["raw"], strict=True)}
    return {**keyed, "items": items}


def dose_measure(model, tokenizer, at: PointFactory, point: Mapping[str, Any],
                 n_pairs: int | None = None) -> dict[str, Any]:
    """At one (condition, strength): the five trait scores and the 44 raw item answers."""
    trait, level = split_condition(point["condition"])
    ctx, system = at(point["condition"], point["strength"])
    with ctx:
        return {"trait": trait, "level": level,
                **item_answers(model, tokenizer, system, n_pairs)}


def capability_measure(model, tokenizer, at: PointFactory,
                       point: Mapping[str, Any]) -> dict[str, float]:
    """`capability.capability` at one (condition, strength); P2's adjectives as persona."""
    ctx, system = at(point["condition"], point["strength"])
    persona = system.removesuffix(REAL_PERSON_PROMPT).strip()  # P2's adjectives, if any
    with ctx:
        return capability(model, tokenizer, n_questions=point["n_questions"], persona=persona)


# strength 0 is every dial off: the base model under the plain interview frame, the same
# for every dial and condition, so it is measured once (its own stage) and shared
DOSE_OFF = Stage("dose-off", CONTRAST, code=(item_answers,))
CAPABILITY_OFF = Stage("capability-off", ("model", "dtype", "device"),
                       code=(capability, *GENERATION_CODE))


def split_off(plan: Plan) -> tuple[Plan, Plan]:
    """(the plan's points with strength > 0, the off plan its strength-0 points share)."""
    stage, points, extra = plan
    off = any(p["strength"] == 0 for p in points)
    if stage.name.startswith("capability-"):
        questions = {p["n_questions"] for p in points if p["strength"] == 0}
        off_plan = (CAPABILITY_OFF, [{"n_questions": q} for q in sorted(questions, key=str)], ())
    else:
        off_plan = (DOSE_OFF, [{"off": True}] if off else [], ())
    return (stage, [p for p in points if p["strength"] != 0], extra), off_plan


def _sweep_with_off(plan: Plan, P, measure, measure_off,
                    inputs: Mapping[str, Any] | None) -> pd.DataFrame:
    """`run_sweep` of the points that are on; each off point's row is the off measure."""
    on, off_plan = split_off(plan)
    table = run_sweep(on, P, measure, inputs=inputs) if on[1] else pd.DataFrame()
    base = run_sweep(off_plan, P, measure_off).to_dict("records") if off_plan[1] else []
    by_questions = {r.pop("n_questions", None): r for r in base}  # one row per question count
    done = iter(table.to_dict("records"))
    rows = []
    for point in plan[1]:
        if point["strength"] != 0:
            rows.append(next(done))
            continue
        labels = {k: v for k, v in point.items() if not k.startswith("_")}
        trait, level = split_condition(point["condition"])
        own = {} if "n_questions" in point else {"trait": trait, "level": level}  # a dose row
        off = {k: v for k, v in by_questions[point.get("n_questions")].items() if k != "off"}
        rows.append({**labels, **own, **off})
    return pd.DataFrame(rows)


DIAL_CODE = {"vector": (vector_dial,), "steering": (steering_dial, steered),
             "NPTI": (npti_dial, npti_neurons, npti_intervention),
             "P2": (p2_dial, p2_intensity_prompt)}
DIAL_GRID = {"vector": ("alphas",), "NPTI": ("npti_gammas",)}
DOSE = {d: Stage(f"dose-{d}", CONTRAST, grid=(*DIAL_GRID.get(d, ()), "sweep_conditions"),
                 code=(dose_measure, *code)) for d, code in DIAL_CODE.items()}
CAPABILITY = {d: Stage(f"capability-{d}", ("model", "dtype", "device"),
                       grid=(*DIAL_GRID.get(d, ()), "sweep_conditions"),
                       code=(capability_measure, *code, *GENERATION_CODE))
              for d, code in DIAL_CODE.items()}


def dial_points(method: str, conditions: Sequence[str], strengths: Sequence[float],
                uses: Mapping[str, Sequence[str]] | None = None, **labels: Any) -> list[dict]:
    """Every (condition, strength) of a dial; `uses[condition]` names the inputs (vector,
    direction) its points apply, whose identities key them; `labels` (e.g. the steering
    layer) are settings of every point."""
    return [{"method": method, "condition": c, "strength": float(s), **labels,
             "_uses": list((uses or {}).get(c, ()))} for c in conditions for s in strengths]


def dose_plan(profile, dial: str, conditions: Sequence[str], strengths: Sequence[float],
              uses: Mapping[str, Sequence[str]] | None = None, **labels: Any) -> Plan:
    """The dose sweep of `dial` (a key of `DOSE`) over (condition, strength)."""
    return DOSE[dial], dial_points(dial, conditions, strengths, uses, **labels), ()


def dose_sweep(model, tokenizer, plan: Plan, profile, at: PointFactory | None,
               inputs: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Every point of a `dose_plan`: all five trait scores and the 44 item answers. `at`
    is only called for points not cached (None: all are); strength 0 is the dial off.
    Rows: method, condition, strength, trait, level, <five traits>, items."""
    P = plan[0].view(profile)
    return _sweep_with_off(
        plan, P, lambda point: dose_measure(model, tokenizer, at, point, P.contrast_pairs),
        lambda _: item_answers(model, tokenizer, REAL_PERSON_PROMPT, P.contrast_pairs), inputs)


def capability_sweep(model, tokenizer, plan: Plan, profile, at: PointFactory | None,
                     inputs: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """`capability.capability` at every point of a capability plan (`bench.bench_plans`:
    its own stage, so the trait sweep can be shared with `pvutils dial`).
    Rows: method, condition, strength, n_questions, perplexity, factual."""
    P = plan[0].view(profile)
    return _sweep_with_off(
        plan, P, lambda point: capability_measure(model, tokenizer, at, point),
        lambda point: capability(model, tokenizer, n_questions=point["n_questions"]), inputs)


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



# dials that act through the prompt: their perplexity is read without the prompt, so its
# ratio is 1 by construction and they would sit on any perplexity front for free
PROMPT_DIALS = ("P2",)


def capability_table(dose: pd.DataFrame, capab: pd.DataFrame) -> pd.DataFrame:
    """Per sweep point: shift of the intended trait toward its pole (from `dose`) and
    capability lost (from `capab`, the same points), both relative to the same method's
    strength-0 point of that condition.
    Rows: method, condition, strength, shift, factual_lost, perplexity_ratio, front:
    whether no point of the same condition (one trait, one pole: comparable shifts) beats
    it on shift and perplexity both, among the dials active while perplexity is read (all
    but `PROMPT_DIALS`, which are never on the front)."""
    on = ["method", "condition", "strength"]
    table = dose.merge(capab[[*on, "perplexity", "factual"]], on=on)
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
    frame["front"] = False
    weights = frame[~frame["method"].isin(PROMPT_DIALS)]
    for _, rows in weights.groupby("condition", sort=False):
        frame.loc[rows.index, "front"] = pareto_front(rows["shift"], rows["perplexity_ratio"])
    return frame
