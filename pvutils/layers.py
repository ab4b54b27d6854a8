"""The layer-wise analysis: per layer, how similar two models' hidden states are on the
same inputs (the paper: similarity falls with depth, more variably in the last layers)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch


@torch.inference_mode()
def hidden_states(
    model, tokenizer, texts: Sequence[str], batch_size: int = 8
) -> list[torch.Tensor]:
    """Per layer (embeddings first), the hidden states of every non-padding token: [N, H]."""
    per_layer: list[list[torch.Tensor]] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True)
        enc = enc.to(model.device)
        out = model(**enc, output_hidden_states=True)
        mask = enc["attention_mask"].bool()
        if not per_layer:
            per_layer = [[] for _ in out.hidden_states]
        for layer, h in enumerate(out.hidden_states):
            per_layer[layer].append(h[mask].float().cpu())
    return [torch.cat(chunks) for chunks in per_layer]


def layerwise_cosine(base: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> pd.DataFrame:
    """Per layer, the token-wise cosine similarity of two models' hidden states (mean, sd)."""
    if len(base) != len(other):
        raise ValueError(f"layer counts differ: {len(base)} vs {len(other)}")
    rows = []
    for layer, (a, b) in enumerate(zip(base, other)):
        if a.shape != b.shape:
            shapes = f"{tuple(a.shape)} vs {tuple(b.shape)}"
            raise ValueError(f"layer {layer}: hidden-state shapes differ {shapes}")
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        rows.append({"layer": layer, "cosine": cos.mean().item(), "cosine_sd": cos.std().item(),
                     "cosine_min": cos.min().item()})
    return pd.DataFrame(rows)
