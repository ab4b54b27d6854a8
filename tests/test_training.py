"""Fine-tuning into vectors: TRL arguments, the loss mask, caching/resume, LoRA, bad input.

Training runs use a tiny random Llama that shares SmolLM2's tokenizer (and so its ChatML
template), with data from a small Big5-Chat-schema CSV: seconds per fine-tune.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pvutils import character, data, fidelity, models, training, vectors
from pvutils.profiles import get_profile
from pvutils.training import TrainingError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def chat_tokenizer(embedded_model_dir):
    return models.load_tokenizer(embedded_model_dir)


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory, chat_tokenizer, tiny_llama_factory) -> Path:
    """A tiny random Llama with SmolLM2's vocabulary and chat template, saved to disk."""
    out = tmp_path_factory.mktemp("tiny-chat-llama")
    tiny_llama_factory(vocab_size=len(chat_tokenizer), pad_token_id=chat_tokenizer.pad_token_id,
                    eos_token_id=chat_tokenizer.eos_token_id,
                    bos_token_id=chat_tokenizer.bos_token_id).save_pretrained(out)
    chat_tokenizer.save_pretrained(out)
    return out


def chat_rows(n=4):
    return datasets.Dataset.from_list([
        {"messages": [{"role": "user", "content": f"How was your day {i}?"},
                      {"role": "assistant", "content": f"Lovely, thanks for asking {i}!"}]}
        for i in range(n)])


# --- TRL arguments ----------------------------------------------------------------------


def test_paper_arguments_build_without_a_gpu(tmp_path):
    cfg = training.sft_config(get_profile("paper"), tmp_path)
    assert cfg.bf16 and cfg.gradient_checkpointing
    assert (cfg.learning_rate, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps,
            cfg.max_length) == (1e-5, 4, 8, 1024)
    assert str(cfg.lr_scheduler_type.value if hasattr(cfg.lr_scheduler_type, "value")
               else cfg.lr_scheduler_type) == "cosine"
    assert cfg.completion_only_loss is True and cfg.assistant_only_loss is False


def test_cpu_arguments_avoid_the_slow_trl_defaults(tmp_path):
    cfg = training.sft_config(get_profile("cpu"), tmp_path)
    assert not cfg.bf16 and not cfg.gradient_checkpointing
    assert cfg.use_cpu == (not torch.cuda.is_available())


def test_paper_trainer_constructs_on_a_tiny_llama(tmp_path, tiny_chat_dir, chat_tokenizer):
    from trl import SFTTrainer

    model = models.load_model(tiny_chat_dir)
    trainer = training.build_trainer(get_profile("paper"), model, chat_tokenizer, chat_rows(),
                                     tmp_path)
    assert isinstance(trainer, SFTTrainer) and trainer.args.bf16
    assert len(trainer.train_dataset) == 4


def test_accelerate_fsdp_config_is_paper_scale():
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "configs" / "accelerate_fsdp.yaml"))
    assert str(cfg.distributed_type).endswith("FSDP") and cfg.mixed_precision == "bf16"
    assert cfg.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert cfg.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


# --- the loss mask ----------------------------------------------------------------------


