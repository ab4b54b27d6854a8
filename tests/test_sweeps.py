"""The chapters' sweeps: one generic driver that caches every point and resumes, the model
restored after each point, known answers for vectors that change nothing."""

from __future__ import annotations

import pytest
import torch

from pvutils import cache, get_profile, plans, sweeps
from pvutils.evaluation import contrast_scores
from pvutils.merging import applied

SMOKE = get_profile("smoke")


def _random_vector(model, scale: float, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}


# --- the generic driver -------------------------------------------------------------------

TOY = cache.Stage("toy", fields=("seed",), grid=("alphas",))


def _toy_plan(profile):
    return TOY, [{"alpha": a, "_uses": ["v"]} for a in TOY.view(profile).alphas], ()


def test_points_are_cached_one_by_one_and_a_killed_sweep_resumes(isolated_home):
    calls = []

    def measure(point):
        calls.append(point["alpha"])
        if point["alpha"] == 0.3 and len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-sweep
        return {"score": 2 * point["alpha"]}

    profile, inputs = SMOKE.replace(alphas=(0.1, 0.2, 0.3)), {"v": {"w": torch.ones(2)}}
    with pytest.raises(KeyboardInterrupt):
        sweeps.run_sweep(_toy_plan(profile), profile, measure, inputs=inputs)
    df = sweeps.run_sweep(_toy_plan(profile), profile, measure, inputs=inputs)
    assert calls == [0.1, 0.2, 0.3, 0.3]  # finished points never recomputed
    assert df["score"].tolist() == [0.2, 0.4, 0.6] and "_uses" not in df

    def never(point):
        raise AssertionError(f"{point} is cached")

    assert sweeps.run_sweep(_toy_plan(profile), profile, never, inputs=inputs).equals(df)
    longer = profile.replace(alphas=(0.1, 0.2, 0.3, 0.4))  # a grid field: same key
    sweeps.run_sweep(_toy_plan(longer), longer, measure, inputs=inputs)
    assert calls[4:] == [0.4]
    other = {"v": {"w": torch.full((2,), 2.0)}}  # another vector: every point is new
    sweeps.run_sweep(_toy_plan(profile), profile, measure, inputs=other)
    assert calls[5:] == [0.1, 0.2, 0.3]
    sweeps.run_sweep(_toy_plan(profile.replace(seed=1)), profile.replace(seed=1), measure,
                     inputs=inputs)  # a declared field: a new key
    assert calls[8:] == [0.1, 0.2, 0.3]
    (entry,) = [e for e in cache.entries() if e["profiles"] == ["smoke"]
                and e["key"] == TOY.key(profile)]
    assert entry["stage"] == "toy" and entry["size"] > 0


def test_a_stage_reading_an_undeclared_field_fails(isolated_home):
    def measure(point):
        return {"score": view.n_samples}

    view = TOY.view(SMOKE)
    with pytest.raises(cache.UndeclaredField, match="stage 'toy' read profile.n_samples"):
        sweeps.run_sweep(_toy_plan(SMOKE), SMOKE, measure, inputs={"v": {}})


# --- the research questions' sweeps ------------------------------------------------------


def test_vector_sweep_zero_vector_scores_like_the_base(chat_model):
    model, tok = chat_model
    zero = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    df = plans.vector_sweep(model, tok, {"extraversion_high": zero},
                             SMOKE.replace(alphas=(0.5, 2.0)))
    assert len(df) == 3  # two alphas + the base reference
    base = df[df.level == "base"].score.item()
    assert 1 <= base <= 5
    assert df.score.tolist() == pytest.approx([base] * 3, abs=1e-5)


def test_vector_sweep_rows_are_the_measure_at_each_point_and_a_rerun_reads_the_cache(
        chat_model):
    model, tok = chat_model
    vec = _random_vector(model, 0.05, seed=1)
    profile = SMOKE.replace(alphas=(1.0, 2.0))
    df = plans.vector_sweep(model, tok, {"openness_low": vec}, profile)
    assert set(df.level) == {"base", "low"} and set(df.trait) == {"openness"}
    for row in df.itertuples(index=False):  # θ + α φ scored directly, outside the driver
        with applied(model, [vec], [row.alpha]):
            direct = contrast_scores(model, tok, ["openness"], n_pairs=profile.contrast_pairs)
        assert row.score == pytest.approx(direct["openness"], abs=1e-6), row.alpha
    again = plans.vector_sweep(None, None, {"openness_low": vec}, profile)  # no model needed
    assert again.equals(df)


