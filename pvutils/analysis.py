"""What the chapters ask of a sweep's inputs besides the sweep itself: RQ2's trait
profiles and the example answers shown beside the figures (cached: `greedy-replies`).

The sweeps are in `sweeps`, statistics in `stats`, figures in `plots`, hidden-state
similarity in `layers`, side effects (disclaimers, perplexity) in `side_effects`, the VLM
case in `vlm`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

from .cache import Stage
from .evaluation import REAL_PERSON_PROMPT
from .merging import applied
from .models import GENERATION_CODE, chat, trim_to_sentence
from .sweeps import Plan, applying, run_sweep


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


def greedy_reply(model, tokenizer, conversation: Sequence[Mapping[str, str]],
                 max_new_tokens: int) -> str:
    """One greedy reply, trimmed to its last whole sentence."""
    (reply,) = chat(model, tokenizer, [list(conversation)], max_new_tokens=max_new_tokens,
                    temperature=0.0, progress=False)
    return trim_to_sentence(reply)


# the replies the chapters print beside their figures: cheap, but regenerated on every run
# without a cache (the model, the conversation, the vector and its α are the point)
REPLIES = Stage("greedy-replies", ("model", "dtype", "device"),
                code=(greedy_reply, trim_to_sentence, *GENERATION_CODE))


def replies_plan(profile, conversations: Sequence[Sequence[Mapping]], max_new_tokens: int,
                 alphas: Sequence[float] | None = None) -> Plan:
    """One point per conversation, or per (conversation, α) of the input named "vector"
    when `alphas` are given."""
    points = [{"conversation": [dict(t) for t in convo], "max_new_tokens": int(max_new_tokens),
               **({"alpha": float(a), "_uses": ["vector"]} if alphas is not None else {})}
              for convo in conversations for a in (alphas if alphas is not None else (None,))]
    return REPLIES, points, ()


def cached_replies(model, tokenizer, profile, conversations: Sequence[Sequence[Mapping]],
                   max_new_tokens: int, vector: str | Path | None = None,
                   alphas: Sequence[float] | None = None) -> list[str]:
    """Greedy replies to each conversation (with `vector` at each of `alphas`, else the
    model as it is), cached per point: a warm rerun needs no model. Ordered by
    conversation, then α."""
    if (vector is None) != (alphas is None):
        raise ValueError("cached_replies: give a vector together with its alphas, or neither")
    uses = {"vector": vector} if vector is not None else {}

    def measure(point):
        return {"reply": greedy_reply(model, tokenizer, point["conversation"],
                                      point["max_new_tokens"])}

    plan = replies_plan(profile, conversations, max_new_tokens, alphas)
    table = run_sweep(plan, REPLIES.view(profile), measure,
                      applying(model, uses) if uses else None, uses)
    return table["reply"].tolist()


def example_conversation(question: str) -> list[dict[str, str]]:
    """The example question asked of a model told to answer as a real person."""
    return [{"role": "system", "content": REAL_PERSON_PROMPT},
            {"role": "user", "content": question}]


def example_answers(model, tokenizer, vector: str | Path, question: str,
                    alphas: Sequence[float] = (0.0, 1.0, 2.0), max_new_tokens: int = 96,
                    profile=None) -> dict[float, str]:
    """Greedy answers to one question as a person, at several alphas of one vector (cached
    under `profile`'s stage entry when one is given)."""
    convo = example_conversation(question)
    if profile is not None:
        replies = cached_replies(model, tokenizer, profile, [convo], max_new_tokens, vector,
                                 list(alphas))
        return dict(zip(map(float, alphas), replies, strict=True))
    out = {}
    for alpha in alphas:
        with applied(model, [vector], [alpha], reuse_buffers=True):
            out[float(alpha)] = greedy_reply(model, tokenizer, convo, max_new_tokens)
    return out
