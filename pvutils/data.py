"""Trait data: the paper's Big5-Chat where a user has it, else a look-alike made offline.

Big5-Chat (Li et al. 2024) holds 10k dialogues per Big Five condition. Where it cannot be
downloaded (no model hub here, nor in CI) the base model writes its own: for each everyday
user prompt it answers under contrastive persona guidance (the condition's persona against
the opposite level's: `models.chat` with guidance scale 1 + gamma). The stored example
keeps only user -> assistant, without the persona prompt, so fine-tuning must put the
trait into the weights.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from . import cache, models, personas, progress
from .artifacts import atomic_dir, read_json, write_json
from .bundled import resource
from .profiles import CONDITIONS, Profile
from .quality import near_duplicates, normalize_text, quality_issue, token_overlap

__all__ = ["near_duplicates", "normalize_text", "quality_issue", "token_overlap"]  # re-exported

# bump when generation or filtering changes what a cache holds (2: the disclaimer filter is
# the shared list of `side_effects`, a superset of version 1's)
DATA_VERSION = 2
BIG5CHAT_HUB_ID = "wenkai-li/big5_chat"
BIG5CHAT_COLUMNS = ("train_instruction", "train_input", "train_output", "trait", "level")
HELDOUT_EVERY = 8  # every 8th prompt of the bank is held out of training (persona_shift, RQ4)
OVERSAMPLE = 1.15  # candidates per wanted dialogue; the filter dropped 5 of 40 in a pilot


class DataError(ValueError):
    """Bad or missing trait data; the message names the file, column or condition."""


# The user-prompt bank (`resources/user_prompts.json`): written for this project, everyday
# requests and conversation openers of varied form, in a fixed order (index = prompt_id).
# It must not overlap the BFI interview questions (tests/test_data.py checks it).
USER_PROMPTS: tuple[str, ...] = tuple(
    p for group in resource("user_prompts")["groups"] for p in group["prompts"])


def training_prompts() -> tuple[str, ...]:
    """The prompts the generator answers (the bank minus the held-out ones)."""
    return tuple(p for i, p in enumerate(USER_PROMPTS) if i % HELDOUT_EVERY != 0)


def heldout_prompts() -> tuple[str, ...]:
    """Prompts never used for training data: for measuring what fine-tuning changed."""
    return tuple(p for i, p in enumerate(USER_PROMPTS) if i % HELDOUT_EVERY == 0)


# --- Big5-Chat --------------------------------------------------------------------------


def _offline() -> bool:
    flags = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def load_big5chat(path: str | None = None, n_per_condition: int | None = None,
                  seed: int = 0) -> datasets.DatasetDict:
    """Big5-Chat as ten chat-format SFT sets (keys = conditions, column "messages").

    `path` is a local copy of the CSV (columns train_instruction, train_input, train_output,
    trait, level); None reads the hub id `wenkai-li/big5_chat`. The instruction becomes the
    system turn (when not empty), the input the user turn, the output the assistant turn.
    `n_per_condition` samples that many rows per condition (seeded).
    """
    if path is None:
        if _offline():
            raise DataError(
                f"Big5-Chat ({BIG5CHAT_HUB_ID}) cannot be downloaded: the hub is offline "
                "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set). Pass a local copy of its CSV "
                "(profile field big5chat_path) or use the offline generator "
                "(profile field data_source='guided')."
            )
        try:
            raw = datasets.load_dataset(BIG5CHAT_HUB_ID, split="train")
        except Exception as err:  # noqa: BLE001 - any failure to reach the hub means the same
            raise DataError(
                f"could not load Big5-Chat from the hub ({BIG5CHAT_HUB_ID}: {err}). Pass a local "
                "copy of its CSV (big5chat_path) or use the offline generator "
                "(data_source='guided')."
            ) from err
        where = BIG5CHAT_HUB_ID
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataError(f"Big5-Chat CSV {file} does not exist")
        try:
            raw = datasets.load_dataset("csv", data_files=str(file), split="train")
        except Exception as err:  # noqa: BLE001 - pandas/pyarrow parse errors vary
            raise DataError(f"could not read {file} as a CSV: {err}") from err
        where = str(file)
    missing = [c for c in BIG5CHAT_COLUMNS if c not in raw.column_names]
    if missing:
        raise DataError(f"{where} lacks column(s) {missing}; found {raw.column_names}")
    if len(raw) == 0:
        raise DataError(f"{where} has no rows")
    raw = raw.map(lambda r: {"condition": _condition_of(r["trait"], r["level"])})
    unknown = sorted({f"{r['trait']}/{r['level']}" for r in raw if r["condition"] is None})
    if unknown:
        raise DataError(f"{where} has rows with unknown trait/level {unknown[:5]}; traits must "
                        f"be Big Five names and levels high/low")
    raw = raw.filter(lambda r: bool((r["train_output"] or "").strip())
                     and bool((r["train_input"] or "").strip()))
    out = {}
    for cond in CONDITIONS:
        part = raw.filter(lambda r, c=cond: r["condition"] == c)
        if len(part) == 0:
            raise DataError(f"{where} has no usable rows for condition {cond!r}")
        if n_per_condition is not None:
            part = part.shuffle(seed=seed).select(range(min(n_per_condition, len(part))))
        out[cond] = part.map(_big5chat_messages, remove_columns=part.column_names).add_column(
            "condition", [cond] * len(part))
    return datasets.DatasetDict(out)


def _condition_of(trait: Any, level: Any) -> str | None:
    cond = f"{str(trait or '').strip().lower()}_{str(level or '').strip().lower()}"
    return cond if cond in CONDITIONS else None


def _big5chat_messages(row: dict) -> dict:
    messages = []
    if (row["train_instruction"] or "").strip():
        messages.append({"role": "system", "content": row["train_instruction"].strip()})
    messages.append({"role": "user", "content": row["train_input"].strip()})
    messages.append({"role": "assistant", "content": row["train_output"].strip()})
    return {"messages": messages}


# --- the offline generator --------------------------------------------------------------


def data_dir(profile: Profile, condition: str) -> Path:
    """`<artifacts>/data/<key>`: the cache of one condition's data (content-addressed)."""
    return DATA.entry(data_key(profile, condition))


