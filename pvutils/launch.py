"""Paper-scale fine-tuning: the `accelerate launch` plan behind `train-vectors --profile paper`.

One `accelerate launch` per condition, data-parallel within it: FSDP (the shipped
`configs/accelerate_fsdp.yaml`) shards an 8B model's weights, gradients and AdamW state over
every GPU of the node, so each condition's fine-tune uses the whole node and the ten run one
after another. Data are prepared first by one plain process (reading Big5-Chat needs no GPU
and must not race across ranks). Every launched job resumes from its last TRL checkpoint and
skips a condition whose vector already exists, so rerunning the plan after a crash is safe.

`make_plan` needs neither GPUs nor network: the paper's two base models are known from
`resources/architectures.json`, so `--dry-run` counts their parameters on the meta device.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import torch
import yaml

from .models import resolve_model_dir
from .profiles import Profile

REPO_ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def parse_overrides(items: Sequence[str]) -> dict:
    """`["model=/x", "n_dialogues=8"]` -> {"model": "/x", "n_dialogues": 8} (YAML values)."""
    out = {}
    for item in items:
        field_name, sep, value = item.partition("=")
        if not sep or not field_name:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        out[field_name.strip()] = yaml.safe_load(value)
    return out


@cache
def known_architectures() -> dict[str, dict]:
    """config.json fields of the paper's base models, by hub id (no download needed)."""
    text = resources.files("pvutils").joinpath("resources/architectures.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def model_config(model: str):
    """The transformers config of `model`: the shipped fields for the paper's models, else
    the model's own config.json (a local directory, an embedded model or the HF cache)."""
    from transformers import AutoConfig  # heavy: only to size a launch

    fields = known_architectures().get(model)
    if fields is not None:
        fields = dict(fields)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    return AutoConfig.from_pretrained(resolve_model_dir(model))


@dataclass(frozen=True)
class Architecture:
    n_params: int
    layer_cls: str  # the decoder layer class: one FSDP unit
    layer_params: int
    n_layers: int
    hidden: int
    vocab: int


def architecture(config) -> Architecture:
    """Parameter counts from a model built on the meta device (no memory, no weights)."""
    from accelerate import init_empty_weights  # heavy: only to size a launch
    from transformers import AutoModelForCausalLM  # heavy: only to size a launch

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    layer = model.get_decoder().layers[0]
    return Architecture(
        n_params=sum(p.numel() for p in model.parameters()),
        layer_cls=type(layer).__name__,
        layer_params=sum(p.numel() for p in layer.parameters()),
        n_layers=config.num_hidden_layers, hidden=config.hidden_size, vocab=config.vocab_size)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU under FSDP FULL_SHARD with bf16 mixed precision (an estimate, see
    `memory_estimate`), plus what rank 0 needs when it saves the full model."""

    sharded_states: float  # fp32 weights + fp32 gradients + AdamW's two fp32 moments, / N
    gathered_units: float  # bf16 copies of the root unit and two decoder layers in flight
    activations: float
    logits: float
    save_cpu_ram: float  # FULL_STATE_DICT gathers the fp32 model in rank 0's CPU memory
    reference: float = 0.0  # DPO's frozen reference model: sharded bf16 + its gathered units

    @property
    def per_gpu(self) -> float:
        return (self.sharded_states + self.gathered_units + self.activations + self.logits
                + self.reference)


def memory_estimate(arch: Architecture, profile: Profile, num_gpus: int) -> MemoryEstimate:
    """A first-order memory model of one training step (CUDA context and fragmentation,
    typically 1-3 GiB, are not included).

    accelerate upcasts bf16-loaded parameters to fp32 when FSDP runs with mixed precision
    (`Accelerator.prepare_model`), so weights, gradients and both AdamW moments are fp32:
    16 bytes per parameter, sharded over the GPUs. Activations follow Korthikanti et al.
    (2022): about 34·b·s·h bytes per layer in 16-bit without the s² attention term (SDPA
    never materialises it); gradient checkpointing keeps only each layer's 2·b·s·h input
    and recomputes one layer at a time. The loss holds b·s·V logits in bf16, their fp32
    upcast and its gradient (10 bytes each).

    DPO (`train_objective="dpo"`) runs each pair's chosen and rejected answers in one batch
    (2·b sequences), and TRL keeps a frozen reference copy of the base, FSDP-sharded in the
    loaded bf16 (2 bytes per parameter / N, plus its units in flight) — none under LoRA,
    whose reference is the base with the adapter disabled. The reference forward runs
    without gradients, so it keeps no activations.
    """
    pairs = 2 if profile.train_objective == "dpo" else 1
    b, s, h = pairs * profile.train_batch_size, profile.max_length, arch.hidden
    root = arch.n_params - arch.n_layers * arch.layer_params  # embeddings, head, final norm
    per_layer = 34 * b * s * h
    acts = (arch.n_layers * 2 * b * s * h + per_layer if profile.gradient_checkpointing
            else arch.n_layers * per_layer)
    units = 2 * (root + 2 * arch.layer_params)
    frozen_copy = profile.train_objective == "dpo" and not profile.use_lora
    return MemoryEstimate(
        sharded_states=16 * arch.n_params / num_gpus, gathered_units=units,
        activations=acts, logits=10 * b * s * arch.vocab, save_cpu_ram=4 * arch.n_params,
        reference=2 * arch.n_params / num_gpus + units if frozen_copy else 0.0)


def accelerate_config_path(profile: Profile) -> Path:
    """The profile's accelerate config: as given, else relative to the repository root."""
    if not profile.accelerate_config:
        raise ValueError(f"profile {profile.name!r} has no accelerate_config; set one "
                         "(e.g. configs/accelerate_fsdp.yaml) to launch with accelerate")
    path = Path(profile.accelerate_config)
    for candidate in (path, REPO_ROOT / path):
        if candidate.is_file():
            return candidate.resolve()
    raise ValueError(f"accelerate config {profile.accelerate_config!r} not found "
                     f"(looked in {Path.cwd()} and {REPO_ROOT})")


def gpu_count(config_file: Path, requested: int | None = None) -> tuple[int, str]:
    """How many processes to launch, and where that number came from."""
    if requested:
        return requested, "--num-gpus"
    visible = torch.cuda.device_count()
    if visible:
        return visible, "GPUs visible here"
    n = int(yaml.safe_load(config_file.read_text()).get("num_processes", 1))
    return n, f"num_processes in {config_file.name}; no GPU visible here"


@dataclass(frozen=True)
class LaunchPlan:
    profile: Profile
    conditions: tuple[str, ...]
    domain: str | None
    config_file: Path
    num_gpus: int
    gpus_from: str
    arch: Architecture
    memory: MemoryEstimate
    commands: list[list[str]]


def launch_commands(profile: Profile, conditions: Sequence[str], domain: str | None,
                    config_file: Path, num_gpus: int, layer_cls: str,
                    overrides: Sequence[str] = ()) -> list[list[str]]:
    """The data step (one process), then one `accelerate launch` per condition (and the
    domain vector last). The FSDP unit is the model's own decoder layer class, so the one
    config serves Llama and Qwen2."""
    tail = ["--profile", profile.name, *(a for o in overrides for a in ("--set", o))]
    cmds = [[sys.executable, "-m", "pvutils", "train-vectors", *tail, "--data-only",
             *(["--character", domain] if domain else ["--no-domain"])]]
    launch = [sys.executable, "-m", "accelerate.commands.launch",  # = `accelerate launch`
              "--config_file", str(config_file),
              "--num_processes", str(num_gpus),
              "--fsdp_transformer_layer_cls_to_wrap", layer_cls,
              "-m", "pvutils", "train-vectors", *tail, "--no-launch"]
    cmds += [[*launch, "--conditions", c, "--no-domain"] for c in conditions]
    if domain:
        cmds.append([*launch, "--domain-only", "--character", domain])
    return cmds


def make_plan(profile: Profile, domain: str | None = None, num_gpus: int | None = None,
              overrides: Sequence[str] = ()) -> LaunchPlan:
    """Everything `train-vectors` would launch for `profile`, with its GPU count and memory."""
    config_file = accelerate_config_path(profile)
    n, source = gpu_count(config_file, num_gpus)
    arch = architecture(model_config(profile.model))
    return LaunchPlan(
        profile=profile, conditions=tuple(profile.conditions), domain=domain,
        config_file=config_file, num_gpus=n, gpus_from=source, arch=arch,
        memory=memory_estimate(arch, profile, n),
        commands=launch_commands(profile, profile.conditions, domain, config_file, n,
                                 arch.layer_cls, overrides))


def format_plan(plan: LaunchPlan) -> str:
    """The `--dry-run` report: model, GPUs, batch, memory per GPU, the exact commands."""
    p, a, m = plan.profile, plan.arch, plan.memory
    jobs = f"{len(plan.conditions)} condition(s)" + (f" + domain_{plan.domain}"
                                                     if plan.domain else "")
    gib = lambda x: f"{x / GIB:.1f} GiB"  # noqa: E731 - a local formatter
    lines = [
        f"train-vectors --profile {p.name}: {jobs}, one `accelerate launch` each",
        f"model          {p.model} ({a.n_params / 1e9:.2f} B parameters, {a.n_layers} x "
        f"{a.layer_cls} = the FSDP unit)",
        f"GPUs           {plan.num_gpus} ({plan.gpus_from})",
        f"batch          {p.train_batch_size} per GPU x {p.grad_accum} accumulation x "
        f"{plan.num_gpus} GPUs = {p.train_batch_size * p.grad_accum * plan.num_gpus} "
        f"sequences of <= {p.max_length} tokens per optimizer step",
        f"precision      bf16={p.bf16}, gradient checkpointing={p.gradient_checkpointing}, "
        f"checkpoint every {p.save_steps or 'never'} step(s)",
        f"memory / GPU   ~{gib(m.per_gpu)} (estimate; + CUDA context): sharded fp32 "
        f"weights, grads, AdamW {gib(m.sharded_states)}; gathered bf16 units "
        f"{gib(m.gathered_units)}; activations {gib(m.activations)}; logits {gib(m.logits)}"
        + (f"; DPO reference {gib(m.reference)}" if m.reference else ""),
        f"rank-0 CPU RAM ~{gib(m.save_cpu_ram)} while saving (FULL_STATE_DICT, fp32); "
        f"disk per vector {gib(2 * a.n_params)} (bf16)",
        f"config         {plan.config_file}",
        "commands:",
    ]
    return "\n".join(lines + ["  " + shlex.join(c) for c in plan.commands])


def run_plan(plan: LaunchPlan, env: dict[str, str] | None = None) -> int:
    """Run the plan's commands in order; stop at the first failure (its exit code)."""
    for cmd in plan.commands:
        print("+ " + shlex.join(cmd), flush=True)
        done = subprocess.run(cmd, env={**os.environ, **(env or {})})
        if done.returncode != 0:
            print(f"error: exit code {done.returncode} from: {shlex.join(cmd)}", file=sys.stderr)
            return done.returncode
    return 0
