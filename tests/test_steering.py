"""Activation steering: the hook changes the output and leaves no trace once removed."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from pvutils import cache, get_profile
from pvutils.steering import (
    answer_batches,
    bridge_cosines,
    bridge_sweep,
    condition_direction,
    decoder_layers,
    direction_files,
    layer_gap,
    layer_sweep,
    load_directions,
    pole_chats,
    probe_layers,
    steered,
    steering_directions,
)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def no_hooks(model) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def hooks(model) -> int:
    """Forward hooks on the model (transformers may keep its own output recorders)."""
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hook_changes_output_and_is_removed_bitwise(tiny_llama):
    ids = torch.tensor([[3, 5, 7, 11, 13]])
    before = logits(tiny_llama, ids)
    direction = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    with steered(tiny_llama, direction, 4.0, layer=1):
        during = logits(tiny_llama, ids)
    after = logits(tiny_llama, ids)
    assert not torch.allclose(before, during, atol=1e-3)
    assert torch.equal(before, after)
    assert no_hooks(tiny_llama)


def test_hook_is_removed_after_an_exception(tiny_llama):
    ids = torch.tensor([[2, 4, 6, 8]])
    before = logits(tiny_llama, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with steered(tiny_llama, torch.ones(32), 3.0, layer=0):
            raise RuntimeError("boom")
    assert torch.equal(before, logits(tiny_llama, ids))
    assert no_hooks(tiny_llama)


def test_zero_coefficient_is_the_identity(tiny_llama):
    ids = torch.tensor([[9, 8, 7]])
    before = logits(tiny_llama, ids)
    with steered(tiny_llama, torch.randn(32), 0.0, layer=2):
        assert torch.equal(before, logits(tiny_llama, ids))


def test_steering_adds_exactly_c_times_direction_to_the_layer_output(tiny_llama):
    """The layer's output seen by the next layer is the unsteered output + c d."""
    seen = []
    nxt = decoder_layers(tiny_llama)[2]
    handle = nxt.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    ids = torch.tensor([[5, 6, 7]])
    d = torch.randn(32, generator=torch.Generator().manual_seed(1))
    try:
        logits(tiny_llama, ids)
        with steered(tiny_llama, d, 2.5, layer=1):
            logits(tiny_llama, ids)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[1] - seen[0], (2.5 * d).expand_as(seen[0]))


def test_bad_layer_and_width_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="layer 7 out of range"):
        with steered(tiny_llama, torch.ones(32), 1.0, layer=7):
            pass
    with pytest.raises(ValueError, match="width 16"):
        with steered(tiny_llama, torch.ones(16), 1.0, layer=0):
            pass


def chats(answers):
    return [[{"role": "user", "content": "How was your day?"},
             {"role": "assistant", "content": a}] for a in answers]


