"""The BFI-44 as data (John & Srivastava 1999): items, keying, norms, scoring, and the
agreeing/disagreeing answer pairs the contrast measure and the embedding judge read.

The table itself lives in `resources/bfi44.json`; this module gives it types and checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from .bundled import resource
from .profiles import TRAITS

DIMENSIONS = TRAITS


@dataclass(frozen=True)
class BFIItem:
    number: int  # 1..44, as in John & Srivastava (1999)
    text: str  # completes "I see myself as someone who ..."
    dimension: str
    reverse: bool  # reverse-keyed: scored 6 - x
    question: str  # the interview form (InCharacter)


_TABLE = resource("bfi44")
BFI_STEM: str = _TABLE["stem"]
BFI_ITEMS: list[BFIItem] = [BFIItem(*row) for row in _TABLE["items"]]
ITEMS_BY_NUMBER: dict[int, BFIItem] = {it.number: it for it in BFI_ITEMS}
# Human norms used by the authors' tooling (mean, sd; n = 6076).
HUMAN_NORMS: dict[str, tuple[float, float]] = {
    d: tuple(v) for d, v in _TABLE["human_norms"].items()}
# What a judge is told each dimension means (after John & Srivastava 1999, NEO-PI-R facets).
DIMENSION_DESCRIPTIONS: dict[str, str] = dict(_TABLE["dimension_descriptions"])


def check_dimensions(dimensions: Sequence[str] | str | None) -> tuple[str, ...]:
    """The named dimensions in canonical order (all five for None); unknown names raise."""
    if dimensions is None:
        return DIMENSIONS
    if isinstance(dimensions, str):
        dimensions = [dimensions]
    bad = [d for d in dimensions if d not in DIMENSIONS]
    if bad:
        raise ValueError(f"unknown dimension(s) {bad}; dimensions are {list(DIMENSIONS)}")
    return tuple(d for d in DIMENSIONS if d in dimensions)


def items_for(dimensions: Sequence[str] | None = None) -> list[BFIItem]:
    """The BFI-44 items of `dimensions` (all five when None), in item order."""
    dims = check_dimensions(dimensions)
    return [it for it in BFI_ITEMS if it.dimension in dims]


def interview_questions() -> list[str]:
    """The 44 interview questions, in item order (trait data must not reuse them)."""
    return [it.question for it in BFI_ITEMS]


def score_items(item_scores: Mapping[int, float]) -> dict[str, float]:
    """Per-dimension BFI means (1-5) from raw item answers, reverse keys scored 6 - x.

    Dimensions without any answered item are left out.
    """
    if not item_scores:
        raise ValueError("score_items needs at least one item score")
    per_dim: dict[str, list[float]] = {}
    for number, value in item_scores.items():
        item = ITEMS_BY_NUMBER.get(int(number))
        if item is None:
            raise ValueError(f"unknown BFI-44 item number {number!r}; items are 1..44")
        value = float(value)
        if not 1.0 <= value <= 5.0:
            raise ValueError(f"item {number} has score {value}; BFI answers lie in 1..5")
        per_dim.setdefault(item.dimension, []).append(6.0 - value if item.reverse else value)
    return {d: sum(v) / len(v) for d in DIMENSIONS if (v := per_dim.get(d))}


@cache
def contrast_pairs() -> dict[int, list[tuple[str, str]]]:
    """Per item: (agreeing answer, disagreeing answer) pairs written for this project."""
    raw = resource("bfi_contrast_pairs")
    pairs = {int(k): [tuple(p) for p in v] for k, v in raw.items() if not k.startswith("_")}
    missing = sorted(set(ITEMS_BY_NUMBER) - set(pairs))
    if missing:
        raise ValueError(f"bfi_contrast_pairs.json lacks items {missing}")
    return pairs


def dimension_anchors(dimension: str) -> tuple[list[str], list[str]]:
    """(high anchors, low anchors): the dimension's contrast answers, keyed (an agreeing
    answer to a reverse-keyed item is a low anchor)."""
    high, low = [], []
    for it in items_for([dimension]):
        for agree, disagree in contrast_pairs()[it.number]:
            (low if it.reverse else high).append(agree)
            (high if it.reverse else low).append(disagree)
    return high, low


# --- the second inventory: IPIP 50-item Big-Five markers (Goldberg 1992) ---------------------


@dataclass(frozen=True)
class IPIPItem:
    number: int  # 1..50, in the pool's order
    text: str  # completes "I ..." (e.g. "Am the life of the party.")
    dimension: str
    reverse: bool  # reverse-keyed for `dimension`: scored 6 - x

    @property
    def question(self) -> str:
        """The item as a question to the model, in the first person."""
        statement = self.text[0].lower() + self.text[1:]
        return resource("ipip50")["question"].format(item=statement)


IPIP_ITEMS: list[IPIPItem] = [IPIPItem(*row) for row in resource("ipip50")["items"]]


def ipip_items(dimensions: Sequence[str] | None = None) -> list[IPIPItem]:
    """The IPIP-50 items of `dimensions` (all five when None), in item order."""
    dims = check_dimensions(dimensions)
    return [it for it in IPIP_ITEMS if it.dimension in dims]


def ipip_answer_pairs() -> list[tuple[str, str]]:
    """The generic (agreeing, disagreeing) answers every IPIP item is contrasted with."""
    return [tuple(p) for p in resource("ipip50")["answer_pairs"]]
