"""Baselines: P2 prompts from Goldberg's markers; NPTI neuron finding and intervention."""

from __future__ import annotations

import pytest
import torch

from pvutils import baselines as bl
from pvutils.profiles import TRAITS

# --- P2 ------------------------------------------------------------------------------------


def test_seventy_bipolar_pairs_grouped_by_trait():
    assert set(bl.BIPOLAR_ADJECTIVES) == set(TRAITS)
    pairs = [p for trait in TRAITS for p in bl.BIPOLAR_ADJECTIVES[trait]]
    assert len(pairs) == 70 and all(len(bl.BIPOLAR_ADJECTIVES[t]) == 14 for t in TRAITS)
    words = [w for p in pairs for w in p]
    assert len(set(words)) == len(words)  # no adjective on two poles or in two traits


@pytest.mark.parametrize("trait", TRAITS)
@pytest.mark.parametrize("level", ["high", "low"])
def test_p2_draws_five_modified_adjectives_of_the_wanted_pole(trait, level):
    pole = {p[1 if level == "high" else 0] for p in bl.BIPOLAR_ADJECTIVES[trait]}
    adjectives = bl.p2_adjectives(trait, level, seed=3)
    assert len(adjectives) == 5
    stripped = [a.removeprefix("very ").removeprefix("a bit ") for a in adjectives]
    assert set(stripped) <= pole and len(set(stripped)) == 5
    prompt = bl.p2_prompt(trait, level, seed=3)
    assert prompt.startswith("You are a character who is ") and all(a in prompt
                                                                     for a in adjectives)
    assert prompt == bl.p2_prompt(trait, level, seed=3)  # seeded


def test_p2_draws_cover_the_pole_and_every_modifier_over_seeds():
    """Random draws of 5 of 14 adjectives: over 200 seeds every adjective of the pole occurs
    (a miss has probability 14 * (9/14)^200 < 1e-37), and so does every modifier."""
    pole = {high for _, high in bl.BIPOLAR_ADJECTIVES["extraversion"]}
    drawn = [a for s in range(200) for a in bl.p2_adjectives("extraversion", "high", seed=s)]
    assert {a.removeprefix("very ").removeprefix("a bit ") for a in drawn} == pole
    assert any(a.startswith("very ") for a in drawn) and any(a.startswith("a bit ") for a in drawn)
    assert any(a in pole for a in drawn)  # the empty modifier: the bare adjective
    with pytest.raises(ValueError, match="unknown condition"):
        bl.p2_prompt("extroversion", "high")


# --- NPTI ------------------------------------------------------------------------------------


def test_select_neurons_takes_the_largest_positive_gaps():
    prob = {"high": torch.tensor([[0.9, 0.1, 0.5], [0.6, 0.2, 0.5]]),
            "low": torch.tensor([[0.1, 0.6, 0.5], [0.5, 0.9, 0.5]])}
    high = {"high": torch.arange(6.0).reshape(2, 3), "low": -torch.arange(6.0).reshape(2, 3)}
    chosen = bl.select_neurons(prob, high, n_neurons=2)
    # high gaps: (0,0) 0.8, (1,0) 0.1; low gaps: (1,1) 0.7, (0,1) 0.5
    assert {k: v[0].tolist() for k, v in chosen["high"].items()} == {0: [0], 1: [0]}
    assert {k: v[0].tolist() for k, v in chosen["low"].items()} == {0: [1], 1: [1]}
    assert chosen["high"][1][1].tolist() == [3.0] and chosen["low"][1][1].tolist() == [-4.0]
    # never a neuron without a positive gap, whatever n_neurons asks
    assert sum(len(v[0]) for v in bl.select_neurons(prob, high, 100)["high"].values()) == 2


def test_intervene_raises_wanted_and_cuts_opposite_neurons():
    acts = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    up = (torch.tensor([0, 1]), torch.tensor([2.0, 0.5]))
    out = bl.intervene(acts, up, torch.tensor([2, 3]), gamma=0.5)
    # 0 -> 0 + 0.5 * (2 - 0); 1 stays (already above 0.5); 2 -> 2 - 0.5 * 2; -1 stays
    assert out.tolist() == [[1.0, 1.0, 1.0, -1.0]]
    assert bl.intervene(acts, up, torch.tensor([2, 3]), gamma=0.0).equal(acts)
    assert acts.tolist() == [[0.0, 1.0, 2.0, -1.0]]  # input untouched


