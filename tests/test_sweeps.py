"""The chapters' sweeps: one point per setting, the model restored after each, known
answers for vectors that change nothing."""

from __future__ import annotations

import pytest
import torch

from pvutils import analysis, get_profile


def _random_vector(model, scale: float, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}


@pytest.fixture
def chat_model(tiny_chat_model):
    model, tok = tiny_chat_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    yield model, tok
    for n, p in model.named_parameters():  # every sweep must leave the model as it found it
        assert torch.equal(p, before[n]), f"{n} was not restored"


def test_vector_sweep_zero_vector_scores_like_the_base(chat_model):
    model, tok = chat_model
    zero = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    df = analysis.vector_sweep(model, tok, {"extraversion_high": zero}, [0.5, 2.0])
    assert len(df) == 3  # two alphas + the base reference
    base = df[df.level == "base"].score.item()
    assert 1 <= base <= 5
    assert df.score.tolist() == pytest.approx([base] * 3, abs=1e-5)


def test_vector_sweep_alpha_changes_the_score(chat_model):
    model, tok = chat_model
    vec = _random_vector(model, 0.05, seed=1)
    df = analysis.vector_sweep(model, tok, {"openness_low": vec}, [1.0, 2.0])
    assert set(df.level) == {"base", "low"} and set(df.trait) == {"openness"}
    assert df.score.nunique() == 3


def test_composition_sweep_targets_and_zero_vectors(chat_model):
    model, tok = chat_model
    zero = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    vectors = {f"{t}_{lv}": zero for t in ("extraversion", "agreeableness")
               for lv in ("high", "low")}
    profiles = analysis.trait_profiles(["extraversion", "agreeableness"])
    methods = analysis.merge_methods(get_profile("cpu", composition_methods=["TA", "TIES+DARE"]))
    df = analysis.composition_sweep(model, tok, vectors, profiles, [0.2], methods)
    assert len(df) == 4 * len(methods)
    hh = df[df.profile == "HH"].iloc[0]
    assert hh.target_extraversion == 1 and hh.target_agreeableness == 1
    assert df.extraversion.nunique() == 1  # zero vectors: every merge is the base model


def test_ties_family_scales_the_mean_by_alpha(chat_model):
    """TIES with a shared alpha: alpha must change the merged model (it scales the
    disjoint mean), unlike plain weights, which a mean would cancel."""
    model, tok = chat_model
    vec = _random_vector(model, 0.05, seed=2)
    vectors = {f"{t}_{lv}": vec for t in ("extraversion",) for lv in ("high", "low")}
    profiles = analysis.trait_profiles(["extraversion"])
    methods = {"TIES": analysis.merge_methods(get_profile("cpu"))["TIES"]}
    df = analysis.composition_sweep(model, tok, vectors, profiles, [0.1, 0.4], methods)
    by_alpha = df.groupby("alpha").extraversion.first()
    assert by_alpha[0.1] != pytest.approx(by_alpha[0.4])


def test_layerwise_sweep_alpha_zero_is_identical(chat_model):
    model, tok = chat_model
    vec = _random_vector(model, 0.05, seed=3)
    df = analysis.layerwise_sweep(model, tok, {"neuroticism_high": vec}, [0.0, 1.0],
                                  ["hello there", "how are you today?"])
    assert df[df.alpha == 0.0].cosine.tolist() == pytest.approx([1.0] * (df.layer.max() + 1))
    assert df[df.alpha == 1.0].cosine.iloc[-1] < 1.0
