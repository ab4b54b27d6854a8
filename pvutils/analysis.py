"""The chapters' sweeps: resumable, cached evaluations of many merged models.

Statistics are in `stats`, figures in `plots`, hidden-state similarity in `layers`, side
effects (disclaimers, perplexity) in `side_effects`, the VLM case in `vlm`.

Sweeps evaluate many models that differ only by `sum(alpha_i * phi_i)`; they never write
a model (see `merging.applied`) and cache every finished point, so a killed chapter
resumes where it stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from .artifacts import fingerprint, read_json, write_json
from .evaluation import REAL_PERSON_PROMPT
from .layers import hidden_states, layerwise_cosine
from .merging import applied
from .models import chat, trim_to_sentence
from .personas import split_condition
from .side_effects import disclaimer_rate, perplexity

# --- resumable sweeps -------------------------------------------------------------------


def run_sweep(
    points: Sequence[Mapping[str, Any]],
    evaluate: Callable[[Mapping[str, Any]], Mapping[str, Any] | Sequence[Mapping[str, Any]]],
    cache_file: str | Path | None = None,
    desc: str = "sweep",
) -> pd.DataFrame:
    """Evaluate each point (a dict of settings) once; rows = point settings + results.

    Finished points are appended to `cache_file` (rewritten atomically after each point),
    keyed by a fingerprint of the point, so a rerun only computes what is missing.
    """
    done: dict[str, list[dict]] = {}
    if cache_file is not None and Path(cache_file).exists():
        done = read_json(cache_file)
    rows: list[dict] = []
    for point in tqdm(points, desc=desc):
        key = fingerprint(dict(point))
        if key not in done:
            result = evaluate(point)
            results = [result] if isinstance(result, Mapping) else list(result)
            done[key] = [{**point, **r} for r in results]
            if cache_file is not None:
                write_json(cache_file, done)
        rows += done[key]
    return pd.DataFrame(rows)


# --- sweep points -----------------------------------------------------------------------


def trait_profiles(traits: Sequence[str]) -> list[dict[str, str]]:
    """All 2^k high/low assignments of the traits (RQ2's 32 profiles for k = 5)."""
    return [
        dict(zip(traits, levels))
        for levels in itertools.product(("high", "low"), repeat=len(traits))
    ]


# --- the chapters' sweeps ---------------------------------------------------------------


def sweep_cache(profile, name: str, *inputs: Any) -> Path:
    """Cache file of one sweep: keyed by the profile, the sweep's name and its inputs.

    Files among the inputs are keyed by their size and modification time, so retraining a
    vector invalidates every sweep that used it.
    """
    from .artifacts import artifacts_dir

    def key(x: Any) -> Any:
        if isinstance(x, Path) and x.exists():
            st = x.stat()
            return [str(x), st.st_size, st.st_mtime_ns]
        if isinstance(x, Mapping):
            return {str(k): key(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [key(v) for v in x]
        return x

    key_inputs = [profile.model, profile.contrast_pairs, profile.seed, key(list(inputs))]
    return artifacts_dir() / profile.name / "sweeps" / f"{name}-{fingerprint(*key_inputs)}.json"


def vector_sweep(
    model,
    tokenizer,
    vectors: Mapping[str, str | Path],
    alphas: Sequence[float],
    cache_file: str | Path | None = None,
    desc: str = "alpha sweep",
    n_pairs: int | None = None,
) -> pd.DataFrame:
    """RQ1: the contrast score of each vector's own trait at every alpha (theta + alpha phi).

    Rows: condition, trait, level, alpha, score. alpha = 0 (the base model) is added once
    per trait as the common reference.
    """
    from .evaluation import contrast_scores

    points = _sweep_points(vectors, alphas)

    def evaluate(point):
        trait, level = split_condition(point["condition"], allow_base=True)
        with _at_point(model, vectors, point):
            score = contrast_scores(model, tokenizer, [trait], n_pairs=n_pairs)[trait]
        return {"trait": trait, "level": level, "score": score}

    return run_sweep(points, evaluate, cache_file, desc=desc)


def composition_sweep(
    model,
    tokenizer,
    vectors: Mapping[str, str | Path],
    profiles: Sequence[Mapping[str, str]],
    alphas: Sequence[float],
    methods: Mapping[str, Mapping[str, Any]],
    cache_file: str | Path | None = None,
    n_pairs: int | None = None,
) -> pd.DataFrame:
    """RQ2: merge one vector per trait (its level from the profile) with a shared alpha.

    `methods` maps a label to merge parameters, e.g. {"TIES": {"method": "ties",
    "density": 0.2}}. Rows: method, alpha, profile, target_<trait> (+1/-1), <trait> score.
    """
    from .evaluation import contrast_scores
    from .merging import applied

    points = [
        {"method": m, "alpha": float(a), "profile": "".join(lv[0].upper() for lv in p.values())}
        for m in methods
        for a in alphas
        for p in profiles
    ]
    by_code = {"".join(lv[0].upper() for lv in p.values()): p for p in profiles}

    def evaluate(point):
        profile = by_code[point["profile"]]
        chosen = [vectors[f"{t}_{lv}"] for t, lv in profile.items()]
        params = dict(methods[point["method"]])
        method, alpha = params.pop("method"), point["alpha"]
        weights = [alpha] * len(chosen)
        if params.pop("scale", "weight") == "lambda":
            weights, params = [1.0] * len(chosen), {**params, "normalize": True, "lambda_": alpha}
        with applied(model, chosen, weights, method=method, reuse_buffers=True, **params):
            scores = contrast_scores(model, tokenizer, list(profile), n_pairs=n_pairs)
        targets = {f"target_{t}": 1 if lv == "high" else -1 for t, lv in profile.items()}
        return {**targets, **scores}

    return run_sweep(points, evaluate, cache_file, desc="composition")


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
        "TIES+DARE": {
            "method": "dare_ties",
            "drop_rate": profile.dare_drop_rate,
            "normalize": False,
        },
    }
    unknown = sorted(set(profile.composition_methods) - set(table))
    if unknown:
        raise ValueError(f"unknown composition method(s) {unknown}; choose from {list(table)}")
    return {label: table[label] for label in profile.composition_methods}


def interview_sweep(
    model,
    tokenizer,
    vectors: Mapping[str, str | Path],
    alphas: Sequence[float],
    profile,
    judges: Sequence[str],
    cache_file: str | Path | None = None,
) -> pd.DataFrame:
    """Interview the model at each (vector, alpha) and let every judge score the vector's
    own trait. alpha = 0 (the base model) is included once per trait.

    Rows: condition, trait, level, alpha, judge, score, analysis.
    """
    from .evaluation import judge_interview_results
    from .judges import get_judge

    judge_objs = {name: _make_judge(name, profile, get_judge) for name in judges}
    points = _sweep_points(vectors, alphas)

    def evaluate(point):
        trait, level = split_condition(point["condition"], allow_base=True)
        with _at_point(model, vectors, point):
            transcripts = _trait_interview(model, tokenizer, profile, trait)
        rows = []
        for name, judge in judge_objs.items():
            result = judge_interview_results(transcripts, judge)[trait]
            rows.append(
                {
                    "trait": trait,
                    "level": level,
                    "judge": name,
                    "score": result.score,
                    "analysis": result.analysis,
                }
            )
        return rows

    return run_sweep(points, evaluate, cache_file, desc="interviews")


def _make_judge(name: str, profile, get_judge):
    # the persona judge loads its own frozen copy of the base: the swept model changes in place
    return get_judge(name, profile)


def _sweep_points(vectors: Mapping[str, Any], alphas: Sequence[float]) -> list[dict]:
    """One point per (vector, alpha), plus the base model (alpha 0) once per trait."""
    from .personas import split_condition

    traits = dict.fromkeys(split_condition(c)[0] for c in vectors)
    points = [{"condition": f"{t}_base", "alpha": 0.0} for t in traits]
    return points + [{"condition": c, "alpha": float(a)} for c in vectors for a in alphas]


def _at_point(model, vectors: Mapping[str, Any], point: Mapping[str, Any]):
    """The model at a sweep point: the base as it is, or with alpha phi applied in place."""
    import contextlib

    from .merging import applied

    if point["condition"].endswith("_base"):
        return contextlib.nullcontext(model)
    return applied(model, [vectors[point["condition"]]], [point["alpha"]], reuse_buffers=True)


def _trait_interview(model, tokenizer, profile, trait: str) -> pd.DataFrame:
    """The BFI interview of one trait with the profile's sampling settings."""
    from .evaluation import interview

    return interview(
        model,
        tokenizer,
        n_samples=profile.n_samples,
        temperature=profile.eval_temperature,
        max_new_tokens=profile.eval_max_new_tokens,
        seed=profile.seed,
        batch_size=profile.eval_batch_size,
        dimensions=[trait],
        progress=False,
    )


def example_answers(
    model,
    tokenizer,
    vector: str | Path,
    question: str,
    alphas: Sequence[float] = (0.0, 1.0, 2.0),
    max_new_tokens: int = 96,
) -> dict[float, str]:
    """Greedy answers to one question as a person, at several alphas of one vector."""
    convo = [
        [{"role": "system", "content": REAL_PERSON_PROMPT}, {"role": "user", "content": question}]
    ]
    out = {}
    for alpha in alphas:
        with applied(model, [vector], [alpha], reuse_buffers=True):
            (reply,) = chat(
                model,
                tokenizer,
                convo,
                max_new_tokens=max_new_tokens,
                temperature=0.0,
                progress=False,
            )
        out[float(alpha)] = trim_to_sentence(reply)
    return out


def negation_sweep(
    model,
    tokenizer,
    vectors: Mapping[str, str | Path],
    profile,
    alphas: Sequence[float] = (-1.0, 1.0),
    cache_file: str | Path | None = None,
) -> pd.DataFrame:
    """RQ3: at each alpha (and the base), the vector's trait score, the share of interview
    answers that step out of the persona ("As an AI..."), and perplexity on plain text.

    Rows: condition, trait, level, alpha, score, disclaimer_rate, perplexity, n_answers.
    """
    from .evaluation import contrast_scores

    points = _sweep_points(vectors, alphas)

    def evaluate(point):
        trait, level = split_condition(point["condition"], allow_base=True)
        with _at_point(model, vectors, point):
            pairs = profile.contrast_pairs
            score = contrast_scores(model, tokenizer, [trait], n_pairs=pairs)[trait]
            answers = _trait_interview(model, tokenizer, profile, trait)["answer"]
            ppl = perplexity(model, tokenizer)
        return {
            "trait": trait,
            "level": level,
            "score": score,
            "disclaimer_rate": disclaimer_rate(answers),
            "perplexity": ppl,
            "n_answers": len(answers),
            "example": answers.iloc[0],
        }

    return run_sweep(points, evaluate, cache_file, desc="negation")


def transfer_sweep(
    model,
    tokenizer,
    domain_vector: str | Path,
    vectors: Mapping[str, str | Path],
    alphas: Sequence[float],
    betas: Sequence[float],
    fidelity: Callable[[Any, Any], float],
    cache_file: str | Path | None = None,
    n_pairs: int | None = None,
) -> pd.DataFrame:
    """RQ4: theta_base + alpha phi_domain + beta phi_p over an (alpha, beta) grid.

    `fidelity(model, tokenizer)` scores how much the model is still the domain's character.
    Rows: condition, trait, level, alpha, beta, score (the vector's trait), fidelity.
    """
    from .evaluation import contrast_scores
    from .merging import applied

    points = [
        {"condition": c, "alpha": float(a), "beta": float(b)}
        for c in vectors
        for a in alphas
        for b in betas
    ]

    def evaluate(point):
        trait, level = split_condition(point["condition"], allow_base=True)
        with applied(
            model, [domain_vector, vectors[point["condition"]]], [point["alpha"], point["beta"]],
            reuse_buffers=True,
        ):
            score = contrast_scores(model, tokenizer, [trait], n_pairs=n_pairs)[trait]
            fid = fidelity(model, tokenizer)
        return {"trait": trait, "level": level, "score": score, "fidelity": fid}

    return run_sweep(points, evaluate, cache_file, desc="transfer")


def layerwise_sweep(
    model,
    tokenizer,
    vectors: Mapping[str, str | Path],
    alphas: Sequence[float],
    texts: Sequence[str],
) -> pd.DataFrame:
    """Cosine similarity of hidden states, base vs base + alpha phi, per layer (same texts).

    alpha = 1 is the fine-tuned personality model itself (up to float rounding).
    Rows: condition, trait, level, alpha, layer, cosine, cosine_sd, cosine_min.
    """
    from .merging import applied

    base = hidden_states(model, tokenizer, texts)
    frames = []
    for condition, vector in tqdm(list(vectors.items()), desc="layer-wise"):
        trait, level = split_condition(condition)
        for alpha in alphas:
            with applied(model, [vector], [alpha], reuse_buffers=True):
                other = hidden_states(model, tokenizer, texts)
            frames.append(
                layerwise_cosine(base, other).assign(
                    condition=condition, trait=trait, level=level, alpha=float(alpha)
                )
            )
    return pd.concat(frames, ignore_index=True)


def p2_scores(
    model,
    tokenizer,
    conditions: Iterable[str],
    seeds: Iterable[int] = range(3),
    n_pairs: int | None = None,
) -> pd.DataFrame:
    """The P2 baseline: the contrast score of each condition's trait with a P2 prompt
    (random trait adjectives with intensity modifiers) placed before the interview frame.

    Rows: condition, trait, level, seed, score.
    """
    from .baselines import p2_prompt
    from .evaluation import REAL_PERSON_PROMPT, contrast_scores

    rows = []
    for condition in conditions:
        trait, level = split_condition(condition)
        for seed in seeds:
            system = f"{p2_prompt(trait, level, seed)} {REAL_PERSON_PROMPT}"
            score = contrast_scores(
                model, tokenizer, [trait], system_prompt=system, n_pairs=n_pairs
            )[trait]
            rows.append(
                {
                    "condition": condition,
                    "trait": trait,
                    "level": level,
                    "seed": seed,
                    "score": score,
                }
            )
    return pd.DataFrame(rows)


def npti_sweep(
    model,
    tokenizer,
    conditions: Iterable[str],
    gammas: Sequence[float],
    profile,
    cache_file: str | Path | None = None,
) -> pd.DataFrame:
    """The NPTI baseline: trait neurons found once per trait, then steered toward the
    condition's level with strength gamma (forward hooks, removed after each point).

    Rows: condition, trait, level, gamma, score.
    """
    from .baselines import npti_intervention, npti_neurons
    from .evaluation import contrast_scores

    neurons: dict[str, Any] = {}
    points = [{"condition": c, "gamma": float(g)} for c in conditions for g in gammas]

    def evaluate(point):
        trait, level = split_condition(point["condition"], allow_base=True)
        if trait not in neurons:
            neurons[trait] = npti_neurons(model, tokenizer, trait)
        with npti_intervention(model, neurons[trait], point["gamma"], level):
            score = contrast_scores(model, tokenizer, [trait], n_pairs=profile.contrast_pairs)[
                trait
            ]
        return {"trait": trait, "level": level, "score": score}

    return run_sweep(points, evaluate, cache_file, desc="NPTI")
