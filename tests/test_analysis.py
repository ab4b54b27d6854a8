"""Analysis helpers: correlations, hidden-state similarity, side effects."""

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


def test_dial_table_signs_rho_toward_the_vector_level():
    alphas = [0.5, 1.0, 2.0]
    sweep = pd.DataFrame(
        [{"condition": "x_base", "level": "base", "alpha": 0.0, "score": 3.0}]
        + [{"condition": "extraversion_high", "level": "high", "alpha": a, "score": 3 + a}
           for a in alphas]
        + [{"condition": "extraversion_low", "level": "low", "alpha": a, "score": 3 + a / 10}
           for a in alphas])
    table = analysis.dial_table(sweep).set_index("condition")
    assert table.loc["extraversion_high", "signed spearman"] == pytest.approx(1.0)
    assert table.loc["extraversion_low", "signed spearman"] == pytest.approx(-1.0)
    assert table["moves as intended"].to_dict() == {"extraversion_high": True,
                                                    "extraversion_low": False}
    assert table.loc["extraversion_high", "score range"] == pytest.approx(1.5)
    assert table.loc["extraversion_low", "expected sign"] == "-"


def test_inversion_table_needs_opposite_sides_of_the_base():
    neg = pd.DataFrame([
        {"condition": "openness_base", "trait": "openness", "level": "base", "alpha": 0.0,
         "score": 3.0},
        {"condition": "openness_high", "trait": "openness", "level": "high", "alpha": 1.0,
         "score": 3.5},
        {"condition": "openness_high", "trait": "openness", "level": "high", "alpha": -1.0,
         "score": 2.8},
        {"condition": "openness_low", "trait": "openness", "level": "low", "alpha": 1.0,
         "score": 2.5},
        {"condition": "openness_low", "trait": "openness", "level": "low", "alpha": -1.0,
         "score": 2.9},  # both below the base: not inverted
    ])
    table = analysis.inversion_table(neg).set_index("condition")
    assert table["inverted"].to_dict() == {"openness_high": True, "openness_low": False}
    assert table.loc["openness_low", "base"] == 3.0


def test_carry_table_measures_change_from_beta_zero_to_max_toward_the_level():
    grid = pd.DataFrame([
        {"condition": c, "alpha": 1.0, "beta": b, "score": 3 + s * b, "fidelity": 0.5 - 0.1 * b}
        for c, s in (("agreeableness_high", 0.4), ("agreeableness_low", -0.2))
        for b in (1.0, 0.0, 0.5)])  # unsorted on purpose
    table = analysis.carry_table(grid).set_index("condition")
    assert table.loc["agreeableness_high", "trait change β=0→max"] == pytest.approx(0.4)
    assert table.loc["agreeableness_low", "trait change β=0→max"] == pytest.approx(0.2)
    assert table["fidelity change β=0→max"].tolist() == pytest.approx([-0.1, -0.1])


def test_composition_table_has_one_row_per_method_alpha_and_trait():
    comp = pd.DataFrame([
        {"method": m, "alpha": a, "target_openness": t, "openness": 3 + 0.1 * t,
         "target_neuroticism": u, "neuroticism": 3.0 + 0.01 * (t + u)}
        for m in ("TA", "TIES") for a in (0.2, 0.4) for t in (1, -1) for u in (1, -1)])
    table = analysis.composition_table(comp, ["openness", "neuroticism"])
    assert len(table) == 2 * 2 * 2
    assert table[table.trait == "openness"].pearson_r.tolist() == pytest.approx([1.0] * 4)


def test_layer_thirds_splits_the_layers():
    df = pd.DataFrame({"condition": "c", "layer": list(range(1, 10)),
                       "cosine": [1.0] * 3 + [0.9] * 3 + [0.5] * 3, "cosine_sd": [0.0] * 9})
    thirds = analysis.layer_thirds(df)
    assert thirds["early"]["c"] == 1.0 and thirds["late"]["c"] == 0.5


def test_language_only_merge_changes_only_the_language_model(tmp_path):
    share = analysis.language_only_merge(tmp_path)
    assert share["model.language_model"] == 1.0 and share["lm_head"] == 1.0
    assert share["model.vision_tower"] == 0.0 and share["model.multi_modal_projector"] == 0.0