def data_key(profile: Profile, condition: str) -> str:
    """A hash of everything the data depend on: the code, the fields `DATA` declares,
    the condition, its persona texts and the training prompts."""
    _check_condition(condition)
    return DATA.key(profile, DATA_VERSION, condition, _condition_personas(condition),
                    training_prompts())


def _check_condition(condition: str) -> None:
    if condition.startswith("domain_"):
        if condition.removeprefix("domain_") not in CHARACTERS:
            raise DataError(f"unknown character in {condition!r}; characters: "
                            f"{', '.join(CHARACTERS)}")
        return
    try:
        personas.split_condition(condition)
    except ValueError as err:
        raise DataError(str(err)) from None


def _condition_personas(condition: str) -> tuple[str, str]:
    """(persona, anti-persona) system prompts that drive guided generation."""
    if condition.startswith("domain_"):
        char = CHARACTERS[condition.removeprefix("domain_")]
        return char["persona"], PLAIN_ASSISTANT
    trait, level = personas.split_condition(condition)
    return personas.persona(trait, level), personas.persona(trait, personas.opposite(level))


def generate_trait_data(profile: Profile, condition: str, model=None, tokenizer=None,
                        chat: Callable | None = None) -> datasets.Dataset:
    """One condition's SFT set ("messages": user -> assistant), cached under `data_dir`.

    Guided data: answers to the training prompts under contrastive persona guidance,
    trimmed to a sentence, quality-filtered; a data card (`data_card.json`) sits beside it.
    Big5-Chat data (`profile.data_source == "big5chat"`) are sampled from the loader.
    `chat` replaces `models.chat` as the generator (same signature; e.g. another back end).
    """
    return _generate(profile, [condition], model, tokenizer, chat)[condition]


def trait_datasets(profile: Profile, extra_conditions: tuple[str, ...] = (),
                   model=None, tokenizer=None,
                   chat: Callable | None = None) -> datasets.DatasetDict:
    """Every selected condition's SFT set (cached), plus `extra_conditions` (e.g. a domain).

    Missing guided sets are generated together, in shared batches, so the fixed cost of
    each generation step is paid once for all conditions.
    """
    conditions = list(dict.fromkeys([*profile.conditions, *extra_conditions]))
    return datasets.DatasetDict(_generate(profile, conditions, model, tokenizer, chat))


