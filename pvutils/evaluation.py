"""Measuring Big Five traits: the fast contrast measure, the interview, the validity study,
and `python -m pvutils score`.

Two ways to score a model, one fast and one faithful to the paper:

- `contrast_scores`: for every BFI-44 item, the model's preference (length-normalised
  log-likelihood) for a short agreeing answer over a disagreeing one. Deterministic, no
  sampling, a few seconds for all 44 items of SmolLM2-135M: the measure for α sweeps.
- `interview` + a judge (`judges.get_judge`): the paper's protocol (InCharacter): the model
  answers each item rewritten as a question, as a real person; a judge reads one
  dimension's answers and returns 1-5.

The BFI-44 table is `bfi`, the likelihood engine `likelihood`, the judges `judges`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from . import models, personas
from .artifacts import artifacts_dir, fingerprint, read_json, write_json
from .bfi import DIMENSIONS, BFIItem, check_dimensions, contrast_pairs, items_for, score_items
from .bundled import resource
from .cache import code_version
from .judges import Judge, JudgeError, JudgeResult, get_judge
from .likelihood import answer_logprobs
from .merging import applied
from .outputs import check_local_path, report_error
from .prompts import load_prompts
from .tensorio import SafetensorsSource
from .vectors import check_forward_finite, check_vector_files, check_weights

# The interviewee's system prompt: the paper's idea that the model answers as a real person.
REAL_PERSON_PROMPT: str = resource("interview")["system_prompt"]

# --- the likelihood-contrast BFI -----------------------------------------------------------


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


def interview_script(dimensions: Sequence[str] | None = None,
                     language: str | None = None) -> tuple[str, list[BFIItem]]:
    """(the interviewee's system prompt, the items asked, each with its `question`), in
    `language` from its prompt file (`pvutils.prompts`; None: the English resource)."""
    items = items_for(dimensions)
    if not language:
        return REAL_PERSON_PROMPT, items
    local = load_prompts(language)
    return local.real_person_prompt, [dataclasses.replace(it, question=local.questions[it.number])
                                      for it in items]


def _interview_cache_path(cache_key: str, settings: Mapping[str, Any]) -> Path:
    """Where the transcripts of one interview are cached."""
    return artifacts_dir() / "interviews" / f"{fingerprint(cache_key, dict(settings))}.json"


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
    language: str | None = None,
) -> pd.DataFrame:
    """The model answers every BFI question as a person, `n_samples` times (one chat each).

    `language` (e.g. "ko") takes the questions and the system prompt from that language's
    prompt file (`pvutils.prompts`); None keeps the English ones.

    Columns: item, dimension, sample, question, answer. With `cache_key` (naming the model
    under test, e.g. "base" or "extraversion_high@1.5") transcripts are cached under the
    artifacts directory, keyed by it and every generation setting.
    """
    default_system, items = interview_script(dimensions, language)
    system = default_system if system_prompt is None else system_prompt
    settings = dict(n_samples=n_samples, temperature=temperature, max_new_tokens=max_new_tokens,
                    seed=seed, system=system, questions=[it.question for it in items],
                    sampler=code_version(models.GENERATION_CODE))
    path = None
    if cache_key is not None:
        path = _interview_cache_path(cache_key, settings)
        if path.exists():
            return pd.DataFrame(read_json(path)["transcripts"])
    jobs = [(it, s) for s in range(n_samples) for it in items]
    convos = [[{"role": "system", "content": system}, {"role": "user", "content": it.question}]
              for it, _ in jobs]
    answers = models.chat(model, tokenizer, convos, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=1.0, seed=seed, batch_size=batch_size,
                          progress=progress)
    rows = [dict(item=it.number, dimension=it.dimension, sample=s, question=it.question,
                 answer=models.trim_to_sentence(a))
            for (it, s), a in zip(jobs, answers, strict=True)]
    if path is not None:
        write_json(path, {"cache_key": cache_key, "settings": settings, "transcripts": rows})
    return pd.DataFrame(rows)


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
    jobs = [(d, lv, it) for d in check_dimensions(dimensions) for lv in ("high", "low")
            for it in items_for([d])[:n_questions]]

    def convos(flip: bool) -> list[list[dict]]:
        return [[{"role": "system",
                  "content": personas.persona(d, personas.opposite(lv) if flip else lv)},
                 {"role": "user", "content": it.question}] for d, lv, it in jobs]

    # contrastive persona guidance with a persona per row, so all conditions share one batch
    answers = models.chat(model, tokenizer, convos(False), max_new_tokens=max_new_tokens,
                          temperature=0.7, top_p=0.9, seed=seed, batch_size=len(jobs),
                          progress=False, negative_conversations=convos(True),
                          guidance_scale=1.0 + gamma)
    return pd.DataFrame([dict(dimension=d, level=lv, item=it.number, question=it.question,
                              answer=models.trim_to_sentence(a))
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
    rows = []
    for (dim, level), part in answers.groupby(["dimension", "level"], sort=False):
        pairs = list(zip(part["question"], part["answer"], strict=True))
        row: dict[str, Any] = dict(dimension=dim, level=level)
        for name, judge in judges.items():
            row[name] = judge.score(dim, pairs).score
        if contrast:
            row["contrast"] = contrast_scores(model, tokenizer, [dim],
                                              system_prompt=personas.persona(dim, level))[dim]
        rows.append(row)
    return pd.DataFrame(rows)


def validity_summary(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-dimension high - low separation of every measure, Spearman rho between measures
    over the dimension x level scores)."""
    measures = [c for c in table.columns if c not in ("dimension", "level")]
    wide = table.pivot(index="dimension", columns="level", values=measures)
    separation = pd.DataFrame({m: wide[(m, "high")] - wide[(m, "low")] for m in measures})
    return separation, table[measures].corr(method="spearman")


# --- command line --------------------------------------------------------------------------


def _score_parser() -> argparse.ArgumentParser:
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
    return p


def _check_score_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument combinations argparse cannot check (exits with a usage error)."""
    if args.vector and len(args.alpha) not in (1, len(args.vector)):
        p.error(f"give one --alpha or one per --vector ({len(args.vector)} vectors, "
                f"{len(args.alpha)} alphas)")
    if args.alpha and not args.vector:
        p.error("--alpha needs --vector")


def _check_score_inputs(args: argparse.Namespace) -> None:
    """The rules `merge` applies to its inputs, before anything is loaded."""
    check_weights(args.alpha, where="--alpha")
    check_local_path(args.model, "model")
    if Path(args.model).is_dir():
        check_vector_files(SafetensorsSource(args.model), args.vector, args.allow_foreign_base)


def _scores(args: argparse.Namespace) -> dict[str, float]:
    _check_score_inputs(args)
    model, tok = models.load_model(args.model), models.load_tokenizer(args.model)
    judge = None
    if args.measure == "interview":  # the persona judge loads a frozen copy of the base
        judge = get_judge(args.judge, reference=args.model, judge_model=args.judge_model)
    ctx: Any = contextlib.nullcontext(model)
    if args.vector:
        alphas = args.alpha * len(args.vector) if len(args.alpha) == 1 else args.alpha
        ctx = applied(model,  # streams each vector file, restores exactly
                      list(args.vector), alphas, method=args.method,
                      allow_foreign_base=args.allow_foreign_base)
    with ctx:
        if args.vector:
            check_forward_finite(model, tok, "the model with the vectors applied")
        if judge is None:
            return contrast_scores(model, tok, args.dimensions)
        transcripts = interview(model, tok, n_samples=args.samples,
                                max_new_tokens=args.max_new_tokens, seed=args.seed,
                                dimensions=args.dimensions)
    return judge_interview(transcripts, judge)


def cli_score(argv: list[str]) -> int:
    """`python -m pvutils score MODEL [--vector V --alpha A ...] --measure ... --judge ...`"""
    p = _score_parser()
    args = p.parse_args(argv)
    _check_score_args(p, args)
    try:
        scores = _scores(args)
    except (models.ModelError, JudgeError, ValueError, FileNotFoundError) as err:
        return report_error(err)
    print(json.dumps({d: round(s, 4) for d, s in scores.items()}, indent=2))
    return 0