def test_composition_sweep_targets_and_zero_vectors(chat_model):
    model, tok = chat_model
    zero = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    vectors = {f"{t}_{lv}": zero for t in ("extraversion", "agreeableness")
               for lv in ("high", "low")}
    profile = SMOKE.replace(composition_traits=("extraversion", "agreeableness"),
                            composition_alphas=(0.2,), composition_methods=("TA", "TIES+DARE"))
    df = plans.composition_sweep(model, tok, vectors, profile)
    assert len(df) == 4 * 2
    hh = df[df.profile == "HH"].iloc[0]
    assert hh.target_extraversion == 1 and hh.target_agreeableness == 1
    lh = df[df.profile == "LH"].iloc[0]
    assert lh.target_extraversion == -1 and lh.target_agreeableness == 1
    # zero vectors: every merge is the base model
    base = contrast_scores(model, tok, ["extraversion", "agreeableness"],
                           n_pairs=profile.contrast_pairs)
    for trait in base:
        assert df[trait].tolist() == pytest.approx([base[trait]] * len(df), abs=1e-6)


def test_ties_family_scales_the_mean_by_alpha(chat_model):
    """TIES with a shared alpha scales the disjoint *mean* (mergekit's lambda): one vector
    kept whole (density 1) merges to θ + α φ, exactly task arithmetic at α, at every α
    (plain weights would cancel out of the mean and leave θ + φ)."""
    model, tok = chat_model
    vec = _random_vector(model, 0.05, seed=2)
    vectors = {f"extraversion_{lv}": vec for lv in ("high", "low")}
    profile = SMOKE.replace(composition_traits=("extraversion",), composition_alphas=(0.1, 0.4),
                            composition_methods=("TA", "TIES"), ties_density=1.0)
    df = plans.composition_sweep(model, tok, vectors, profile)
    table = df.pivot_table(index=["alpha", "profile"], columns="method", values="extraversion")
    assert table["TIES"].tolist() == pytest.approx(table["TA"].tolist(), abs=1e-5)
    with applied(model, [vec], [0.4]):
        direct = contrast_scores(model, tok, ["extraversion"], n_pairs=profile.contrast_pairs)
    assert table.loc[(0.4, "H"), "TIES"] == pytest.approx(direct["extraversion"], abs=1e-5)


def test_layerwise_sweep_alpha_zero_is_identical(chat_model):
    model, tok = chat_model
    vec = _random_vector(model, 0.05, seed=3)
    profile = SMOKE.replace(layerwise_alphas=(0.0, 1.0), n_heldout=2)
    df = plans.layerwise_sweep(model, tok, {"neuroticism_high": vec}, profile)
    # layer 0 left out: the tiny model's padding-token embedding is the zero vector, whose
    # cosine is 0 even with itself, and the chat template holds that token
    same = df[(df.alpha == 0.0) & (df.layer > 0)].cosine
    assert same.tolist() == pytest.approx([1.0] * df.layer.max())
    assert df[df.alpha == 1.0].cosine.iloc[-1] < 1.0



def test_negation_sweep_rows_and_a_zero_vector_keeps_the_base(chat_model):
    model, tok = chat_model
    zero = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    df = plans.negation_sweep(model, tok, {"agreeableness_low": zero},
                               SMOKE.replace(eval_max_new_tokens=4))
    assert sorted(df.alpha) == [-1.0, 0.0, 1.0]
    assert df.score.tolist() == pytest.approx([df.score.iloc[0]] * 3, abs=1e-5)
    assert df.perplexity.tolist() == pytest.approx([df.perplexity.iloc[0]] * 3, rel=1e-5)
    assert (df.n_answers == 9).all()  # agreeableness has 9 BFI items, one sample each
