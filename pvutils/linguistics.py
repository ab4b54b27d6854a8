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

SELF_DESCRIPTION_PROMPT = "Tell me about yourself in 300 words."

# feature group -> Empath categories summed into it (Empath's bundled categories.tsv)
EMPATH_GROUPS: dict[str, tuple[str, ...]] = {
    "posemo": ("positive_emotion", "joy", "cheerfulness", "optimism", "love", "affection"),
    "negemo": ("negative_emotion", "hate", "disappointment", "suffering"),
    "anxiety": ("nervousness", "fear", "timidity"),
    "anger": ("anger", "rage", "irritability", "aggression"),
    "sadness": ("sadness", "suffering"),
    "social": ("friends", "family", "party", "communication", "meeting", "speaking", "listen"),
    "cognition": ("philosophy", "science", "reading", "writing"),
    "achievement": ("achievement", "work", "competing", "strength", "order"),
    "art": ("art", "music", "musical", "beauty"),
    "leisure": ("leisure", "fun", "play", "vacation", "traveling"),
}
PRONOUNS: dict[str, frozenset[str]] = {
    "i": frozenset("i me my mine myself i'm i've i'd i'll".split()),
    "we": frozenset("we us our ours ourselves we're we've we'd we'll".split()),
    "you": frozenset("you your yours yourself yourselves you're you've you'd you'll".split()),
}
# small hand lists: LIWC's tentat/certain lists are proprietary
TENTATIVE = frozenset(
    "maybe perhaps might possibly probably seem seems seemed guess unsure somewhat sometimes "
    "kind sort almost hope hopefully depends wonder".split()
)
CERTAIN = frozenset(
    "always never definitely certainly absolutely sure surely clearly completely totally "
    "every everything obviously truly must".split()
)
# a word: letters, possibly joined by an apostrophe (I'm, don't)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r"[.!?]+")


@cache
def _empath():
    from empath import Empath

    return Empath()  # reads the bundled lexicon; only create_category() uses the network


@cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@cache
def _hyphenator():
    import pyphen

    return pyphen.Pyphen(lang="en_US")


def syllables(word: str) -> int:
    # textstat's own counter downloads NLTK's cmudict on first use; its offline fallback is
    # the pyphen hyphenation dictionary, which we call directly
    return len(_hyphenator().positions(word)) + 1


def flesch_reading_ease(text: str) -> float:
    """Flesch (1948): 206.835 - 1.015 words/sentence - 84.6 syllables/word."""
    import textstat

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


# features the paper (LIWC-22) relates to each trait; the sign says which pole uses more
TRAIT_FEATURES: dict[str, dict[str, int]] = {
    "openness": {"art": +1, "cognition": +1, "words_per_sentence": +1},
    "conscientiousness": {"achievement": +1, "negemo": -1, "anger": -1},
    "extraversion": {"social": +1, "posemo": +1, "pronoun_we": +1, "word_count": +1},
    "agreeableness": {"posemo": +1, "anger": -1, "pronoun_we": +1},
    "neuroticism": {"anxiety": +1, "negemo": +1, "sadness": +1, "pronoun_i": +1},
}
