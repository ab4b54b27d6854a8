"""The chapters' sweeps: one generic driver (points x apply x measure), cached per point.

A sweep evaluates many models that differ only by what `apply` does to one loaded base
(θ + Σ α_i φ_i in place, NPTI hooks, or nothing); it never writes a model (see
`merging.applied`). Every finished point is stored on its own under its stage's key,
`<artifacts>/<stage>/<key>/points/<point key>.json`, so a killed chapter resumes where it
stopped, a longer grid reuses the points it has, and a changed field that the stage reads
starts a new key beside the old one. A point's key holds its settings and the identity of
the vectors it applies (`cache.identity`: the key of the fine-tune that made them).

Each research question below is a *plan* (its stage, its points, extra key inputs: pure,
so the tests can check every key without a model) and a measure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from . import analysis, cache, layers, progress, side_effects
from .artifacts import fingerprint, read_json, write_json
from .cache import Stage
from .personas import split_condition
from .profiles import PROFILES

Plan = tuple[Stage, list[dict], tuple]  # the stage, its points, extra inputs of its key


def point_key(point: Mapping[str, Any], ids: Mapping[str, str]) -> str:
    """A point's settings (keys without a leading "_") and the identities of `_uses`."""
    labels = {k: v for k, v in point.items() if not k.startswith("_")}
    return fingerprint(labels, [ids[name] for name in point.get("_uses", ())])


