"""Low-rank vectors: Eckart-Young error, the file round trip, loading wherever a vector does."""

from __future__ import annotations

import math
import os

import pandas as pd
import pytest
import torch

from pvutils.lowrank import FORMAT, LowRankSource, truncate, write_lowrank
from pvutils.merging import applied
from pvutils.vectors import open_tensors, save_vector, vector_metadata


def matrix_with_singular_values(s, rows=12, cols=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(s), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_truncation_error_is_the_tail_singular_values(rank):
    s = [10.0, 5.0, 3.0, 1.0, 0.5, 0.25]
    m = matrix_with_singular_values(s)
    b, a = truncate(m, rank)
    assert b.shape == (12, rank) and a.shape == (rank, 9)
    err = torch.linalg.matrix_norm(m.float() - b @ a).item()
    assert err == pytest.approx(sum(x * x for x in s[rank:]) ** 0.5, rel=1e-4)
    spectral = torch.linalg.matrix_norm(m.float() - b @ a, ord=2).item()
    assert spectral == pytest.approx(s[rank], rel=1e-4)


def test_rank_above_the_matrix_rank_is_exact():
    m = matrix_with_singular_values([2.0, 1.0])
    b, a = truncate(m, 64)
    torch.testing.assert_close(b @ a, m.float(), atol=1e-5, rtol=0)


def tiny_vector(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: 0.01 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}


def test_round_trip_through_the_file(tiny_llama, tmp_path):
    vec = tiny_vector(tiny_llama)
    dense = save_vector(vec, tmp_path / "v.safetensors", {"condition": "extraversion_high"})
    low = write_lowrank(dense, tmp_path / "v-r4.safetensors", rank=4)
    meta = vector_metadata(low)
    assert meta["format"] == FORMAT and meta["rank"] == "4"
    assert meta["condition"] == "extraversion_high"
    src = open_tensors(low)
    assert isinstance(src, LowRankSource) and sorted(src.keys()) == sorted(vec)
    name = "model.layers.0.mlp.up_proj.weight"
    b, a = truncate(vec[name], 4)
    torch.testing.assert_close(src.get(name), b @ a, atol=1e-6, rtol=0)
    assert src.shape(name) == tuple(vec[name].shape)
    torch.testing.assert_close(src.get_rows(name, 3, 7), (b @ a)[3:7], atol=1e-6, rtol=0)
    norm = "model.layers.0.input_layernorm.weight"
    assert torch.equal(src.get(norm), vec[norm])  # 1-D tensors stay dense
    assert low.stat().st_size < dense.stat().st_size


def test_a_lowrank_file_applies_like_its_dense_product(tiny_llama, tmp_path):
    vec = tiny_vector(tiny_llama, seed=1)
    low = write_lowrank(vec, tmp_path / "v-r2.safetensors", rank=2)
    src = open_tensors(low)
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():
        before = tiny_llama(input_ids=ids).logits
        with applied(tiny_llama, [low], [1.0]):
            from_file = tiny_llama(input_ids=ids).logits
        with applied(tiny_llama, [{n: src.get(n) for n in src.keys()}], [1.0]):
            from_dense = tiny_llama(input_ids=ids).logits
        assert torch.equal(before, tiny_llama(input_ids=ids).logits)
    torch.testing.assert_close(from_file, from_dense, atol=1e-6, rtol=0)
    assert not torch.allclose(before, from_file)


def test_several_ranks_from_one_pass_equal_single_rank_files(tiny_llama, tmp_path):
    from pvutils.lowrank import write_lowrank_ranks

    vec = tiny_vector(tiny_llama, seed=2)
    outs = {2: tmp_path / "a2.safetensors", 8: tmp_path / "a8.safetensors"}
    both = write_lowrank_ranks(vec, outs)
    for rank in (2, 8):
        single = open_tensors(write_lowrank(vec, tmp_path / f"s{rank}.safetensors", rank))
        multi = open_tensors(both[rank])
        assert vector_metadata(both[rank])["rank"] == str(rank)
        for name in single.keys():
            assert torch.equal(single.get(name), multi.get(name))


def test_lowrank_files_are_keyed_by_content_never_mtime(tiny_llama, isolated_home, tmp_path):
    from pvutils.lowrank import lowrank_files

    path = save_vector(tiny_vector(tiny_llama, seed=3), tmp_path / "v.safetensors",
                       {"condition": "extraversion_high"})
    files = lowrank_files({"extraversion_high": path}, (2, 4))
    assert sorted(files) == [("extraversion_high", 2), ("extraversion_high", 4)]
    assert vector_metadata(files[("extraversion_high", 4)])["rank"] == "4"
    written = {k: f.stat().st_mtime_ns for k, f in files.items()}
    os.utime(path, ns=(1, 1))  # a touched vector is the same vector: nothing rewritten
    again = lowrank_files({"extraversion_high": path}, (2, 4))
    assert again == files and {k: f.stat().st_mtime_ns for k, f in again.items()} == written
    other = save_vector(tiny_vector(tiny_llama, seed=4), tmp_path / "v.safetensors",
                        {"condition": "extraversion_high"})  # new content, same name
    assert lowrank_files({"extraversion_high": other}, (2,))[("extraversion_high", 2)] \
        != files[("extraversion_high", 2)]


def test_kept_table_known_shares(tmp_path):
    from pvutils.lowrank import kept_table

    dose = pd.DataFrame([{"method": "vector", "condition": c, "strength": s, "extraversion": e}
                         for c, pts in (("extraversion_high", ((0.0, 3.0), (2.0, 4.0))),
                                        ("extraversion_low", ((0.0, 3.0), (2.0, 2.0))))
                         for s, e in pts])
    truncated = pd.DataFrame([{"method": "rank 4", "condition": c, "strength": 2.0,
                               "extraversion": e}
                              for c, e in (("extraversion_high", 3.5), ("extraversion_low", 2.25))])
    files = {}
    for c, size in (("extraversion_high", 1000), ("extraversion_low", 3000)):
        files[(c, 4)] = tmp_path / f"{c}.r4"
        files[(c, 4)].write_bytes(b"x" * size)
    vectors = {"extraversion_high": files[("extraversion_low", 4)]}  # any file: its size
    table = kept_table(dose, truncated, files, vectors).set_index(["condition", "label"])
    assert table.loc[("extraversion_high", "r=4"), ["kept", "shift"]].tolist() == [0.5, 0.5]
    assert table.loc[("extraversion_low", "r=4"), ["kept", "shift"]].tolist() == [0.75, 0.75]
    assert table.loc[("extraversion_high", "r=4"), "megabytes"] == 0.001
    assert table.loc[("extraversion_high", "full"), ["kept", "megabytes"]].tolist() == [1.0, 0.003]
    # a full vector that moves its trait the wrong way (or not at all) keeps no share
    backwards = dose.assign(extraversion=dose.extraversion.where(dose.strength == 0, 2.5))
    table = kept_table(backwards, truncated, files, vectors).set_index(["condition", "label"])
    assert math.isnan(table.loc[("extraversion_high", "r=4"), "kept"])
    assert table.loc[("extraversion_high", "r=4"), "shift"] == 0.5  # its own shift stays
    # the low vector still lowers (3 -> 2.5), its rank-4 file more (2.25): 0.75 / 0.5
    assert table.loc[("extraversion_low", "r=4"), "kept"] == pytest.approx(1.5)
