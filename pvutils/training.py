"""Fine-tuning with TRL: one model per Big Five condition, kept only as its vector.

`train_condition` fine-tunes the base on one condition's data (`pvutils.data`), writes
φ = θ_ft − θ_base with `vectors.extract_vector`, deletes the fine-tuned model and leaves a
JSON sidecar holding the hash of every input. A rerun with the same inputs finds the
sidecar and skips the condition, so a killed `train_all_vectors` resumes where it stopped.

Loss is on the assistant turn only: the data go to TRL as prompt/completion pairs, whose
completion mask TRL turns into labels of -100 on the prompt (SmolLM2's ChatML template has
no `{% generation %}` markers, which `assistant_only_loss` needs).
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from . import cache, heldout, launch, models, preference, progress, vectors
from . import data as pvdata
from .artifacts import artifacts_dir, read_json, write_json
from .character import DEFAULT_CHARACTER
from .launch import parse_overrides
from .outputs import report_error
from .profiles import Profile, get_profile

TRAIN_VERSION = 1  # bump when training changes what a vector holds
AVX2_PEAK_GFLOPS = 190.0  # measured fp32 matmul peak of this machine's 2 cores (DESIGN.md)


class TrainingError(RuntimeError):
    """Fine-tuning could not run or produced an unusable model; the message says why."""


def vector_path(profile: Profile | str, condition: str) -> Path:
    """`<artifacts>/vectors/<key>/<trait>_<level>.safetensors` (or `domain_<name>`): a
    changed training input trains a new vector beside the old one. A profile name means
    that profile as defined."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    return VECTORS.entry(train_key(profile, condition)) / f"{condition}.safetensors"


def sidecar_path(profile: Profile | str, condition: str) -> Path:
    """The JSON beside a vector: its key, training numbers and stage times."""
    return vector_path(profile, condition).with_suffix(".json")


def finetuned_path(profile: Profile | str, condition: str) -> Path:
    """Where `keep_model=True` keeps the fine-tuned model, beside its vector."""
    return vector_path(profile, condition).parent / "finetuned"


def train_key(profile: Profile, condition: str) -> str:
    """A hash of everything a vector depends on: the code, its data's key (under DPO its
    opposite pole's too) and the training fields `VECTORS` declares."""
    return VECTORS.key(preference.keyed_profile(profile, condition), TRAIN_VERSION,
                       *(pvdata.data_key(profile, c)
                         for c in preference.training_conditions(profile, condition)),
                       *preference.code_inputs(profile, condition))


def is_trained(profile: Profile, condition: str) -> bool:
    """Whether the vector exists and was made from exactly these inputs."""
    out, side = vector_path(profile, condition), sidecar_path(profile, condition)
    if not (out.exists() and side.exists()):
        return False
    try:
        return read_json(side).get("key") == train_key(profile, condition)
    except ValueError:
        return False  # a truncated sidecar: retrain


# --- TRL --------------------------------------------------------------------------------


def trainer_arguments(profile: Profile, output_dir: str | Path) -> dict:
    """The arguments SFT and DPO share: fp32 and no checkpointing on CPU unless asked.

    TRL defaults to bf16 and gradient checkpointing; on this CPU (no bf16 instructions)
    that made a step about 14x slower, so the profile decides, and `use_cpu` is set when
    there is no GPU.
    """
    on_gpu = torch.cuda.is_available()
    return dict(
        output_dir=str(output_dir), num_train_epochs=profile.train_epochs,
        per_device_train_batch_size=profile.train_batch_size,
        gradient_accumulation_steps=profile.grad_accum,
        learning_rate=profile.learning_rate, lr_scheduler_type=profile.lr_scheduler,
        # the same AdamW in one kernel per step instead of a loop over ~270 tensors
        optim="adamw_torch" if on_gpu else "adamw_torch_fused",
        eval_strategy="epoch" if profile.heldout_fraction > 0 else "no",
        per_device_eval_batch_size=profile.train_batch_size,
        bf16=profile.bf16, fp16=False,
        gradient_checkpointing=profile.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}
        if profile.gradient_checkpointing else None,
        use_cpu=not on_gpu,
        # checkpoints let a killed paper-scale job resume (`train_condition`)
        save_strategy="steps" if profile.save_steps > 0 else "no",
        save_steps=profile.save_steps if profile.save_steps > 0 else 500,
        save_total_limit=2, report_to="none",
        disable_tqdm=True,  # progress goes to the terminal (`progress.trainer_callback`)
        logging_steps=1,
        seed=profile.seed, data_seed=profile.seed, dataloader_num_workers=0,
    )


