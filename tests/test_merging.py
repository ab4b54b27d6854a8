"""Merging: mergekit's formulas, the paper's properties, in-place sweeps, the YAML command."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import yaml
from conftest import make_tiny_llama
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import pvutils.merging as merging
from pvutils.merging import (
    MergeError,
    applied,
    cli_merge,
    global_thresholds,
    merge_deltas,
    merge_from_config,
    merge_vectors,
)
from pvutils.merging.inplace import _SPARES
from pvutils.vectors import extract_vector, load_vector


def reference_merge(deltas, weights, method="task_arithmetic", densities=None,
                    normalize=None, lambda_=1.0):
    """mergekit's documented generalized task arithmetic, written out in float64.

    Sparsify each task vector (TIES: keep the top `density` fraction by magnitude, at least
    one entry), multiply by its weight, elect the sign of the summed weighted deltas (>= 0
    is +), keep the agreeing entries, optionally divide by the sum of the weights that
    contributed (all weights for task arithmetic), scale by lambda.
    """
    k = len(deltas)
    densities = densities or [1.0] * k
    normalize = (method == "ties") if normalize is None else normalize
    kept = []
    for d, dens in zip(deltas, densities, strict=True):
        d = d.double()
        if method == "ties" and dens < 1:
            n = max(1, int(dens * d.numel()))
            top = torch.argsort(d.abs().reshape(-1), descending=True)[:n]
            mask = torch.zeros(d.numel(), dtype=torch.float64)
            mask[top] = 1
            d = d * mask.view_as(d)
        kept.append(d)
    stack = torch.stack(kept)
    w = torch.tensor(weights, dtype=torch.float64).view(-1, *[1] * (stack.dim() - 1))
    weighted = stack * w
    if method == "ties":
        majority = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
        mask = (weighted.sign() == majority).double()
        mixed = (weighted * mask).sum(0)
        divisor = (w * mask).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(0)
        total = float(w.sum())
        divisor = torch.tensor(total if abs(total) >= 1e-8 else 1.0, dtype=torch.float64)
    if normalize:
        mixed = mixed / divisor
    return mixed * lambda_


def random_deltas(seed: int, k: int, shape=(13, 7)):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(k)]


weights_st = st.lists(st.floats(-2, 2).filter(lambda w: abs(w) > 1e-3), min_size=1, max_size=4)


# --- the formulas ---------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), weights=weights_st,
       method=st.sampled_from(["task_arithmetic", "ties"]),
       density=st.floats(0.05, 1.0), normalize=st.sampled_from([None, True, False]),
       lambda_=st.sampled_from([1.0, 0.5, 1.7]),
       accelerate=st.sampled_from([None, "numba"]))
def test_matches_the_mergekit_reference(seed, weights, method, density, normalize, lambda_,
                                        accelerate):
    deltas = random_deltas(seed, len(weights))
    densities = [density] * len(weights)
    params = {"lambda_": lambda_, "accelerate": accelerate}
    if normalize is not None:
        params["normalize"] = normalize
    if method == "ties":
        params["density"] = density
    total = sum(weights)
    assume(method == "ties" or not normalize or abs(total) > 1e-2)  # no near-zero division
    if method == "ties" and normalize is not False:  # the disjoint mean divides by Σ w_i over
        subsets = itertools.chain.from_iterable(  # the agreeing entries: any subset's sum
            itertools.combinations(weights, r) for r in range(1, len(weights) + 1))
        assume(all(abs(sum(sub)) > 1e-2 for sub in subsets))  # must be away from 0
    got = merge_deltas(deltas, weights, method, **params)
    want = reference_merge(deltas, weights, method, densities, normalize, lambda_)
    scale = float(want.abs().max()) + 1
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=2e-6 * scale, rtol=1e-5)


def test_sign_election_uses_weighted_deltas():
    """+1 with weight 1 and −1 with weight 3: the weighted sum is negative, so − wins."""
    got = merge_deltas([torch.tensor([1.0]), torch.tensor([-1.0])], [1.0, 3.0], "ties")
    assert got.tolist() == [-1.0]  # disjoint mean: (3 · −1) / 3
    got = merge_deltas([torch.tensor([1.0]), torch.tensor([-1.0])], [1.0, 3.0], "ties",
                       disjoint="sum")
    assert got.tolist() == [-3.0]


def test_frequency_sign_election_counts_votes():
    deltas = [torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([-5.0])]
    total = merge_deltas(deltas, [1, 1, 1], "ties", majority_sign_method="total")
    count = merge_deltas(deltas, [1, 1, 1], "ties", majority_sign_method="frequency")
    assert total.tolist() == [-5.0] and count.tolist() == [1.0]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), weight=st.floats(-3, 3).filter(lambda w: abs(w) > 1e-3))
def test_ties_with_one_vector_and_density_one_is_task_arithmetic(seed, weight):
    (delta,) = random_deltas(seed, 1)
    ta = merge_deltas([delta], [weight], "task_arithmetic")
    assert torch.equal(merge_deltas([delta], [weight], "ties", density=1.0, normalize=False), ta)
    ta_norm = merge_deltas([delta], [weight], "task_arithmetic", normalize=True)
    torch.testing.assert_close(merge_deltas([delta], [weight], "ties", density=1.0), ta_norm)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), weights=weights_st,
       method=st.sampled_from(["dare_linear", "dare_ties"]),
       rescale=st.sampled_from([True, "inverse", False]))
def test_dare_with_drop_rate_to_zero_is_the_undropped_method(seed, weights, method, rescale):
    deltas = random_deltas(seed, len(weights))
    plain = "task_arithmetic" if method == "dare_linear" else "ties"
    want = merge_deltas(deltas, weights, plain, normalize=False)
    for p in (0.0, 1e-12):
        got = merge_deltas(deltas, weights, method, drop_rate=p, rescale=rescale, seed=seed)
        torch.testing.assert_close(got, want)


def test_dare_keeps_the_expected_fraction_and_rescales():
    delta = torch.randn(400, 500)
    inverse = merge_deltas([delta], [1.0], "dare_linear", drop_rate=0.9, rescale="inverse")
    kept = inverse != 0
    assert abs(kept.float().mean().item() - 0.1) < 0.005  # Bernoulli(0.1) over 200k entries
    torch.testing.assert_close(inverse[kept], delta[kept] / 0.1)
    l1 = merge_deltas([delta], [1.0], "dare_linear", drop_rate=0.9, rescale=True)
    assert l1.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-5)
    none = merge_deltas([delta], [1.0], "dare_linear", drop_rate=0.9, rescale=False)
    assert torch.equal(none[kept], delta[kept])  # same seed, same mask


def test_dare_is_seeded():
    delta = torch.randn(50, 60)
    a = merge_deltas([delta], [1.0], "dare_linear", drop_rate=0.5, seed=1)
    assert torch.equal(a, merge_deltas([delta], [1.0], "dare_linear", drop_rate=0.5, seed=1))
    assert not torch.equal(a, merge_deltas([delta], [1.0], "dare_linear", drop_rate=0.5,
                                           seed=2))


def test_dare_magnitude_strategy_keeps_the_largest_entries():
    delta = torch.randn(100, 100)
    got = merge_deltas([delta], [1.0], "dare_linear", drop_rate=0.8, mask_strategy="magnitude",
                       rescale=False)
    kept = got != 0
    assert kept.sum().item() == 2000
    assert delta[kept].abs().min() >= delta[~kept].abs().max()


def test_dare_ties_trim_density_trims_after_the_drop():
    delta = torch.randn(200, 100)
    got = merge_deltas([delta], [1.0], "dare_ties", drop_rate=0.5, trim_density=0.2,
                       rescale="inverse")
    assert (got != 0).sum().item() == int(0.2 * delta.numel())


# --- the authors' global trim ------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=6),
       density=st.floats(1e-3, 1.0))
def test_global_trim_keeps_the_requested_fraction(seed, sizes, density):
    """One threshold over all tensors of a vector keeps exactly int(density · N) entries."""
    gen = torch.Generator().manual_seed(seed)
    vector = {f"t{i}": torch.randn(s, generator=gen) for i, s in enumerate(sizes)}
    total = sum(sizes)
    keep = max(1, int(density * total))
    (threshold,) = global_thresholds([vector], None, [density])
    kept = sum(int((t.abs() >= threshold).sum()) for t in vector.values())
    assert kept == keep  # continuous values: no ties
    flat = torch.cat(list(vector.values())).abs()
    assert threshold == float(flat.sort(descending=True).values[keep - 1])
    merged = merge_vectors([vector], [1.0], "ties", trim_scope="global", density=density,
                           normalize=False)
    assert sum(int((t != 0).sum()) for t in merged.values()) == keep


def test_global_trim_equals_per_tensor_trim_against_the_global_threshold():
    """trim_scope="global" is the per-tensor machinery fed one threshold per vector."""
    gen = torch.Generator().manual_seed(5)
    vectors = [{"big": torch.randn(70, 50, generator=gen),
                "small": torch.randn(30, generator=gen)} for _ in range(3)]
    weights = [0.5, -1.0, 0.8]
    thresholds = global_thresholds(vectors, None, [0.2, 0.3, 0.4])
    for accelerate in (None, "numba"):
        got = merge_vectors(vectors, weights, "ties", trim_scope="global",
                            density=(0.2, 0.3, 0.4), accelerate=accelerate)
        want = merge_vectors(vectors, weights, "ties", thresholds=thresholds)
        assert all(torch.equal(got[n], want[n]) for n in want)


def test_row_blocks_give_the_same_merge_as_whole_tensors():
    gen = torch.Generator().manual_seed(0)
    vectors = [{"w": torch.randn(64, 50, generator=gen), "b": torch.randn(50, generator=gen)}
               for _ in range(3)]
    weights = [0.7, -0.4, 1.2]
    cases = [("task_arithmetic", {}), ("ties", {"density": 0.3}),
             ("dare_linear", {"drop_rate": 0.5, "mask_strategy": "magnitude", "rescale": True}),
             ("dare_ties", {"drop_rate": 0.3, "mask_strategy": "magnitude",
                            "trim_density": 0.5})]
    whole = {m: merge_vectors(vectors, weights, m, **p) for m, p in cases}
    for method, params in cases:
        blocked = merge_vectors(vectors, weights, method, block_elements=500, **params)
        for name in whole[method]:
            torch.testing.assert_close(blocked[name], whole[method][name], rtol=1e-6,
                                       atol=1e-6, msg=f"{method} {name}")


# --- in place, for sweeps ---------------------------------------------------------------


def random_vector(model, seed: int, scale: float = 0.01):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=gen) * scale for n, p in model.named_parameters()}


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10**6), method=st.sampled_from(list(merging.METHODS)),
       weights=st.lists(st.floats(-2, 2), min_size=1, max_size=3))
def test_applied_restores_bitwise(seed, method, weights):
    model = make_tiny_llama(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vectors = [random_vector(model, seed + i) for i in range(len(weights))]
    params = {"density": 0.5} if method != "task_arithmetic" else {}
    with applied(model, vectors, weights, method, **params):
        pass
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"):
        with applied(model, vectors, weights, method, **params):
            raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_applied_sets_base_plus_merged_delta():
    model = make_tiny_llama(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vec = random_vector(model, 1)
    with applied(model, [vec], [0.0]):  # α = 0 gives the base
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with applied(model, [vec], [0.0], "ties", density=0.3):
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with applied(model, [vec], [1.5]):
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, before[name] + vec[name] * 1.5, rtol=2e-7,
                                       atol=1e-8, msg=name)  # float32 rounding


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_reused_buffers_give_the_same_merge_and_restore(method):
    """reuse_buffers: each merge equals a fresh one (nothing left over from the previous
    point), the original weights come back bitwise, and release_buffers frees the spares."""
    model = make_tiny_llama(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vecs = [random_vector(model, 1), random_vector(model, 2)]
    params = {"density": 0.5} if method == "ties" else {}
    for alpha in (1.0, -0.5, 2.0):
        with applied(model, vecs, [alpha, 0.3], method, **params):
            fresh = {k: v.clone() for k, v in model.state_dict().items()}
        with applied(model, vecs, [alpha, 0.3], method, reuse_buffers=True, **params):
            assert all(torch.equal(fresh[k], v) for k, v in model.state_dict().items())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _SPARES.get(model)  # the spare tensors are held
    with pytest.raises(RuntimeError, match="boom"):
        with applied(model, vecs, [1.0, 1.0], method, reuse_buffers=True, **params):
            raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    merging.release_buffers(model)
    assert model not in _SPARES


def test_applied_updates_tied_embeddings_once():
    model = make_tiny_llama(0, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    before = model.model.embed_tokens.weight.detach().clone()
    vec = {n: torch.zeros_like(p) for n, p in model.state_dict().items()}
    vec["model.embed_tokens.weight"] = torch.ones_like(before)
    vec["lm_head.weight"] = torch.ones_like(before)
    with applied(model, [vec], [1.0]):
        assert torch.equal(model.model.embed_tokens.weight, before + 1)
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.model.embed_tokens.weight, before)


def test_include_and_exclude_select_tensors():
    model = make_tiny_llama(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vec = random_vector(model, 3)
    with applied(model, [vec], [1.0], include="model.layers.*", exclude="*.mlp.*"):
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("model.layers.") and ".mlp." not in k for k in changed)
    assert "model.layers.0.self_attn.q_proj.weight" in changed
    merged = merge_vectors([vec], [1.0], include=["model.embed_tokens.*"])
    assert list(merged) == ["model.embed_tokens.weight"]


# --- the YAML command -------------------------------------------------------------------


def finetune_like(seed: int, scale: float = 0.01, **overrides):
    model = make_tiny_llama(0, **overrides)
    vector = random_vector(model, seed, scale)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(vector[name])
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    make_tiny_llama(0).save_pretrained(root / "base")
    (root / "base" / "tokenizer_config.json").write_text("{}")
    for i in (1, 2):
        finetune_like(i).save_pretrained(root / f"ft{i}")
    return root


def config_for(root, method="ties", **extra):
    cfg = {"merge_method": method, "base_model": str(root / "base"),
           "models": [{"model": str(root / "ft1"), "parameters": {"weight": 0.8, "density": 0.4}},
                      {"model": str(root / "ft2"), "parameters": {"weight": -0.5,
                                                                  "density": 0.6}}]}
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize("method", list(merging.METHODS))
def test_merge_from_config_equals_applied_and_loads(models, tmp_path, method):
    from transformers import AutoModelForCausalLM

    out = merge_from_config(config_for(models, method, parameters={"lambda": 0.9}),
                            tmp_path / "out")
    assert {"config.json", "tokenizer_config.json", "model.safetensors",
            "mergekit_config.yml"} <= {p.name for p in out.iterdir()}
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    v1 = extract_vector(models / "base", models / "ft1", tmp_path / "v1.st")
    v2 = extract_vector(models / "base", models / "ft2", tmp_path / "v2.st")
    base = make_tiny_llama(0)
    with applied(base, [v1, v2], [0.8, -0.5], method, density=(0.4, 0.6), lambda_=0.9):
        for name, value in base.state_dict().items():
            torch.testing.assert_close(merged[name], value, rtol=0, atol=1e-6, msg=name)


def test_vector_entries_equal_model_entries(models, tmp_path):
    v2 = extract_vector(models / "base", models / "ft2", tmp_path / "v2.safetensors")
    cfg = config_for(models)
    cfg["models"][1] = {"vector": str(v2), "parameters": {"weight": -0.5, "density": 0.6}}
    a = load_vector(merge_from_config(cfg, tmp_path / "a") / "model.safetensors")
    b = load_vector(merge_from_config(config_for(models), tmp_path / "b") / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_yaml_file_sharding_dtype_and_global_trim(models, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = config_for(models, dtype="bfloat16", max_shard_size="20KB",
                     parameters={"trim_scope": "global"})
    path = tmp_path / "merge.yml"
    path.write_text(yaml.safe_dump(cfg))
    out = merge_from_config(path, tmp_path / "out")
    assert (out / "model.safetensors.index.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_cli_merge(models, tmp_path, capsys):
    path = tmp_path / "merge.yml"
    path.write_text(yaml.safe_dump(config_for(models, "task_arithmetic")))
    assert cli_merge([str(path), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()
    path.write_text("merge_method: [unclosed")
    assert cli_merge([str(path), str(tmp_path / "out2")]) == 1
    assert "malformed YAML" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("params, message", [
    ({"density": 0.0}, "density: Input should be greater than 0"),
    ({"density": 1.5}, "density: Input should be less than or equal to 1"),
    ({"density": float("nan")}, "density: Input should be greater than 0"),
    ({"density": (0.5, 2)}, r"density\[1\]: Input should be less than or equal to 1 \(got 2\)"),
    ({"drop_rate": 1.0}, "drop_rate must be in"),
    ({"drop_rate": -0.1}, "drop_rate must be in"),
    ({"mask_strategy": "topk"}, "mask_strategy"),
    ({"majority_sign_method": "vote"}, "majority_sign_method"),
    ({"rescale": "l3"}, "rescale"),
    ({"densty": 0.5}, "densty: unknown field"),
    ({"accelerate": "cuda"}, "accelerate: Input should be 'numba'"),
    ({"block_elements": 0}, "block_elements: Input should be greater than 0"),
])
def test_bad_parameters_are_named(params, message):
    method = "dare_ties" if "drop_rate" in params else "ties"
    with pytest.raises(MergeError, match=message):
        merge_deltas([torch.ones(3)], [1.0], method, **params)


def test_bad_tensors_are_named():
    unknown = r"method: unknown merge method; choose one of \[.*\] \(got 'slerp'\)"
    with pytest.raises(MergeError, match=unknown):
        merge_deltas([torch.ones(3)], [1.0], "slerp")
    with pytest.raises(MergeError, match="NaN"):
        merge_deltas([torch.tensor([1.0, math.nan])], [1.0])
    with pytest.raises(MergeError, match="shape"):
        merge_deltas([torch.ones(3), torch.ones(4)], [1.0, 1.0])
    with pytest.raises(MergeError, match="2 deltas but 1 weights"):
        merge_deltas([torch.ones(3), torch.ones(3)], [1.0])
    a, b = {"x": torch.ones(2), "y": torch.ones(2)}, {"x": torch.ones(2)}
    with pytest.raises(MergeError, match="'y'"):
        merge_vectors([a, b], [1, 1])
    with pytest.raises(MergeError, match="'x'.*Inf"):
        merge_vectors([{"x": torch.tensor([math.inf])}], [1])
    model = make_tiny_llama(0)
    with pytest.raises(MergeError, match="lacks.*nope"):
        with applied(model, [{"nope": torch.ones(1)}], [1.0]):
            pass
    bigger = random_vector(make_tiny_llama(0, vocab_size=130), 0)
    with pytest.raises(MergeError, match="embed_tokens.*vocabulary"):
        with applied(model, [bigger], [1.0]):
            pass


def test_nan_half_way_restores_the_model():
    model = make_tiny_llama(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vec = random_vector(model, 0)
    vec["model.norm.weight"][0] = math.nan
    with pytest.raises(MergeError, match="model.norm.weight"):
        with applied(model, [vec], [1.0]):
            pass
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("mutate, message", [
    (lambda c, r: c.update(merge_method="slerp"),
     r"merge_method: unknown merge method; choose one of \[.*\] \(got 'slerp'\)"),
    (lambda c, r: c.pop("base_model"), "base_model: Field required"),
    (lambda c, r: c.update(models=[]), "models: List should have at least 1 item"),
    (lambda c, r: c["models"][0]["parameters"].pop("weight"), r"models\[0\].parameters.weight"),
    (lambda c, r: c["models"][0]["parameters"].update(density=0),
     r"models\[0\].parameters.density: Input should be greater than 0 \(got 0\)"),
    (lambda c, r: c["models"][1]["parameters"].update(weight="big"),
     r"models\[1\].parameters.weight: Input should be a valid number"),
    (lambda c, r: c.update(merge_methd="ties"), "merge_methd: unknown field"),
    (lambda c, r: c.update(parameters={"normalise": True}), "parameters.normalise: unknown field"),
    (lambda c, r: c.update(max_shard_size=-1), r"max_shard_size: .*greater than 0.*\(got -1\)"),
    (lambda c, r: c.update(max_shard_size="5 parsecs"), "max_shard_size: .*'5GB'"),
    (lambda c, r: c.update(include=5), r"include: Input should be a valid string .*\(got 5\)"),
    (lambda c, r: c.update(merge_method="della", parameters={"epsilon": 0.5}),
     "parameters.epsilon: Input should be less than 0.5"),
    (lambda c, r: c["models"][0].update(model=str(r / "missing")), "missing"),
    (lambda c, r: c["models"][0].update(model=str(r / "pickled")), "pickle"),
    (lambda c, r: c["models"][0].update(model=str(r / "bigger")), "vocabulary"),
    (lambda c, r: c["models"][0].update(model=str(r / "half")), "bfloat16"),
    (lambda c, r: c["models"][0].update(model=str(r / "nan")), "up_proj.*NaN"),
    (lambda c, r: c["models"][0].update(model=str(r / "shallow")), "layers.2"),
    (lambda c, r: c.update(include="vision_tower.*"), "select no tensor"),
])
def test_bad_configs_are_named_and_leave_no_output(models, tmp_path, mutate, message):
    if not (models / "pickled").exists():
        make_tiny_llama(0).config.save_pretrained(models / "pickled")
        torch.save(make_tiny_llama(0).state_dict(), models / "pickled" / "pytorch_model.bin")
        make_tiny_llama(0, vocab_size=130).save_pretrained(models / "bigger")
        make_tiny_llama(0).to(torch.bfloat16).save_pretrained(models / "half")
        make_tiny_llama(0, num_hidden_layers=2).save_pretrained(models / "shallow")
        broken = make_tiny_llama(0)
        with torch.no_grad():
            broken.model.layers[2].mlp.up_proj.weight[1, 1] = math.nan
        broken.save_pretrained(models / "nan")
    cfg = config_for(models)
    mutate(cfg, models)
    with pytest.raises(MergeError, match=message):
        merge_from_config(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(MergeError, match="nope.yml"):
        merge_from_config(tmp_path / "nope.yml", tmp_path / "out")


# --- the embedded model -------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_extract_merge_apply(embedded_model_dir, tmp_path):
    """SmolLM2 (tied embeddings): extract, merge by YAML, apply in place, restore bitwise."""
    from safetensors.torch import load_file, save_file

    from pvutils.models import load_model

    ft = tmp_path / "ft"
    ft.mkdir()
    weights = load_file(embedded_model_dir / "model.safetensors")
    gen = torch.Generator().manual_seed(0)
    save_file({k: v + 1e-3 * torch.randn(v.shape, generator=gen) for k, v in weights.items()},
              ft / "model.safetensors", metadata={"format": "pt"})
    (ft / "config.json").write_text((embedded_model_dir / "config.json").read_text())
    vector = extract_vector(embedded_model_dir, ft, tmp_path / "v.safetensors")
    assert "lm_head.weight" not in load_vector(vector)  # tied: stored once
    out = merge_from_config({"merge_method": "task_arithmetic",
                             "base_model": str(embedded_model_dir),
                             "models": [{"vector": str(vector), "parameters": {"weight": 0.5}}]},
                            tmp_path / "merged")
    merged = load_model(out)
    model = load_model(embedded_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with applied(model, [vector], [0.5]):
        for name, value in model.state_dict().items():
            assert torch.equal(value, merged.state_dict()[name]), name
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_rq2_offers_breadcrumbs_and_della_by_name():
    """plans.merge_methods: the registry's newer methods are usable in a sweep by label."""
    from pvutils import plans
    from pvutils.profiles import get_profile

    methods = plans.merge_methods(get_profile("cpu", composition_methods=["Breadcrumbs",
                                                                             "DELLA"]))
    model = make_tiny_llama(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vecs = [random_vector(model, 1), random_vector(model, 2)]
    for label, params in methods.items():
        params = dict(params)
        with applied(model, vecs, [0.5, 0.5], params.pop("method"), **params):
            changed = sum(not torch.equal(before[k], v) for k, v in model.state_dict().items())
            assert changed > 0, label
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_rq2_ties_is_a_disjoint_sum_and_ties_mean_the_papers_scaled_mean():
    """Two equal vectors v, nothing trimmed: the disjoint sum at weight alpha each is
    2·alpha·v, the paper's disjoint mean scaled by alpha is alpha·v."""
    from pvutils import plans
    from pvutils.profiles import get_profile

    methods = plans.merge_methods(get_profile("cpu", ties_density=1.0,
                                              composition_methods=["TIES", "TIES-mean"]))
    model = make_tiny_llama(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    v = random_vector(model, 1)
    for label, factor in [("TIES", 2 * 0.3), ("TIES-mean", 0.3)]:
        point = {"method": label, "alpha": 0.3, "_uses": ["a", "b"]}
        with plans.composition_apply(model, {"a": v, "b": v}, methods, point):
            for name, delta in v.items():
                got = model.state_dict()[name] - before[name]
                assert torch.allclose(got, factor * delta, atol=1e-6), (label, name)
