"""Text checks for generated answers: near-duplicates of the interview questions, and the
cheap quality filter that drops the failure shapes of a small model under strong guidance.
Pure functions of strings (`pvutils.data` applies them)."""

from __future__ import annotations

import re
from collections import Counter

from .side_effects import is_disclaimer


def normalize_text(text: str) -> str:
    """Lower case, letters and digits only, single spaces: for near-duplicate checks."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def token_overlap(a: str, b: str) -> float:
    """Jaccard overlap of the two texts' word sets (0 = disjoint, 1 = same words)."""
    sa, sb = set(normalize_text(a).split()), set(normalize_text(b).split())
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def near_duplicates(bank, questions, threshold: float = 0.6) -> list[tuple[str, str]]:
    """Pairs (prompt, question) that are equal after normalisation or share most words."""
    return [
        (p, q) for p in bank for q in questions
        if normalize_text(p) == normalize_text(q) or token_overlap(p, q) >= threshold
    ]


MIN_WORDS = 4
MAX_CHARS = 1200
_STOPWORDS = frozenset(
    "the a an and or but to of in on at for with is are was were be been i you it my me "
    "we they he she this that not do so have has had just what how like your our".split()
)


def quality_issue(text: str) -> str | None:
    """Why a generated reply is unusable, or None if it is fine.

    Reasons: empty, too_short, too_long, ai_disclaimer, non_english, degenerate_loop,
    repetitive. Small models under strong guidance drift into loops and gibberish; these
    cheap checks catch the common failure shapes.
    """
    text = text.strip()
    if not text:
        return "empty"
    letters = [c for c in text if c.isalpha()]
    if sum(c.isascii() for c in letters) < 0.95 * len(letters):
        return "non_english"
    words = re.findall(r"[A-Za-z']+", text)
    if len(words) < MIN_WORDS:
        return "too_short"
    if len(text) > MAX_CHARS:
        return "too_long"
    if is_disclaimer(text):
        return "ai_disclaimer"
    lower = [w.lower() for w in words]
    trigrams = Counter(zip(lower, lower[1:], lower[2:], strict=False))
    sentences = [normalize_text(s) for s in re.split(r"[.!?]+", text) if normalize_text(s)]
    if (trigrams and max(trigrams.values()) >= 3) or len(sentences) != len(set(sentences)) \
            or re.search(r"(.)\1{5,}", text):
        return "degenerate_loop"
    if len(lower) >= 12 and len(set(lower)) / len(lower) < 0.4:
        return "repetitive"
    if len(words) >= 8 and sum(w.lower() in _STOPWORDS for w in words) < 0.1 * len(words):
        return "non_english"
    return None