def sft_config(profile: Profile, output_dir: str | Path):
    """TRL's SFT arguments: the shared ones, the loss on the answer only, padding-free rows."""
    from trl import SFTConfig  # heavy: only when training

    return SFTConfig(
        **trainer_arguments(profile, output_dir),
        # padding-free rows are not truncated by TRL (`build_trainer` checks the lengths)
        max_length=None if profile.padding_free else profile.max_length,
        padding_free=profile.padding_free,
        # labels -100 on the prompt (user turn, system turn)
        completion_only_loss=True, assistant_only_loss=False, packing=False,
    )


def to_prompt_completion(dataset):
    """`messages` rows -> TRL prompt/completion rows (the last assistant turn is the completion)."""
    if len(dataset) == 0:
        raise TrainingError("the training set is empty")
    if "messages" not in dataset.column_names:
        raise TrainingError(f"the training set has no 'messages' column ({dataset.column_names})")

    def split(row):
        msgs = row["messages"]
        if not msgs or msgs[-1].get("role") != "assistant" or not msgs[-1].get("content"):
            raise TrainingError(f"malformed dialogue (must end with a non-empty assistant turn): "
                                f"{msgs!r:.200}")
        return {"prompt": msgs[:-1], "completion": msgs[-1:]}

    return dataset.map(split, remove_columns=dataset.column_names)


def lora_config(profile: Profile):
    """The LoRA adapter both objectives train under `profile.use_lora` (None: full model)."""
    if not profile.use_lora:
        return None
    from peft import LoraConfig  # optional: only with use_lora

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def build_trainer(profile: Profile, model, tokenizer, dataset, output_dir: str | Path):
    """An `SFTTrainer` for one condition (with a LoRA adapter when `profile.use_lora`); with
    `profile.heldout_fraction` > 0, a seeded share of the examples is its eval set and a
    `heldout.KeepBest` callback stops early / keeps the best epoch."""
    from transformers import PrinterCallback  # heavy: only when training
    from trl import SFTTrainer  # heavy: only when training

    tokenizer.padding_side = "right"
    name = dataset[0]["condition"] if "condition" in dataset.column_names else "fine-tune"
    train, held = heldout.split_heldout(to_prompt_completion(dataset), profile.heldout_fraction,
                                        profile.seed)
    callbacks = [progress.trainer_callback(f"fine-tune {name}")]
    if held is not None:
        callbacks.append(heldout.KeepBest(profile.early_stopping_patience, profile.keep_best))
    trainer = SFTTrainer(model=model, args=sft_config(profile, output_dir), train_dataset=train,
                         eval_dataset=held, processing_class=tokenizer,
                         peft_config=lora_config(profile), callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # it would print every log dict into the page
    if profile.padding_free:
        longest = max(len(ids) for ids in trainer.train_dataset["input_ids"])
        if longest > profile.max_length:
            raise TrainingError(f"an example has {longest} tokens, over max_length="
                                f"{profile.max_length}; padding-free rows are not truncated")
    return trainer


def base_weights_dir(model: str) -> Path:
    """A local directory with the base model's safetensors (hub ids: the local snapshot)."""
    source = models.resolve_model_dir(model)
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download  # only for a hub id

    return Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.json"]))


# --- one condition, all conditions ------------------------------------------------------


def train_condition(profile: Profile, condition: str, keep_model: bool = False) -> Path:
    """Fine-tune the base on one condition, extract its vector; skip if already done.

    The fine-tuned model lives in a scratch directory that is deleted after extraction
    (`keep_model=True` keeps it as `<artifacts>/<profile>/finetuned/<condition>`).
    """
    pvdata._check_condition(condition)
    profile = VECTORS.view(profile)  # reading an undeclared field raises
    out = vector_path(profile, condition)
    if is_trained(profile, condition):
        cache.touch(out.parent, VECTORS.name, profile.name, {"condition": condition})
        return out
    key = train_key(profile, condition)
    progress.log(f"stage fine-tune: {condition} [key {key}]")
    t0 = time.perf_counter()
    dataset = pvdata.generate_trait_data(profile, condition)
    data_seconds = time.perf_counter() - t0
    base_dir = base_weights_dir(profile.model)
    model = models.load_model(profile.model, dtype=profile.dtype)
    tokenizer = models.load_tokenizer(profile.model)
    n_params = sum(p.numel() for p in model.parameters())
    scratch = artifacts_dir() / "scratch" / f"{condition}-{key}"
    resumable = profile.save_steps > 0  # keep a killed run's TRL checkpoints and resume
    if not resumable:
        shutil.rmtree(scratch, ignore_errors=True)  # a killed run's leftovers
    finished = False
    try:
        if preference.uses_pairs(profile, condition):
            opposite = pvdata.generate_trait_data(profile, preference.training_conditions(
                profile, condition)[1])
            trainer = preference.build_dpo_trainer(profile, model, tokenizer, dataset, opposite,
                                                   trainer_arguments(profile, scratch / "trainer"),
                                                   lora_config(profile))
        else:
            trainer = build_trainer(profile, model, tokenizer, dataset, scratch / "trainer")
        t1 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=last_checkpoint(scratch / "trainer")
                               if resumable else None)
        train_seconds = time.perf_counter() - t1
        loss = result.training_loss
        if not math.isfinite(loss):
            raise TrainingError(f"training {condition!r} diverged (loss {loss})")
        tokens = round(sum(preference.sequence_lengths(trainer.train_dataset, profile.max_length))
                       * (trainer.state.epoch or profile.train_epochs))
        t2 = time.perf_counter()
        if profile.use_lora:
            trainer.model.merge_and_unload().save_pretrained(scratch / "model")
        else:
            trainer.save_model(str(scratch / "model"))
        if not trainer.accelerator.is_main_process:
            trainer.accelerator.wait_for_everyone()
            finished = True
            return out
        out = vectors.extract_vector(base_dir, scratch / "model", out, condition=condition)
        extract_seconds = time.perf_counter() - t2
        if keep_model:
            kept = finetuned_path(profile, condition)
            shutil.rmtree(kept, ignore_errors=True)
            shutil.move(str(scratch / "model"), kept)
            tokenizer.save_pretrained(kept)
        # forward and backward of the policy; under DPO also the reference's forward
        flops = (8 if preference.uses_pairs(profile, condition) else 6) * n_params * tokens
        write_json(sidecar_path(profile, condition), {
            "key": key, "condition": condition, "profile": profile.name, "model": profile.model,
            "data_keys": [pvdata.data_key(profile, c)
                          for c in preference.training_conditions(profile, condition)],
            "n_examples": len(trainer.train_dataset) + len(trainer.eval_dataset or ()),
            "steps": result.global_step, "train_loss": loss, "params": n_params,
            "tokens": tokens, "data_seconds": round(data_seconds, 2),
            "train_seconds": round(train_seconds, 2), "extract_seconds": round(extract_seconds, 2),
            "tokens_per_second": round(tokens / train_seconds, 1),
            "gflops_per_second": round(flops / train_seconds / 1e9, 2),
            "loss_history": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "epochs": trainer.state.epoch,
            "eval_loss_history": [h["eval_loss"] for h in trainer.state.log_history
                                  if "eval_loss" in h],
            "best_epoch": next((c.best_epoch for c in trainer.callback_handler.callbacks
                                if isinstance(c, heldout.KeepBest)), None),
        })
        cache.touch(out.parent, VECTORS.name, profile.name, {"condition": condition})
        trainer.accelerator.wait_for_everyone()
        finished = True
        return out
    finally:
        if finished or not resumable:
            shutil.rmtree(scratch, ignore_errors=True)


