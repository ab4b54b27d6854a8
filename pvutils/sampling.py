"""A guided sampler: contrastive persona guidance with both prompts in one forward per step.

transformers' `generate(guidance_scale=g, negative_prompt_ids=...)` runs the negative prompt
through a second, separate forward per step (its own cache, batch of B) inside a logits
processor. Here the persona and anti-persona rows of a batch share one left-padded
`DynamicCache` of 2B rows, so each step is a single forward; identical prompts are read
once and each distinct shared prefix (a system prompt) once per batch; stopped rows leave
the cache in groups (a copy of the cache per eighth of the batch, not per row). The law
is transformers' own: `l_neg + g (l_pos - l_neg)` on log-probabilities, then temperature,
then top-p, then one multinomial draw; top-p looks at the top `NUCLEUS_K` tokens first and
sorts the whole vocabulary only for a row whose top `NUCLEUS_K` do not hold `top_p` of the
mass (the same nucleus, without most of the sort).
Hand-written because transformers has no batched CFG path for decoder-only models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from .progress import bar  # the terminal bar, never a widget in the executed page


def combine_scores(pos_logits: torch.Tensor, neg_logits: torch.Tensor | None,
                   guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance as transformers computes it, on log-probabilities."""
    pos = torch.log_softmax(pos_logits.float(), dim=-1)
    if neg_logits is None or guidance_scale == 1.0:
        return pos
    neg = torch.log_softmax(neg_logits.float(), dim=-1)
    return guidance_scale * (pos - neg) + neg


NUCLEUS_K = 256  # candidates looked at before the full sort (covers top_p 0.9 in almost every step)
COMPACT_EVERY = 8  # stopped rows leave the cache once they are an eighth of it


def nucleus(scores: torch.Tensor, top_p: float, k: int = NUCLEUS_K
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, token ids), each `[n, m]`, of the top-p nucleus of each row's
    softmax(scores); zeros pad the rows whose nucleus is shorter than m.

    transformers' `TopPLogitsWarper` keeps a token unless the ascending cumulative mass up to
    it is <= 1 - top_p, i.e. keeps it while the mass of the tokens above it is < top_p (and
    always the first). If a row's top k hold >= top_p, its nucleus lies inside them; only
    the other rows are sorted in full.
    """
    vocab = scores.shape[-1]
    vals, ids = scores.topk(min(k, vocab), dim=-1)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    probs = (vals - lse).exp()
    before = probs.cumsum(-1) - probs
    short = before[:, -1] + probs[:, -1] < top_p  # the nucleus reaches past the top k
    if k < vocab and bool(short.any()):
        full_p, full_ids = nucleus(scores[short], top_p, vocab)
        m = int((full_p > 0).sum(-1).max())
        width = max(m, vals.shape[1])
        probs = torch.nn.functional.pad(probs.masked_fill(before >= top_p, 0.0),
                                        (0, width - probs.shape[1]))
        ids = torch.nn.functional.pad(ids, (0, width - ids.shape[1]))
        probs[short], ids[short] = full_p[:, :width], full_ids[:, :width]
        return probs, ids
    return probs.masked_fill(before >= top_p, 0.0), ids


def next_tokens(scores: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token per row: argmax when `temperature` is 0, else a draw from the nucleus of
    softmax(scores / temperature)."""
    if temperature <= 0:
        return scores.argmax(-1)
    if temperature != 1.0:
        scores = scores / temperature
    if top_p >= 1.0:
        return torch.multinomial(torch.softmax(scores, -1), 1, generator=generator).squeeze(1)
    probs, ids = nucleus(scores, top_p)
    pick = torch.multinomial(probs, 1, generator=generator)
    return ids.gather(1, pick).squeeze(1)


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def shared_prefix_lengths(rows: Sequence[Sequence[int]]) -> list[int]:
    """Per row, how many leading tokens it reads from a shared prefix (at least 1, and at
    least one token of its own), chosen to read the fewest tokens in all: rows in sorted
    order form runs that share a prefix, and a run is split into sub-runs with longer
    shared prefixes (e.g. one per system prompt) only when that reads fewer tokens (each
    distinct prefix is read once, plus every row's own rest)."""
    order = sorted(range(len(rows)), key=lambda i: list(rows[i]))
    out = [1] * len(rows)
    if len(rows) < 2:
        return out
    lcps = [_lcp(rows[i], rows[j]) for i, j in zip(order, order[1:])]

    def assign(lo: int, hi: int) -> None:  # the run order[lo..hi] (inclusive), hi > lo
        common = min(lcps[lo:hi])
        cuts = [k for k in range(lo, hi) if lcps[k] == common]
        parts = list(zip([lo, *(k + 1 for k in cuts)], [*cuts, hi]))
        gain = common - sum(common - 1 for a, b in parts if a == b)
        gain += sum((b - a + 1) * (min(lcps[a:b]) - common) - min(lcps[a:b])
                    for a, b in parts if b > a)
        if gain > 0:
            for a, b in parts:
                if b > a:
                    assign(a, b)
            return
        for k in range(lo, hi + 1):
            out[order[k]] = max(1, min(common, len(rows[order[k]]) - 1))

    assign(0, len(rows) - 1)
    return out


