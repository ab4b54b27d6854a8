"""Persona descriptions for the ten Big Five conditions (trait x high/low), and the one
place a condition name ("extraversion_high") is parsed.

Each description is written from the six NEO-PI-R facets of its trait (Costa & McCrae
1992), phrased as a system prompt in the second person (`resources/personas.json`). They
drive the offline data generator (contrastive persona guidance: the condition's persona
against the opposite one) and the persona-likelihood judge.
"""

from __future__ import annotations

from .bundled import resource
from .profiles import LEVELS, TRAITS

_DATA = resource("personas")
FACETS: dict[str, tuple[str, ...]] = {t: tuple(f) for t, f in _DATA["facets"].items()}
BASE_LEVEL = "base"  # sweeps name the unmodified model "<trait>_base"


def persona(trait: str, level: str) -> str:
    """The system prompt that describes one Big Five condition."""
    if trait not in TRAITS or level not in LEVELS:
        raise ValueError(f"unknown condition {trait!r}/{level!r}; traits {TRAITS}, levels {LEVELS}")
    return _DATA["frame"].format(persona=_DATA["descriptions"][trait][level])


def opposite(level: str) -> str:
    """'high' <-> 'low'."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; levels are {LEVELS}")
    return "low" if level == "high" else "high"


def split_condition(condition: str, allow_base: bool = False) -> tuple[str, str]:
    """'extraversion_high' -> ('extraversion', 'high'), with a clear error otherwise.

    With `allow_base`, a sweep's reference point 'extraversion_base' gives
    ('extraversion', 'base').
    """
    trait, _, level = condition.rpartition("_")
    levels = (*LEVELS, BASE_LEVEL) if allow_base else LEVELS
    if trait not in TRAITS or level not in levels:
        raise ValueError(
            f"unknown condition {condition!r}; conditions are <trait>_<level> with traits "
            f"{', '.join(TRAITS)} and levels {', '.join(levels)}"
        )
    return trait, level


def direction(condition: str) -> int:
    """+1 for a '<trait>_high' vector, -1 for a '<trait>_low' one."""
    return 1 if split_condition(condition)[1] == "high" else -1
