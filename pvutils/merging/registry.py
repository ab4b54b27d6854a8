"""The merge methods: one table row each (mergekit's `merge_methods/registry.py`).

A method is generalized task arithmetic with four choices: how each delta is sparsified,
whether a sign is elected per entry (consensus), and the defaults of `normalize` and
`rescale`. Adding a method is one `Method(...)` row; a new way to sparsify is one function
in `functional.py` and one `Sparsification(...)` row saying how the engine calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import functional as F


@dataclass(frozen=True)
class Method:
    name: str
    sparsification: str | None  # a key of SPARSIFICATIONS, or None
    consensus: bool  # elect a sign per entry and merge only the agreeing entries (TIES)
    default_normalize: bool
    default_rescale: bool  # restore the L1 norm after sparsifying (mergekit's `rescale`)
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


def known_method(name: str) -> str:
    """The one check of a method name (the schema of `MergeParams` and of the YAML use it)."""
    if name not in METHODS:
        raise ValueError(f"unknown merge method; choose one of {list(METHODS)}")
    return name


@dataclass
class Context:
    """What a sparsification of one vector's block may need besides the delta."""

    gamma: float = 0.01
    epsilon: float = 0.15
    rescale: str | None = None  # "l1" | "inverse" | None
    generator: torch.Generator | None = None  # the block's seeded generator (random ones)
    l1_scale: float | None = None  # the whole tensor's L1 rescale, for one row block
    stat: Any = None  # the whole tensor's `statistic`, for one row block
    accelerate: str | None = None
    label: str = "tensor"


@dataclass(frozen=True)
class Sparsification:
    """`apply(delta, density, context)` sparsifies (in place); `statistic(blocks, numel,
    density, context)` is the whole-tensor number it needs, streamed over row blocks when
    the tensor is split; `random` ones draw a seeded mask."""

    apply: Callable[[torch.Tensor, float, Context], torch.Tensor]
    statistic: Callable[[F.Blocks, int, float, Context], Any] | None = None
    random: bool = False


SPARSIFICATIONS: dict[str, Sparsification] = {
    "magnitude": Sparsification(
        lambda d, density, c: F.sparsify_magnitude(d, density, c.stat, c.rescale, c.l1_scale),
        lambda blocks, n, density, c: F.magnitude_threshold(
            blocks, F.keep_count(density, n), c.accelerate, c.label)),
    "random": Sparsification(
        lambda d, density, c: F.sparsify_random(d, density, c.rescale, c.generator,
                                                c.l1_scale), random=True),
    "magnitude_outliers": Sparsification(
        lambda d, density, c: F.sparsify_outliers(d, density, c.gamma, c.stat, c.rescale,
                                                  c.l1_scale),
        lambda blocks, n, density, c: F.outlier_thresholds(
            blocks, n, density, c.gamma, c.accelerate, c.label)),
    "della": Sparsification(
        lambda d, density, c: F.sparsify_della(d, density, c.epsilon, c.rescale, c.generator,
                                               c.l1_scale), random=True),
}
