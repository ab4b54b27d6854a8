"""Linguistic features of free self-descriptions, with open lexicons instead of LIWC-22.

The paper analyses answers to "Tell me about yourself in 300 words" with LIWC-22, which is
proprietary. We build the trait-related groups it reports from open tools that work
offline: Empath's bundled lexicon (categories), VADER (sentiment), textstat (readability)
and small word lists of our own for pronouns, tentativeness and certainty (LIWC's own
lists are not open). Rates are per 100 words, like LIWC's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

import numpy as np
import pandas as pd
import pyphen
from empath import Empath
from scipy import stats
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from .bundled import resource
from .cache import Stage
from .models import GENERATION_CODE, chat, trim_to_sentence
from .sweeps import applying, run_sweep

_DATA = resource("linguistics")
SELF_DESCRIPTION_PROMPT: str = _DATA["self_description_prompt"]
# feature group -> Empath categories summed into it (Empath's bundled categories.tsv)
EMPATH_GROUPS: dict[str, tuple[str, ...]] = {
    g: tuple(cats) for g, cats in _DATA["empath_groups"].items()}
PRONOUNS: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in _DATA["pronouns"].items()}
# small hand lists: LIWC's tentat/certain lists are proprietary
TENTATIVE = frozenset(_DATA["tentative"])
CERTAIN = frozenset(_DATA["certain"])
# features the paper (LIWC-22) relates to each trait; the sign says which pole uses more
TRAIT_FEATURES: dict[str, dict[str, int]] = _DATA["trait_features"]

# a word: letters, possibly joined by an apostrophe (I'm, don't)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r"[.!?]+")


@cache
def _empath():
    return Empath()  # reads the bundled lexicon; only create_category() uses the network


@cache
def _vader():
    return SentimentIntensityAnalyzer()


@cache
def _hyphenator():
    return pyphen.Pyphen(lang="en_US")


def syllables(word: str) -> int:
    # textstat's own counter downloads NLTK's cmudict on first use; its offline fallback is
    # the pyphen hyphenation dictionary, which we call directly
    return len(_hyphenator().positions(word)) + 1


def flesch_reading_ease(text: str) -> float:
    """Flesch (1948): 206.835 - 1.015 words/sentence - 84.6 syllables/word."""
    import textstat  # imported here: it loads in about a second and only this needs it

    words = _WORD.findall(text.lower())
    if not words:
        return float("nan")
    sentences = max(1, textstat.sentence_count(text))
    syl = sum(syllables(w) for w in words)
    return 206.835 - 1.015 * len(words) / sentences - 84.6 * syl / len(words)


def linguistic_features(texts: Sequence[str]) -> pd.DataFrame:
    """One row per text: word count, words/sentence, readability, VADER sentiment, pronoun,
    tentative/certain and Empath group rates (per 100 words)."""
    groups = {g: list(cats) for g, cats in EMPATH_GROUPS.items()}
    known = set(_empath().cats)
    missing = sorted({c for cats in groups.values() for c in cats} - known)
    if missing:
        raise RuntimeError(f"Empath's lexicon lacks categories {missing}")
    rows = []
    for text in texts:
        text = str(text)
        words = _WORD.findall(text.lower())
        n = len(words)
        per100 = 100.0 / n if n else 0.0
        row = {
            "word_count": n,
            "words_per_sentence": n / max(1, len(_SENTENCE_END.findall(text)) or 1),
            "flesch_reading_ease": flesch_reading_ease(text),
        }
        sentiment = _vader().polarity_scores(text)
        row.update(vader_pos=sentiment["pos"], vader_neg=sentiment["neg"],
                   vader_compound=sentiment["compound"])
        for name, vocab in PRONOUNS.items():
            row[f"pronoun_{name}"] = per100 * sum(w in vocab for w in words)
        row["tentative"] = per100 * sum(w in TENTATIVE for w in words)
        row["certainty"] = per100 * sum(w in CERTAIN for w in words)
        counts = _empath().analyze(text, categories=sorted(known & {c for v in groups.values()
                                                                     for c in v}))
        for group, cats in groups.items():
            row[group] = per100 * sum(counts[c] for c in cats) if n else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


# --- the chapter: self-descriptions at α ∈ {0, linguistic_alphas}, cached per point -------
# Only the generations are cached (the expensive part); features are recomputed from them
# on every run, so a changed word list needs no new generations.

def self_descriptions(model, tokenizer, P) -> list[str]:
    """`linguistic_samples` answers to the self-description prompt, sampled at the
    interview's temperature and cut back to their last full sentence."""
    conversations = [[{"role": "user", "content": SELF_DESCRIPTION_PROMPT}]] \
        * P.linguistic_samples
    replies = chat(model, tokenizer, conversations, max_new_tokens=P.linguistic_max_new_tokens,
                   temperature=P.eval_temperature, seed=P.seed, batch_size=P.eval_batch_size,
                   progress=False)
    return [trim_to_sentence(r) for r in replies]