def _generate(profile: Profile, conditions: list[str], model, tokenizer, chat=None) -> dict:
    profile = DATA.view(profile)  # reading an undeclared field raises
    for cond in conditions:
        _check_condition(cond)
    if profile.data_source not in ("guided", "big5chat"):
        raise DataError(f"unknown data_source {profile.data_source!r}; use 'guided' or 'big5chat'")
    todo = [c for c in conditions if not (data_dir(profile, c) / "data_card.json").exists()]
    guided = [c for c in todo if profile.data_source == "guided" or c.startswith("domain_")]
    made = {c: _from_big5chat(profile, c) for c in todo if c not in guided}
    if guided:
        made.update(_guided(profile, guided, model, tokenizer, chat))
    empty = []
    for cond, (ds, card) in made.items():
        if len(ds) == 0:
            empty.append(f"{cond} (filtered: {card['filtered']})")
            continue
        card["key"] = data_key(profile, cond)
        with atomic_dir(data_dir(profile, cond)) as tmp:
            datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp / "dataset"))
            write_json(tmp / "data_card.json", card)
    if empty:
        raise DataError(f"no usable dialogues for {', '.join(empty)}; raise n_dialogues or "
                        "lower guidance_gamma")
    for c in conditions:
        cache.touch(data_dir(profile, c), DATA.name, profile.name,
                    {"condition": c, "n": profile.n_dialogues, "source": profile.data_source})
    return {c: datasets.load_from_disk(str(data_dir(profile, c) / "dataset"))["train"]
            for c in conditions}


def _from_big5chat(profile: Profile, condition: str) -> tuple[datasets.Dataset, dict]:
    start = time.perf_counter()
    ds = load_big5chat(profile.big5chat_path, profile.n_dialogues, profile.seed)[condition]
    card = {
        "condition": condition, "source": "big5chat",
        "path": profile.big5chat_path or BIG5CHAT_HUB_ID, "n_requested": profile.n_dialogues,
        "n_kept": len(ds), "filtered": {}, "seconds": round(time.perf_counter() - start, 2),
        "examples": [r["messages"] for r in ds.select(range(min(3, len(ds))))],
    }
    return ds, card


def _guided(profile: Profile, conditions: list[str], model, tokenizer, chat=None) -> dict:
    """Guided answers for several conditions in shared batches: {condition: (data, card)}.

    Contrastive persona guidance through `chat` (default `models.chat`; system prompt =
    persona, negative prompt = anti-persona, guidance scale 1 + gamma), with rows of many
    conditions mixed.
    """
    if model is None or tokenizer is None:
        model = models.load_model(profile.model, dtype=profile.dtype, device=profile.device)
        tokenizer = models.load_tokenizer(profile.model)
    bank = training_prompts()
    n_candidates = math.ceil(profile.n_dialogues * OVERSAMPLE)
    ids = prompt_ids(profile.n_prompts, n_candidates, profile.seed)
    convs, negs = [], []
    for cond in conditions:
        persona, anti = _condition_personas(cond)
        for i in ids:
            user = {"role": "user", "content": bank[i]}
            convs.append([{"role": "system", "content": persona}, user])
            negs.append([{"role": "system", "content": anti}, user])
    start = time.perf_counter()
    progress.log(f"stage data: {len(conditions)} condition(s) x {n_candidates} answers")
    replies = (chat or models.chat)(
        model, tokenizer, convs, negative_conversations=negs,
        guidance_scale=1.0 + profile.guidance_gamma, max_new_tokens=profile.gen_max_new_tokens,
        temperature=profile.gen_temperature, top_p=profile.gen_top_p, seed=profile.seed,
        batch_size=profile.gen_batch_size,
    )
    seconds = (time.perf_counter() - start) / len(conditions)
    out = {}
    for k, cond in enumerate(conditions):
        mine = replies[k * n_candidates : (k + 1) * n_candidates]
        out[cond] = _filtered(profile, cond, bank, ids, mine, seconds, tokenizer)
    return out


def prompt_ids(n_prompts: int | None, n: int, seed: int) -> list[int]:
    """Indices into `training_prompts()` of n answers: a seeded draw of `n_prompts` distinct
    prompts (None: all), cycled. The same for every condition: conditions differ only in
    their answers."""
    bank = len(training_prompts())
    if n_prompts is not None and n_prompts > bank:
        raise DataError(f"n_prompts={n_prompts} exceeds the {bank} training prompts of the bank")
    order = random.Random(seed).sample(range(bank), bank)[: n_prompts or bank]
    return [order[k % len(order)] for k in range(n)]