def test_answer_mask_covers_exactly_the_answer_tokens(tiny_chat_model):
    _, tok = tiny_chat_model
    convo = chats(["It was lovely."])[0]
    (enc, mask), = list(answer_batches(tok, [convo, *chats(["A much longer answer here."])]))
    prompt = tok.apply_chat_template(convo[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(convo, tokenize=False)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    n_full = len(tok(full, add_special_tokens=False)["input_ids"])
    assert mask[0].nonzero().flatten().tolist() == list(range(n_prompt, n_full))
    assert int(enc["attention_mask"][0].sum()) == n_full


def test_direction_of_identical_poles_is_zero_and_flips_with_the_level(tiny_chat_model):
    model, tok = tiny_chat_model
    same = chats(["I love parties.", "Meeting people is fun."])
    zero = steering_directions(model, tok, same, same)
    assert zero.shape == (3, model.config.hidden_size) and torch.equal(zero, torch.zeros_like(zero))
    d = steering_directions(model, tok, same, chats(["I stay home.", "I read alone."]))
    assert d.abs().sum() > 0
    assert torch.equal(condition_direction({"extraversion": d}, "extraversion_low"), -d)


def test_bridge_cosine_is_plus_or_minus_one_for_a_shift_along_the_direction(tiny_chat_model):
    """A delta d s^T on the last layer's down_proj (s = ones / width) adds d * mean(x) to every
    token's residual: the mean shift is collinear with d, so |cosine| = 1 at the last
    layer, and the opposite pole's direction flips its sign."""
    model, tok = tiny_chat_model
    hooks_before = hooks(model)  # a session model: other tests' forwards may have left some
    n_layers = model.config.num_hidden_layers
    d = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    name = f"model.layers.{n_layers - 1}.mlp.down_proj.weight"
    width = dict(model.named_parameters())[name].shape[1]
    delta = {n: torch.zeros_like(p) for n, p in model.named_parameters()}  # a whole vector
    delta[name] = torch.outer(d, torch.ones(width) / width)
    directions = {"extraversion": torch.stack([d] * n_layers)}
    table = bridge_cosines(model, tok, {"extraversion_high": delta, "extraversion_low": delta},
                           directions, chats(["Fine, thanks.", "Busy but good."]))
    final = table[table.layer == n_layers - 1].set_index("condition")["cosine"]
    assert abs(final["extraversion_high"]) == pytest.approx(1.0, abs=1e-4)
    assert final["extraversion_low"] == pytest.approx(-final["extraversion_high"], abs=1e-6)
    assert hooks(model) == hooks_before  # the bridge removed every hook it added


def test_directions_are_a_cached_stage_keyed_by_their_data(tiny_chat_model, isolated_home):
    model, tok = tiny_chat_model
    sets = {"extraversion_high": {"messages": chats(["Parties!", "Let's go out."])},
            "extraversion_low": {"messages": chats(["I stay in.", "Quiet night."])}}
    smoke = get_profile("smoke")
    files = direction_files(smoke, model, tok, sets, ["extraversion"])
    expected = steering_directions(model, tok, sets["extraversion_high"]["messages"],
                                   sets["extraversion_low"]["messages"])
    assert torch.equal(load_directions(files)["extraversion"], expected)
    # a second call reads the file: no model is needed; its identity is its stage key
    assert direction_files(smoke, None, None, {}, ["extraversion"]) == files
    assert cache.identity(files["extraversion"]) == files["extraversion"].parent.name
    # other data (a data field changed) is another entry
    other = direction_files(smoke.replace(n_dialogues=5), model, tok, sets, ["extraversion"])
    assert other["extraversion"] != files["extraversion"]


def test_layer_sweep_rows_are_the_gap_measured_directly(tiny_chat_model, isolated_home):
    model, tok = tiny_chat_model
    n = model.config.num_hidden_layers
    assert probe_layers(n, 10) == list(range(0, n, 10))
    d = torch.randn(n, model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    sets = {"extraversion_high": {"messages": chats(["Parties!"])},
            "extraversion_low": {"messages": chats(["I stay in."])}}
    smoke = get_profile("smoke")
    files = direction_files(smoke, model, tok, sets, ["extraversion"])
    table = layer_sweep(model, tok, files, smoke, ["extraversion"], [0, n - 1], 2.0)
    direction = load_directions(files)["extraversion"]
    for row in table.itertuples(index=False):
        direct = layer_gap(model, tok, direction, "extraversion", row.layer, 2.0,
                           smoke.contrast_pairs)
        assert (row.score_plus, row.score_minus, row.gap) == pytest.approx(
            (direct["score_plus"], direct["score_minus"], direct["gap"]), abs=1e-9)
    # a zero coefficient is the unsteered model at both signs: no gap
    assert layer_gap(model, tok, d, "extraversion", 0, 0.0, 1)["gap"] == 0.0
    assert layer_sweep(None, None, files, smoke, ["extraversion"], [0, n - 1], 2.0).equals(table)


def test_bridge_sweep_is_the_bridge_cached_per_vector_and_keyed_by_its_chats(
        tiny_chat_model, isolated_home, tmp_path):
    """The cached bridge gives `bridge_cosines`' rows; a second call needs no model; other
    chats are other points."""
    model, tok = tiny_chat_model
    sets = {"extraversion_high": {"messages": chats(["Parties!", "Let's go out.", "Yes!"])},
            "extraversion_low": {"messages": chats(["I stay in.", "Quiet night.", "No."])}}
    smoke = get_profile("smoke")
    files = direction_files(smoke, model, tok, sets, ["extraversion"])
    gen = torch.Generator().manual_seed(5)
    vectors = {}
    for condition in ("extraversion_high", "extraversion_low"):
        delta = {n: 0.01 * torch.randn(p.shape, generator=gen)
                 for n, p in model.named_parameters()}
        vectors[condition] = tmp_path / f"{condition}.safetensors"
        save_file(delta, str(vectors[condition]))
    convos = pole_chats(sets, ["extraversion"], 2)
    assert [c[-1]["content"] for c in convos] == ["Parties!", "Let's go out.",
                                                   "I stay in.", "Quiet night."]
    table = bridge_sweep(model, tok, vectors, files, smoke, sets, 2)
    direct = bridge_cosines(model, tok, {c: load_file(str(f)) for c, f in vectors.items()},
                            load_directions(files), convos)
    cols = ["condition", "trait", "level", "layer", "cosine", "shift_norm"]
    pd.testing.assert_frame_equal(table[cols], direct[cols], check_dtype=False, atol=1e-6)
    assert bridge_sweep(None, None, vectors, files, smoke, {}, 2).equals(table)
    with pytest.raises(ValueError, match="model.layers"):  # other chats: a model is needed
        bridge_sweep(None, None, vectors, files, smoke, sets, 3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="bridge_chats"):
            bridge_sweep(model, tok, vectors, files, smoke, sets, bad)
