"""Analysis for the chapters: resumable sweeps, correlations, hidden-state similarity,
side effects of negation, and the figures.

Sweeps evaluate many models that differ only by `sum(alpha_i * phi_i)`; they never write
a model (see `merging.applied`) and cache every finished point, so a killed chapter
resumes where it stopped.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from .artifacts import fingerprint, read_json, write_json

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


# --- correlations -----------------------------------------------------------------------


def spearman_by(df: pd.DataFrame, group: str | list[str], x: str, y: str) -> pd.DataFrame:
    """Spearman rho (and p) of `y` against `x` within each group."""
    out = []
    for key, sub in df.groupby(group):
        rho, p = stats.spearmanr(sub[x], sub[y]) if sub[x].nunique() > 1 else (np.nan, np.nan)
        key = key if isinstance(key, tuple) else (key,)
        out.append({**dict(zip(np.atleast_1d(group), key)), "spearman": rho, "p": p, "n": len(sub)})
    return pd.DataFrame(out)


def trait_profiles(traits: Sequence[str]) -> list[dict[str, str]]:
    """All 2^k high/low assignments of the traits (RQ2's 32 profiles for k = 5)."""
    return [
        dict(zip(traits, levels))
        for levels in itertools.product(("high", "low"), repeat=len(traits))
    ]


def composition_correlation(df: pd.DataFrame, traits: Sequence[str]) -> pd.DataFrame:
    """Per trait: Pearson r between the intended level (+1 high, -1 low) and the score.

    `df` has one row per merged profile with columns `target_<trait>` (+1/-1) and
    `<trait>` (the measured score). This is the paper's trait-score correlation for
    composition; its mean over traits is the headline number.
    """
    rows = []
    for trait in traits:
        target, score = df[f"target_{trait}"], df[trait]
        r = (
            stats.pearsonr(target, score)[0]
            if target.nunique() > 1 and score.nunique() > 1
            else np.nan
        )
        rows.append({"trait": trait, "pearson_r": r})
    return pd.DataFrame(rows)


def _direction(condition: str) -> int:
    """+1 for a `<trait>_high` vector, -1 for a `<trait>_low` one."""
    return 1 if condition.endswith("_high") else -1


def dial_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """RQ1 per vector: Spearman ρ(α, score), the sign its level calls for, whether it moves
    that way, ρ signed toward the level (1 = a perfect dial), and the score's range."""
    swept = sweep[sweep.level != "base"]
    rho = spearman_by(swept, "condition", "alpha", "score")
    sign = rho["condition"].map(_direction)
    rho["expected sign"] = sign.map({1: "+", -1: "-"})
    rho["moves as intended"] = np.sign(rho["spearman"]) == sign
    rho["signed spearman"] = rho["spearman"] * sign
    span = swept.groupby("condition")["score"].agg(lambda s: s.max() - s.min())
    rho["score range"] = rho["condition"].map(span)
    return rho


def composition_table(comp: pd.DataFrame, traits: Sequence[str]) -> pd.DataFrame:
    """RQ2: `composition_correlation` per (method, α), one row per trait."""
    return pd.concat([
        composition_correlation(sub, traits).assign(method=method, alpha=alpha)
        for (method, alpha), sub in comp.groupby(["method", "alpha"])
    ], ignore_index=True)


def inversion_table(neg: pd.DataFrame) -> pd.DataFrame:
    """RQ3 per vector: the trait score of the base, at α = +1 and at α = −1; `inverted`
    when −1 lands on the other side of the base from +1."""
    base = neg[neg.level == "base"].set_index("trait")["score"]
    rows = []
    for cond, sub in neg[neg.level != "base"].groupby("condition"):
        trait = cond.rsplit("_", 1)[0]
        by_alpha = sub.set_index("alpha")["score"]
        plus, minus = by_alpha[1.0] - base[trait], by_alpha[-1.0] - base[trait]
        rows.append({"condition": cond, "base": base[trait], "α = +1": by_alpha[1.0],
                     "α = -1": by_alpha[-1.0], "inverted": bool(plus * minus < 0)})
    return pd.DataFrame(rows)


def carry_table(grid: pd.DataFrame) -> pd.DataFrame:
    """RQ4 per (vector, domain α): how far the trait moves toward the vector's level and
    how much character fidelity changes, from β = 0 to the largest β."""
    rows = []
    for (cond, alpha), sub in grid.groupby(["condition", "alpha"]):
        sub = sub.sort_values("beta")
        rows.append({"condition": cond, "α (domain)": alpha,
                     "trait change β=0→max": _direction(cond)
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


def tiny_llava(seed: int = 0):
    """A tiny random LLaVA (CLIP vision tower + Llama language model) for the VLM code path."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=8, patch_size=4),
        text_config=LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=1),
        image_token_index=3)
    return LlavaForConditionalGeneration(cfg)


LANGUAGE_MODEL = ("*language_model*", "lm_head*")  # a LLaVA's language model and its head


def language_only_merge(workdir: str | Path, include: Sequence[str] = LANGUAGE_MODEL
                        ) -> pd.Series:
    """RQ4's VLM case on a tiny random LLaVA: a "fine-tuned" copy differs everywhere, its
    vector is merged with `include` patterns, and the share of tensors that changed is
    returned per part (vision tower, projector, language model, head)."""
    from transformers import LlavaForConditionalGeneration

    from . import merging, vectors

    workdir = Path(workdir)
    base, tuned = tiny_llava(0), tiny_llava(0)
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(0.01 * torch.randn_like(param))
    base.save_pretrained(workdir / "base")
    tuned.save_pretrained(workdir / "tuned")
    phi = vectors.extract_vector(workdir / "base", workdir / "tuned", workdir / "phi.safetensors")
    merging.merge_from_config({"merge_method": "task_arithmetic",
                               "base_model": str(workdir / "base"),
                               "models": [{"vector": str(phi), "parameters": {"weight": 1.0}}],
                               "include": list(include), "dtype": "float32"},
                              workdir / "merged")
    merged = LlavaForConditionalGeneration.from_pretrained(workdir / "merged")
    before = dict(base.named_parameters())
    changed = pd.Series({name: not torch.equal(p, before[name])
                         for name, p in merged.named_parameters()})
    part = changed.index.str.extract(r"^(model\.\w+|lm_head)")[0].values
    return changed.groupby(part).mean().rename("share of tensors changed")


# --- hidden-state similarity (the layer-wise analysis) ----------------------------------


@torch.inference_mode()
def hidden_states(
    model, tokenizer, texts: Sequence[str], batch_size: int = 8
) -> list[torch.Tensor]:
    """Per layer (embeddings first), the hidden states of every non-padding token: [N, H]."""
    per_layer: list[list[torch.Tensor]] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True)
        enc = enc.to(model.device)
        out = model(**enc, output_hidden_states=True)
        mask = enc["attention_mask"].bool()
        if not per_layer:
            per_layer = [[] for _ in out.hidden_states]
        for layer, h in enumerate(out.hidden_states):
            per_layer[layer].append(h[mask].float().cpu())
    return [torch.cat(chunks) for chunks in per_layer]


def layerwise_cosine(base: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> pd.DataFrame:
    """Per layer, the token-wise cosine similarity of two models' hidden states (mean, sd)."""
    if len(base) != len(other):
        raise ValueError(f"layer counts differ: {len(base)} vs {len(other)}")
    rows = []
    for layer, (a, b) in enumerate(zip(base, other)):
        if a.shape != b.shape:
            shapes = f"{tuple(a.shape)} vs {tuple(b.shape)}"
            raise ValueError(f"layer {layer}: hidden-state shapes differ {shapes}")
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        rows.append(
            {
                "layer": layer,
                "cosine": cos.mean().item(),
                "cosine_sd": cos.std().item(),
                "cosine_min": cos.min().item(),
            }
        )
    return pd.DataFrame(rows)


# --- side effects of negation (RQ3) -----------------------------------------------------

DISCLAIMER_PATTERNS = (
    r"\bas an? (ai|artificial intelligence|language model|assistant|chatbot|machine)\b",
    r"\b(i am|i'm) (just |only )?(an? )?([\w-]+ ){0,2}"
    r"(ai|artificial intelligence|language model|chatbot|assistant|computer program|machine)\b",
    r"\bi (do not|don't|cannot|can't) (have|experience) (personal |any )?"
    r"(feelings|emotions|experiences|opinions|preferences|a body)\b",
    r"\blanguage model\b",
)
_DISCLAIMER = re.compile("|".join(DISCLAIMER_PATTERNS), re.IGNORECASE)


def is_disclaimer(text: str) -> bool:
    """Does the reply step out of the persona ("As an AI, I do not have feelings")?"""
    return bool(_DISCLAIMER.search(text))


def disclaimer_rate(texts: Iterable[str]) -> float:
    texts = list(texts)
    return sum(map(is_disclaimer, texts)) / len(texts) if texts else math.nan


# Ordinary held-out prose for the general-ability check: plain informative text, unrelated
# to personality, written for this project (not drawn from any training set used here).
HELD_OUT_TEXT = (
    "The water cycle describes how water moves between the oceans, the air and the land. "
    "Heat from the sun evaporates water, which rises, cools and condenses into clouds.",
    "A bicycle chain transfers power from the pedals to the rear wheel. Keeping it clean "
    "and lightly oiled makes the ride smoother and the parts last longer.",
    "Bread dough rises because yeast feeds on sugars and releases carbon dioxide. The gas "
    "is trapped by gluten, a network of proteins formed when flour is mixed with water.",
    "Libraries lend books, but many also offer free internet access, study rooms, "
    "language classes and help with filling in official forms.",
    "To convert a temperature from Celsius to Fahrenheit, multiply it by nine, divide by "
    "five and add thirty-two. Water freezes at thirty-two degrees Fahrenheit.",
    "Trains that run on electricity take their power from overhead wires or from a third "
    "rail. They are quieter than diesel trains and produce no exhaust along the line.",
    "A good vegetable soup starts with onions, carrots and celery cooked slowly in a little "
    "oil before the stock and the other vegetables are added.",
    "The moon takes about twenty-seven days to orbit the Earth. The same side always faces "
    "us because its rotation is locked to its orbit.",
    "When you write a formal letter, put your address at the top, then the date, then the "
    "name and address of the person you are writing to.",
    "Tomatoes grow best in a sunny spot with regular watering. Tying the stems to a stick "
    "keeps the heavy fruit off the ground.",
    "A spreadsheet arranges numbers in rows and columns so that totals and averages can be "
    "calculated automatically when a value changes.",
    "Rivers carry sand and small stones downstream. Where the water slows down, near the "
    "sea, the material settles and can build up a delta.",
)


@torch.inference_mode()
def perplexity(
    model, tokenizer, texts: Sequence[str] = HELD_OUT_TEXT, batch_size: int = 8
) -> float:
    """Token-level perplexity on plain text: a cheap check of general language ability."""
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True)
        enc = enc.to(model.device)
        logits = model(**enc).logits[:, :-1].float()
        target = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].bool() & enc["attention_mask"][:, :-1].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        total_nll += nll[mask].sum().item()
        total_tokens += int(mask.sum())
    return math.exp(total_nll / total_tokens)


# --- figures ----------------------------------------------------------------------------


def caption(profile, n: int | None = None, extra: str = "") -> str:
    """The caption line every figure carries: profile, model and sample size."""
    parts = [f"profile `{profile.name}`", f"model {profile.model}"]
    if n is not None:
        parts.append(f"n = {n}")
    return "; ".join(parts) + (f". {extra}" if extra else "")


def plot_alpha_sweep(
    df: pd.DataFrame,
    x: str = "alpha",
    y: str = "score",
    hue: str = "level",
    col: str = "trait",
    title: str = "",
    baseline: Mapping[str, float] | None = None,
):
    """Trait score against the scaling coefficient, one panel per trait."""
    import seaborn as sns

    grid = sns.relplot(
        data=df,
        x=x,
        y=y,
        hue=hue,
        col=col,
        kind="line",
        marker="o",
        height=2.8,
        aspect=0.9,
        facet_kws={"sharey": False},
    )
    grid.set_axis_labels(x.replace("_", " "), "trait score (1-5)")
    if baseline:
        for trait, ax in grid.axes_dict.items():
            if trait in baseline:
                ax.axhline(baseline[trait], color="grey", ls="--", lw=1, label="base model")
    if title:
        grid.figure.suptitle(title, y=1.04)
    return grid


def plot_layerwise(df: pd.DataFrame, hue: str = "model", title: str = ""):
    """Hidden-state cosine similarity to the base model by layer."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7, 3.6))
    sns.lineplot(data=df, x="layer", y="cosine", hue=hue, marker="o", ax=ax)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("cosine similarity to base (mean over tokens)")
    if title:
        ax.set_title(title)
    return fig


def plot_matrix(
    matrix: pd.DataFrame, title: str = "", fmt: str = ".2f", center: float | None = None
):
    """A labelled heatmap (e.g. the 10 x 10 vector cosine matrix)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7, 5.6))
    sns.heatmap(
        matrix,
        annot=True,
        fmt=fmt,
        cmap="vlag",
        center=center,
        ax=ax,
        annot_kws={"size": 7},
        cbar_kws={"label": "cosine similarity"},
    )
    if title:
        ax.set_title(title)
    return fig


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
        trait, level = point["condition"].rsplit("_", 1)
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
        # beyond the paper, by name: mergekit's Model Breadcrumbs (drop the top 1 % of
        # magnitudes, keep the next ties_density) and DELLA (magnitude-ranked DARE)
        "Breadcrumbs": {"method": "breadcrumbs", "density": profile.ties_density},
        "DELLA": {"method": "della", "drop_rate": profile.dare_drop_rate, "normalize": False},
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
    from .evaluation import get_judge, judge_interview_results

    judge_objs = {name: _make_judge(name, profile, get_judge) for name in judges}
    points = _sweep_points(vectors, alphas)

    def evaluate(point):
        trait, level = point["condition"].rsplit("_", 1)
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
    if name == "persona":  # its own frozen copy of the base: the swept model changes in place
        return get_judge("persona", reference=profile.model)
    if name == "openai":
        return get_judge("openai", model=profile.judge_model)
    return get_judge(name)


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
    from .evaluation import REAL_PERSON_PROMPT
    from .merging import applied
    from .models import chat, trim_to_sentence

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
        trait, level = point["condition"].rsplit("_", 1)
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
        trait, level = point["condition"].rsplit("_", 1)
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
        trait, level = condition.rsplit("_", 1)
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
        trait, level = condition.rsplit("_", 1)
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
        trait, level = point["condition"].rsplit("_", 1)
        if trait not in neurons:
            neurons[trait] = npti_neurons(model, tokenizer, trait)
        with npti_intervention(model, neurons[trait], point["gamma"], level):
            score = contrast_scores(model, tokenizer, [trait], n_pairs=profile.contrast_pairs)[
                trait
            ]
        return {"trait": trait, "level": level, "score": score}

    return run_sweep(points, evaluate, cache_file, desc="NPTI")
