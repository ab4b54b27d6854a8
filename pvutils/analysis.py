"""What the chapters ask of a sweep's inputs besides the sweep itself: RQ2's trait
profiles and the example answers shown beside the figures.

The sweeps are in `sweeps`, statistics in `stats`, figures in `plots`, hidden-state
similarity in `layers`, side effects (disclaimers, perplexity) in `side_effects`, the VLM
case in `vlm`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from .evaluation import REAL_PERSON_PROMPT
from .merging import applied
from .models import chat, trim_to_sentence


def trait_profiles(traits: Sequence[str], fraction: str = "full") -> list[dict[str, str]]:
    """The high/low assignments of the traits RQ2 merges: all 2^k ("full", the paper's 32
    for k = 5), or the half fraction with an even number of lows ("half": the defining
    relation I = product of all k signs, so every trait is high in half of the profiles and
    each pair of traits is balanced -- main effects stay unconfounded with one another; for
    k = 5 it is the resolution-V design of 16 profiles)."""
    if fraction not in ("full", "half"):
        raise ValueError(f"fraction={fraction!r}: choose 'full' or 'half'")
    if fraction == "half" and len(traits) < 3:
        raise ValueError(f"a half fraction of {len(traits)} trait(s) confounds their levels; "
                         "it needs at least 3 traits (use fraction='full')")
    every = [dict(zip(traits, levels))
             for levels in itertools.product(("high", "low"), repeat=len(traits))]
    if fraction == "full":
        return every
    return [p for p in every if list(p.values()).count("low") % 2 == 0]


def example_answers(
    model,
    tokenizer,
    vector: str | Path,
    question: str,
    alphas: Sequence[float] = (0.0, 1.0, 2.0),
    max_new_tokens: int = 96,
) -> dict[float, str]:
    """Greedy answers to one question as a person, at several alphas of one vector."""
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