def run_sweep(plan: Plan, profile: Any, measure: Callable[[dict], Mapping | Sequence[Mapping]],
              apply: Callable[[dict], contextlib.AbstractContextManager] | None = None,
              inputs: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Evaluate every point of `plan` once: `with apply(point): measure(point)`.

    Rows are the point's settings plus each result row. `inputs` maps the names in a
    point's `_uses` to what it applies (vector files or tensors), whose identities key it.
    """
    stage, points, extra = plan
    key = stage.key(profile, *extra)
    entry = stage.entry(key)
    ids = {name: cache.identity(v) for name, v in (inputs or {}).items()
           if any(name in p.get("_uses", ()) for p in points)}
    files = [entry / "points" / f"{point_key(p, ids)}.json" for p in points]
    done = sum(f.exists() for f in files)
    progress.log(f"stage {stage.name} [key {key}]: {done} of {len(points)} points cached, "
                 f"{len(points) - done} to compute")
    rows: list[dict] = []
    for point, file in progress.bar(list(zip(points, files)), desc=stage.name):
        if file.exists():
            result = read_json(file)
        else:
            with apply(point) if apply else contextlib.nullcontext():
                out = measure(point)
            result = [dict(out)] if isinstance(out, Mapping) else [dict(r) for r in out]
            write_json(file, result)
        labels = {k: v for k, v in point.items() if not k.startswith("_")}
        rows += [{**labels, **r} for r in result]
    cache.touch(entry, stage.name, profile.name, summary(stage, profile, len(points)))
    return pd.DataFrame(rows)


def summary(stage: Stage, profile: Any, n_points: int) -> dict[str, Any]:
    """The short key summary `cache` lists: the stage's fields that were overridden (differ
    from the named profile's, or from `cpu` for an unnamed one), and the number of points."""
    p = cache.unwrap(profile)
    ref = PROFILES.get(p.name, PROFILES["cpu"])
    return {**{f: getattr(p, f) for f in stage.fields if getattr(p, f) != getattr(ref, f)},
            "points": n_points}


def applying(model, vectors: Mapping[str, Any]) -> Callable[[dict], Any]:
    """`apply` for points that add their `_uses` vectors with `weights` (default: alpha)."""
    from .merging import applied  # merging imports the vectors stack; only needed here

    def apply(point: dict):
        uses = point.get("_uses", ())
        if not uses:
            return contextlib.nullcontext(model)
        weights = point.get("_weights", [point.get("alpha", 1.0)] * len(uses))
        return applied(model, [vectors[n] for n in uses], weights, reuse_buffers=True)

    return apply


def vector_points(vectors: Sequence[str], alphas: Sequence[float]) -> list[dict]:
    """One point per (vector, alpha), plus the base model (alpha 0) once per trait."""
    traits = dict.fromkeys(split_condition(c)[0] for c in vectors)
    points = [{"condition": f"{t}_base", "alpha": 0.0} for t in traits]
    return points + [{"condition": c, "alpha": float(a), "_uses": [c]}
                     for c in vectors for a in alphas]


def _trait_level(point: Mapping[str, Any]) -> tuple[str, str]:
    return tuple(point["condition"].rsplit("_", 1))


def _contrast(model, tokenizer, traits, P, **kw) -> dict[str, float]:
    from .evaluation import contrast_scores  # evaluation is being split; resolved at call

    return contrast_scores(model, tokenizer, list(traits), n_pairs=P.contrast_pairs, **kw)


CONTRAST = ("model", "dtype", "device", "contrast_pairs")
INTERVIEW = ("model", "dtype", "device", "n_samples", "eval_temperature",
             "eval_max_new_tokens", "eval_batch_size", "seed", "language",
             "generation_backend")

# --- RQ1: scaling, the interview, the baselines ------------------------------------------

RQ1 = Stage("rq1-contrast", CONTRAST, grid=("alphas", "sweep_conditions"),
            code=(_contrast, vector_points))


def rq1_plan(profile, vectors: Sequence[str]) -> Plan:
    return RQ1, vector_points(list(vectors), RQ1.view(profile).alphas), ()


def vector_sweep(model, tokenizer, vectors: Mapping[str, Any], profile) -> pd.DataFrame:
    """RQ1: the contrast score of each vector's own trait at every alpha (θ + α φ).
    Rows: condition, alpha, trait, level, score; alpha 0 is the base, once per trait."""
    P = RQ1.view(profile)

    def measure(point):
        trait, level = _trait_level(point)
        score = _contrast(model, tokenizer, [trait], P)[trait]
        return {"trait": trait, "level": level, "score": score}

    return run_sweep(rq1_plan(P, vectors), P, measure, applying(model, vectors), vectors)


def _trait_interview(model, tokenizer, P, trait: str) -> pd.DataFrame:
    """The BFI interview of one trait with the profile's sampling settings, generated by
    the profile's backend (`backends.generator`: the model, or vLLM with its weights)."""
    from .backends import generator
    from .evaluation import interview

    return interview(generator(P, model), tokenizer, n_samples=P.n_samples,
                     temperature=P.eval_temperature, max_new_tokens=P.eval_max_new_tokens,
                     seed=P.seed, batch_size=P.eval_batch_size, dimensions=[trait],
                     progress=False, language=_language(P))


def _language(P) -> str | None:
    """None for English (the built-in prompts), else the language of the prompt file."""
    return None if P.language == "en" else P.language


def _make_judge(name: str, P):
    from .evaluation import get_judge

    if name == "persona":  # its own frozen copy of the base: the swept model changes in place
        return get_judge("persona", reference=P.model)
    if name == "openai":
        return get_judge("openai", judge_model=P.judge_model, language=_language(P))
    return get_judge(name)


RQ1_INTERVIEW = Stage("rq1-interview", (*INTERVIEW, "judge", "judge_model"),
                      grid=("interview_alphas", "sweep_conditions"),
                      code=(_trait_interview, _make_judge, vector_points))


def interview_plan(profile, vectors: Sequence[str], judges: Sequence[str] | None = None) -> Plan:
    P = RQ1_INTERVIEW.view(profile)
    judges = list(judges or dict.fromkeys([P.judge, "embedding"]))
    return RQ1_INTERVIEW, vector_points(list(vectors), P.interview_alphas), (judges,)


def interview_sweep(model, tokenizer, vectors: Mapping[str, Any], profile,
                    judges: Sequence[str] | None = None) -> pd.DataFrame:
    """Interview the model at each (vector, alpha) and let every judge (default: the
    profile's and the embedding judge) score the vector's own trait.
    Rows: condition, alpha, trait, level, judge, score, analysis."""
    from .evaluation import judge_interview_results

    P = RQ1_INTERVIEW.view(profile)
    plan = interview_plan(P, vectors, judges)
    judge_objs: dict[str, Any] = {}

    def measure(point):
        trait, level = _trait_level(point)
        if not judge_objs:  # built only when a point is not cached
            judge_objs.update({n: _make_judge(n, P) for n in plan[2][0]})
        transcripts = _trait_interview(model, tokenizer, P, trait)
        return [{"trait": trait, "level": level, "judge": name, "score": r.score,
                 "analysis": r.analysis}
                for name, judge in judge_objs.items()
                for r in [judge_interview_results(transcripts, judge)[trait]]]

    return run_sweep(plan, P, measure, applying(model, vectors), vectors)


RQ1_P2 = Stage("rq1-p2", CONTRAST, grid=("p2_seeds", "sweep_conditions"), code=(_contrast,))


def p2_plan(profile, conditions: Sequence[str]) -> Plan:
    seeds = range(RQ1_P2.view(profile).p2_seeds)
    return RQ1_P2, [{"condition": c, "seed": s} for c in conditions for s in seeds], ()


def p2_scores(model, tokenizer, conditions: Sequence[str], profile) -> pd.DataFrame:
    """The P2 baseline: each condition's trait score with a P2 prompt (random trait
    adjectives with intensity modifiers) before the interview frame.
    Rows: condition, seed, trait, level, score."""
    from .baselines import p2_prompt
    from .evaluation import REAL_PERSON_PROMPT

    P = RQ1_P2.view(profile)

    def measure(point):
        trait, level = _trait_level(point)
        system = f"{p2_prompt(trait, level, point['seed'])} {REAL_PERSON_PROMPT}"
        score = _contrast(model, tokenizer, [trait], P, system_prompt=system)[trait]
        return {"trait": trait, "level": level, "score": score}

    return run_sweep(p2_plan(P, list(conditions)), P, measure)


RQ1_NPTI = Stage("rq1-npti", CONTRAST, grid=("npti_gammas", "sweep_conditions"),
                 code=(_contrast,))


def npti_plan(profile, conditions: Sequence[str]) -> Plan:
    gammas = RQ1_NPTI.view(profile).npti_gammas
    return RQ1_NPTI, [{"condition": c, "gamma": float(g)} for c in conditions for g in gammas], ()


def npti_sweep(model, tokenizer, conditions: Sequence[str], profile) -> pd.DataFrame:
    """The NPTI baseline: trait neurons found once per trait, then steered toward the
    condition's level with strength gamma (forward hooks, removed after each point).
    Rows: condition, gamma, trait, level, score."""
    from .baselines import npti_intervention, npti_neurons

    P = RQ1_NPTI.view(profile)
    neurons: dict[str, Any] = {}

    def apply(point):
        trait, level = _trait_level(point)
        if trait not in neurons:
            neurons[trait] = npti_neurons(model, tokenizer, trait)
        return npti_intervention(model, neurons[trait], point["gamma"], level)

    def measure(point):
        trait, level = _trait_level(point)
        return {"trait": trait, "level": level,
                "score": _contrast(model, tokenizer, [trait], P)[trait]}

    return run_sweep(npti_plan(P, list(conditions)), P, measure, apply)


# --- RQ2: composition --------------------------------------------------------------------


def merge_methods(profile) -> dict[str, dict[str, Any]]:
    """The paper's four composition methods as `merging.applied` parameters.

    TIES keeps `ties_density` of each vector (per tensor, as mergekit); DARE drops entries
    with probability `dare_drop_rate` and rescales the survivors, then merges with task
    arithmetic (TA+DARE) or with TIES's sign election and disjoint mean (TIES+DARE).
    `scale: "lambda"` marks the TIES family: as in the authors' code, the shared alpha
    scales the disjoint *mean* (mergekit's `lambda`, with weights 1), since weights alone
    would cancel out of a mean.
    """
    table = {
        "TA": {"method": "task_arithmetic"},
        "TIES": {"method": "ties", "density": profile.ties_density, "normalize": False},
        "TA+DARE": {"method": "dare_linear", "drop_rate": profile.dare_drop_rate},
        "TIES+DARE": {"method": "dare_ties", "drop_rate": profile.dare_drop_rate,
                      "normalize": False},
        # beyond the paper, by name: mergekit's Model Breadcrumbs (drop the top 1 % of
        # magnitudes, keep the next ties_density) and DELLA (magnitude-ranked DARE)
        "Breadcrumbs": {"method": "breadcrumbs", "density": profile.ties_density},
        "DELLA": {"method": "della", "drop_rate": profile.dare_drop_rate, "normalize": False},
    }
    unknown = sorted(set(profile.composition_methods) - set(table))
    if unknown:
        raise ValueError(f"unknown composition method(s) {unknown}; choose from {list(table)}")
    return {label: table[label] for label in profile.composition_methods}


def _code(levels: Mapping[str, str]) -> str:
    return "".join(lv[0].upper() for lv in levels.values())


RQ2 = Stage("rq2-composition", (*CONTRAST, "ties_density", "dare_drop_rate"),
            grid=("composition_traits", "composition_alphas", "composition_methods"),
            code=(_contrast, merge_methods))


def composition_plan(profile) -> Plan:
    P = RQ2.view(profile)
    points = [{"method": m, "alpha": float(a), "profile": _code(levels),
               "_uses": [f"{t}_{lv}" for t, lv in levels.items()]}
              for m in P.composition_methods for a in P.composition_alphas
              for levels in analysis.trait_profiles(P.composition_traits)]
    return RQ2, points, ()


def composition_sweep(model, tokenizer, vectors: Mapping[str, Any], profile) -> pd.DataFrame:
    """RQ2: merge one vector per composed trait (its level from the point's profile code)
    with a shared alpha, by each method. Rows: method, alpha, profile, target_<trait>
    (+1/-1), <trait> score."""
    from .merging import applied

    P = RQ2.view(profile)
    methods = merge_methods(P)

    def apply(point):
        params = dict(methods[point["method"]])
        method, alpha, chosen = params.pop("method"), point["alpha"], point["_uses"]
        weights = [alpha] * len(chosen)
        if params.pop("scale", "weight") == "lambda":
            weights, params = [1.0] * len(chosen), {**params, "normalize": True, "lambda_": alpha}
        return applied(model, [vectors[c] for c in chosen], weights, method=method,
                       reuse_buffers=True, **params)

    def measure(point):
        levels = dict(map(split_condition, point["_uses"]))
        targets = {f"target_{t}": 1 if lv == "high" else -1 for t, lv in levels.items()}
        return {**targets, **_contrast(model, tokenizer, list(levels), P)}

    return run_sweep(composition_plan(P), P, measure, apply, vectors)


# --- RQ3: negation, RQ4: transfer, layer-wise ---------------------------------------------

RQ3 = Stage("rq3-negation", (*INTERVIEW, "contrast_pairs"), grid=("sweep_conditions",),
            code=(_contrast, _trait_interview, side_effects.perplexity,
                  side_effects.disclaimer_rate))


def negation_plan(profile, vectors: Sequence[str], alphas=(-1.0, 1.0)) -> Plan:
    return RQ3, vector_points(list(vectors), alphas), ()


def negation_sweep(model, tokenizer, vectors: Mapping[str, Any], profile) -> pd.DataFrame:
    """RQ3: at α = -1 and +1 (and the base), the vector's trait score, the share of
    interview answers that step out of the persona ("As an AI..."), and perplexity on plain
    text. Rows: condition, alpha, trait, level, score, disclaimer_rate, perplexity,
    n_answers, example."""
    P = RQ3.view(profile)

    def measure(point):
        trait, level = _trait_level(point)
        score = _contrast(model, tokenizer, [trait], P)[trait]
        answers = _trait_interview(model, tokenizer, P, trait)["answer"]
        return {"trait": trait, "level": level, "score": score,
                "disclaimer_rate": side_effects.disclaimer_rate(answers),
                "perplexity": side_effects.perplexity(model, tokenizer),
                "n_answers": len(answers), "example": answers.iloc[0]}

    return run_sweep(negation_plan(P, vectors), P, measure, applying(model, vectors), vectors)


def _fidelity(model, tokenizer, P) -> float:
    from .fidelity import character_fidelity  # imports TRL (via training); only needed here

    return character_fidelity(model, tokenizer, profile=P)


RQ4 = Stage("rq4-transfer", (*CONTRAST, "n_heldout", "eval_max_new_tokens", "eval_batch_size"),
            grid=("transfer_alphas", "transfer_betas", "sweep_conditions"),
            code=(_contrast, _fidelity))


def transfer_plan(profile, vectors: Sequence[str]) -> Plan:
    P = RQ4.view(profile)
    points = [{"condition": c, "alpha": float(a), "beta": float(b), "_uses": ["domain", c],
               "_weights": [float(a), float(b)]}
              for c in vectors for a in P.transfer_alphas for b in P.transfer_betas]
    return RQ4, points, ()


def transfer_sweep(model, tokenizer, domain_vector: Any, vectors: Mapping[str, Any],
                   profile) -> pd.DataFrame:
    """RQ4: θ_base + α φ_domain + β φ_p over the (α, β) grid: the vector's trait score and
    the character fidelity. Rows: condition, alpha, beta, trait, level, score, fidelity."""
    P = RQ4.view(profile)
    inputs = {**vectors, "domain": domain_vector}

    def measure(point):
        trait, level = _trait_level(point)
        return {"trait": trait, "level": level,
                "score": _contrast(model, tokenizer, [trait], P)[trait],
                "fidelity": _fidelity(model, tokenizer, P)}

    return run_sweep(transfer_plan(P, list(vectors)), P, measure, applying(model, inputs),
                     inputs)


def layerwise_texts(tokenizer, n: int) -> list[str]:
    """The layer-wise inputs: the first `n` held-out prompts in the chat template."""
    from .data import heldout_prompts

    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True)
            for q in heldout_prompts()[:n]]


