"""Shared fixtures: tiny random models (seconds to build) and an isolated artifacts dir."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

import pvutils

pvutils.configure_torch_env()  # as every entry point does, before torch loads
import torch  # noqa: E402

from pvutils import results, stats  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    # `pytest -n 2` on 2 cores: one thread per worker; set in torch, not in the environment,
    # so the book's kernels (started from a worker) still choose their own threads
    torch.set_num_threads(1)

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


@pytest.fixture
def chat_model(tiny_chat_model, isolated_home):
    """The tiny chat model for a sweep, checked afterwards: every sweep must leave the
    model as it found it (bitwise)."""
    model, tok = tiny_chat_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    yield model, tok
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} was not restored"


@pytest.fixture(scope="session")
def tiny_llama_factory():
    """`make_tiny_llama` for tests that need a fresh model (own seed or config overrides)."""
    return make_tiny_llama


@pytest.fixture(scope="session")
def tiny_qwen2_factory():
    """`make_tiny_qwen2` for tests that need a fresh model (own seed or config overrides)."""
    return make_tiny_qwen2


@pytest.fixture(scope="session")
def tiny_llava():
    """A builder of tiny random LLaVAs (CLIP vision tower + Llama language model), seeded."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    def build(seed: int = 0):
        torch.manual_seed(seed)
        cfg = LlavaConfig(
            vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           image_size=8, patch_size=4),
            text_config=LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                    num_hidden_layers=2, num_attention_heads=2,
                                    num_key_value_heads=1),
            image_token_index=3)
        return LlavaForConditionalGeneration(cfg)

    return build


@pytest.fixture(scope="session")
def big5chat_csv():
    """A writer of small CSVs in Big5-Chat's schema (capitalised traits, as a user's copy
    might have): `big5chat_csv(path, rows_per_condition=3, extra_rows=())` -> path."""
    import csv

    from pvutils.data import BIG5CHAT_COLUMNS
    from pvutils.personas import split_condition
    from pvutils.profiles import CONDITIONS

    def write(path, rows_per_condition=3, extra_rows=()):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(BIG5CHAT_COLUMNS)
            for cond in CONDITIONS:
                trait, level = split_condition(cond)
                for i in range(rows_per_condition):
                    w.writerow([f"Respond as a person with {level} {trait}.",
                                f"Speaker A: How was your day, number {i}?",
                                f"It was a {level} {trait} kind of day, number {i}.",
                                trait.capitalize(), level])
            for row in extra_rows:
                w.writerow(row)
        return path

    return write


@pytest.fixture
def tiny_profile(isolated_home, tiny_chat_dir, tmp_path, big5chat_csv):
    """The smoke profile on the tiny chat model and a 4-row Big5-Chat CSV: a fine-tune
    takes seconds."""
    csv = big5chat_csv(tmp_path / "b5.csv", rows_per_condition=4)
    return pvutils.get_profile("smoke", model=str(tiny_chat_dir), data_source="big5chat",
                               big5chat_path=str(csv), n_dialogues=4, train_batch_size=2,
                               train_epochs=1.0, max_length=64, learning_rate=1e-3,
                               conditions=("openness_high", "openness_low",
                                           "extraversion_high"))


@pytest.fixture(scope="session")
def reference_logprob():
    """The textbook answer likelihood, to check the fast paths against: the full chat
    rendered once, full logits, the mean log-probability of the answer's tokens."""

    def logprob(model, tokenizer, system, question, answer) -> float:
        convo = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(convo, tokenize=False,
                                               add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            convo + [{"role": "assistant", "content": answer}], tokenize=False).rstrip()
        ids = tokenizer(full, return_tensors="pt", add_special_tokens=False).input_ids
        start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        return logp[start - 1 : -1].gather(1, ids[0, start:, None]).mean().item()

    return logprob


