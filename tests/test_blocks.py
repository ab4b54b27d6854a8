"""The vector one block of layers at a time: blocks partition the layers, a block's
restricted vector is the whole vector where the whole lives in that block, and the
effect table's arithmetic."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from pvutils import blocks, get_profile

SMOKE = get_profile("smoke")


@pytest.mark.parametrize("n_layers,n_blocks", [(30, 3), (4, 3), (3, 3), (32, 4), (7, 1)])
def test_blocks_partition_the_layers_in_order(n_layers, n_blocks):
    chosen = blocks.layer_blocks(n_layers, n_blocks)
    layers = [int(g.split(".")[2]) for globs in chosen.values() for g in globs]
    assert layers == list(range(n_layers)) and len(chosen) == n_blocks
    assert all(globs for globs in chosen.values())


def test_thirds_of_smollm2s_thirty_layers():
    assert list(blocks.layer_blocks(30)) == ["layers 0–9", "layers 10–19", "layers 20–29"]
    with pytest.raises(ValueError, match="n_blocks <= n_layers"):
        blocks.layer_blocks(2, 3)


def test_a_vector_living_in_one_block_scores_there_and_nowhere_else(chat_model):
    """The tiny model has 3 layers, so 3 one-layer blocks. A vector non-zero only in layer
    1 gives the whole vector's score on layer 1's block, and the base's on the others."""
    model, tok = chat_model
    gen = torch.Generator().manual_seed(0)
    vec = {n: (0.3 * torch.randn(p.shape, generator=gen) if n.startswith("model.layers.1.")
               else torch.zeros_like(p)) for n, p in model.named_parameters()}
    rows = blocks.blocks_sweep(model, tok, {"extraversion_high": vec}, SMOKE)
    score = rows.set_index(rows.block.fillna("base"))["score"]
    assert score["layers 1–1"] == score[blocks.WHOLE]
    assert score["layers 0–0"] == score["base"] == score["layers 2–2"]
    assert score[blocks.WHOLE] != score["base"]


def _rows(scores: dict[str, dict[str, float]], base: dict[str, float]) -> pd.DataFrame:
    rows = [{"condition": f"{t}_base", "trait": t, "level": "base", "block": None, "score": s}
            for t, s in base.items()]
    for cond, by_block in scores.items():
        trait, level = cond.rsplit("_", 1)
        rows += [{"condition": cond, "trait": trait, "level": level, "block": b, "score": s}
                 for b, s in by_block.items()]
    return pd.DataFrame(rows)


def test_effects_are_signed_toward_the_level_and_shares_of_the_whole():
    rows = _rows({"extraversion_high": {blocks.WHOLE: 3.4, "early": 3.1, "late": 3.3},
                  "extraversion_low": {blocks.WHOLE: 2.6, "early": 3.0, "late": 2.8},
                  "openness_low": {blocks.WHOLE: 3.2, "early": 3.1, "late": 3.0}},
                 {"extraversion": 3.0, "openness": 3.0})
    eff = blocks.block_effects(rows).set_index(["condition", "block"])
    assert eff.loc[("extraversion_low", "late"), "effect"] == pytest.approx(0.2)
    assert eff.loc[("extraversion_low", "late"), "share"] == pytest.approx(0.2 / 0.4)
    assert eff.loc[("openness_low", blocks.WHOLE), "effect"] == pytest.approx(-0.2)
    summary = blocks.block_summary(eff.reset_index()).set_index("block")
    # the mean share leaves out openness_low, whose whole vector moves the wrong way
    assert summary.loc["late", "share"] == pytest.approx((0.3 / 0.4 + 0.2 / 0.4) / 2)
    assert summary.loc["early", "effect"] == pytest.approx((0.1 + 0.0 - 0.1) / 3)
    text = blocks.blocks_reading(summary.reset_index())
    assert "largest mean effect alone is late's" in text
    # three vectors: too few for a bootstrap interval (stats.MIN_N), and the text says so
    assert "no interval over 3 vectors" in text and "nan" not in text


def test_the_share_counts_only_vectors_moving_the_intended_way_when_whole():
    rows = _rows({"extraversion_high": {blocks.WHOLE: 3.4, "late": 3.2},
                  "extraversion_low": {blocks.WHOLE: 3.1, "late": 3.0}},
                 {"extraversion": 3.0})
    summary = blocks.block_summary(blocks.block_effects(rows)).set_index("block")
    assert summary.loc["late", "n"] == 2 and summary.loc["late", "n_share"] == 1
    assert summary.loc["late", "share"] == pytest.approx(0.2 / 0.4)


def test_the_figures_bars_are_the_tables_means():
    """The bars are `block_summary`'s means (not a second bootstrap), in the table's order."""
    rows = _rows({"extraversion_high": {blocks.WHOLE: 3.4, "early": 3.1, "late": 3.3},
                  "extraversion_low": {blocks.WHOLE: 2.6, "early": 3.0, "late": 2.8}},
                 {"extraversion": 3.0})
    fig = blocks.plot_block_effects(blocks.block_effects(rows))
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([0.4, 0.05, 0.25])
