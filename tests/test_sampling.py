"""The guided sampler against transformers' own generate (exact references, token for token)."""

from __future__ import annotations

import pytest
import torch

from pvutils import models
from pvutils.sampling import guided_chat, guided_generate, length_buckets, shared_prefix_lengths

PAD = EOS = 2


def _left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


# prompts of unequal length (both halves left-padded, differently), some sharing a prefix
# ("system prompts") of unequal length, one identical to another, one sharing only BOS
POS = [[1, 5, 9, 13, 17, 21, 25], [1, 5, 9, 13, 41], [1, 60, 61, 62, 63, 64], [1, 90],
       [1, 60, 61, 62, 70, 71, 72, 73]]
NEG = [[1, 7, 8], [1, 7, 8, 46, 47, 48, 49, 50, 51], [1, 70], [1, 99, 98, 97, 96],
       [1, 7, 8]]


def _reference(model, guidance_scale: float, max_new_tokens: int) -> torch.Tensor:
    ids, mask = _left_padded(POS)
    extra = {}
    if guidance_scale != 1.0:
        nids, nmask = _left_padded(NEG)
        extra = dict(guidance_scale=guidance_scale, negative_prompt_ids=nids,
                     negative_prompt_attention_mask=nmask)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=PAD,
                             eos_token_id=EOS, **extra)
    new = out[:, ids.shape[1]:]
    # generate stops when every row is done; ours always returns max_new_tokens columns
    return torch.nn.functional.pad(new, (0, max_new_tokens - new.shape[1]), value=PAD)


@pytest.mark.parametrize("compact_every", [1, 8, 10**6])  # stopped rows leave at once, never
@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_greedy_equals_transformers_generate(tiny_llama, guidance_scale, share_prefix,
                                             compact_every):
    ids, mask = _left_padded(POS)
    nids, nmask = _left_padded(NEG)
    ours = guided_generate(tiny_llama, ids, mask, nids, nmask, guidance_scale=guidance_scale,
                           max_new_tokens=24, eos_token_id=EOS, pad_token_id=PAD,
                           share_prefix=share_prefix, compact_every=compact_every)
    assert torch.equal(ours, _reference(tiny_llama, guidance_scale, 24))


def test_negatives_that_repeat_other_rows_equal_transformers_generate(tiny_llama):
    """A persona's prompt is often another condition's anti-persona prompt: rows read once
    for several places in the batch still give generate's tokens."""
    ids, mask = _left_padded(POS)
    nids, nmask = _left_padded(POS[::-1])
    ours = guided_generate(tiny_llama, ids, mask, nids, nmask, guidance_scale=3.0,
                           max_new_tokens=12, eos_token_id=EOS, pad_token_id=PAD)
    with torch.inference_mode():
        ref = tiny_llama.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                  max_new_tokens=12, pad_token_id=PAD, eos_token_id=EOS,
                                  guidance_scale=3.0, negative_prompt_ids=nids,
                                  negative_prompt_attention_mask=nmask)[:, ids.shape[1]:]
    assert torch.equal(ours, torch.nn.functional.pad(ref, (0, 12 - ref.shape[1]), value=PAD))


def test_first_guided_token_is_the_argmax_of_the_guidance_formula(tiny_llama):
    """Each prompt alone, unpadded: the first token is argmax over g (log p+ − log p−) + log p−,
    the negative prompt's own next-token distribution as the unconditional one."""
    ids, mask = _left_padded(POS)
    nids, nmask = _left_padded(NEG)
    first = guided_generate(tiny_llama, ids, mask, nids, nmask, guidance_scale=3.0,
                            max_new_tokens=1, eos_token_id=EOS, pad_token_id=PAD)[:, 0]
    unguided = []
    with torch.inference_mode():
        for row, (pos, neg) in enumerate(zip(POS, NEG)):
            lp = torch.log_softmax(tiny_llama(torch.tensor([pos])).logits[0, -1], -1)
            ln = torch.log_softmax(tiny_llama(torch.tensor([neg])).logits[0, -1], -1)
            assert int(first[row]) == int((3.0 * (lp - ln) + ln).argmax()), row
            unguided.append(int(lp.argmax()))
    assert first.tolist() != unguided  # these prompts tell guidance from none


def test_rows_stop_at_eos_and_pad_after(tiny_llama):
    """A row whose greedy choice is EOS stops there; the others keep going."""
    ids, mask = _left_padded(POS)
    with torch.inference_mode():
        first = tiny_llama(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1)
    eos = int(first[0])  # pretend row 0's first token is the end of sequence
    out = guided_generate(tiny_llama, ids, mask, max_new_tokens=10, eos_token_id=eos,
                          pad_token_id=PAD)
    assert out[0, 0] == eos and (out[0, 1:] == PAD).all()
    for row in range(1, len(POS)):
        hit = (out[row] == eos).nonzero()
        if hit.numel():
            assert (out[row, int(hit[0]) + 1:] == PAD).all()


