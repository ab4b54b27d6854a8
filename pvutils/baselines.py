"""The paper's two baselines: P2 prompting and NPTI neuron intervention.

- P2 (Jiang et al. 2023): a system prompt naming five adjectives drawn at random from the
  wanted pole of Goldberg's bipolar markers, each "very", "a bit" or unmodified.
- NPTI (Deng et al. 2024): find the MLP neurons whose activation probability differs most
  between text of the two aspects of a trait, then at inference raise the wanted aspect's
  neurons toward their high (95th-percentile) activation and suppress the opposite's,
  scaled by γ; no weight changes, forward hooks only.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .bundled import resource
from .personas import opposite, persona
from .profiles import LEVELS, TRAITS

_DATA = resource("baselines")
# Bipolar adjective markers of the Big Five, 14 pairs per trait: (low pole, high pole), after
# Goldberg (1992); where they come from is noted in `resources/baselines.json`.
BIPOLAR_ADJECTIVES: dict[str, tuple[tuple[str, str], ...]] = {
    trait: tuple(tuple(pair) for pair in pairs)
    for trait, pairs in _DATA["bipolar_adjectives"].items()}
P2_MODIFIERS: tuple[str, ...] = tuple(_DATA["p2_modifiers"])
P2_TEMPLATE: str = _DATA["p2_template"]


def p2_adjectives(trait: str, level: str, seed: int = 0, k: int = 5) -> list[str]:
    """`k` adjectives of the wanted pole, drawn without replacement, each with a modifier."""
    _check(trait, level)
    rng = random.Random(f"p2/{trait}/{level}/{seed}")
    pole = 1 if level == "high" else 0
    words = rng.sample([pair[pole] for pair in BIPOLAR_ADJECTIVES[trait]], k)
    return [f"{m} {w}".strip() for w, m in zip(words, rng.choices(P2_MODIFIERS, k=k),
                                                   strict=True)]


def p2_prompt(trait: str, level: str, seed: int = 0) -> str:
    """P2 system prompt: 'You are a character who is very a, b, a bit c, d and e.'"""
    adj = p2_adjectives(trait, level, seed)
    return P2_TEMPLATE.format(adjectives=", ".join(adj[:-1]) + " and " + adj[-1])


def _check(trait: str, level: str) -> None:
    if trait not in TRAITS or level not in LEVELS:
        raise ValueError(f"unknown condition {trait!r}/{level!r}; traits {TRAITS}, levels {LEVELS}")


# --- NPTI ------------------------------------------------------------------------------------

# neutral everyday requests the two aspect personas answer to (not BFI interview questions)
NPTI_PROMPTS: tuple[str, ...] = tuple(_DATA["npti_prompts"])


@dataclass
class NPTINeurons:
    """Per layer: the neurons of each aspect and their 95th-percentile activation under it."""

    trait: str
    # level -> layer -> (neuron indices, high activation value per neuron)
    neurons: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = field(repr=False)
    # level -> probability difference (that aspect minus the other) of the kept neurons
    delta: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    def count(self, level: str) -> int:
        return sum(len(idx) for idx, _ in self.neurons[level].values())


def mlp_down_projections(model) -> dict[int, torch.nn.Module]:
    """Layer index -> the MLP's down projection, whose input is act_fn(gate) * up."""
    found = {}
    for name, module in model.named_modules():
        hit = re.search(r"layers\.(\d+)\.mlp\.down_proj$", name)
        if hit:
            found[int(hit.group(1))] = module
    if not found:
        raise ValueError("no `layers.N.mlp.down_proj` modules: NPTI needs a gated-MLP decoder "
                         "(Llama, Qwen, Mistral)")
    return dict(sorted(found.items()))


