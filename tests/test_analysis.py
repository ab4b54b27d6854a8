"""Analysis helpers: resumable sweeps, correlations, hidden-state similarity, side effects."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tiny_llama

from pvutils import analysis


class _Tok:
    """A minimal byte-level tokenizer for tiny random models (vocab 128)."""

    pad_token_id = 0

    def __call__(self, texts, return_tensors="pt", padding=True):
        ids = [[1] + [ord(c) % 120 + 3 for c in t] for t in texts]
        width = max(map(len, ids))
        input_ids = torch.tensor([[0] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        return _Batch(input_ids=input_ids, attention_mask=mask)


class _Batch(dict):
    def to(self, device):
        return self


TEXTS = ["hello there", "a longer sentence about bread", "x"]


def test_run_sweep_caches_points_and_resumes(tmp_path):
    calls = []

    def evaluate(point):
        calls.append(point["alpha"])
        if point["alpha"] == 0.3 and len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-sweep
        return {"score": 2 * point["alpha"]}

    points = [{"alpha": a} for a in (0.1, 0.2, 0.3)]
    cache = tmp_path / "sweep.json"
    with pytest.raises(KeyboardInterrupt):
        analysis.run_sweep(points, evaluate, cache)
    df = analysis.run_sweep(points, evaluate, cache)
    assert calls == [0.1, 0.2, 0.3, 0.3]  # finished points never recomputed
    assert df["score"].tolist() == [0.2, 0.4, 0.6]
    analysis.run_sweep(points, evaluate, cache)
    assert len(calls) == 4


def test_spearman_by_known_answer():
    df = pd.DataFrame(
        {"v": ["a"] * 4 + ["b"] * 4, "alpha": [1, 2, 3, 4] * 2, "score": [1, 2, 3, 4, 4, 3, 2, 1]}
    )
    rho = analysis.spearman_by(df, "v", "alpha", "score").set_index("v")["spearman"]
    assert rho["a"] == pytest.approx(1.0) and rho["b"] == pytest.approx(-1.0)


def test_trait_profiles_enumerates_all_high_low_assignments():
    profiles = analysis.trait_profiles(["a", "b", "c"])
    assert len(profiles) == 8 and len({tuple(p.values()) for p in profiles}) == 8


def test_composition_correlation_is_pearson_of_target_and_score():
    rng = np.random.default_rng(0)
    target = np.array([1, -1] * 8)
    score = 3 + 0.5 * target + rng.normal(0, 0.3, 16)
    df = pd.DataFrame({"target_x": target, "x": score})
    r = analysis.composition_correlation(df, ["x"])["pearson_r"].item()
    assert r == pytest.approx(np.corrcoef(target, score)[0, 1])


def test_layerwise_cosine_is_one_for_identical_models():
    model = make_tiny_llama()
    h = analysis.hidden_states(model, _Tok(), TEXTS)
    assert len(h) == model.config.num_hidden_layers + 1
    n_tokens = sum(len(t) + 1 for t in TEXTS)
    assert all(x.shape == (n_tokens, model.config.hidden_size) for x in h)
    df = analysis.layerwise_cosine(h, h)
    assert np.allclose(df["cosine"], 1.0, atol=1e-6)


def test_changing_one_layer_leaves_earlier_layers_identical():
    base, other = make_tiny_llama(), make_tiny_llama()
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight.add_(0.5)
    df = analysis.layerwise_cosine(
        analysis.hidden_states(base, _Tok(), TEXTS), analysis.hidden_states(other, _Tok(), TEXTS)
    )
    assert np.allclose(df["cosine"][:2], 1.0, atol=1e-6)  # embeddings and layer 0 untouched
    assert (df["cosine"][2:] < 0.9999).all()
    assert ((df["cosine"] <= 1 + 1e-6) & (df["cosine"] >= -1 - 1e-6)).all()


def test_layerwise_cosine_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="layer counts differ"):
        analysis.layerwise_cosine([torch.ones(2, 3)], [])


def test_perplexity_matches_the_language_model_loss():
    model, tok = make_tiny_llama(), _Tok()
    text = "the same sentence for both"
    enc = tok([text])
    loss = model(**enc, labels=enc["input_ids"]).loss.item()
    assert analysis.perplexity(model, tok, [text]) == pytest.approx(math.exp(loss), rel=1e-5)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("As an AI, I do not have feelings.", True),
        ("I'm just a language model, so I can't say.", True),
        ("I don't have personal opinions on that.", True),
        ("I'm a conversational AI designed to connect with others.", True),
        ("I am a helpful assistant, happy to help.", True),
        ("I'm a big fan of hiking and cooking.", False),
        ("I love parties and meeting new people!", False),
        ("Artificial flowers are fine, I guess.", False),
    ],
)
def test_disclaimer_detection(text, expected):
    assert analysis.is_disclaimer(text) is expected


def test_disclaimer_rate():
    assert analysis.disclaimer_rate(["As an AI model I cannot", "Sure!", "Yes", "No"]) == 0.25