def last_checkpoint(trainer_dir: Path) -> str | None:
    """TRL's newest `checkpoint-N` under `trainer_dir` (None: start from the base)."""
    from transformers.trainer_utils import get_last_checkpoint  # heavy: only to resume

    return get_last_checkpoint(str(trainer_dir)) if Path(trainer_dir).is_dir() else None


# the fine-tune stage: it makes its own data, so it may read the data stage's fields too
VECTORS = cache.Stage(
    "vectors",
    fields=("model", "dtype", "train_epochs", "train_batch_size", "grad_accum",
            "learning_rate", "lr_scheduler", "max_length", "use_lora", "bf16",
            "gradient_checkpointing", "seed", "save_steps", "padding_free", "heldout_fraction",
            "early_stopping_patience", "keep_best", "train_objective", "dpo_beta"),
    after=(pvdata.DATA,),
    code=(train_condition, trainer_arguments, sft_config, build_trainer, to_prompt_completion,
          lora_config, heldout, preference.uses_pairs, preference.training_conditions,
          preference.keyed_profile, preference.sequence_lengths),
)


def train_all_vectors(profile: Profile, keep_models: bool = False) -> dict[str, Path]:
    """The vectors of every condition in `profile.conditions` (data first, then fine-tunes)."""
    # loads the base model once for all generation, the opposite poles DPO reads included
    pvdata.trait_datasets(profile, preference.extra_data_conditions(profile))
    return {cond: train_condition(profile, cond, keep_model=keep_models)
            for cond in profile.conditions}


