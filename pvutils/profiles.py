"""The three parameter sets every notebook and command reads: `smoke`, `cpu`, `paper`
(and `paper-qwen`, the paper's second base model).

`smoke` proves every cell runs (CI, minutes); `cpu` is the embedded default whose numbers
the book shows (SmolLM2-135M-Instruct, offline data and judges, 2 cores); `paper` is the
paper's scale (Llama-3.1-8B-Instruct, Big5-Chat, a GPT judge, GPUs). Any field can be
overridden by name, e.g. from a notebook's papermill `parameters` cell.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
LEVELS = ("high", "low")
CONDITIONS = tuple(f"{t}_{lv}" for t in TRAITS for lv in LEVELS)


def _alphas(start: float, stop: float, step: float) -> tuple[float, ...]:
    n = round((stop - start) / step) + 1
    return tuple(round(start + i * step, 4) for i in range(n))


@dataclass(frozen=True)
class Profile:
    """Every knob a chapter or command reads. Defaults are the `cpu` profile's."""

    name: str = "cpu"
    seed: int = 0
    # --- model -----------------------------------------------------------------------
    model: str = "smollm2-135m-instruct"
    dtype: str = "float32"
    device: str = "cpu"
    # --- trait data ------------------------------------------------------------------
    data_source: str = "guided"  # "guided" (offline, made by the base model) | "big5chat"
    big5chat_path: str | None = None  # local CSV; None means the hub id
    n_dialogues: int = 64  # answers kept per condition
    n_prompts: int | None = None  # distinct training prompts answered (None: the whole bank)
    guidance_gamma: float = 2.0  # guidance scale is 1 + gamma
    gen_temperature: float = 0.7
    gen_top_p: float = 0.9
    gen_max_new_tokens: int = 56
    gen_batch_size: int = 96  # rows (x2 with their anti-persona twins) per generation batch
    quality_filter: str = "basic"  # "basic" (data.quality_issue) | "none" (keep every answer)
    # --- fine-tuning -----------------------------------------------------------------
    train_epochs: float = 2.0
    train_batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 5e-5
    lr_scheduler: str = "constant"
    max_length: int = 192
    use_lora: bool = False
    bf16: bool = False
    gradient_checkpointing: bool = False
    launcher: str = "none"  # "none" (this process) | "accelerate" (a launch per condition)
    accelerate_config: str | None = None  # the launcher's config file (repo-relative or absolute)
    save_steps: int = 0  # > 0: TRL checkpoints every N steps, and a rerun resumes from the last
    padding_free: bool = False  # flatten each batch into one unpadded row (same gradient)
    heldout_fraction: float = 0.0  # share of the examples held out; > 0: held-out loss per epoch
    early_stopping_patience: int = 0  # epochs without a better held-out loss before stopping
    keep_best: bool = True  # with a held-out share, end on the epoch of least held-out loss
    # "sft": the pole's answers | "dpo": each answer preferred to the opposite pole's answer
    # to the same prompt (pvutils.preference); role-play domains stay "sft"
    train_objective: str = "sft"
    dpo_beta: float = 0.1  # DPO's β: how far the policy may move from the base
    # --- evaluation ------------------------------------------------------------------
    measure: str = "contrast"  # "contrast" (fast, deterministic) | "interview"
    judge: str = "persona"  # "persona" | "embedding" | "openai"
    judge_model: str = "gpt-4o"
    n_samples: int = 2  # interview repeats per question
    eval_temperature: float = 0.6
    eval_max_new_tokens: int = 48
    eval_batch_size: int = 44
    generation_backend: str = "transformers"  # "transformers" | "vllm" (pvutils.backends)
    language: str = "en"  # interview and judge prompts (pvutils/resources/prompts_<language>.json)
    # --- sweeps ----------------------------------------------------------------------
    alphas: tuple[float, ...] = field(default_factory=lambda: _alphas(0.1, 2.0, 0.1))
    interview_alphas: tuple[float, ...] = (0.5, 1.0, 2.0)
    composition_alphas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    conditions: tuple[str, ...] = CONDITIONS  # the vectors that get trained
    sweep_conditions: tuple[str, ...] = CONDITIONS  # the vectors the chapters sweep
    composition_traits: tuple[str, ...] = TRAITS  # RQ2 composes one vector per trait
    composition_fraction: str = "full"  # "full": all 2^k profiles | "half": the 2^(k-1)
    # with an even number of lows (each trait balanced, main effects unconfounded)
    composition_methods: tuple[str, ...] = ("TA", "TIES", "TA+DARE", "TIES+DARE")  # the
    # paper's four (TIES as a disjoint sum at weight alpha); also "Breadcrumbs", "DELLA" and
    # the disjoint mean scaled by alpha, "TIES-mean", "TIES+DARE-mean" (plans.merge_methods)
    ties_density: float = 0.2  # TIES keep fraction (mergekit's density)
    dare_drop_rate: float = 0.5  # DARE mask rate (the authors' default)
    npti_gammas: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    transfer_alphas: tuple[float, ...] = (0.0, 0.5, 1.0)  # RQ4: domain vector coefficient
    transfer_betas: tuple[float, ...] = (0.0, 0.5, 1.0)  # RQ4: personality vector coefficient
    layerwise_alphas: tuple[float, ...] = (0.5, 1.0, 2.0)
    n_heldout: int = 40  # held-out prompts for persona-shift and layer-wise inputs
    contrast_pairs: int = 3  # answer pairs per BFI item in the contrast measure (max 3)
    p2_seeds: int = 3  # P2 prompts drawn per condition
    # the linguistic analysis: self-descriptions at α = 0 (the base) and these α
    linguistic_alphas: tuple[float, ...] = (1.0, 2.0)
    linguistic_samples: int = 8  # self-descriptions per model (sampled at eval_temperature)
    linguistic_max_new_tokens: int = 160  # the paper asks for 300 words (~400 tokens)
    # --- the seed study (setup chapter): these conditions trained with each of these
    # seeds (the data's and the fine-tune's); `seed`'s vectors are the default ones
    seed_study_conditions: tuple[str, ...] = ("extraversion_high", "agreeableness_low",
                                              "conscientiousness_low")
    seed_study_seeds: tuple[int, ...] = (0, 1, 2)
    # the vectors whose trait-specific parts (φ − φ̄, and their trait's axis) the setup
    # chapter measures beside the raw ones
    component_conditions: tuple[str, ...] = CONDITIONS

    def __post_init__(self) -> None:
        # every value is checked (and lists coerced to tuples) against its annotation and
        # the rules below, so a bad override fails here, before any notebook cell runs
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(self.name, f.name, getattr(self, f.name), hints[f.name])
            _check_rule(self.name, f.name, value)
            object.__setattr__(self, f.name, value)
        if self.composition_fraction == "half" and len(self.composition_traits) < 3:
            _fail(self.name, "composition_fraction", "half", f"needs at least 3 "
                  f"composition_traits (got {list(self.composition_traits)}): a half fraction "
                  "of fewer confounds their levels")

    def replace(self, **overrides: Any) -> Profile:
        """A copy with `overrides` applied; `None` values mean 'keep the profile's'."""
        return dataclasses.replace(self, **_checked(overrides))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Profile))