def test_only_the_assistant_answer_is_trained(tmp_path, tiny_chat_dir, chat_tokenizer):
    model = models.load_model(tiny_chat_dir)
    rows = chat_rows(1)
    trainer = training.build_trainer(get_profile("smoke"), model, chat_tokenizer, rows, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    trained = ids[labels != -100]
    answer = rows[0]["messages"][1]["content"]
    assert chat_tokenizer.decode(trained).startswith(answer)
    # every token before the answer (system turn, user turn, assistant header) is ignored
    prompt = chat_tokenizer.apply_chat_template(rows[0]["messages"][:1], tokenize=False,
                                                add_generation_prompt=True)
    n_prompt = len(chat_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert (labels[:n_prompt] == -100).all() and (labels[n_prompt:] != -100).all()


def test_padding_free_batches_train_only_answers_with_the_padded_logits(
        tmp_path, tiny_chat_dir, chat_tokenizer):
    """One flattened row of three dialogues: labels only on each answer, and the model's
    logits on it equal each dialogue's logits alone (no attention across dialogues), so
    the loss and its gradient are the padded batch's."""
    model = models.load_model(tiny_chat_dir)
    rows = datasets.Dataset.from_list([
        {"messages": [{"role": "user", "content": "hi" + " there" * i},
                      {"role": "assistant", "content": f"Hello{' again' * (2 * i)}!"}]}
        for i in range(3)])
    profile = get_profile("smoke", padding_free=True, max_length=64)
    trainer = training.build_trainer(profile, model, chat_tokenizer, rows, tmp_path)
    examples = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer.data_collator(examples)
    assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch
    ids, labels, start = batch["input_ids"][0], batch["labels"][0], 0
    with torch.no_grad():
        flat = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    for ex, row in zip(examples, rows):
        n = len(ex["input_ids"])
        own = ids[start:start + n]
        prompt = chat_tokenizer.apply_chat_template(row["messages"][:1], tokenize=False,
                                                    add_generation_prompt=True)
        n_prompt = len(chat_tokenizer(prompt, add_special_tokens=False)["input_ids"])
        lab = labels[start:start + n]
        # TRL masks the first token of every flattened sequence (no previous token)
        assert (lab[:n_prompt] == -100).all() and (lab[n_prompt:] != -100).all()
        assert chat_tokenizer.decode(own[lab != -100]).startswith(row["messages"][1]["content"])
        with torch.no_grad():
            alone = model(input_ids=own[None]).logits[0]
        torch.testing.assert_close(flat[start:start + n], alone, atol=1e-5, rtol=1e-4)
        start += n


def test_padding_free_refuses_rows_over_max_length(tmp_path, tiny_chat_dir, chat_tokenizer):
    long = datasets.Dataset.from_list([{"messages": [
        {"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "ok"}]}])
    with pytest.raises(TrainingError, match="over max_length=32"):
        training.build_trainer(get_profile("smoke", padding_free=True, max_length=32),
                               models.load_model(tiny_chat_dir), chat_tokenizer, long, tmp_path)


def test_heldout_split_is_seeded_and_disjoint():
    from pvutils.heldout import split_heldout

    rows = chat_rows(10)
    train, held = split_heldout(rows, 0.2, seed=0)
    assert (len(train), len(held)) == (8, 2)
    texts = lambda d: {r["messages"][1]["content"] for r in d}  # noqa: E731
    assert not texts(train) & texts(held) and texts(train) | texts(held) == texts(rows)
    assert texts(split_heldout(rows, 0.2, seed=0)[1]) == texts(held)
    assert split_heldout(rows, 0.0, seed=0) == (rows, None)
    assert len(split_heldout(chat_rows(2), 0.01, seed=0)[1]) == 1  # at least one each side


def test_keep_best_stops_after_patience_and_restores_the_best_weights():
    from transformers import TrainerControl, TrainerState

    from pvutils.heldout import KeepBest

    model = torch.nn.Linear(2, 1)
    cb, state, control = KeepBest(patience=2), TrainerState(), TrainerControl()
    for epoch, (loss, w) in enumerate([(3.0, 0.0), (1.0, 1.0), (2.0, 2.0), (1.5, 3.0)], 1):
        state.epoch = float(epoch)
        with torch.no_grad():
            model.weight.fill_(w)
        cb.on_evaluate(None, state, control, metrics={"eval_loss": loss}, model=model)
        assert control.should_training_stop == (epoch == 4)  # two evaluations worse than 1.0
    cb.on_train_end(None, state, control, model=model)
    assert (cb.best, cb.best_epoch, cb.history) == (1.0, 2.0, [3.0, 1.0, 2.0, 1.5])
    assert torch.equal(model.weight, torch.ones(1, 2))


def test_heldout_fraction_evaluates_every_epoch(tmp_path, tiny_chat_dir, chat_tokenizer):
    profile = get_profile("smoke", heldout_fraction=0.25, early_stopping_patience=1)
    assert str(training.sft_config(profile, tmp_path).eval_strategy.value) == "epoch"
    trainer = training.build_trainer(profile, models.load_model(tiny_chat_dir),
                                     chat_tokenizer, chat_rows(8), tmp_path)
    assert (len(trainer.train_dataset), len(trainer.eval_dataset)) == (6, 2)


def test_empty_or_malformed_data_are_clear_errors():
    with pytest.raises(TrainingError, match="empty"):
        training.to_prompt_completion(chat_rows(0))
    bad = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(TrainingError, match="must end with a non-empty assistant turn"):
        training.to_prompt_completion(bad)
    with pytest.raises(TrainingError, match="no 'messages' column"):
        training.to_prompt_completion(datasets.Dataset.from_dict({"text": ["hi"]}))


# --- one condition, all conditions ------------------------------------------------------


def test_vector_is_finetuned_minus_base(tiny_profile, tiny_chat_dir, isolated_home):
    path = training.train_condition(tiny_profile, "openness_high", keep_model=True)
    assert path == training.vector_path(tiny_profile, "openness_high")
    assert path.parent.parent == isolated_home / "vectors"  # <artifacts>/vectors/<key>/
    vec = vectors.load_vector(path)
    base = load_file(str(tiny_chat_dir / "model.safetensors"))
    tuned = load_file(str(training.finetuned_path(tiny_profile, "openness_high")
                          / "model.safetensors"))
    assert set(vec) == set(base)
    for name in base:
        torch.testing.assert_close(vec[name], tuned[name] - base[name])
    assert max(v.abs().max().item() for v in vec.values()) > 0
    side = training.sidecar_path(tiny_profile, "openness_high")
    assert side.exists() and training.is_trained(tiny_profile, "openness_high")
    assert not list((isolated_home / "scratch").glob("openness_high-*"))


def test_heldout_loss_is_recorded_per_epoch_with_its_best_epoch(tiny_profile):
    profile = tiny_profile.replace(heldout_fraction=0.25, train_epochs=3.0,
                                   early_stopping_patience=1)
    training.train_condition(profile, "openness_high")
    info = json.loads(training.sidecar_path(profile, "openness_high").read_text())
    history = info["eval_loss_history"]
    assert len(history) == round(info["epochs"]) and 1 <= len(history) <= 3
    assert info["best_epoch"] == 1 + history.index(min(history))
    assert info["n_examples"] == 4 and info["tokens"] > 0


def test_killed_run_resumes_without_retraining(tiny_profile, monkeypatch):
    real = training.build_trainer
    trained: list[str] = []

    def counting(profile, model, tok, dataset, out):
        cond = dataset[0]["condition"] if "condition" in dataset.column_names else "?"
        trained.append(cond)
        if len(trained) == 2 and crash:
            raise KeyboardInterrupt("killed mid-run")
        return real(profile, model, tok, dataset, out)

    monkeypatch.setattr(training, "build_trainer", counting)
    profile = tiny_profile.replace(conditions=("openness_high", "openness_low"))
    crash = True
    with pytest.raises(KeyboardInterrupt):
        training.train_all_vectors(profile)
    assert trained == ["openness_high", "openness_low"]
    first = training.vector_path(profile, "openness_high")
    stamp = first.stat().st_mtime_ns
    assert not training.vector_path(profile, "openness_low").exists()
    crash = False
    paths = training.train_all_vectors(profile)
    assert trained[2:] == ["openness_low"]  # the finished condition is not retrained
    assert first.stat().st_mtime_ns == stamp and all(p.exists() for p in paths.values())
    # a changed training input retrains
    assert not training.is_trained(profile.replace(learning_rate=2e-3), "openness_high")


def test_persona_shift_compares_tuned_and_base_answers(tiny_profile, monkeypatch):
    training.train_condition(tiny_profile, "extraversion_high")
    table = fidelity.persona_shift(tiny_profile, conditions=["extraversion_high"],
                                   prompts=["How was your weekend?", "Any plans tonight?"],
                                   max_new_tokens=6)
    row = table.iloc[0]
    assert row["condition"] == "extraversion_high" and row["n_prompts"] == 2
    assert row["shift"] == pytest.approx(row["tuned"] - row["base"], abs=1e-6)
    # cached per condition: a rerun loads no model and gives the same row
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    again = fidelity.persona_shift(tiny_profile, conditions=["extraversion_high"],
                                   prompts=["How was your weekend?", "Any plans tonight?"],
                                   max_new_tokens=6)
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(TrainingError, match="no vector for 'extraversion_low'"):
        fidelity.persona_shift(tiny_profile, conditions=["extraversion_low"], prompts=["Hi"])


def test_lora_vector_is_the_merged_low_rank_delta(tiny_profile):
    profile = tiny_profile.replace(use_lora=True)
    vec = vectors.load_vector(training.train_condition(profile, "openness_low"))
    norms = [n for n in vec if "norm" in n]
    projs = [n for n in vec if n.endswith("proj.weight")]
    assert norms and all(vec[n].abs().max() == 0 for n in norms)  # LoRA leaves norms alone
    assert any(vec[n].abs().max() > 0 for n in projs)
    for n in projs:  # rank <= r = 16, up to float32 rounding of (base + BA) - base
        sv = torch.linalg.svdvals(vec[n].double())
        assert len(sv) <= 16 or sv[16:].max() <= 1e-3 * sv[0], n


def test_base_with_other_parameter_names_is_a_clear_error(tiny_profile, tmp_path, monkeypatch,
                                                         tiny_llama_factory):
    other = tmp_path / "other-base"
    tiny_llama_factory(num_hidden_layers=2, vocab_size=49152).save_pretrained(other)
    monkeypatch.setattr(training, "base_weights_dir", lambda model: other)
    with pytest.raises(vectors.MergeError, match=r"layers\.2"):
        training.train_condition(tiny_profile, "extraversion_high")
    assert not training.vector_path(tiny_profile, "extraversion_high").exists()
    assert not training.sidecar_path(tiny_profile, "extraversion_high").exists()


def test_unknown_condition_or_character_is_a_clear_error(tiny_profile):
    with pytest.raises(data.DataError, match="unknown condition 'openness_medium'"):
        training.train_condition(tiny_profile, "openness_medium")
    with pytest.raises(ValueError, match="unknown character 'pirate_pete'"):
        training.train_domain_vector(tiny_profile, "pirate_pete")


def test_cli_reports_bad_input(capsys):
    assert training.cli_train_vectors(["--profile", "smoke", "--conditions", "joy_high"]) == 1
    assert "unknown condition" in capsys.readouterr().err


# --- measuring what a vector does -------------------------------------------------------


def test_character_fidelity_counts_the_characters_voice(monkeypatch):
    replies = ["Aye, the sea was calm that day, sailor.", "I had soup for lunch."]
    monkeypatch.setattr(models, "chat", lambda *a, **k: replies)
    # 3 keywords (aye, sea, sailor; not 'calm') over 13 words
    words = "aye the sea was calm that day sailor i had soup for lunch".split()
    expected = 100 * 3 / len(words)
    assert character.character_fidelity(None, None, prompts=["a", "b"]) == pytest.approx(expected)
    # per prompt (keywords, words): what RQ4's prompt bootstrap resamples
    assert character.keyword_counts(None, None, prompts=["a", "b"]) == [(3, 8), (0, 5)]
    with pytest.raises(ValueError, match="unknown character"):
        character.character_fidelity(None, None, character="nobody")


@pytest.mark.slow
def test_one_condition_end_to_end_on_the_embedded_model(isolated_home, tmp_path,
                                                       big5chat_csv):
    csv = big5chat_csv(tmp_path / "b5.csv", rows_per_condition=4)
    profile = get_profile("smoke", data_source="big5chat", big5chat_path=str(csv),
                          n_dialogues=4, train_batch_size=4, max_length=64)
    path = training.train_condition(profile, "agreeableness_high")
    meta = vectors.vector_metadata(path)
    assert meta["condition"] == "agreeableness_high"
    info = training.sidecar_path(profile, "agreeableness_high").read_text()
    assert '"steps": 1' in info
    shutil.rmtree(isolated_home / "smoke", ignore_errors=True)
