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


def trait_profiles(traits: Sequence[str]) -> list[dict[str, str]]:
    """All 2^k high/low assignments of the traits (RQ2's 32 profiles for k = 5)."""
    return [
        dict(zip(traits, levels))
        for levels in itertools.product(("high", "low"), repeat=len(traits))
    ]


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
