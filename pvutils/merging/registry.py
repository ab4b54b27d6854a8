"""The merge methods: one table row each (mergekit's `merge_methods/registry.py`).

A method is generalized task arithmetic with four choices: how each delta is sparsified,
whether a sign is elected per entry (consensus), and the defaults of `normalize` and
`rescale`. Adding a method is one `Method(...)` row here (and, for a new sparsification,
one function in `functional.py`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    sparsification: str | None  # None | "magnitude" | "random" | "magnitude_outliers" | "della"
    consensus: bool  # elect a sign per entry and merge only the agreeing entries (TIES)
    default_normalize: bool
    default_rescale: bool  # random sparsifications: restore the L1 norm after dropping
    reference: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("task_arithmetic", None, False, False, False, "arXiv:2212.04089"),
    Method("ties", "magnitude", True, True, False, "arXiv:2306.01708"),
    Method("dare_linear", "random", False, False, True, "arXiv:2311.03099"),
    Method("dare_ties", "random", True, False, True, "arXiv:2311.03099"),
    Method("breadcrumbs", "magnitude_outliers", False, False, False, "arXiv:2312.06795"),
    Method("breadcrumbs_ties", "magnitude_outliers", True, False, False, "arXiv:2312.06795"),
    Method("della", "della", True, True, True, "arXiv:2406.11617"),
    Method("della_linear", "della", False, False, True, "arXiv:2406.11617"),
)}

RANDOM = ("random", "della")  # sparsifications that draw a mask (seeded, rescalable)