def _filtered(profile: Profile, condition: str, bank, ids, replies, seconds: float,
              tokenizer) -> tuple[datasets.Dataset, dict]:
    persona, anti = _condition_personas(condition)
    rows, reasons = [], Counter()
    check = quality_issue if profile.quality_filter == "basic" else (
        lambda t: None if t.strip() else "empty")
    for i, reply in zip(ids, replies, strict=True):
        text = models.trim_to_sentence(reply)
        issue = check(text)
        if issue:
            reasons[issue] += 1
        elif len(rows) < profile.n_dialogues:
            rows.append({"messages": [{"role": "user", "content": bank[i]},
                                      {"role": "assistant", "content": text}],
                         "prompt_id": USER_PROMPTS.index(bank[i]), "condition": condition})
    ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict(
        {"messages": [], "prompt_id": [], "condition": []})
    n = len(replies)
    card = {
        "condition": condition, "source": "guided", "model": profile.model,
        "persona": persona, "anti_persona": anti, "gamma": profile.guidance_gamma,
        "temperature": profile.gen_temperature, "top_p": profile.gen_top_p,
        "max_new_tokens": profile.gen_max_new_tokens, "seed": profile.seed,
        "n_prompts": len(set(ids)), "quality_filter": profile.quality_filter,
        "n_requested": profile.n_dialogues, "n_candidates": n, "n_kept": len(rows),
        "filtered": dict(reasons),
        "filter_rates": {k: round(v / n, 4) for k, v in reasons.items()},
        "seconds": round(seconds, 2),  # this condition's share of a shared generation run
        "tokens_per_second": round(sum(len(tokenizer(r)["input_ids"]) for r in replies)
                                   / max(seconds, 1e-9), 1),
        "examples": [r["messages"] for r in rows[:3]],
    }
    return ds, card


# the data stage: what it reads (enforced by `DATA.view`) and whose source is its version
DATA = cache.Stage(
    "data",
    fields=("model", "dtype", "device", "data_source", "big5chat_path", "n_dialogues",
            "n_prompts", "guidance_gamma", "gen_temperature", "gen_top_p",
            "gen_max_new_tokens", "gen_batch_size", "quality_filter", "seed"),
    grid=("conditions",),
    code=(_generate, _guided, _filtered, _from_big5chat, quality_issue, prompt_ids,
          *models.GENERATION_CODE),
)


def data_card(profile: Profile, condition: str) -> dict:
    """The data card of one condition (generating its data first if needed)."""
    generate_trait_data(profile, condition)
    return read_json(data_dir(profile, condition) / "data_card.json")


def data_sentence(cards: list[dict]) -> str:
    """What generating these conditions' data cost, said once: the guided sampler runs
    every condition in one batched run, so a card's `seconds` is only its share of it."""
    seconds = sum(c["seconds"] for c in cards)
    kept = sum(c["n_kept"] for c in cards)
    if not all("tokens_per_second" in c for c in cards):  # read from a data set, not generated
        return f"Data: {kept} examples for {len(cards)} conditions, read in {seconds:.0f} s."
    tokens = sum(c["tokens_per_second"] * c["seconds"] for c in cards)
    drawn = sum(c["n_candidates"] for c in cards)
    dropped = sum(sum(c.get("filtered", {}).values()) for c in cards)
    plural = "s" if len(cards) != 1 else ""
    return (f"Data: {kept} answers kept of {drawn} generated for {len(cards)} condition"
            f"{plural} (the quality filter dropped {dropped}; the other "
            f"{drawn - kept - dropped} were drawn beyond the {kept} needed), in "
            f"{seconds / 60:.1f} min of generation batched across conditions, "
            f"{tokens / max(seconds, 1e-9):.0f} new tokens/s.")


# --- role-play characters (RQ4's domain vector) -----------------------------------------

_CHARACTERS = resource("characters")
PLAIN_ASSISTANT: str = _CHARACTERS["plain_assistant"]
# name -> {"name", "persona" (system prompt), "keywords" (words of the character's world)}
CHARACTERS: dict[str, dict[str, Any]] = {
    key: {**char, "keywords": tuple(char["keywords"])}
    for key, char in _CHARACTERS["characters"].items()}
