"""The shared component and trait-specific parts: known answers on constructed vectors."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from pvutils import components


def _basis_vectors(n: int, dim: int = 12) -> dict[str, dict[str, torch.Tensor]]:
    """φ_i = e_0 + e_i split over two tensors: every vector shares e_0, each has its own e_i."""
    eye = torch.eye(dim)
    names = [f"v{i}" for i in range(n)]
    vecs = {}
    for i, name in enumerate(names, start=1):
        flat = eye[0] + eye[i]
        vecs[name] = {"a.weight": flat[:4].reshape(2, 2).clone(), "b.weight": flat[4:].clone()}
    return vecs


def test_shared_share_known_answer():
    n = 5
    table = components.shared_share(_basis_vectors(n)).set_index("vector")
    # φ_i · φ̄ = 1 + 1/n, ‖φ_i‖ = √2, ‖φ̄‖ = √(1 + 1/n)
    mean_norm = math.sqrt(1 + 1 / n)
    cos = (1 + 1 / n) / (math.sqrt(2) * mean_norm)
    assert table["norm"].tolist() == pytest.approx([math.sqrt(2)] * n)
    assert table["cosine_with_mean"].tolist() == pytest.approx([cos] * n)
    assert table["mean_norm_ratio"].tolist() == pytest.approx([mean_norm / math.sqrt(2)] * n)
    assert table["share_along_mean"].tolist() == pytest.approx([cos**2] * n)


def test_mean_and_minus_shared():
    vecs = _basis_vectors(4)
    mean = components.mean_vector(vecs)
    expected_a = torch.tensor([[1.0, 0.25], [0.25, 0.25]])  # e_0 + (e_1 + … + e_4)/4, first 4
    assert torch.allclose(mean["a.weight"], expected_a)
    parts = components.minus_shared(vecs)
    for key in ("a.weight", "b.weight"):  # the specific parts of all vectors cancel
        assert torch.allclose(sum(p[key] for p in parts.values()), torch.zeros_like(mean[key]),
                              atol=1e-6)
    # v1's own part: e_1 − (e_1 + … + e_4)/4, and e_0 is gone
    assert torch.allclose(parts["v0"]["a.weight"], torch.tensor([[0.0, 0.75], [-0.25, -0.25]]))


def test_trait_axes_cancel_the_shared_part():
    torch.manual_seed(0)
    shared, axis = torch.randn(3, 4), torch.randn(3, 4)
    vecs = {"extraversion_high": {"w": shared + axis}, "extraversion_low": {"w": shared - axis},
            "openness_high": {"w": shared}}  # no openness_low: no openness axis
    axes = components.trait_axes(vecs)
    assert list(axes) == ["extraversion"]
    assert torch.allclose(axes["extraversion"]["w"], axis, atol=1e-6)


def test_combine_rejects_mismatched_vectors():
    with pytest.raises(ValueError, match="shape"):
        components.combine({"a": 1.0, "b": 1.0}, {"a": {"w": torch.zeros(2)},
                                                   "b": {"w": torch.zeros(3)}})


def test_component_files_hold_the_parts_and_are_cached(isolated_home):
    from pvutils import cache, vectors

    torch.manual_seed(1)
    shape = {"a.weight": (3, 2), "b.weight": (4,)}
    names = ["extraversion_high", "extraversion_low", "openness_high"]
    vecs = {n: {k: torch.randn(s) for k, s in shape.items()} for n in names}
    files = components.component_files(vecs, specific=names[:2])
    assert set(files["specific"]) == set(names[:2]) and list(files["axis"]) == [
        "extraversion_high"]
    mean = {k: sum(vecs[n][k] for n in names) / 3 for k in shape}
    shared = vectors.load_vector(files["shared"]["shared"])
    for k in shape:
        assert torch.allclose(shared[k], mean[k], atol=1e-6)
        part = vectors.load_vector(files["specific"]["extraversion_low"])[k]
        assert torch.allclose(part, vecs["extraversion_low"][k] - mean[k], atol=1e-6)
        axis = vectors.load_vector(files["axis"]["extraversion_high"])[k]
        assert torch.allclose(axis, (vecs["extraversion_high"][k]
                                     - vecs["extraversion_low"][k]) / 2, atol=1e-6)
    pd.testing.assert_frame_equal(files["share"], components.shared_share(vecs))
    # each file's identity is its producer's key (cheap), and a rerun writes nothing
    path = files["specific"]["extraversion_high"]
    assert cache.identity(path).endswith("/extraversion_high")
    # every file is its own input: the axis named extraversion_high is not φ − φ̄ of it
    parts = [files["shared"]["shared"], *files["specific"].values(), *files["axis"].values()]
    assert len({cache.identity(p) for p in parts}) == len(parts) == 4
    stamp = path.stat().st_mtime_ns
    again = components.component_files(vecs, specific=names[:2])
    assert {k: again[k] for k in ("shared", "specific", "axis")} == \
        {k: files[k] for k in ("shared", "specific", "axis")}
    assert path.stat().st_mtime_ns == stamp
    assert components.part_names(["extraversion_low", "openness_high", "agreeableness_low"],
                                 names) == {"specific": ["extraversion_low", "openness_high"],
                                            "axis": ["extraversion_high"]}
    # other vectors: another entry
    vecs["openness_high"] = {k: torch.zeros(s) for k, s in shape.items()}
    assert components.component_files(vecs)["shared"]["shared"] != files["shared"]["shared"]


def test_effect_share_is_a_ratio_only_over_a_clear_effect():
    row = {"alpha": 1.0, "measure": "contrast"}
    effects = pd.DataFrame([
        {**row, "vector": "extraversion_high", "trait": "extraversion", "effect": 0.4,
         "lo": 0.2, "hi": 0.6},
        {**row, "vector": "openness_low", "trait": "openness", "effect": -0.01,
         "lo": -0.05, "hi": 0.03},  # indistinguishable from no effect
        {**row, "vector": "shared", "trait": "extraversion", "effect": 0.1, "lo": 0, "hi": 0.2},
        {**row, "vector": "shared", "trait": "openness", "effect": 0.3, "lo": 0.1, "hi": 0.5}])
    out = components.effect_share(effects, ["extraversion_high", "openness_low"]).set_index(
        "vector")
    assert out.loc["extraversion_high", "share"] == pytest.approx(0.25)
    assert out.loc["openness_low", "shared effect"] == pytest.approx(0.3)
    assert math.isnan(out.loc["openness_low", "share"])
