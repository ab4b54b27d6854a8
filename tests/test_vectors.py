"""Personality vectors: extraction streams exact differences; files, metadata and cosines."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pvutils.merging import applied
from pvutils.similarity import cached_cosine_table
from pvutils.vectors import (
    MergeError,
    add_vectors,
    cli_extract,
    cosine_similarity_table,
    extract_vector,
    load_vector,
    save_vector,
    scale_vector,
    vector_metadata,
    weights_fingerprint,
)


@pytest.fixture(scope="session")
def finetune_like(tiny_llama_factory):
    """The tiny base (seed 0) plus a seeded random delta: a stand-in for a fine-tune."""

    def make(seed: int, scale: float = 0.01, **overrides):
        model = tiny_llama_factory(0, **overrides)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale)
        return model

    return make


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_llama_factory, finetune_like):
    root = tmp_path_factory.mktemp("vectors")
    tiny_llama_factory(0).save_pretrained(root / "base")
    finetune_like(1).save_pretrained(root / "ft1")
    finetune_like(2).save_pretrained(root / "ft2")
    return root


def test_vector_is_finetuned_minus_base_for_every_parameter(dirs, tmp_path, tiny_llama_factory,
                                                            finetune_like):
    path = extract_vector(dirs / "base", dirs / "ft1", tmp_path / "v.safetensors",
                          condition="extraversion_high")
    vector = load_vector(path)
    base, ft = tiny_llama_factory(0).state_dict(), finetune_like(1).state_dict()
    assert set(vector) == set(base)
    for name, delta in vector.items():
        assert torch.equal(delta, ft[name] - base[name]), name


def test_metadata_names_base_condition_dtype_and_base_fingerprint(dirs, tmp_path):
    path = extract_vector(dirs / "base", dirs / "ft1", tmp_path / "v.safetensors",
                          condition="openness_low")
    meta = vector_metadata(path)
    assert meta["base_model"] == str(dirs / "base")
    assert meta["condition"] == "openness_low"
    assert meta["dtype"] == "float32"
    assert meta["base_fingerprint"] == weights_fingerprint(dirs / "base")
    assert meta["base_fingerprint"] != weights_fingerprint(dirs / "ft1")


def test_sharded_checkpoints_give_the_same_vector(dirs, tmp_path, tiny_llama_factory,
                                                  finetune_like):
    tiny_llama_factory(0).save_pretrained(tmp_path / "base", max_shard_size="20KB")
    finetune_like(1).save_pretrained(tmp_path / "ft", max_shard_size="20KB")
    assert (tmp_path / "base" / "model.safetensors.index.json").exists()
    sharded = load_vector(extract_vector(tmp_path / "base", tmp_path / "ft", tmp_path / "a.st"))
    single = load_vector(extract_vector(dirs / "base", dirs / "ft1", tmp_path / "b.st"))
    assert sharded.keys() == single.keys()
    assert all(torch.equal(sharded[k], single[k]) for k in single)


def test_dtype_argument_sets_the_storage_dtype(dirs, tmp_path):
    path = extract_vector(dirs / "base", dirs / "ft1", tmp_path / "v.st", dtype="bfloat16")
    assert {t.dtype for t in load_vector(path).values()} == {torch.bfloat16}
    assert vector_metadata(path)["dtype"] == "bfloat16"


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(1, 10_000), scale=st.sampled_from([1e-4, 1e-2, 0.5]))
def test_negating_a_vector_takes_the_finetuned_model_back_to_the_base(
        tmp_path_factory, tiny_llama_factory, finetune_like, seed, scale):
    root = tmp_path_factory.mktemp("neg")
    tiny_llama_factory(0).save_pretrained(root / "base")
    finetuned = finetune_like(seed, scale)
    finetuned.save_pretrained(root / "ft")
    vector = extract_vector(root / "base", root / "ft", root / "v.safetensors")
    base = tiny_llama_factory(0).state_dict()
    ft = {k: v.clone() for k, v in finetuned.state_dict().items()}
    with applied(finetuned, [vector], [-1.0], allow_foreign_base=True):  # φ applied to θ_ft
        for name, value in finetuned.state_dict().items():
            # ft − (ft − base) is base up to float32 rounding at the scale of ft
            tol = 2 * torch.finfo(torch.float32).eps * float(ft[name].abs().max())
            assert float((value - base[name]).abs().max()) <= tol, name


def test_save_load_roundtrip_keeps_tensors_and_metadata(tmp_path):
    vec = {"a.weight": torch.randn(3, 4), "b.bias": torch.randn(5).to(torch.bfloat16)}
    path = save_vector(vec, tmp_path / "v.safetensors", {"condition": "x", "alpha": 0.5})
    back = load_vector(path)
    assert all(torch.equal(back[k], vec[k]) for k in vec)
    assert vector_metadata(path)["condition"] == "x"
    assert vector_metadata(path)["alpha"] == "0.5"
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]  # no temp files left


def test_scale_and_add_follow_the_formulas():
    a = {"w": torch.tensor([1.0, -2.0])}
    b = {"w": torch.tensor([0.5, 0.5])}
    assert torch.equal(scale_vector(a, -2.0)["w"], torch.tensor([-2.0, 4.0]))
    assert torch.equal(add_vectors(a, b)["w"], torch.tensor([1.5, -1.5]))
    with pytest.raises(MergeError, match="'w'"):
        add_vectors(a, {"w": torch.zeros(3)})


def test_cosine_table_by_model_matches_the_definition(dirs, tmp_path):
    v1 = extract_vector(dirs / "base", dirs / "ft1", tmp_path / "v1.st")
    v2 = extract_vector(dirs / "base", dirs / "ft2", tmp_path / "v2.st")
    a, b = load_vector(v1), load_vector(v2)
    flat_a = torch.cat([t.reshape(-1) for t in a.values()]).double()
    flat_b = torch.cat([b[k].reshape(-1) for k in a]).double()
    expected = float(flat_a @ flat_b / (flat_a.norm() * flat_b.norm()))
    table = cosine_similarity_table({"high": v1, "low": v2, "neg": scale_vector(a, -3.0)})
    assert list(table.index) == ["high", "low", "neg"] == list(table.columns)
    assert table.loc["high", "low"] == pytest.approx(expected, abs=1e-6)
    assert table.loc["low", "high"] == pytest.approx(expected, abs=1e-6)
    assert table.loc["high", "neg"] == pytest.approx(-1.0, abs=1e-6)
    assert all(table.loc[n, n] == pytest.approx(1.0, abs=1e-6) for n in table.index)


def test_cosine_table_by_layer_and_module_is_long_and_per_group(dirs, tmp_path):
    a = load_vector(extract_vector(dirs / "base", dirs / "ft1", tmp_path / "v1.st"))
    b = load_vector(extract_vector(dirs / "base", dirs / "ft2", tmp_path / "v2.st"))
    by_layer = cosine_similarity_table({"a": a, "b": b}, by="layer")
    assert list(by_layer.columns) == ["vector_a", "vector_b", "layer", "cosine"]
    assert list(by_layer["layer"][:3]) == ["0", "1", "2"]
    keys = [k for k in a if ".layers.1." in k]
    fa = torch.cat([a[k].reshape(-1) for k in keys]).double()
    fb = torch.cat([b[k].reshape(-1) for k in keys]).double()
    row = by_layer[by_layer["layer"] == "1"].iloc[0]
    assert row["cosine"] == pytest.approx(float(fa @ fb / (fa.norm() * fb.norm())), abs=1e-6)
    by_module = cosine_similarity_table({"a": a, "b": b}, by="module")
    name = "model.layers.2.mlp.down_proj"
    got = by_module.set_index("module").loc[name, "cosine"]
    x, y = a[name + ".weight"].reshape(-1), b[name + ".weight"].reshape(-1)
    assert got == pytest.approx(float(torch.nn.functional.cosine_similarity(x, y, dim=0)),
                                abs=1e-6)
    with pytest.raises(MergeError, match="by must be"):
        cosine_similarity_table({"a": a}, by="head")


# --- bad input ------------------------------------------------------------------------


def test_pickle_checkpoints_are_refused(tmp_path, dirs, tiny_llama_factory):
    pickled = tmp_path / "pickled"
    tiny_llama_factory(0).config.save_pretrained(pickled)
    torch.save(tiny_llama_factory(0).state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(MergeError, match="pickle"):
        extract_vector(dirs / "base", tmp_path / "pickled", tmp_path / "v.st")
    torch.save({"w": torch.zeros(2)}, tmp_path / "vector.bin")
    with pytest.raises(MergeError, match="vector.bin.*pickle"):
        load_vector(tmp_path / "vector.bin")


def test_missing_files_are_named(tmp_path, dirs):
    with pytest.raises(MergeError, match="nope"):
        extract_vector(dirs / "base", tmp_path / "nope", tmp_path / "v.st")
    with pytest.raises(MergeError, match="missing.safetensors"):
        load_vector(tmp_path / "missing.safetensors")


def test_different_vocabulary_is_named(tmp_path, dirs, tiny_llama_factory):
    tiny_llama_factory(0, vocab_size=130).save_pretrained(tmp_path / "bigger")
    with pytest.raises(MergeError, match=r"(embed_tokens|lm_head).*vocabulary"):
        extract_vector(dirs / "base", tmp_path / "bigger", tmp_path / "v.st")
    assert not (tmp_path / "v.st").exists()


def test_different_key_sets_and_dtypes_are_named(tmp_path, dirs, tiny_llama_factory):
    tiny_llama_factory(0, num_hidden_layers=2).save_pretrained(tmp_path / "shallow")
    with pytest.raises(MergeError, match="layers.2"):
        extract_vector(dirs / "base", tmp_path / "shallow", tmp_path / "v.st")
    tiny_llama_factory(0).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    with pytest.raises(MergeError, match="bfloat16"):
        extract_vector(dirs / "base", tmp_path / "bf16", tmp_path / "v.st")


def test_nan_in_a_model_is_named_and_leaves_no_file(tmp_path, dirs, tiny_llama_factory):
    broken = tiny_llama_factory(0)
    with torch.no_grad():
        broken.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    broken.save_pretrained(tmp_path / "broken")
    with pytest.raises(MergeError, match=r"layers\.1\.mlp\.up_proj.*NaN"):
        extract_vector(dirs / "base", tmp_path / "broken", tmp_path / "v.st")
    assert not (tmp_path / "v.st").exists()
    assert not any(p.name.startswith(".v.st") for p in tmp_path.iterdir())


def test_cli_extract(tmp_path, dirs, capsys):
    out = tmp_path / "v.safetensors"
    code = cli_extract(["--base", str(dirs / "base"), "--finetuned", str(dirs / "ft1"),
                        "--out", str(out), "--condition", "agreeableness_high"])
    assert code == 0 and out.exists()
    assert vector_metadata(out)["condition"] == "agreeableness_high"
    assert cli_extract(["--base", str(dirs / "base"), "--finetuned", str(tmp_path / "x"),
                        "--out", str(out)]) == 1
    assert "x: no such file" in capsys.readouterr().err


def test_streamed_file_is_a_valid_safetensors_file(dirs, tmp_path):
    """The hand-written writer: header length, 8-byte alignment, offsets that tile the data."""
    path = extract_vector(dirs / "base", dirs / "ft1", tmp_path / "v.safetensors")
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert n % 8 == 0
    spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    sizes = {k: math.prod(v["shape"]) * 4 for k, v in header.items() if k != "__metadata__"}
    assert all(header[k]["data_offsets"][1] - header[k]["data_offsets"][0] == s
               for k, s in sizes.items())


def test_cached_cosine_table_is_the_table_keyed_by_the_vectors_content(
        dirs, tmp_path, isolated_home):
    v1 = extract_vector(dirs / "base", dirs / "ft1", tmp_path / "v1.st")
    v2 = extract_vector(dirs / "base", dirs / "ft2", tmp_path / "v2.st")
    pair = {"high": v1, "low": v2}
    for by in ("model", "layer"):
        pd.testing.assert_frame_equal(cached_cosine_table(pair, by=by, profile_name="smoke"),
                                      cosine_similarity_table(pair, by=by))
    assert len(list((isolated_home / "cosines").iterdir())) == 2  # one entry per `by`
    before = cached_cosine_table(pair, profile_name="smoke").loc["high", "low"]  # warm
    assert len(list((isolated_home / "cosines").iterdir())) == 2
    save_vector(scale_vector(load_vector(v2), -1.0), v2, vector_metadata(v2))  # new content
    flipped = cached_cosine_table(pair, profile_name="smoke").loc["high", "low"]
    assert flipped == pytest.approx(-before, abs=1e-6)
