"""Contrastive-pair fine-tuning (DPO): a condition's answer preferred to the opposite pole's
answer to the same prompt (`train_objective="dpo"`).

Why: supervised fine-tuning on a pole's answers also teaches what both poles' answers share
(fluent, friendly, person-like), and at 135M that shared part outweighs the trait in some
*low* vectors (setup chapter, "the shared component"). DPO's loss depends on the policy's
log-ratio of chosen over rejected, so what the two answers of a pair share is not rewarded.
TRL's `DPOTrainer` does the training; written here is only the pairing.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets

from . import heldout, personas, progress
from .cache import code_version, unwrap
from .profiles import Profile

DEFAULT_BETA = Profile.dpo_beta  # the profile's default, what a supervised key holds
DEFAULT_PADDING_FREE = Profile.padding_free  # what a DPO key holds

def uses_pairs(profile: Profile, condition: str) -> bool:
    """Whether this condition trains on preference pairs: a trait pole under "dpo" (a
    role-play domain has no opposite pole, so it stays supervised)."""
    return unwrap(profile).train_objective == "dpo" and not condition.startswith("domain_")


def keyed_profile(profile: Profile, condition: str) -> Profile:
    """The profile as this condition's fine-tune reads it: a supervised one reads neither
    the objective nor β, so they are reset to their defaults and a DPO variant shares its
    role-play vector (and an SFT profile its vectors, whatever β) with the default; DPO
    does not read `padding_free` (TRL's DPO pads), so a DPO key holds its default."""
    p = unwrap(profile)
    if uses_pairs(p, condition):
        return p.replace(padding_free=DEFAULT_PADDING_FREE)
    return p.replace(train_objective="sft", dpo_beta=DEFAULT_BETA)


def code_inputs(profile: Profile, condition: str) -> list[str]:
    """The DPO code's version, an input of a DPO fine-tune's key only (an edit here does
    not retrain the supervised vectors)."""
    if not uses_pairs(profile, condition):
        return []
    return code_version((preference_pairs, dpo_config, build_dpo_trainer))


def extra_data_conditions(profile: Profile) -> tuple[str, ...]:
    """The opposite poles DPO reads that `profile.conditions` leaves out, so the data step
    generates them with the rest (in shared batches, before any fine-tune)."""
    wanted = [c for cond in profile.conditions for c in training_conditions(profile, cond)]
    return tuple(c for c in dict.fromkeys(wanted) if c not in profile.conditions)


def training_conditions(profile: Profile, condition: str) -> tuple[str, ...]:
    """The conditions whose data a fine-tune reads: its own, and under DPO its opposite."""
    if not uses_pairs(profile, condition):
        return (condition,)
    trait, level = personas.split_condition(condition)
    return condition, f"{trait}_{personas.opposite(level)}"


def _prompt_key(messages: Sequence[dict]) -> str:
    """The user side of a dialogue (system turns left out: Big5-Chat's name the level)."""
    return json.dumps([(m["role"], m["content"]) for m in messages[:-1]
                       if m["role"] != "system"])


def preference_pairs(mine: Iterable[Sequence[dict]],
                     theirs: Iterable[Sequence[dict]]) -> list[dict]:
    """DPO rows from two poles' dialogues: each of `mine` with the answer of `theirs` to the
    same user prompt, the k-th occurrence of a prompt with its k-th occurrence there.
    Prompts the other pole did not answer are left out. Rows are conversational:
    prompt (my turns before the answer), chosen (mine), rejected (theirs)."""
    answers: dict[str, deque] = defaultdict(deque)
    for dialogue in theirs:
        answers[_prompt_key(dialogue)].append(dialogue[-1])
    rows = []
    for dialogue in mine:
        queue = answers.get(_prompt_key(dialogue))
        if queue:
            rows.append({"prompt": list(dialogue[:-1]), "chosen": [dialogue[-1]],
                         "rejected": [queue.popleft()]})
    return rows


def dpo_config(profile: Profile, arguments: Mapping[str, Any]):
    """TRL's DPO arguments: the fine-tune's shared `arguments` (`training.trainer_arguments`),
    the length cap and β."""
    from trl import DPOConfig  # heavy; only needed when training

    return DPOConfig(**arguments, max_length=profile.max_length, beta=profile.dpo_beta)


def build_dpo_trainer(profile: Profile, model, tokenizer, mine: datasets.Dataset,
                      theirs: datasets.Dataset, arguments: Mapping[str, Any],
                      peft_config=None):
    """A `DPOTrainer` on the pairs of `mine` over `theirs` (the reference model: a frozen
    copy of the base made by TRL, or with `peft_config` the base under the disabled
    adapter), with the held-out share and callbacks of SFT."""
    from transformers import PrinterCallback  # heavy; only needed when training
    from trl import DPOTrainer  # heavy: only when training

    pairs = preference_pairs(mine["messages"], theirs["messages"])
    name = mine[0]["condition"] if "condition" in mine.column_names else "fine-tune"
    if len(pairs) < 2:
        raise ValueError(f"{name}: {len(pairs)} preference pair(s) — the two poles' data "
                            "share fewer than 2 prompts; DPO needs answers to the same prompts")
    tokenizer.padding_side = "right"
    train, held = heldout.split_heldout(datasets.Dataset.from_list(pairs),
                                        profile.heldout_fraction, profile.seed)
    callbacks = [progress.trainer_callback(f"DPO {name}")]
    if held is not None:
        callbacks.append(heldout.KeepBest(profile.early_stopping_patience, profile.keep_best))
    trainer = DPOTrainer(model=model, args=dpo_config(profile, arguments), train_dataset=train,
                         eval_dataset=held, processing_class=tokenizer, callbacks=callbacks,
                         peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)  # it would print every log dict into the page
    return trainer


def sequence_lengths(train_dataset: datasets.Dataset, max_length: int) -> list[int]:
    """Tokens per trained sequence: SFT rows (`input_ids`), or both sequences of a DPO
    pair (prompt + chosen, prompt + rejected), each capped at `max_length`."""
    if "input_ids" in train_dataset.column_names:
        return [min(len(ids), max_length) for ids in train_dataset["input_ids"]]
    return [min(len(p) + len(c), max_length)
            for side in ("chosen_ids", "rejected_ids")
            for p, c in zip(train_dataset["prompt_ids"], train_dataset[side], strict=True)]
