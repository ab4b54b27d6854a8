"""What a vector costs besides the trait: replies that step out of the persona ("As an
AI, I do not have feelings", RQ3) and perplexity on plain prose (general language ability).

The disclaimer list (`resources/disclaimers.json`) is the one the data filter uses too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from functools import cache

import torch

from .bundled import resource


@cache
def _disclaimer() -> re.Pattern:
    return re.compile("|".join(resource("disclaimers")["patterns"]), re.IGNORECASE)


def is_disclaimer(text: str) -> bool:
    """Does the reply step out of the persona ("As an AI, I do not have feelings")?"""
    return bool(_disclaimer().search(text))


def disclaimer_rate(texts: Iterable[str]) -> float:
    """The share of replies that are disclaimers (NaN for no replies)."""
    texts = list(texts)
    return sum(map(is_disclaimer, texts)) / len(texts) if texts else math.nan


def held_out_text() -> tuple[str, ...]:
    """Ordinary prose written for this project, unrelated to personality."""
    return tuple(resource("held_out_text")["texts"])


@torch.inference_mode()
def perplexity(model, tokenizer, texts: Sequence[str] | None = None,
               batch_size: int = 8) -> float:
    """Token-level perplexity on plain text (default `held_out_text()`): a cheap check of
    general language ability. The model's own loss with pads labelled -100 (ignored)."""
    texts = held_out_text() if texts is None else texts
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        # right padding: no pad ever precedes a real token, so every real token but the
        # first of each text is predicted from real context
        enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt",
                        padding=True, padding_side="right").to(model.device)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        n_predicted = int((labels[:, 1:] != -100).sum())
        loss = model(**enc, labels=labels).loss  # mean over the predicted tokens
        total_nll += loss.item() * n_predicted
        total_tokens += n_predicted
    return math.exp(total_nll / total_tokens)