LAYERWISE = Stage("layerwise", ("model", "dtype", "device", "n_heldout"),
                  grid=("layerwise_alphas", "sweep_conditions"),
                  code=(layerwise_texts, layers.hidden_states, layers.layerwise_cosine))


def layerwise_plan(profile, vectors: Sequence[str]) -> Plan:
    alphas = LAYERWISE.view(profile).layerwise_alphas
    return LAYERWISE, [{"condition": c, "alpha": float(a), "_uses": [c]}
                       for c in vectors for a in alphas], ()


def layerwise_sweep(model, tokenizer, vectors: Mapping[str, Any], profile) -> pd.DataFrame:
    """Cosine similarity of hidden states, base vs base + α φ, per layer, on the held-out
    inputs (α = 1 is the fine-tuned personality model itself, up to float rounding).
    Rows: condition, alpha, trait, level, layer, cosine, cosine_sd, cosine_min."""
    P = LAYERWISE.view(profile)
    texts = layerwise_texts(tokenizer, P.n_heldout)
    base: list = []

    def apply(point):
        if not base:  # the base's hidden states: once, and only if a point is computed
            base.extend(layers.hidden_states(model, tokenizer, texts))
        return applying(model, vectors)(point)

    def measure(point):
        trait, level = _trait_level(point)
        other = layers.hidden_states(model, tokenizer, texts)
        return layers.layerwise_cosine(base, other).assign(trait=trait, level=level) \
            .to_dict("records")

    return run_sweep(layerwise_plan(P, list(vectors)), P, measure, apply, vectors)


# every sweep's plan by stage name (the key tests walk them)
PLANS = {
    RQ1.name: rq1_plan, RQ1_INTERVIEW.name: interview_plan, RQ1_P2.name: p2_plan,
    RQ1_NPTI.name: npti_plan, RQ2.name: composition_plan, RQ3.name: negation_plan,
    RQ4.name: transfer_plan, LAYERWISE.name: layerwise_plan,
}

