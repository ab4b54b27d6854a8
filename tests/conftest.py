"""Shared fixtures: tiny random models (seconds to build) and an isolated artifacts dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EMBEDDED = "smollm2-135m-instruct"


def tiny_llama_config(**overrides):
    """A Llama with the real architecture's parts (GQA, SwiGLU, RMSNorm), a few layers."""
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def make_tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


def tiny_qwen2_config(**overrides):
    """A Qwen2 (Qwen2.5's architecture: GQA, SwiGLU, RMSNorm, biases on q/k/v), a few layers."""
    from transformers import Qwen2Config

    kw = dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, use_sliding_window=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=2,
    )
    kw.update(overrides)
    return Qwen2Config(**kw)


def make_tiny_qwen2(seed: int = 0, **overrides):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(tiny_qwen2_config(**overrides)).eval()


@pytest.fixture(scope="session")
def tiny_llama():
    """An in-memory tiny random Llama."""
    return make_tiny_llama()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama saved as a safetensors model directory."""
    out = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The provisioned embedded model (downloaded and converted once per artifacts dir)."""
    from pvutils.models import provision_embedded

    return provision_embedded(EMBEDDED)


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    """A private artifacts directory for tests that write to it."""
    monkeypatch.setenv("PVUTILS_HOME", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


@pytest.fixture(scope="session")
def tiny_chat_model(embedded_model_dir):
    """A tiny random Llama that shares the embedded model's tokenizer (and chat template),
    so chat-level code (contrast measure, interviews, sweeps) runs in milliseconds."""
    from pvutils.models import load_tokenizer

    tok = load_tokenizer(embedded_model_dir)
    return make_tiny_llama(vocab_size=len(tok), bos_token_id=1, eos_token_id=2), tok


@pytest.fixture(scope="session")
def tiny_qwen2_chat_model(embedded_model_dir):
    """A tiny random Qwen2 with the embedded model's tokenizer: SmolLM2's template is ChatML,
    the same turn format as Qwen2.5-Instruct's, so chat-level code sees Qwen2.5's shape."""
    from pvutils.models import load_tokenizer

    tok = load_tokenizer(embedded_model_dir)
    return make_tiny_qwen2(vocab_size=len(tok), bos_token_id=1, eos_token_id=2), tok


@pytest.fixture
def big5chat_csv(tmp_path) -> Path:
    """A small CSV in Big5-Chat's schema: four dialogues per condition."""
    import csv

    from pvutils import data
    from pvutils.profiles import CONDITIONS

    path = tmp_path / "big5chat.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(data.BIG5CHAT_COLUMNS)
        for cond in CONDITIONS:
            trait, level = cond.split("_")
            for i in range(4):
                w.writerow([f"Respond as a person with {level} {trait}.",
                            f"Speaker A: How was your day, number {i}?",
                            f"It was a {level} {trait} kind of day, number {i}.", trait, level])
    return path