def test_sampling_reproducible_for_a_seed(tiny_llama):
    ids, mask = _left_padded(POS)
    nids, nmask = _left_padded(NEG)

    def draw(seed: int) -> torch.Tensor:
        return guided_generate(
            tiny_llama, ids, mask, nids, nmask, guidance_scale=3.0, max_new_tokens=16,
            temperature=0.7, top_p=0.9, eos_token_id=EOS, pad_token_id=PAD,
            generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def test_shared_prefix_lengths_are_longest_common_prefixes():
    assert shared_prefix_lengths(POS) == [4, 4, 4, 1, 4]
    assert shared_prefix_lengths(NEG) == [2, 3, 1, 1, 2]  # identical rows keep one token


def test_shared_prefixes_split_per_system_prompt():
    """Two system prompts that share only their first two tokens: one prefix each (8 tokens
    read twice, then one token per row: 22), not the two tokens all six share (2 + 6 x 7)."""
    sys_a, sys_b = [1, 5, 6, 7, 8, 9, 10, 11], [1, 5, 20, 21, 22, 23, 24, 25]
    rows = [sys_a + [40 + i] for i in range(3)] + [sys_b + [60 + i] for i in range(3)]
    assert shared_prefix_lengths(rows) == [8] * 6


def test_length_buckets_cover_rows_once_in_length_order():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    batches = length_buckets(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)


def test_guided_chat_keeps_order_whatever_the_batching(tiny_chat_model):
    """Bucketing reorders rows internally; greedy replies must come back in input order."""
    model, tok = tiny_chat_model
    users = ["hi", "tell me a long story about the sea and the sky", "why?", "ok then"]
    convs = [[{"role": "system", "content": "You are calm."}, {"role": "user", "content": u}]
             for u in users]
    negs = [[{"role": "system", "content": "You are anxious and restless."}, c[1]]
            for c in convs]
    kw = dict(guidance_scale=3.0, max_new_tokens=8, progress=False)
    one_by_one = [guided_chat(model, tok, [c], [n], batch_size=1, **kw)[0]
                  for c, n in zip(convs, negs)]
    assert guided_chat(model, tok, convs, negs, batch_size=3, **kw) == one_by_one


def test_mismatched_negative_rows_are_refused(tiny_llama):
    ids, mask = _left_padded(POS)
    nids, nmask = _left_padded(NEG[:2])
    with pytest.raises(ValueError, match="negative_ids has 2 rows"):
        guided_generate(tiny_llama, ids, mask, nids, nmask, guidance_scale=2.0,
                        max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD)


def _transformers_law(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """softmax after transformers' own temperature and top-p warpers: the reference law."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores))
    return torch.softmax(warped, -1)


@pytest.mark.parametrize("k", [1, 4, 300])
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999])
def test_nucleus_is_transformers_top_p(k, top_p):
    """Top-k first, full sort only where the top k fall short: the same law as TopPLogitsWarper
    (rows peaked and flat, so both branches run)."""
    from pvutils.sampling import nucleus

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 300, generator=g) * torch.tensor([[0.1], [1], [3], [8], [0.5], [2]])
    probs, ids = nucleus(scores, top_p, k)
    law = torch.zeros_like(scores).scatter_add(1, ids, probs)
    torch.testing.assert_close(law / law.sum(-1, keepdim=True),
                               _transformers_law(scores, 1.0, top_p), atol=1e-6, rtol=1e-5)


def test_first_token_draws_follow_the_guided_law(tiny_llama):
    """4000 seeded first-token draws of one guided prompt against the exact law of
    transformers' CFG + temperature + top-p: chi-square well under its 0.1 % critical value."""
    from pvutils.sampling import combine_scores

    ids, mask = _left_padded([POS[0]] * 4000)
    nids, nmask = _left_padded([NEG[0]] * 4000)
    with torch.inference_mode():
        pos = tiny_llama(input_ids=ids[:1]).logits[:, -1]
        neg = tiny_llama(input_ids=nids[:1]).logits[:, -1]
    law = _transformers_law(combine_scores(pos, neg, 3.0), 0.7, 0.9)[0]
    draws = guided_generate(tiny_llama, ids, mask, nids, nmask, guidance_scale=3.0,
                            max_new_tokens=1, temperature=0.7, top_p=0.9, eos_token_id=EOS,
                            pad_token_id=PAD, generator=torch.Generator().manual_seed(1))[:, 0]
    counts = torch.bincount(draws, minlength=law.numel()).double()
    support = law > 0
    assert counts[~support].sum() == 0  # nothing outside the nucleus
    expected = 4000 * law[support].double()
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    dof = int(support.sum()) - 1
    assert dof >= 3  # a law worth testing: several tokens in the nucleus
    assert chi2 < dof + 3.1 * (2 * dof) ** 0.5 + 10  # ~ the 0.1 % tail of chi2(dof)


def test_chat_defaults_to_this_sampler_and_matches_model_generate(tiny_chat_model):
    """`models.chat` greedy: the default sampler's replies are `model.generate`'s, plain and
    guided, for chats of unequal length in one batch; an unknown sampler is refused."""
    model, tok = tiny_chat_model
    convs = [[{"role": "user", "content": q}] for q in ("Hi.", "Tell me about your day, please.",
                                                       "What do you like?")]
    negs = [[{"role": "system", "content": "Be terse."}, *c] for c in convs]
    for extra in ({}, {"negative_conversations": negs, "guidance_scale": 2.5}):
        want = models.chat(model, tok, convs, max_new_tokens=6, progress=False,
                           sampler="transformers", **extra)
        assert models.chat(model, tok, convs, max_new_tokens=6, progress=False, **extra) == want
    with pytest.raises(ValueError, match="sampler 'vllm' is not one of"):
        models.chat(model, tok, convs, sampler="vllm")
