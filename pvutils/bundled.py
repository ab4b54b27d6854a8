"""Data shipped with pvutils: `pvutils/resources/*.json`, each read once.

Text and numbers that are data (the BFI-44, prompts, personas, word lists, the paper's
reported values) live in those files, not in code; keys starting with "_" are notes.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def resource(name: str) -> Any:
    """The parsed `pvutils/resources/<name>.json` (shared and cached: do not mutate it)."""
    path = resources.files("pvutils").joinpath(f"resources/{name}.json")
    if not path.is_file():
        raise FileNotFoundError(f"pvutils has no resource {name!r} (pvutils/resources/{name}.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def paper_values() -> dict[str, dict[str, Any]]:
    """The paper's reported numbers and findings, one entry per key (e.g. "rq2.mean_trait_score_
    correlation"): `value` (None when qualitative), `relation`, `text`, `section`, `about`."""
    return resource("paper_values")["values"]


def paper_value(key: str) -> dict[str, Any]:
    """One entry of `paper_values`, with a clear error for an unknown key."""
    values = paper_values()
    if key not in values:
        raise KeyError(f"no paper value {key!r}; known: {', '.join(sorted(values))}")
    return values[key]
