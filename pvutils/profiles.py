"""The three parameter sets every notebook and command reads: `smoke`, `cpu`, `paper`.

`smoke` proves every cell runs (CI, minutes); `cpu` is the embedded default whose numbers
the book shows (SmolLM2-135M-Instruct, offline data and judges, 2 cores); `paper` is the
paper's scale (Llama-3.1-8B-Instruct, Big5-Chat, a GPT judge, GPUs). Any field can be
overridden by name, e.g. from a notebook's papermill `parameters` cell.
"""

from __future__ import annotations

import dataclasses
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
    n_dialogues: int = 64  # per condition
    guidance_gamma: float = 2.0
    gen_temperature: float = 0.7
    gen_top_p: float = 0.9
    gen_max_new_tokens: int = 56
    gen_batch_size: int = 32
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
    # --- evaluation ------------------------------------------------------------------
    measure: str = "contrast"  # "contrast" (fast, deterministic) | "interview"
    judge: str = "persona"  # "persona" | "embedding" | "openai"
    judge_model: str = "gpt-4o"
    n_samples: int = 2  # interview repeats per question
    eval_temperature: float = 0.6
    eval_max_new_tokens: int = 48
    eval_batch_size: int = 44
    # --- sweeps ----------------------------------------------------------------------
    alphas: tuple[float, ...] = field(default_factory=lambda: _alphas(0.1, 2.0, 0.1))
    interview_alphas: tuple[float, ...] = (0.5, 1.0, 2.0)
    composition_alphas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    conditions: tuple[str, ...] = CONDITIONS  # the vectors that get trained
    sweep_conditions: tuple[str, ...] = CONDITIONS  # the vectors the chapters sweep
    composition_traits: tuple[str, ...] = TRAITS  # RQ2 composes one vector per trait
    composition_methods: tuple[str, ...] = ("TA", "TIES", "TA+DARE", "TIES+DARE")  # the
    # paper's four; also "Breadcrumbs" and "DELLA" (see analysis.merge_methods)
    ties_density: float = 0.2  # TIES keep fraction (mergekit's density)
    dare_drop_rate: float = 0.5  # DARE mask rate (the authors' default)
    npti_gammas: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    transfer_alphas: tuple[float, ...] = (0.0, 0.5, 1.0)  # RQ4: domain vector coefficient
    transfer_betas: tuple[float, ...] = (0.0, 0.5, 1.0)  # RQ4: personality vector coefficient
    layerwise_alphas: tuple[float, ...] = (0.5, 1.0, 2.0)
    n_heldout: int = 40  # held-out prompts for persona-shift and layer-wise inputs
    contrast_pairs: int = 3  # answer pairs per BFI item in the contrast measure (max 3)
    p2_seeds: int = 3  # P2 prompts drawn per condition

    def replace(self, **overrides: Any) -> Profile:
        """A copy with `overrides` applied; `None` values mean 'keep the profile's'."""
        return dataclasses.replace(self, **_checked(overrides))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _checked(overrides: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(Profile)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown profile field(s) {unknown}; known fields: {sorted(known)}")
    out = {k: v for k, v in overrides.items() if v is not None}
    tuples = ("alphas", "interview_alphas", "composition_alphas", "conditions",
              "sweep_conditions", "composition_traits", "composition_methods", "npti_gammas",
              "transfer_alphas", "transfer_betas", "layerwise_alphas")
    for key in tuples:
        if key in out:
            out[key] = tuple(out[key])
    bad = sorted(set(out.get("conditions", ())).union(out.get("sweep_conditions", ()))
                 - set(CONDITIONS))
    if bad:
        raise ValueError(f"unknown condition(s) {bad}; conditions are {list(CONDITIONS)}")
    return out


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        n_dialogues=4,  # 5 candidates x 11 conditions: one shared generation batch
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
    ),
    # 32 dialogues of <= 40 new tokens, 4 epochs of 8-example steps (16 steps) at 1e-4:
    # the whole `train-vectors` run (data, 11 fine-tunes) fits 45 minutes on 2 cores
    "cpu": Profile(name="cpu", n_dialogues=32, gen_max_new_tokens=40, gen_batch_size=40,
                   learning_rate=1e-4, train_epochs=4.0,
                   # RQ2 scores all five traits per merged model (~30 s each on 2 cores):
                   # 32 profiles x 2 alphas x 4 methods keeps the chapter near two hours
                   composition_alphas=(0.2, 0.4)),
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
        measure="interview",
        judge="openai",
        judge_model="gpt-4o",
        n_samples=5,
        eval_max_new_tokens=256,
        eval_batch_size=64,
        interview_alphas=_alphas(0.1, 2.0, 0.1),
    ),
}


def get_profile(name: str = "cpu", **overrides: Any) -> Profile:
    """The named profile with overrides applied (unknown names and fields are errors)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name].replace(**overrides)