@torch.inference_mode()
def neuron_statistics(
    model, tokenizer, texts: Sequence[str], batch_size: int = 8, quantile: float = 0.95,
    max_tokens: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(activation probability, `quantile` activation), each (layers, neurons), over tokens.

    Probability uses every real token; the quantile the first `max_tokens` of them (it
    needs the values, which would not fit in memory for long texts).
    """
    if not texts:
        raise ValueError("neuron_statistics needs at least one text")
    downs = mlp_down_projections(model)
    layers = list(downs)
    positives = {i: 0 for i in layers}
    kept: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    state = {"mask": None, "room": max_tokens}
    handles = []

    def recorder(layer):
        def hook(module, args):
            acts = args[0][state["mask"]].float()  # real tokens only
            positives[layer] = positives[layer] + (acts > 0).sum(0)
            if state["room"] > 0:
                kept[layer].append(acts[: state["room"]].half().cpu())
        return hook

    device = next(model.parameters()).device
    n_tokens = 0
    try:
        handles = [downs[i].register_forward_pre_hook(recorder(i)) for i in layers]
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt",
                            padding=True, add_special_tokens=False).to(device)
            state["mask"] = enc["attention_mask"].bool()
            model(**enc)
            real = int(state["mask"].sum())
            n_tokens += real
            state["room"] = max(0, state["room"] - real)
    finally:
        for h in handles:
            h.remove()
    prob = torch.stack([positives[i].float().cpu() / n_tokens for i in layers])
    high = torch.stack([torch.quantile(torch.cat(kept[i]).float(), quantile, dim=0)
                        for i in layers])
    return prob, high


def select_neurons(
    prob: Mapping[str, torch.Tensor], high: Mapping[str, torch.Tensor], n_neurons: int
) -> dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Per level, the `n_neurons` with the largest positive probability gap over the other
    level (across all layers), with that level's high activation value."""
    out = {}
    for level in LEVELS:
        gap = (prob[level] - prob[opposite(level)]).flatten()
        k = min(n_neurons, int((gap > 0).sum()))
        top = torch.topk(gap, k).indices if k else torch.empty(0, dtype=torch.long)
        width = prob[level].shape[1]
        layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer in sorted(set((top // width).tolist())):
            idx = torch.sort(top[top // width == layer] % width).values
            layers[layer] = (idx, high[level][layer, idx])
        out[level] = layers
    return out


def npti_texts(tokenizer, trait: str, prompts: Sequence[str] = NPTI_PROMPTS) -> dict[str, list]:
    """Default aspect texts: each prompt under the high and under the low persona."""
    def render(level):
        return [tokenizer.apply_chat_template(
            [{"role": "system", "content": persona(trait, level)},
             {"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]
    return {lv: render(lv) for lv in LEVELS}


def npti_neurons(
    model,
    tokenizer,
    trait: str,
    n_neurons: int = 256,
    texts: Mapping[str, Sequence[str]] | None = None,
    batch_size: int = 8,
    quantile: float = 0.95,
    max_tokens: int = 4096,
) -> NPTINeurons:
    """Find the trait's neurons from high- and low-aspect texts (`{"high": [...], "low": [...]}`;
    by default the persona prompts with everyday requests; persona-guided generations are
    the closer match to NPTI's data)."""
    _check(trait, "high")
    texts = dict(texts) if texts is not None else npti_texts(tokenizer, trait)
    missing = [lv for lv in LEVELS if not texts.get(lv)]
    if missing:
        raise ValueError(f"npti_neurons needs texts for both levels; missing {missing}")
    prob, high = {}, {}
    for level in LEVELS:
        prob[level], high[level] = neuron_statistics(model, tokenizer, texts[level], batch_size,
                                                     quantile, max_tokens)
    chosen = select_neurons(prob, high, n_neurons)
    delta = {}
    for level in LEVELS:
        gap = prob[level] - prob[opposite(level)]
        delta[level] = torch.cat([gap[layer, idx] for layer, (idx, _) in chosen[level].items()]
                                 or [torch.empty(0)])
    return NPTINeurons(trait, chosen, delta)


def intervene(acts: torch.Tensor, up: tuple[torch.Tensor, torch.Tensor] | None,
              down: torch.Tensor | None, gamma: float) -> torch.Tensor:
    """Raise `up` neurons by γ times their shortfall from the high value; cut the positive
    part of `down` neurons by min(γ, 1). Returns a new tensor."""
    out = acts.clone()
    if up is not None and len(up[0]):
        idx, value = up[0].to(out.device), up[1]
        cur = out[..., idx]
        out[..., idx] = cur + gamma * (value.to(cur) - cur).clamp(min=0)
    if down is not None and len(down):
        down = down.to(out.device)
        cur = out[..., down]
        out[..., down] = cur - min(gamma, 1.0) * cur.clamp(min=0)
    return out


@contextlib.contextmanager
def npti_intervention(model, neurons: NPTINeurons, gamma: float, level: str) -> Iterator:
    """Steer toward `level` of the neurons' trait while inside; hooks are removed afterwards,
    also when the block raises."""
    _check(neurons.trait, level)
    if not gamma >= 0 or gamma == float("inf"):
        raise ValueError(f"gamma must be a finite number >= 0 (the paper sweeps 0.1..2.0), "
                         f"got {gamma}")
    downs = mlp_down_projections(model)
    wanted, other = neurons.neurons[level], neurons.neurons[opposite(level)]
    bad = sorted((set(wanted) | set(other)) - set(downs))
    if bad:
        raise ValueError(f"neurons name layers {bad} that the model does not have")
    handles = []

    def steer(up, down):
        def hook(module, args):
            return (intervene(args[0], up, down, gamma), *args[1:])
        return hook

    try:
        for layer in sorted(set(wanted) | set(other)):
            up = wanted.get(layer)
            down = other[layer][0] if layer in other else None
            handles.append(downs[layer].register_forward_pre_hook(steer(up, down)))
        yield model
    finally:
        for h in handles:
            h.remove()
