"""Capability cost of a trait dial: what the model can no longer do at a setting.

Two cheap, deterministic checks: perplexity on held-out ordinary prose
(`side_effects.held_out_text()`), and short factual questions (`resources/factual_questions.json`)
answered greedily, each kept in the file only if the embedded base model answers it right
(`verify_questions`), so the base scores 1.0 by construction and any drop is a cost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources

import pandas as pd

from .models import chat
from .side_effects import held_out_text, perplexity

ANSWER_PROMPT = "Answer the question with a word or a short phrase."


@cache
def factual_questions() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(question, accepted answers) pairs from the resource file."""
    raw = json.loads(
        resources.files("pvutils").joinpath("resources/factual_questions.json").read_text())
    return tuple((q["question"], tuple(q["answers"])) for q in raw["questions"])


def is_correct(reply: str, answers: Sequence[str]) -> bool:
    """Whether any accepted answer appears in the reply as a whole word (case-insensitive)."""
    return any(re.search(rf"(?<!\w){re.escape(a.lower())}(?!\w)", reply.lower())
               for a in answers)


def factual_answers(model, tokenizer, questions=None, max_new_tokens: int = 12,
                    batch_size: int = 64, persona: str = "") -> pd.DataFrame:
    """Greedy replies to the factual questions (default: all of the resource file), with
    `persona` (e.g. a P2 prompt) before the answer instruction.
    Columns: question, reply, correct."""
    questions = factual_questions() if questions is None else questions
    system = f"{persona} {ANSWER_PROMPT}".strip()
    convos = [[{"role": "system", "content": system}, {"role": "user", "content": q}]
              for q, _ in questions]
    replies = chat(model, tokenizer, convos, max_new_tokens=max_new_tokens, temperature=0.0,
                   batch_size=batch_size, progress=False)
    return pd.DataFrame([{"question": q, "reply": r, "correct": is_correct(r, a)}
                         for (q, a), r in zip(questions, replies, strict=True)])


def capability(model, tokenizer, n_questions: int | None = None,
               max_new_tokens: int = 12, persona: str = "") -> dict[str, float]:
    """{"perplexity": on held-out prose, "factual": share of the first `n_questions`
    factual questions (None: all) answered right under `persona`}. Perplexity reads plain
    prose with no prompt: a prompt-only dial (P2) leaves it unchanged by construction."""
    facts = factual_answers(model, tokenizer, factual_questions()[:n_questions],
                            max_new_tokens=max_new_tokens, persona=persona)
    return {"perplexity": perplexity(model, tokenizer, held_out_text()),
            "factual": float(facts["correct"].mean())}


def verify_questions(model, tokenizer, candidates) -> list[dict]:
    """The candidates (question, answers) the model answers right, as resource entries."""
    table = factual_answers(model, tokenizer, candidates)
    return [{"question": q, "answers": list(a)}
            for (q, a), ok in zip(candidates, table["correct"], strict=True) if ok]
