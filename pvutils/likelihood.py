"""Answer likelihoods under a chat template: the engine behind the contrast measure, the
persona judge and the persona-shift check.

`answer_logprobs` gives the mean log-probability per token of each answer to a question
under a system prompt. Its fast path shares work through the KV cache: the system prompt
runs once, each distinct question once on top of it, each answer only through its own
tokens. That makes this the most version-fragile code in pvutils. It relies on these
parts of the transformers cache API (checked on transformers 5.24):

- `model.get_decoder()` (the body: forward returns `.last_hidden_state` and, with
  `use_cache=True`, the cache as `.cache`, formerly `.past_key_values`) and
  `model.get_output_embeddings()` (the LM head);
- the body's forward takes the cache as `cache=` (transformers 5.2x) or, before that,
  `past_key_values=` (`_cache_arg` picks by signature);
- the cache is a `DynamicCache` whose `.layers` are `DynamicLayer`s with `.keys` and
  `batch_select_indices(index)`, which *rebinds* keys/values to the selected rows (never
  writes in place) — so a shallow copy of the cache and its layers can be row-selected
  while the original stays intact (`_cache_rows`);
- explicit `attention_mask` (past + new tokens) and `position_ids` are honoured with a
  cache, so right-padded rows of different lengths can continue one shared cache.

`share_prefix=False` is the plain reference path (one right-padded full sequence per
row); tests check the two agree with the textbook definition.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch


def answer_logprobs(
    model,
    tokenizer,
    system: str | None,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 64,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Mean log-probability per token of each answer, given system prompt + question.

    Each (question, answer) is rendered with the chat template; the answer's tokens are
    everything the assistant turn adds, its end-of-turn marker included (so "the answer
    ends here" counts). With `share_prefix` (the default; several times faster on a CPU)
    the system prompt goes through the model once, each distinct question once on top of
    it, and every answer only through its own tokens on top of its question's KV cache.
    Without it, every full sequence is one right-padded row (the plain reference path).
    """
    if not pairs:
        return torch.empty(0)
    prefix_ids, segments = _tokenize_pairs(tokenizer, system, pairs)
    if share_prefix:
        return _shared_prefix_logprobs(model, tokenizer, prefix_ids, segments, batch_size)
    full = [(prefix_ids + q, a) for q, a in segments]
    order = sorted(range(len(full)), key=lambda i: len(full[i][0]) + len(full[i][1]))
    out = torch.empty(len(full), dtype=torch.float64)
    body, head = model.get_decoder(), model.get_output_embeddings()
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, _ = _right_pad(tokenizer, [full[i][0] + full[i][1] for i in chunk])
        with torch.inference_mode():
            hidden = body(input_ids=ids.to(device)).last_hidden_state
        # the hidden state at position t predicts token t + 1: gather only answer positions
        rows, cols, targets = [], [], []
        for row, i in enumerate(chunk):
            q_len, a_ids = len(full[i][0]), full[i][1]
            rows += [row] * len(a_ids)
            cols += range(q_len - 1, q_len - 1 + len(a_ids))
            targets.append(a_ids)
        out[torch.tensor(chunk)] = _mean_logprobs(head, hidden[rows, cols], targets)
    return out


def persona_difference(
    model, tokenizer, persona: str, anti_persona: str, pairs: Sequence[tuple[str, str]],
    batch_size: int = 64,
) -> torch.Tensor:
    """Per (question, answer): log-likelihood per token under `persona` minus under
    `anti_persona` as system prompt (> 0: the answer reads more like the persona)."""
    pro = answer_logprobs(model, tokenizer, persona, pairs, batch_size)
    con = answer_logprobs(model, tokenizer, anti_persona, pairs, batch_size)
    return pro - con