class CharTokenizer:
    """Bytes as tokens: enough to feed text through a tiny model."""

    pad_token_id = 0

    def __call__(self, texts, return_tensors="pt", padding=True, add_special_tokens=False):
        ids = [[1 + b % 100 for b in t.encode()] for t in texts]
        width = max(map(len, ids))
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
        ids = torch.tensor([r + [0] * (width - len(r)) for r in ids])

        class Enc(dict):
            def to(self, device):
                return Enc({k: v.to(device) for k, v in self.items()})

        return Enc(input_ids=ids, attention_mask=mask)


@pytest.fixture(scope="module")
def tiny(tiny_llama_factory):
    return tiny_llama_factory(seed=3)


def manual_activations(model, tokenizer, texts):
    """act_fn(gate(x)) * up(x) per layer for all real tokens, recorded by a plain hook."""
    store = {}
    downs = bl.mlp_down_projections(model)
    handles = [m.register_forward_hook(lambda mod, args, out, i=i: store.setdefault(i, [])
                                       .append(args[0])) for i, m in downs.items()]
    try:
        for t in texts:
            with torch.no_grad():
                model(**tokenizer([t]))
    finally:
        for h in handles:
            h.remove()
    return {i: torch.cat([a[0] for a in acts]) for i, acts in store.items()}


def test_neuron_statistics_match_a_direct_count(tiny):
    tok = CharTokenizer()
    texts = ["hello there, friend", "short", "a somewhat longer sentence for padding"]
    prob, high = bl.neuron_statistics(tiny, tok, texts, batch_size=2, quantile=0.95)
    acts = manual_activations(tiny, tok, texts)
    for layer, a in acts.items():
        assert torch.allclose(prob[layer], (a > 0).float().mean(0))
        assert torch.allclose(high[layer], torch.quantile(a.half().float(), 0.95, dim=0),
                              atol=1e-6)


def test_npti_finds_neurons_and_hooks_leave_no_trace(tiny):
    tok = CharTokenizer()
    texts = {"high": ["I love parties and people!", "Let's go out and dance tonight!"],
             "low": ["I stay at home alone.", "quiet evenings with a book"]}
    neurons = bl.npti_neurons(tiny, tok, "extraversion", n_neurons=10, texts=texts)
    assert neurons.count("high") == 10 and neurons.count("low") == 10
    assert (neurons.delta["high"] > 0).all() and (neurons.delta["low"] > 0).all()
    x = tok(["How was your day?"])
    plain = manual_activations(tiny, tok, ["How was your day?"])
    with torch.no_grad():
        before = tiny(**x).logits
        with bl.npti_intervention(tiny, neurons, gamma=0.0, level="high"):
            same = tiny(**x).logits
        with bl.npti_intervention(tiny, neurons, gamma=2.0, level="high"):
            steered = manual_activations(tiny, tok, ["How was your day?"])
        after = tiny(**x).logits
    assert torch.equal(same, before) and torch.equal(after, before)
    # the down projections see exactly `intervene` applied to their usual input, layer by
    # layer (earlier layers' steering changes later inputs, so compare layer 0 only in full)
    first = min(set(neurons.neurons["high"]) | set(neurons.neurons["low"]))
    up, down = neurons.neurons["high"].get(first), neurons.neurons["low"].get(first)
    want = bl.intervene(plain[first], up, down[0] if down else None, 2.0)
    assert torch.allclose(steered[first], want, atol=1e-6)
    downs = bl.mlp_down_projections(tiny).values()
    with pytest.raises(RuntimeError, match="boom"):
        with bl.npti_intervention(tiny, neurons, gamma=1.0, level="low"):
            assert any(m._forward_pre_hooks for m in downs)
            raise RuntimeError("boom")
    assert not any(m._forward_pre_hooks for m in downs)
    with torch.no_grad():
        assert torch.equal(tiny(**x).logits, before)


def test_npti_bad_input(tiny):
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="missing \\['low'\\]"):
        bl.npti_neurons(tiny, tok, "openness", texts={"high": ["x"], "low": []})
    neurons = bl.npti_neurons(tiny, tok, "openness", n_neurons=2,
                              texts={"high": ["art and poems"], "low": ["rules"]})
    with pytest.raises(ValueError, match="gamma"):
        with bl.npti_intervention(tiny, neurons, gamma=-1, level="high"):
            pass
    with pytest.raises(ValueError, match="down_proj"):
        bl.mlp_down_projections(torch.nn.Linear(2, 2))
