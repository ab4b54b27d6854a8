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

import pandas as pd
import pyphen
from empath import Empath
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from .bundled import resource

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