LINGUISTIC = Stage("linguistic", ("model", "dtype", "device", "eval_temperature",
                                   "eval_batch_size", "seed", "linguistic_samples",
                                   "linguistic_max_new_tokens"),
                   grid=("linguistic_alphas", "sweep_conditions"),
                   code=(self_descriptions, *GENERATION_CODE))


def linguistic_plan(profile, vectors: Sequence[str]):
    """The base once (α = 0: the same model for every trait), then each vector at each
    `linguistic_alphas`; the prompt's text is part of the key."""
    P = LINGUISTIC.view(profile)
    points = [{"condition": "base", "alpha": 0.0}] + [
        {"condition": c, "alpha": float(a), "_uses": [c]}
        for c in vectors for a in P.linguistic_alphas]
    return LINGUISTIC, points, (SELF_DESCRIPTION_PROMPT,)


def linguistic_sweep(model, tokenizer, vectors, profile) -> pd.DataFrame:
    """Self-descriptions of the base and of θ + α φ for each vector, with their features.
    Rows: condition, alpha, sample, text, then one column per feature."""
    P = LINGUISTIC.view(profile)

    def measure(point):
        return [{"sample": i, "text": t}
                for i, t in enumerate(self_descriptions(model, tokenizer, P))]

    table = run_sweep(linguistic_plan(P, list(vectors)), P, measure, applying(model, vectors),
                      vectors)
    return pd.concat([table, linguistic_features(table.text)], axis=1)


def expected_directions() -> pd.DataFrame:
    """The resource's expectations, stated before any result: per trait and feature, the
    sign a high vector should move it (+1 up, -1 down); a low vector, the opposite."""
    return pd.DataFrame([{"trait": t, "feature": f, "expected": s}
                         for t, feats in TRAIT_FEATURES.items() for f, s in feats.items()])


def trait_frame(table: pd.DataFrame, trait: str) -> pd.DataFrame:
    """One trait's rows for a figure: each of its vectors' rows, and the base's rows as
    α = 0 of both (each line starts at the base). Adds a `level` column."""
    base = table[table.condition == "base"]
    parts = []
    for level in ("high", "low"):
        own = table[table.condition == f"{trait}_{level}"]
        if len(own):
            parts += [base.assign(level=level), own.assign(level=level)]
    return pd.concat(parts, ignore_index=True) if parts else table.iloc[:0].assign(level=[])


def _mean_diff_ci(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of mean(b) − mean(a), resampling the answers of
    each model on their own (scipy.stats.bootstrap)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    res = stats.bootstrap((b, a), lambda x, y, axis: x.mean(axis) - y.mean(axis),
                          n_resamples=2000, method="percentile", vectorized=True,
                          random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def feature_shifts(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per trait, expected feature, vector and α: the feature's change from the base with
    its 95 % interval, the sign the expectation calls for (flipped for a low vector), and a
    verdict: `as expected` (interval on the expected side of 0), `opposite` (on the other),
    `unclear` (the interval holds 0, or too few answers for one)."""
    base = table[table.condition == "base"]
    rows = []
    for _, e in expected_directions().iterrows():
        for level, flip in (("high", 1), ("low", -1)):
            own = table[table.condition == f"{e.trait}_{level}"]
            for alpha, sub in own.groupby("alpha"):
                a, b = base[e.feature].dropna().to_numpy(), sub[e.feature].dropna().to_numpy()
                low, high = _mean_diff_ci(a, b, seed)
                want = int(e.expected) * flip
                verdict = ("as expected" if want * low > 0 and want * high > 0 else
                           "opposite" if want * low < 0 and want * high < 0 else "unclear")
                rows.append({"trait": e.trait, "feature": e.feature, "vector": level,
                             "alpha": alpha, "expected": "up" if want > 0 else "down",
                             "base": a.mean() if len(a) else np.nan, "at alpha": b.mean(),
                             "change": b.mean() - (a.mean() if len(a) else np.nan),
                             "ci_low": low, "ci_high": high, "verdict": verdict})
    return pd.DataFrame(rows)
