"""Analysis for the chapters: correlations, hidden-state similarity, side effects of
negation, and the figures. The sweeps that produce their inputs are in `pvutils.sweeps`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

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


# --- example answers ------------------------------------------------------------------


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