@pytest.fixture(scope="session")
def tiny_qwen2_chat_model(embedded_model_dir):
    """A tiny random Qwen2 with the embedded model's tokenizer: SmolLM2's template is ChatML,
    the same turn format as Qwen2.5-Instruct's, so chat-level code sees Qwen2.5's shape."""
    from pvutils.models import load_tokenizer

    tok = load_tokenizer(embedded_model_dir)
    return make_tiny_qwen2(vocab_size=len(tok), bos_token_id=1, eos_token_id=2), tok


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory, embedded_model_dir) -> Path:
    """A tiny random Llama with SmolLM2's vocabulary and chat template, saved to disk
    (a model name for code that loads its own, e.g. fine-tunes: seconds each)."""
    from pvutils.models import load_tokenizer

    tok = load_tokenizer(embedded_model_dir)
    out = tmp_path_factory.mktemp("tiny-chat-llama-dir")
    model = make_tiny_llama(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


class CharEncoder:
    """A stand-in sentence encoder (sentence-transformers' `encode`): letter counts,
    unit length. Deterministic and instant; texts with different letters differ."""

    def encode(self, texts, convert_to_tensor=True, normalize_embeddings=True, **_):
        rows = [[str(t).lower().count(c) + 1e-3 for c in "abcdefghijklmnopqrstuvwxyz"]
                for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


@pytest.fixture(scope="session")
def char_embedding_judge():
    """The embedding judge on `CharEncoder` (no MiniLM needed)."""
    from pvutils.judges import EmbeddingJudge

    return EmbeddingJudge(encoder=CharEncoder())


@pytest.fixture(scope="session")
def results_rederived():
    """A check that the results page's RQ1 rows of the run in a directory equal what scipy
    gives from the per-point rows that run stored; returns the page's table."""
    def _rederive_rq1(rows: list[dict]) -> dict[str, tuple[float, float, float]]:
        """The RQ1 headline straight from the per-point rows with scipy: each vector's
        Spearman ρ(α, score) signed toward its level, their mean with a bootstrap interval over
        the vectors, and the exact interval of the share moving as intended. Each dial starts
        at the base model of its trait (α = 0), where the sweep has one."""
        df = pd.DataFrame(rows)
        swept, base = df[df.level != "base"], df[df.level == "base"]
        signed = []
        for cond, sub in swept.groupby("condition"):
            points = pd.concat([base[base.trait == sub.trait.iloc[0]], sub])
            sign = 1 if cond.endswith("_high") else -1
            signed.append(sign * sst.spearmanr(points.alpha, points.score).statistic)
        signed = np.array(signed)
        ci = sst.bootstrap((signed,), np.mean, n_resamples=stats.N_RESAMPLES, method="percentile",
                           rng=np.random.default_rng(stats.SEED)).confidence_interval
        bounds = (ci.low, ci.high) if len(signed) >= stats.MIN_N else (math.nan, math.nan)
        k = int((signed > 0).sum())
        share = sst.binomtest(k, len(signed)).proportion_ci(0.95, method="exact")
        return {"rho": (signed.mean(), *bounds), "share": (k / len(signed), share.low, share.high)}


    def _table_numbers(table: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
        contrast = table[table.measure == "contrast BFI"].set_index("key")
        return {name: tuple(contrast.loc[key, ["estimate", "low", "high"]])
                for name, key in [("rho", "rq1.trait_score_correlation"),
                                  ("share", "rq1.vectors_moving_as_intended")]}

    def check(out: Path) -> pd.DataFrame:
        path = out / "01_rq1_scaling.json"
        assert path.exists(), f"no run of 01_rq1_scaling in {out}"
        stored = json.loads(path.read_text())
        assert "rows" in stored, f"{path} stores no per-point rows"
        expected = _rederive_rq1(stored["rows"]["contrast"])
        table = results.results_table(out)
        for name, numbers in _table_numbers(table).items():
            for got, want in zip(numbers, expected[name], strict=True):
                if math.isnan(want):  # too few points for an interval: the table has none
                    assert got is None or math.isnan(got), name
                else:
                    assert got == pytest.approx(want), name
        return table

    return check