def _checked(overrides: dict[str, Any]) -> dict[str, Any]:
    known = field_names()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"unknown profile field(s) {unknown}; known fields: {sorted(known)}")
    return {k: v for k, v in overrides.items() if v is not None}


# --- value checks: by annotation (generic), then per-field rules -------------------------

def _fail(profile: str, name: str, value: Any, why: str) -> None:
    raise ValueError(f"profile {profile!r}: {name}={value!r} {why}")


def _coerce(profile: str, name: str, value: Any, hint: Any) -> Any:
    """`value` as the annotated type: int -> float, list -> tuple; anything else fails."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            _fail(profile, name, value, f"is not a list of {args[0].__name__}")
        items = tuple(_coerce(profile, name, v, args[0]) for v in value)
        if not items:
            _fail(profile, name, value, "is empty")
        return items
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        _fail(profile, name, value, "is not a finite number")
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        _fail(profile, name, value, f"is not of type {hint.__name__}")
    return value


METHODS = ("TA", "TIES", "TA+DARE", "TIES+DARE", "Breadcrumbs", "DELLA", "TIES-mean",
           "TIES+DARE-mean")
LR_SCHEDULERS = ("constant", "linear", "cosine", "constant_with_warmup", "polynomial",
                 "inverse_sqrt", "cosine_with_restarts")
# field -> allowed values (every item, for a tuple field)
CHOICES: dict[str, tuple] = {
    "dtype": ("float32", "float16", "bfloat16"),
    "data_source": ("guided", "big5chat"),
    "measure": ("contrast", "interview"),
    "judge": ("persona", "embedding", "openai"),
    "lr_scheduler": LR_SCHEDULERS,
    "conditions": CONDITIONS,
    "sweep_conditions": CONDITIONS,
    "seed_study_conditions": CONDITIONS,
    "component_conditions": CONDITIONS,
    "composition_traits": TRAITS,
    "composition_methods": METHODS,
    "composition_fraction": ("full", "half"),
    "launcher": ("none", "accelerate"),
    "generation_backend": ("transformers", "vllm"),
    "language": ("en", "ko"),
    "quality_filter": ("basic", "none"),
    "train_objective": ("sft", "dpo"),
}
# field -> (low, high, low inclusive, high inclusive); ints not listed must be >= 1
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "seed": (0, math.inf, True, False),
    "seed_study_seeds": (0, math.inf, True, False),
    "ties_density": (0.0, 1.0, False, True),
    "dare_drop_rate": (0.0, 1.0, True, False),
    "gen_top_p": (0.0, 1.0, False, True),
    "gen_temperature": (0.0, math.inf, True, False),
    "eval_temperature": (0.0, math.inf, True, False),
    "guidance_gamma": (0.0, math.inf, True, False),
    "learning_rate": (0.0, math.inf, False, False),
    "dpo_beta": (0.0, math.inf, False, False),
    "train_epochs": (0.0, math.inf, False, False),
    "contrast_pairs": (1, 3, True, True),
    "save_steps": (0, math.inf, True, False),
    "heldout_fraction": (0.0, 0.5, True, True),
    "early_stopping_patience": (0, math.inf, True, False),
}


def _check_rule(profile: str, name: str, value: Any) -> None:
    items = value if isinstance(value, tuple) else (value,)
    if name in CHOICES:
        bad = [v for v in items if v not in CHOICES[name]]
        if bad:
            what = "condition" if "conditions" in name else "value"
            _fail(profile, name, value, f"has unknown {what}(s) {bad}; choose from "
                  f"{list(CHOICES[name])}")
    if name == "device" and not (value in ("cpu", "cuda", "mps", "auto")
                                 or value.startswith("cuda:")):
        _fail(profile, name, value, "is not a device (cpu, cuda, cuda:N, mps or auto)")
    low, high, low_in, high_in = RANGES.get(name, (1, math.inf, True, False))
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and name not in RANGES:
            continue  # free floats (alphas, gammas): finiteness is checked by type
        if not ((low <= v if low_in else low < v) and (v <= high if high_in else v < high)):
            bounds = f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
            _fail(profile, name, value, f"is out of range {bounds}")


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        # the four vectors the chapters use: RQ1/3/5/6 sweep extraversion, RQ2 composes
        # extraversion with agreeableness, 06's mixer adds agreeableness_high
        conditions=("extraversion_high", "extraversion_low", "agreeableness_high",
                    "agreeableness_low"),
        n_dialogues=4,  # 5 candidates x 4 conditions: one shared generation batch
        gen_max_new_tokens=20,
        gen_batch_size=64,
        train_epochs=1.0,
        train_batch_size=4,
        max_length=96,
        n_samples=1,
        eval_max_new_tokens=16,
        alphas=(0.5, 1.0, 2.0),
        interview_alphas=(1.0,),
        composition_alphas=(0.2,),
        sweep_conditions=("extraversion_high", "extraversion_low"),
        composition_traits=("extraversion", "agreeableness"),
        composition_methods=("TA", "TIES+DARE"),
        npti_gammas=(1.0,),
        transfer_alphas=(0.0, 1.0),
        transfer_betas=(0.0, 1.0),
        layerwise_alphas=(1.0,),
        n_heldout=4,
        contrast_pairs=1,
        p2_seeds=1,
        linguistic_alphas=(2.0,),
        linguistic_samples=2,
        linguistic_max_new_tokens=24,
        seed_study_conditions=("extraversion_high",),
        seed_study_seeds=(0,),  # the default vectors only: no extra fine-tune in CI
        component_conditions=("extraversion_high",),  # its φ − φ̄ and the extraversion axis
    ),
    # 128 answers of <= 56 new tokens (distinct prompts), one epoch of 8-example steps at
    # 1e-4 with a tenth held out for the held-out loss: no example is seen twice
    # (`train-vectors` took 63 min here: data 33, eleven fine-tunes 30). The grids are cut
    # for 2 cores (measured per point: persona shift 77 s, ±1 check 23 s, interview 40 s and
    # RQ2 35 s in a one-thread kernel): one answer pair per contrast item, four α per dial, RQ2 at
    # the paper's α = 0.2 with TA, TIES and TIES+DARE (DARE's effect: TIES+DARE vs TIES) on
    # the 16-profile half fraction (every trait high in 8, each pair balanced),
    # RQ4 at the corners of its grid; the seed study trains its three conditions under
    # seeds 1 and 2 too (each extra seed is a data run and three fine-tunes, ~16 minutes here)
    "cpu": Profile(name="cpu", n_dialogues=128, learning_rate=1e-4, train_epochs=1.0,
                   heldout_fraction=0.1, padding_free=True, contrast_pairs=1,
                   alphas=(0.5, 1.0, 1.5, 2.0), interview_alphas=(1.0, 2.0),
                   composition_alphas=(0.2,), composition_methods=("TA", "TIES", "TIES+DARE"),
                   composition_fraction="half",
                   npti_gammas=(1.0, 2.0), transfer_alphas=(0.0, 1.0), transfer_betas=(0.0, 1.0)),
    "paper": Profile(
        name="paper",
        model="meta-llama/Llama-3.1-8B-Instruct",
        dtype="bfloat16",
        device="cuda",
        data_source="big5chat",
        n_dialogues=10_000,
        gen_batch_size=64,
        train_epochs=1.0,
        train_batch_size=4,
        grad_accum=8,
        learning_rate=1e-5,
        lr_scheduler="cosine",
        max_length=1024,
        bf16=True,
        gradient_checkpointing=True,
        launcher="accelerate",
        accelerate_config="configs/accelerate_fsdp.yaml",
        save_steps=100,
        measure="interview",
        judge="openai",
        judge_model="gpt-4o",
        n_samples=5,
        eval_max_new_tokens=256,
        eval_batch_size=64,
        interview_alphas=_alphas(0.1, 2.0, 0.1),
        linguistic_samples=20,
        linguistic_max_new_tokens=400,
    ),
}


# the paper's second base model: same protocol, Qwen2.5's architecture and tokenizer
PROFILES["paper-qwen"] = PROFILES["paper"].replace(name="paper-qwen",
                                                   model="Qwen/Qwen2.5-7B-Instruct")


def check_profile_name(name: str) -> None:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")


def get_profile(name: str = "cpu", **overrides: Any) -> Profile:
    """The named profile with overrides applied (unknown names and fields are errors)."""
    check_profile_name(name)
    return PROFILES[name].replace(**overrides)
