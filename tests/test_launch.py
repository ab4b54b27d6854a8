"""Paper-scale training: the `accelerate launch` plan, its memory model, a real launch on CPU,
and resuming from TRL checkpoints."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pvutils import launch, training, vectors
from pvutils.__main__ import main
from pvutils.artifacts import read_json
from pvutils.profiles import get_profile

REPO = Path(__file__).resolve().parents[1]
# parameter counts published on the two model cards (safetensors metadata)
PUBLISHED = {"paper": (8_030_261_248, "LlamaDecoderLayer"),
             "paper-qwen": (7_615_616_512, "Qwen2DecoderLayer")}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_plan_knows_the_papers_models_without_network(name):
    plan = launch.make_plan(get_profile(name), domain="captain_mara", num_gpus=4)
    n_params, layer_cls = PUBLISHED[name]
    assert (plan.arch.n_params, plan.arch.layer_cls) == (n_params, layer_cls)
    data, *launches = plan.commands
    assert "--data-only" in data and "accelerate.commands.launch" not in " ".join(data)
    assert len(launches) == 10 + 1  # ten conditions, then the domain vector
    for cmd in launches:
        at = {flag: cmd[cmd.index(flag) + 1] for flag in
              ("--config_file", "--num_processes", "--fsdp_transformer_layer_cls_to_wrap")}
        assert at == {"--config_file": str(REPO / "configs" / "accelerate_fsdp.yaml"),
                      "--num_processes": "4", "--fsdp_transformer_layer_cls_to_wrap": layer_cls}
        assert "--no-launch" in cmd  # the launched job trains instead of launching again
    trained = [cmd[cmd.index("--conditions") + 1] for cmd in launches[:-1]]
    assert trained == list(get_profile(name).conditions)


def test_memory_model_follows_its_formula():
    p = get_profile("paper")
    arch = launch.Architecture(n_params=8_000, layer_cls="L", layer_params=1_000, n_layers=6,
                               hidden=16, vocab=100)
    m = launch.memory_estimate(arch, p, num_gpus=8)
    b, s = p.train_batch_size, p.max_length
    assert m.sharded_states == 16 * 8_000 / 8  # fp32 weights, grads and two AdamW moments
    assert m.gathered_units == 2 * (2_000 + 2 * 1_000)  # bf16 root + two layers
    assert m.activations == 6 * 2 * b * s * 16 + 34 * b * s * 16  # checkpointed
    assert m.logits == 10 * b * s * 100
    no_ckpt = launch.memory_estimate(arch, p.replace(gradient_checkpointing=False), 8)
    assert no_ckpt.activations == 6 * 34 * b * s * 16
    assert launch.memory_estimate(arch, p, 2).sharded_states == 4 * m.sharded_states
    assert m.reference == 0 and m.per_gpu == (m.sharded_states + m.gathered_units
                                              + m.activations + m.logits)
    # DPO: chosen + rejected in one batch (2b sequences) and a frozen bf16 reference copy
    dpo = launch.memory_estimate(arch, p.replace(train_objective="dpo"), 8)
    assert dpo.activations == 2 * m.activations and dpo.logits == 2 * m.logits
    assert dpo.reference == 2 * 8_000 / 8 + 2 * (2_000 + 2 * 1_000)
    assert dpo.sharded_states == m.sharded_states
    # under LoRA the reference is the base with the adapter off: no copy
    lora = launch.memory_estimate(arch, p.replace(train_objective="dpo", use_lora=True), 8)
    assert lora.reference == 0


def test_dry_run_prints_exactly_the_commands_it_would_run(capsys):
    assert main(["train-vectors", "--profile", "paper", "--dry-run", "--num-gpus", "8"]) == 0
    out = capsys.readouterr().out
    printed = [shlex.split(line) for line in out.splitlines() if line.startswith("  ")]
    plan = launch.make_plan(get_profile("paper"), domain="captain_mara", num_gpus=8)
    assert printed == plan.commands


def test_overrides_are_typed_and_bad_ones_are_named(capsys):
    assert launch.parse_overrides(["model=/m", "n_dialogues=8", "bf16=false"]) == \
        {"model": "/m", "n_dialogues": 8, "bf16": False}
    with pytest.raises(ValueError, match="expected FIELD=VALUE"):
        launch.parse_overrides(["n_dialogues"])
    assert main(["train-vectors", "--profile", "cpu", "--dry-run"]) == 1
    assert "has no accelerate_config" in capsys.readouterr().err


@pytest.fixture(params=["llama", "qwen2"])
def tiny_chat_dir(request, tmp_path, tiny_chat_model, tiny_llama_factory, tiny_qwen2_factory):
    """A tiny random model of each architecture with the ChatML tokenizer, on disk."""
    _, tok = tiny_chat_model
    make = {"llama": tiny_llama_factory, "qwen2": tiny_qwen2_factory}[request.param]
    out = tmp_path / request.param
    make(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
         bos_token_id=tok.bos_token_id).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_overrides(model_dir: Path, csv: Path) -> list[str]:
    return [f"model={model_dir}", "dtype=float32", f"big5chat_path={csv}", "n_dialogues=4",
            "train_batch_size=2", "grad_accum=1", "max_length=64", "save_steps=1"]


def test_paper_profile_trains_one_condition_under_accelerate_launch(tiny_chat_dir, big5chat_csv,
                                                                    isolated_home, tmp_path):
    """The plan's own launch command, run on CPU. One change: `--cpu`. The shipped config
    asks for FSDP, which accelerate only builds on an accelerator device (on CPU it stops
    with "no available devices"); `--cpu` makes it take its single-process launcher. bf16
    and gradient checkpointing stay on (a tiny model is fast in bf16 even on this CPU)."""
    csv = big5chat_csv(tmp_path / "b5.csv", rows_per_condition=4)
    overrides = tiny_overrides(tiny_chat_dir, csv)
    profile = get_profile("paper", conditions=["extraversion_high"],
                          **launch.parse_overrides(overrides))
    assert profile.bf16 and profile.gradient_checkpointing and profile.launcher == "accelerate"
    cmd = launch.make_plan(profile, domain=None, num_gpus=1, overrides=overrides).commands[1]
    at = cmd.index("accelerate.commands.launch") + 1
    cmd = [*cmd[:at], "--cpu", *cmd[at:]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    side = read_json(training.sidecar_path(profile, "extraversion_high"))
    assert side["key"] == training.train_key(profile, "extraversion_high")
    assert side["steps"] == 2 and side["n_examples"] == 4  # 4 dialogues, 2 per step
    phi = vectors.load_vector(training.vector_path(profile, "extraversion_high"))
    assert any(t.abs().max() > 0 for t in phi.values())
    assert not (isolated_home / "scratch").exists() or \
        not any((isolated_home / "scratch").iterdir())  # checkpoints cleaned up


@pytest.mark.parametrize("tiny_chat_dir", ["qwen2"], indirect=True)  # one arch: CI time
def test_killed_run_resumes_from_its_last_trl_checkpoint(tiny_chat_dir, big5chat_csv,
                                                         isolated_home, tmp_path):
    from pvutils import data as pvdata
    from pvutils import models

    csv = big5chat_csv(tmp_path / "b5.csv", rows_per_condition=4)
    profile = get_profile("smoke", conditions=["extraversion_high"], data_source="big5chat",
                          **launch.parse_overrides(tiny_overrides(tiny_chat_dir, csv)))
    cond = "extraversion_high"
    # the killed run: one of two steps done, its checkpoint left in the scratch directory
    key = training.train_key(profile, cond)
    scratch = isolated_home / "scratch" / f"{cond}-{key}" / "trainer"
    trainer = training.build_trainer(profile, models.load_model(tiny_chat_dir),
                                     models.load_tokenizer(tiny_chat_dir),
                                     pvdata.generate_trait_data(profile, cond), scratch)
    trainer.args.max_steps = 1
    trainer.train()
    checkpoint = training.last_checkpoint(scratch)
    assert checkpoint.endswith("checkpoint-1")
    # mark the checkpoint: a resumed run starts from these weights, a fresh one from the base
    weights = Path(checkpoint) / "model.safetensors"
    state = load_file(weights)
    state["model.norm.weight"] = torch.full_like(state["model.norm.weight"], 7.0)
    save_file(state, weights, metadata={"format": "pt"})
    training.train_condition(profile, cond)
    side = read_json(training.sidecar_path(profile, cond))
    assert side["steps"] == 2
    phi = vectors.load_vector(training.vector_path(profile, cond))
    base_norm = 1.0  # RMSNorm weights start at one
    assert phi["model.norm.weight"].float().mean().item() == pytest.approx(7.0 - base_norm,
                                                                         abs=0.05)
    assert training.last_checkpoint(scratch) is None  # success removes the checkpoints


def test_data_step_runs_in_this_process(big5chat_csv, isolated_home, capsys, tmp_path):
    """`--data-only` under the paper profile prepares data here (no launch, no model)."""
    csv = big5chat_csv(tmp_path / "b5.csv", rows_per_condition=4)
    overrides = tiny_overrides(tmp_path / "never-loaded", csv)
    argv = ["train-vectors", "--profile", "paper", "--conditions", "openness_low", "--no-domain",
            "--data-only", *(a for o in overrides for a in ("--set", o))]
    assert main(argv) == 0
    assert "data ready" in capsys.readouterr().out
    assert not training.vector_path("paper", "openness_low").exists()
