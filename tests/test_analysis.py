"""Analysis: statistics, hidden-state similarity, side effects, the VLM case."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from pvutils import analysis, get_profile, layers, side_effects, stats, vlm

TEXTS = ["hello there", "a longer sentence about bread and butter", "x"]


def test_trait_profiles_enumerates_all_high_low_assignments():
    profiles = analysis.trait_profiles(["a", "b", "c"])
    assert len(profiles) == 8 and len({tuple(p.values()) for p in profiles}) == 8
    assert all(set(p) == {"a", "b", "c"} and set(p.values()) <= {"high", "low"}
               for p in profiles)


@pytest.mark.parametrize("k", [3, 4, 5])
def test_half_fraction_is_an_orthogonal_design(k):
    """The half fraction: 2^(k-1) distinct profiles; coded +1/-1, every trait's column sums
    to zero (balanced) and every pair of columns is orthogonal (main effects unconfounded),
    and the product of all k signs is +1 (the defining relation)."""
    traits = [f"t{i}" for i in range(k)]
    half = analysis.trait_profiles(traits, "half")
    signs = np.array([[1 if p[t] == "high" else -1 for t in traits] for p in half])
    assert len({tuple(r) for r in signs}) == len(half) == 2 ** (k - 1)
    assert (signs.sum(axis=0) == 0).all()
    assert (signs.T @ signs == len(half) * np.eye(k)).all()
    assert (signs.prod(axis=1) == 1).all()


def test_half_fraction_of_two_traits_is_refused():
    with pytest.raises(ValueError, match="at least 3 traits"):
        analysis.trait_profiles(["a", "b"], "half")
    with pytest.raises(ValueError, match="choose 'full' or 'half'"):
        analysis.trait_profiles(["a", "b", "c"], "quarter")


# --- statistics ---------------------------------------------------------------------------


def test_spearman_by_known_answer():
    df = pd.DataFrame({"v": ["a"] * 4 + ["b"] * 4 + ["c"] * 2, "alpha": [1, 2, 3, 4] * 2 + [1, 1],
                       "score": [1, 2, 4, 3, 4, 3, 2, 1, 5, 6]})
    rho = stats.spearman_by(df, "v", "alpha", "score").set_index("v")
    # a: ranks 1 2 4 3 -> 1 - 6 * 2 / (4 * 15) = 0.8
    assert rho.loc["a", "spearman"] == pytest.approx(0.8)
    assert rho.loc["b", "spearman"] == pytest.approx(-1.0)
    assert math.isnan(rho.loc["c", "spearman"])  # alpha constant: undefined
    assert rho["n"].tolist() == [4, 4, 2]


def test_composition_correlation_is_pearson_of_target_and_score():
    rng = np.random.default_rng(0)
    target = np.array([1, -1] * 8)
    score = 3 + 0.5 * target + rng.normal(0, 0.3, 16)
    df = pd.DataFrame({"target_x": target, "x": score, "target_y": 1, "y": score})
    table = stats.composition_correlation(df, ["x", "y"]).set_index("trait")["pearson_r"]
    assert table["x"] == pytest.approx(np.corrcoef(target, score)[0, 1])
    assert math.isnan(table["y"])  # one intended level only: undefined


def test_dial_table_signs_rho_toward_the_vector_level_from_the_base():
    def rows(cond, score):
        trait, level = cond.rsplit("_", 1)
        return [{"condition": cond, "trait": trait, "level": level, "alpha": a,
                 "score": score(a)} for a in [0.5, 1.0, 2.0]]

    sweep = pd.DataFrame(
        [{"condition": "extraversion_base", "trait": "extraversion", "level": "base",
          "alpha": 0.0, "score": 3.0}]
        + rows("extraversion_high", lambda a: 3 + a)
        + rows("conscientiousness_low", lambda a: 3 - a)  # no base of its trait: α > 0 only
        # falls with α but stays above the base: 3.0 | 3.45, 3.4, 3.3, whose ranks against
        # α's are d = (0, 2, 0, −2): ρ = 1 − 6·8 / (4·15) = 0.2, the wrong way for a low
        + rows("extraversion_low", lambda a: 3.5 - a / 10))
    table = stats.dial_table(sweep).set_index("condition")
    assert table.loc["extraversion_high", "signed spearman"] == pytest.approx(1.0)
    assert table.loc["extraversion_low", "signed spearman"] == pytest.approx(-0.2)
    assert table.loc["conscientiousness_low", "signed spearman"] == pytest.approx(1.0)
    assert table["moves as intended"].to_dict() == {"conscientiousness_low": True,
                                                    "extraversion_high": True,
                                                    "extraversion_low": False}
    assert table.loc["extraversion_high", "score range"] == pytest.approx(2.0)
    assert table.loc["extraversion_low", "expected sign"] == "-"
    # without the base, the same scores read as a perfect dial
    alone = stats.dial_table(sweep, with_base=False).set_index("condition")
    assert alone.loc["extraversion_low", "signed spearman"] == pytest.approx(1.0)


def test_inversion_is_the_paper_claim_subtracting_moves_against_the_level():
    def row(cond, alpha, score):
        trait, level = cond.rsplit("_", 1)
        return {"condition": cond, "trait": trait, "level": level, "alpha": alpha,
                "score": score}

    neg = pd.DataFrame([
        {"condition": "openness_base", "trait": "openness", "level": "base", "alpha": 0.0,
         "score": 3.0},
        {"condition": "neuroticism_base", "trait": "neuroticism", "level": "base",
         "alpha": 0.0, "score": 3.0},
        row("openness_high", 1.0, 3.5), row("openness_high", -1.0, 2.8),  # down: inverted
        row("openness_low", 1.0, 2.5), row("openness_low", -1.0, 2.9),  # down too: not
        # a low vector that raises at +1 and lowers at −1: the sides flip, but subtracting
        # a low vector lowered the trait, against the paper's claim
        row("neuroticism_low", 1.0, 3.4), row("neuroticism_low", -1.0, 2.7),
        row("neuroticism_high", 1.0, 2.9), row("neuroticism_high", -1.0, 2.6),
    ])
    table = stats.inversion_table(neg).set_index("condition")
    assert table["inverted"].to_dict() == {"openness_high": True, "openness_low": False,
                                           "neuroticism_low": False, "neuroticism_high": True}
    assert table["both ways"].to_dict() == {"openness_high": True, "openness_low": False,
                                            "neuroticism_low": False, "neuroticism_high": False}
    assert table.loc["openness_low", "base"] == 3.0


def test_carry_table_measures_change_from_beta_zero_to_max_toward_the_level():
    grid = pd.DataFrame([
        {"condition": c, "alpha": 1.0, "beta": b, "score": 3 + s * b, "fidelity": 0.5 - 0.1 * b}
        for c, s in (("agreeableness_high", 0.4), ("agreeableness_low", -0.2))
        for b in (1.0, 0.0, 0.5)])  # unsorted on purpose
    table = stats.carry_table(grid).set_index("condition")
    assert table.loc["agreeableness_high", "trait change β=0→max"] == pytest.approx(0.4)
    assert table.loc["agreeableness_low", "trait change β=0→max"] == pytest.approx(0.2)
    assert table["fidelity change β=0→max"].tolist() == pytest.approx([-0.1, -0.1])


def test_composition_table_has_one_row_per_method_alpha_and_trait():
    comp = pd.DataFrame([
        {"method": m, "alpha": a, "target_openness": t, "openness": 3 + 0.1 * t,
         "target_neuroticism": u, "neuroticism": 3.0 + 0.01 * (t + u)}
        for m in ("TA", "TIES") for a in (0.2, 0.4) for t in (1, -1) for u in (1, -1)])
    table = stats.composition_table(comp, ["openness", "neuroticism"])
    assert len(table) == 2 * 2 * 2
    assert table[table.trait == "openness"].pearson_r.tolist() == pytest.approx([1.0] * 4)
    # neuroticism = 3 + 0.01 t + 0.01 u over a balanced design: r(u, score) = 1 / sqrt(2)
    assert table[table.trait == "neuroticism"].pearson_r.tolist() == pytest.approx(
        [1 / math.sqrt(2)] * 4)


def test_layer_thirds_splits_the_layers():
    df = pd.DataFrame({"condition": "c", "layer": list(range(1, 10)),
                       "cosine": [1.0] * 3 + [0.9] * 3 + [0.5] * 3, "cosine_sd": [0.0] * 9})
    thirds = stats.layer_thirds(df)
    assert thirds["early"]["c"] == 1.0 and thirds["late"]["c"] == 0.5


# --- hidden states ---------------------------------------------------------------------------


def test_hidden_states_are_the_unpadded_states_of_every_token(tiny_chat_model):
    model, tok = tiny_chat_model
    states = layers.hidden_states(model, tok, TEXTS, batch_size=2)
    assert len(states) == model.config.num_hidden_layers + 1  # embeddings first
    alone = []
    for text in TEXTS:  # one text at a time: no padding at all
        enc = tok([text], return_tensors="pt")
        with torch.no_grad():
            alone.append(model(**enc, output_hidden_states=True).hidden_states)
    for layer, got in enumerate(states):
        want = torch.cat([h[layer][0] for h in alone])
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5), layer


def test_layerwise_cosine_known_answers():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    same = layers.layerwise_cosine([a, a, a], [a, 3 * a, -a])
    assert same["cosine"].tolist() == pytest.approx([1.0, 1.0, -1.0])
    assert same["cosine_sd"].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-7)
    orth = layers.layerwise_cosine([a], [torch.tensor([[0.0, 2.0], [1.0, -1.0]])])
    assert orth.loc[0, ["cosine", "cosine_min"]].tolist() == pytest.approx([0.0, 0.0])


def test_layerwise_cosine_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="layer counts differ"):
        layers.layerwise_cosine([torch.ones(2, 3)], [])
    with pytest.raises(ValueError, match="layer 0: hidden-state shapes differ"):
        layers.layerwise_cosine([torch.ones(2, 3)], [torch.ones(3, 3)])


# --- side effects ----------------------------------------------------------------------------


def test_perplexity_is_the_token_weighted_language_model_loss(tiny_chat_model):
    model, tok = tiny_chat_model
    nll = n = 0.0
    for text in TEXTS[:2]:  # each text alone: the model's own mean loss over its tokens
        enc = tok([text], return_tensors="pt")
        with torch.no_grad():
            loss = model(**enc, labels=enc["input_ids"]).loss.item()
        tokens = enc["input_ids"].shape[1] - 1
        nll, n = nll + loss * tokens, n + tokens
    assert side_effects.perplexity(model, tok, TEXTS[:2], batch_size=2) == pytest.approx(
        math.exp(nll / n), rel=1e-5)
    assert side_effects.held_out_text() and all(side_effects.held_out_text())


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
    assert side_effects.is_disclaimer(text) is expected


def test_disclaimer_rate():
    assert side_effects.disclaimer_rate(["As an AI model I cannot", "Sure!", "Yes", "No"]) == 0.25
    assert math.isnan(side_effects.disclaimer_rate([]))


# --- the VLM case ---------------------------------------------------------------------------


def test_language_only_merge_changes_only_the_language_model(tmp_path, tiny_llava):
    base, tuned = tiny_llava(0), tiny_llava(0)
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(0.01 * torch.randn_like(param))
    share = vlm.language_only_merge(base, tuned, tmp_path)
    assert share["model.language_model"] == 1.0 and share["lm_head"] == 1.0
    assert share["model.vision_tower"] == 0.0 and share["model.multi_modal_projector"] == 0.0


def test_cached_replies_are_the_greedy_replies_and_a_warm_call_needs_no_model(
        tiny_chat_model, isolated_home, tmp_path):
    model, tok = tiny_chat_model
    smoke = get_profile("smoke")
    convos = [[{"role": "user", "content": "Hello?"}], [{"role": "user", "content": "Why?"}]]
    direct = [analysis.greedy_reply(model, tok, c, 6) for c in convos]
    assert analysis.cached_replies(model, tok, smoke, convos, 6) == direct
    assert analysis.cached_replies(None, None, smoke, convos, 6) == direct
    # with a vector: ordered by conversation, then α; α = 0 is the model itself
    gen = torch.Generator().manual_seed(3)
    vector = tmp_path / "v.safetensors"
    save_file({n: 0.5 * torch.randn(p.shape, generator=gen)
               for n, p in model.named_parameters()}, str(vector))
    with_vector = analysis.cached_replies(model, tok, smoke, convos[:1], 6, vector, (0.0, 1.0))
    assert with_vector[0] == direct[0]
    examples = analysis.example_answers(model, tok, vector, "Hello?", (0.0, 1.0), 6)
    assert analysis.example_answers(model, tok, vector, "Hello?", (0.0, 1.0), 6,
                                    profile=smoke) == examples
    assert analysis.example_answers(None, None, vector, "Hello?", (0.0, 1.0), 6,
                                    profile=smoke) == examples
    with pytest.raises(ValueError, match="vector together with its alphas"):
        analysis.cached_replies(model, tok, smoke, convos, 6, alphas=(1.0,))