def _shared_prefix_logprobs(model, tokenizer, prefix_ids, segments, batch_size):
    body, head = model.get_decoder(), model.get_output_embeddings()
    device = next(model.parameters()).device
    questions = sorted({tuple(q) for q, _ in segments})
    q_index = {q: k for k, q in enumerate(questions)}
    n_prefix = len(prefix_ids)
    prefix_cache = None
    if prefix_ids:
        with torch.inference_mode():
            prefix_cache = _returned_cache(body(
                input_ids=torch.tensor([prefix_ids], device=device), use_cache=True))
    # level 1: every distinct question on top of the shared system prompt
    q_ids, q_mask = _right_pad(tokenizer, [list(q) for q in questions])
    q_len = q_mask.sum(1)
    kw = _cache_kwargs(body, _cache_rows(prefix_cache, [0] * len(questions)), n_prefix,
                       q_mask, device)
    with torch.inference_mode():
        q_out = body(input_ids=q_ids.to(device), use_cache=True, **kw)
    q_cache, q_hidden = _returned_cache(q_out), q_out.last_hidden_state
    last_hidden = q_hidden[torch.arange(len(questions)), q_len - 1]  # predicts answer token 1
    past_mask = torch.cat([torch.ones(len(questions), n_prefix, dtype=torch.long), q_mask], 1)
    # level 2: answers on top of their question's cache (its last token is only a target)
    owner = [q_index[tuple(q)] for q, _ in segments]
    order = sorted(range(len(segments)), key=lambda i: len(segments[i][1]))
    out = torch.empty(len(segments), dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = torch.tensor([owner[i] for i in chunk])
        a_ids, a_mask = _right_pad(tokenizer,
                                   [segments[i][1][:-1] or segments[i][1][:1] for i in chunk])
        mask = torch.cat([past_mask[rows], a_mask], 1)
        positions = (n_prefix + q_len[rows])[:, None] + torch.arange(a_ids.shape[1])
        with torch.inference_mode():
            hidden = body(input_ids=a_ids.to(device), attention_mask=mask.to(device),
                          position_ids=positions.to(device), use_cache=True,
                          **_cache_arg(body, _cache_rows(q_cache, rows))).last_hidden_state
        states, targets = [], []
        for row, i in enumerate(chunk):
            n = len(segments[i][1])
            states.append(torch.cat([last_hidden[owner[i]][None], hidden[row, : n - 1]]))
            targets.append(segments[i][1])
        out[torch.tensor(chunk)] = _mean_logprobs(head, torch.cat(states), targets)
    return out


def _mean_logprobs(head, states: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """Mean log-softmax of each target run; `states` holds the predicting hidden states."""
    with torch.inference_mode():
        logp = torch.log_softmax(head(states).float(), dim=-1)
        flat = torch.tensor([t for run in targets for t in run], device=logp.device)
        token_lp = logp.gather(1, flat[:, None])[:, 0].double().cpu()
    lengths = [len(run) for run in targets]
    return torch.stack([part.mean() for part in torch.split(token_lp, lengths)])


def _right_pad(tokenizer, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: causal attention keeps pads out of every real token's view."""
    batch = tokenizer.pad({"input_ids": seqs}, padding_side="right", return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def _returned_cache(output):
    # transformers 5.2x returns the cache as `.cache`; earlier versions as `.past_key_values`
    return output["cache"] if "cache" in output else output.past_key_values


def _cache_rows(cache, rows):
    """A cache holding the given batch rows of `cache`, which stays untouched."""
    if cache is None:
        return None
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    index = torch.as_tensor(rows, dtype=torch.long)
    for layer in out.layers:
        layer.batch_select_indices(index.to(layer.keys.device))  # rebinds, never writes
    return out


def _cache_arg(body, cache) -> dict:
    # transformers 5.2x renamed `past_key_values` to `cache`; accept both
    if cache is None:
        return {}
    name = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
    return {name: cache}


def _cache_kwargs(body, cache, n_past, mask, device) -> dict:
    full_mask = torch.cat([torch.ones(mask.shape[0], n_past, dtype=torch.long), mask], 1)
    positions = n_past + torch.arange(mask.shape[1]).expand(mask.shape[0], -1)
    return dict(attention_mask=full_mask.to(device), position_ids=positions.to(device),
                **_cache_arg(body, cache))


def _tokenize_pairs(tokenizer, system, pairs):
    """(shared prefix ids, [(question ids, answer ids)]) from chat-template renderings."""
    head = [{"role": "system", "content": system}] if system is not None else []
    render = tokenizer.apply_chat_template
    prefix_text = render(head, tokenize=False) if head else ""
    segments = []
    for question, answer in pairs:
        if not str(answer).strip():
            raise ValueError(f"empty answer to question {question!r}")
        convo = [*head, {"role": "user", "content": question}]
        prompt = render(convo, tokenize=False, add_generation_prompt=True)
        full = render([*convo, {"role": "assistant", "content": answer}], tokenize=False)
        if not full.startswith(prompt) or not prompt.startswith(prefix_text):
            raise ValueError(
                "the tokenizer's chat template does not render conversations as prefixes of "
                "each other; answer likelihoods need a prefix-stable template (e.g. ChatML)"
            )
        encode = tokenizer.encode
        q_ids = encode(prompt[len(prefix_text) :], add_special_tokens=False)
        a_ids = encode(full[len(prompt) :].rstrip(), add_special_tokens=False)
        segments.append((q_ids, a_ids))
    prefix_ids = tokenizer.encode(prefix_text, add_special_tokens=False) if prefix_text else []
    return prefix_ids, segments