def _pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + list(s) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
    return ids, mask


def _prefill(model, rows: list[list[int]], share_prefix: bool, pad_id: int):
    """(logits, cache, mask, last position) after reading every row's prompt.

    With `share_prefix`, identical rows are read once (a persona's prompt is often another
    condition's anti-persona prompt), each distinct shared prefix is read once and its
    keys/values are copied to the rows that start with it; the cache then reads
    [pad][prefix][pad][suffix] per row, which the attention mask and explicit position ids
    make exact.
    """
    device = model.device
    cache = DynamicCache()
    if not share_prefix:
        ids, mask = (t.to(device) for t in _pad_left(rows, pad_id))
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache,
                    use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], cache, mask, pos[:, -1:]
    distinct = list(dict.fromkeys(tuple(r) for r in rows))
    cut = shared_prefix_lengths(distinct)
    keys = list(dict.fromkeys(r[:c] for r, c in zip(distinct, cut)))
    where = {k: n for n, k in enumerate(keys)}
    pids, pmask = (t.to(device) for t in _pad_left(keys, pad_id))
    model(input_ids=pids, attention_mask=pmask, position_ids=(pmask.cumsum(-1) - 1).clamp(min=0),
          cache=cache, use_cache=True, logits_to_keep=1)
    idx = torch.tensor([where[r[:c]] for r, c in zip(distinct, cut)], device=device)
    cache.batch_select_indices(idx)
    sids, smask = (t.to(device) for t in _pad_left([r[c:] for r, c in zip(distinct, cut)],
                                                    pad_id))
    start = torch.tensor(cut, device=device)[:, None]
    pos = start + (smask.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([pmask[idx], smask], dim=1)
    logits = model(input_ids=sids, attention_mask=mask, position_ids=pos, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    if len(distinct) < len(rows):
        row_of = {r: n for n, r in enumerate(distinct)}
        back = torch.tensor([row_of[tuple(r)] for r in rows], device=device)
        cache.batch_select_indices(back)
        logits, mask, pos = logits[back], mask[back], pos[back]
    return logits, cache, mask, pos[:, -1:]


def _unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


@torch.inference_mode()
def guided_generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    negative_ids: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
    *,
    guidance_scale: float = 1.0,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
    share_prefix: bool = True,
    compact_every: int = COMPACT_EVERY,
) -> torch.Tensor:
    """New tokens `[B, T]` for left-padded prompts, `pad_token_id` after each row's EOS.

    Greedy when `temperature` is 0. With `negative_ids` and `guidance_scale` != 1 the
    negative rows ride in the same forward as the positive ones (rows B..2B-1). Stopped
    rows leave the cache once they are 1/`compact_every` of it (the tokens do not depend
    on it: a speed knob).
    """
    b = input_ids.shape[0]
    guided = negative_ids is not None and guidance_scale != 1.0
    rows = _unpadded(input_ids, attention_mask)
    if guided:
        if negative_ids.shape[0] != b:
            raise ValueError(f"negative_ids has {negative_ids.shape[0]} rows, input_ids {b}")
        if negative_mask is None:
            negative_mask = torch.ones_like(negative_ids)
        rows += _unpadded(negative_ids, negative_mask)
    device = model.device
    eos = torch.tensor([] if eos_token_id is None else
                       [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                       device=device, dtype=torch.long)
    logits, cache, mask, last_pos = _prefill(model, rows, share_prefix, pad_token_id)
    result = torch.full((b, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    slot = torch.arange(b, device=device)  # original row of each positive cache row
    stopped = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        n = slot.numel()
        scores = combine_scores(logits[:n], logits[n:] if guided else None, guidance_scale)
        nxt = next_tokens(scores, temperature, top_p, generator)
        live = ~stopped
        result[slot[live], step] = nxt[live]
        stopped |= torch.isin(nxt, eos)
        if step == max_new_tokens - 1 or bool(stopped.all()):
            break
        if int(stopped.sum()) * compact_every >= n:  # stopped rows (and twins) leave the cache
            keep = (~stopped).nonzero().squeeze(1)
            kept = torch.cat([keep, keep + n]) if guided else keep
            cache.batch_select_indices(kept)
            mask, last_pos = mask[kept], last_pos[kept]
            slot, nxt, stopped = slot[keep], nxt[keep], stopped[keep]
        step_ids = torch.cat([nxt, nxt]) if guided else nxt
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=step_ids[:, None], attention_mask=mask, position_ids=last_pos,
                    cache=cache, use_cache=True)
        logits = out.logits[:, -1]
    return result


def encode_chats(tokenizer, conversations: Sequence[Sequence[dict]]):
    """Chat-templated, left-padded token ids of several conversations."""
    texts = [tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
             for c in conversations]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length, so little of each batch is padding."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def guided_chat(
    model,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    negative_conversations: Sequence[Sequence[dict]] | None = None,
    guidance_scale: float = 1.0,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    share_prefix: bool = True,
) -> list[str]:
    """Replies to each conversation, guided away from its negative twin; same order as given.

    Rows are bucketed by prompt length (persona + anti-persona) before batching.
    """
    if negative_conversations is not None and len(negative_conversations) != len(conversations):
        raise ValueError("negative_conversations must pair one-to-one with conversations")
    pos = encode_chats(tokenizer, conversations)
    neg = encode_chats(tokenizer, negative_conversations) if negative_conversations else None
    lengths = pos["attention_mask"].sum(1)
    if neg is not None:
        lengths = torch.maximum(lengths, neg["attention_mask"].sum(1))
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generator = torch.Generator(device=model.device).manual_seed(seed)
    replies: list[str] = [""] * len(conversations)
    batches = length_buckets(lengths.tolist(), batch_size)
    for rows in bar(batches, desc="generating", disable=not progress or len(batches) < 2):
        p_ids, p_mask = _trimmed(pos, rows)
        n_ids, n_mask = _trimmed(neg, rows) if neg is not None else (None, None)
        new = guided_generate(
            model, p_ids, p_mask, n_ids, n_mask, guidance_scale=guidance_scale,
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            eos_token_id=eos, pad_token_id=pad, generator=generator, share_prefix=share_prefix,
        )
        for row, text in zip(rows, tokenizer.batch_decode(new, skip_special_tokens=True)):
            replies[row] = text.strip()
    return replies


def _trimmed(enc, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's rows, without the columns that are padding in every one of them."""
    ids, mask = enc["input_ids"][rows], enc["attention_mask"][rows]
    used = mask.any(0).nonzero()
    start = int(used[0]) if used.numel() else 0
    return ids[:, start:], mask[:, start:]
