"""How much a model talks like a character: RQ4's fidelity, the character's own keywords
per 100 words of the model's greedy answers to held-out prompts (never judged by the model
under test). Kept apart from `training` so RQ4's stage can name these functions in its code
version without importing TRL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from . import data as pvdata
from . import models
from .profiles import Profile

DEFAULT_CHARACTER = "captain_mara"  # the role-play domain of RQ4 (`data.CHARACTERS`)


def keyword_counts(model, tokenizer, character: str = DEFAULT_CHARACTER,
                   prompts: Sequence[str] | None = None, max_new_tokens: int | None = None,
                   batch_size: int | None = None,
                   profile: Profile | None = None) -> list[tuple[int, int]]:
    """Per held-out prompt, (the character's keywords, words) in the model's answer: the
    counts `character_fidelity` pools, kept per prompt so a difference can be bootstrapped
    over the prompts.

    Greedy answers to held-out prompts (no system prompt; by default the first 16, or the
    profile's `n_heldout` if fewer); the keywords are the character's voice (for the sea
    captain: aye, ship, storm, tide, ...). Cheap enough to call at every point of an (α, β) grid.
    """
    if character not in pvdata.CHARACTERS:
        raise ValueError(f"unknown character {character!r}; characters: "
                         f"{', '.join(pvdata.CHARACTERS)}")
    keywords = set(pvdata.CHARACTERS[character]["keywords"])
    n_prompts = min(16, profile.n_heldout) if profile is not None else 16
    prompts = list(prompts or pvdata.heldout_prompts()[:n_prompts])
    max_new_tokens = max_new_tokens or (profile.eval_max_new_tokens if profile else 40)
    batch_size = batch_size or (profile.eval_batch_size if profile else 16)
    replies = models.chat(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                          max_new_tokens=max_new_tokens, temperature=0.0,
                          batch_size=batch_size, progress=False)
    words = [re.findall(r"[a-z']+", r.lower()) for r in replies]
    return [(sum(w in keywords for w in ws), len(ws)) for ws in words]


def pooled_fidelity(counts: Sequence[tuple[int, int]]) -> float:
    """Keywords per 100 words over all answers together."""
    return 100.0 * sum(k for k, _ in counts) / max(sum(n for _, n in counts), 1)


def character_fidelity(model, tokenizer, character: str = DEFAULT_CHARACTER,
                       prompts: Sequence[str] | None = None, max_new_tokens: int | None = None,
                       batch_size: int | None = None, profile: Profile | None = None) -> float:
    """How much a model talks like the character: its keywords per 100 words of answers
    (`keyword_counts`, pooled over the prompts)."""
    return pooled_fidelity(keyword_counts(model, tokenizer, character, prompts, max_new_tokens,
                                          batch_size, profile))