def train_domain_vector(profile: Profile, character: str = DEFAULT_CHARACTER) -> Path:
    """RQ4's φ_domain: the base fine-tuned into a role-play character, as a vector."""
    if character not in pvdata.CHARACTERS:
        raise ValueError(f"unknown character {character!r}; characters: "
                         f"{', '.join(pvdata.CHARACTERS)}")
    return train_condition(profile, f"domain_{character}")


def stage_table(profile: Profile, conditions: Sequence[str]):
    """Wall times and throughput of every condition's fine-tune, read from the sidecars
    (the data's cost is shared by the conditions: `data.data_sentence`)."""
    rows = []
    for cond in conditions:
        side = sidecar_path(profile, cond)
        if not side.exists():
            continue
        info = read_json(side)
        card_file = pvdata.data_dir(profile, cond) / "data_card.json"
        card = read_json(card_file) if card_file.exists() else {}
        rows.append({
            "condition": cond, "n_kept": card.get("n_kept"),
            "steps": info["steps"], "loss": round(info["train_loss"], 3),
            "train_s": info["train_seconds"], "extract_s": info["extract_seconds"],
            "tok/s": info["tokens_per_second"], "GFLOP/s": info["gflops_per_second"],
            "%peak": round(100 * info["gflops_per_second"] / AVX2_PEAK_GFLOPS, 1),
            "best_eval": min(info.get("eval_loss_history") or [math.nan]),
            "best_epoch": info.get("best_epoch"),
        })
    return pd.DataFrame(rows)


def cli_train_vectors(argv: list[str]) -> int:
    """`python -m pvutils train-vectors --profile cpu`: data, fine-tunes, vectors, domain."""
    parser = argparse.ArgumentParser(prog="python -m pvutils train-vectors")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--conditions", nargs="+", help="default: the profile's ten")
    parser.add_argument("--character", default=DEFAULT_CHARACTER)
    parser.add_argument("--no-domain", action="store_true", help="skip the role-play vector")
    parser.add_argument("--keep-models", action="store_true",
                        help="keep the fine-tuned models, not only their vectors")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a profile field (YAML value), e.g. --set model=/models/x")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the launch plan (commands, GPUs, memory) and exit")
    parser.add_argument("--no-launch", action="store_true",
                        help="train in this process even if the profile's launcher is accelerate")
    parser.add_argument("--num-gpus", type=int, help="processes per launch (default: visible GPUs)")
    parser.add_argument("--data-only", action="store_true", help="prepare the data and stop")
    parser.add_argument("--domain-only", action="store_true", help="train only the domain vector")
    args = parser.parse_args(argv)
    try:
        profile = get_profile(args.profile, conditions=args.conditions,
                              **parse_overrides(args.set))
        domain = None if args.no_domain else args.character
        if args.dry_run or (profile.launcher == "accelerate" and not args.no_launch
                            and not args.data_only):
            plan = launch.make_plan(profile, domain, args.num_gpus, args.set)
            print(launch.format_plan(plan), flush=True)
            return 0 if args.dry_run else launch.run_plan(plan)
        if profile.launcher not in ("none", "accelerate"):
            raise ValueError(f"unknown launcher {profile.launcher!r}; use 'none' or 'accelerate'")
        stages: dict[str, float] = {}
        t = time.perf_counter()
        pvdata.trait_datasets(profile, preference.extra_data_conditions(profile) + (
            () if args.no_domain else (f"domain_{args.character}",)))
        stages["data (all conditions)"] = time.perf_counter() - t
        if args.data_only:
            print(f"data ready ({stages['data (all conditions)']:.1f} s)")
            return 0
        t = time.perf_counter()
        paths = ({} if args.domain_only
                 else train_all_vectors(profile, keep_models=args.keep_models))
        stages["fine-tune + extract (conditions)"] = time.perf_counter() - t
        if not args.no_domain:
            t = time.perf_counter()
            paths[f"domain_{args.character}"] = train_domain_vector(profile, args.character)
            stages["fine-tune + extract (domain)"] = time.perf_counter() - t
    except (ValueError, TrainingError) as err:
        return report_error(err)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(stage_table(profile, list(paths)).to_string(index=False))
    print()
    for name, seconds in stages.items():
        print(f"{name:<34} {seconds:8.1f} s")
    print(f"{'total':<34} {sum(stages.values()):8.1f} s")
    write_json(artifacts_dir() / "runs" / f"train-vectors-{profile.name}.json",
               {"stages_seconds": stages, "vectors": {k: str(v) for k, v in paths.items()}})
    return 0
