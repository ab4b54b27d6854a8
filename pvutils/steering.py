"""Activation steering: the inference-time rival of personality vectors.

A trait's direction at layer l is the mean difference of the residual stream (the output
of decoder layer l, averaged over the answer tokens) between the high- and the low-persona
answers of the project's own trait data (Anthropic's persona vectors, contrastive
activation addition). Steering adds `c` times it to that layer's output through a forward
hook; leaving the block removes the hook, so the model is bitwise what it was.

Hooks by hand rather than `steering-vectors` or `repeng`: steering-vectors 0.12 pins
transformers < 5 and repeng 0.4 pins numpy 1.26 (pip's dry run here), and a hook is ten lines.

The bridge: a personality vector also shifts the residual stream; `bridge_cosines` asks,
layer by layer, whether that shift points along the steering direction of the same trait.

Cached stages: `steering-directions` (one file per trait, keyed by the data of its two
poles), `steering-layers` (the layer sweep, a `sweeps.run_sweep` plan) and
`steering-bridge` (the bridge, one point per vector, keyed by its chats too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from . import cache, data
from .artifacts import atomic_path, write_json
from .cache import Stage
from .evaluation import contrast_scores
from .merging import applied
from .personas import split_condition
from .plans import CONTRAST
from .sweeps import Plan, run_sweep


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers whose outputs are the residual stream (Llama, Qwen, Mistral)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no `model.layers`: steering needs a "
                         "decoder-only transformer such as Llama or Qwen")
    return layers


def answer_batches(tokenizer, conversations: Sequence[Sequence[Mapping[str, str]]],
                   batch_size: int = 16) -> Iterator[tuple[dict, torch.Tensor]]:
    """Right-padded batches of whole chats and a mask of the last turn's (answer) tokens."""
    for start in range(0, len(conversations), batch_size):
        ids, masks = [], []
        for convo in conversations[start : start + batch_size]:
            full = tokenizer.apply_chat_template(list(convo), tokenize=False)
            prompt = tokenizer.apply_chat_template(list(convo[:-1]), tokenize=False,
                                                   add_generation_prompt=True)
            full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if n_prompt >= len(full_ids):
                raise ValueError(f"conversation {start + len(ids)} has an empty last turn")
            ids.append(full_ids)
            masks.append([0] * n_prompt + [1] * (len(full_ids) - n_prompt))
        width = max(map(len, ids))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        enc = {"input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in ids]),
               "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s))
                                               for s in ids])}
        yield enc, torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.bool)


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.inference_mode()
def answer_activations(model, tokenizer, conversations: Sequence[Sequence[Mapping[str, str]]],
                       batch_size: int = 16) -> torch.Tensor:
    """(conversations, layers, hidden): each layer's output averaged over the answer tokens."""
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    captured: dict[int, torch.Tensor] = {}
    handles = [layer.register_forward_hook(
        lambda _m, _a, out, i=i: captured.__setitem__(i, _hidden(out).float()))
        for i, layer in enumerate(layers)]
    rows = []
    try:
        for enc, answer in answer_batches(tokenizer, conversations, batch_size):
            model(**{k: v.to(device) for k, v in enc.items()})
            w = answer.to(device).float().unsqueeze(-1)
            per_layer = [(captured[i] * w).sum(1) / w.sum(1) for i in range(len(layers))]
            rows.append(torch.stack(per_layer, 1).cpu())
    finally:
        for h in handles:
            h.remove()
    return torch.cat(rows)


def steering_directions(model, tokenizer, high: Sequence[Sequence[Mapping[str, str]]],
                        low: Sequence[Sequence[Mapping[str, str]]],
                        batch_size: int = 16) -> torch.Tensor:
    """(layers, hidden): mean answer activation of the `high` chats minus the `low` chats."""
    if not high or not low:
        raise ValueError(f"steering_directions needs chats of both poles; got {len(high)} "
                         f"high and {len(low)} low")
    return (answer_activations(model, tokenizer, high, batch_size).mean(0)
            - answer_activations(model, tokenizer, low, batch_size).mean(0))


def trait_directions(model, tokenizer, datasets: Mapping[str, Any], traits: Sequence[str],
                     batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per trait, the direction from its `<trait>_high` and `<trait>_low` trait data sets
    (rows with "messages": user -> assistant, as `data.trait_datasets` returns them)."""
    out = {}
    for trait in traits:
        missing = [f"{trait}_{lv}" for lv in ("high", "low") if f"{trait}_{lv}" not in datasets]
        if missing:
            raise ValueError(f"no trait data for {missing}; train or generate those first")
        chats = {lv: list(datasets[f"{trait}_{lv}"]["messages"]) for lv in ("high", "low")}
        out[trait] = steering_directions(model, tokenizer, chats["high"], chats["low"],
                                         batch_size)
    return out


DIRECTIONS = Stage("steering-directions", ("model", "dtype", "device"),
                   code=(answer_batches, answer_activations, steering_directions))


def direction_file(profile, trait: str) -> Path:
    """Where the trait's direction lives: keyed by the model and the data of both poles."""
    key = DIRECTIONS.key(profile, *(data.data_key(cache.unwrap(profile), f"{trait}_{lv}")
                                    for lv in ("high", "low")))
    return DIRECTIONS.entry(key) / f"{trait}.safetensors"


def direction_files(profile, model, tokenizer, datasets: Mapping[str, Any],
                    traits: Sequence[str], batch_size: int = 16) -> dict[str, Path]:
    """Each trait's direction file (computed from `datasets` when missing). Beside it a
    JSON with its key, so `cache.identity` of the file is that key."""
    out = {}
    for trait in traits:
        file = direction_file(profile, trait)
        if not file.exists():
            direction = trait_directions(model, tokenizer, datasets, [trait], batch_size)[trait]
            file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(file) as tmp:
                save_file({trait: direction.contiguous()}, str(tmp))
            write_json(file.with_suffix(".json"), {"key": file.parent.name, "trait": trait})
        cache.touch(file.parent, DIRECTIONS.name, cache.unwrap(profile).name, {"trait": trait})
        out[trait] = file
    return out


def load_directions(files: Mapping[str, str | Path]) -> dict[str, torch.Tensor]:
    """The direction tensors of `direction_files`' files."""
    return {trait: load_file(str(f))[trait] for trait, f in files.items()}


def condition_direction(directions: Mapping[str, torch.Tensor], condition: str) -> torch.Tensor:
    """The direction toward a condition: +(high − low) for `_high`, −(high − low) for `_low`."""
    trait, level = split_condition(condition)
    return directions[trait] if level == "high" else -directions[trait]


@contextlib.contextmanager
def steered(model, direction: torch.Tensor, coefficient: float, layer: int) -> Iterator:
    """Add `coefficient × direction[layer]` to decoder layer `layer`'s output while inside;
    the hook is removed on exit, also when the block raises. `direction` is (layers, hidden)
    or (hidden,)."""
    layers = decoder_layers(model)
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer {layer} out of range: the model has {len(layers)} layers")
    vec = direction[layer] if direction.dim() == 2 else direction
    if vec.shape[-1] != model.config.hidden_size:
        raise ValueError(f"direction has width {vec.shape[-1]}, the model's hidden size is "
                         f"{model.config.hidden_size}")
    param = next(model.parameters())
    shift = (float(coefficient) * vec).to(device=param.device, dtype=param.dtype)

    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (output[0] + shift, *output[1:])
        return output + shift

    handle = layers[layer].register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


def probe_layers(n_layers: int, step: int) -> list[int]:
    """The layers the layer sweep tries: every `step`-th, from the first."""
    if step < 1:
        raise ValueError(f"the layer step must be at least 1, got {step}")
    return list(range(0, n_layers, step))


def layer_gap(model, tokenizer, direction: torch.Tensor, trait: str, layer: int,
              coefficient: float, n_pairs: int | None = None) -> dict[str, float]:
    """The trait's contrast score steered at +c and at −c at `layer`, and their gap."""
    scores = {}
    for sign, label in ((1.0, "score_plus"), (-1.0, "score_minus")):
        with steered(model, direction, sign * coefficient, layer):
            scores[label] = contrast_scores(model, tokenizer, [trait], n_pairs=n_pairs)[trait]
    return {**scores, "gap": scores["score_plus"] - scores["score_minus"]}


LAYERS = Stage("steering-layers", CONTRAST, grid=("sweep_conditions",),
               code=(steered, layer_gap))


def layer_plan(profile, traits: Sequence[str], layers: Sequence[int],
               coefficient: float) -> Plan:
    """Each trait at each layer, steered at ±`coefficient` along its direction file."""
    return LAYERS, [{"trait": t, "layer": int(layer), "coefficient": float(coefficient),
                     "_uses": [f"direction:{t}"]} for t in traits for layer in layers], ()


def layer_sweep(model, tokenizer, directions: Mapping[str, str | Path], profile,
                traits: Sequence[str], layers: Sequence[int],
                coefficient: float) -> pd.DataFrame:
    """Steer each trait at ±`coefficient` at each layer; `gap` = score(+c) − score(−c).
    `directions`: trait -> its direction file (`direction_files`).

    Rows: trait, layer, coefficient, score_plus, score_minus, gap.
    """
    P = LAYERS.view(profile)
    tensors: dict[str, torch.Tensor] = {}

    def measure(point):
        if not tensors:  # read only when a point is not cached
            tensors.update(load_directions({t: directions[t] for t in traits}))
        return layer_gap(model, tokenizer, tensors[point["trait"]], point["trait"],
                         point["layer"], point["coefficient"], P.contrast_pairs)

    inputs = {f"direction:{t}": directions[t] for t in traits}
    return run_sweep(layer_plan(P, traits, layers, coefficient), P, measure, inputs=inputs)


def best_layer(table: pd.DataFrame) -> int:
    """The layer whose ±c steering separates the traits' scores most, on average."""
    return int(table.groupby("layer")["gap"].mean().idxmax())


def bridge_rows(shift: torch.Tensor, target: torch.Tensor) -> list[dict[str, float]]:
    """Per layer: cosine of a (layers, hidden) residual shift with the (layers, hidden)
    steering direction, and the shift's norm."""
    cos = torch.nn.functional.cosine_similarity(shift, target, dim=-1)
    return [{"layer": i, "cosine": float(c), "shift_norm": float(shift[i].norm())}
            for i, c in enumerate(cos)]


@torch.inference_mode()
def bridge_cosines(model, tokenizer, vectors: Mapping[str, Any],
                   directions: Mapping[str, torch.Tensor],
                   conversations: Sequence[Sequence[Mapping[str, str]]],
                   alpha: float = 1.0, batch_size: int = 16) -> pd.DataFrame:
    """Per vector and layer: cosine between the residual shift θ + αφ causes (mean answer
    activation of the vector model minus the base's, same chats) and the steering direction
    toward the vector's condition. Rows: condition, trait, level, layer, cosine, shift_norm."""
    base = answer_activations(model, tokenizer, conversations, batch_size).mean(0)
    rows = []
    for condition, vector in vectors.items():
        trait, level = split_condition(condition)
        with applied(model, [vector], [alpha], reuse_buffers=True):
            shift = answer_activations(model, tokenizer, conversations, batch_size).mean(0) - base
        rows += [{"condition": condition, "trait": trait, "level": level, **r}
                 for r in bridge_rows(shift, condition_direction(directions, condition))]
    return pd.DataFrame(rows)


def check_per_condition(per_condition: int | None) -> None:
    """`bridge_chats` is None (all) or a whole number of at least 1."""
    if per_condition is not None and (isinstance(per_condition, bool)
                                      or not isinstance(per_condition, int)
                                      or per_condition < 1):
        raise ValueError(f"bridge_chats={per_condition!r}: give a whole number of chats per "
                         "condition, at least 1 (or None for all)")


def pole_chats(datasets: Mapping[str, Any], traits: Sequence[str],
               per_condition: int | None = None) -> list[list[dict[str, str]]]:
    """The bridge's chats: the first `per_condition` (None: all) of each trait's high and
    low trait data, so both poles weigh the same."""
    check_per_condition(per_condition)
    return [list(m) for t in traits for lv in ("high", "low")
            for m in list(datasets[f"{t}_{lv}"]["messages"])[:per_condition]]


def bridge_point(model, tokenizer, chats: Sequence[Sequence[Mapping[str, str]]],
                 base: torch.Tensor, vector: Any, direction_file: str | Path,
                 condition: str, alpha: float) -> list[dict[str, float]]:
    """One vector's bridge rows: the mean answer activation of θ + αφ on `chats` minus
    `base` (the base model's, same chats), against the steering direction toward
    `condition` read from its trait's direction file."""
    with applied(model, [vector], [alpha], reuse_buffers=True):
        shift = answer_activations(model, tokenizer, chats).mean(0) - base
    trait = split_condition(condition)[0]
    target = condition_direction(load_directions({trait: direction_file}), condition)
    return bridge_rows(shift, target)


BRIDGE = Stage("steering-bridge", ("model", "dtype", "device"),
               code=(answer_batches, answer_activations, bridge_rows, pole_chats,
                     bridge_point, condition_direction))


def bridge_plan(profile, conditions: Sequence[str], per_condition: int | None = None,
                alpha: float = 1.0) -> Plan:
    """One point per vector (it uses the vector and its trait's direction file); the stage
    is keyed by the data of every pole whose chats it reads and by how many it reads."""
    traits = list(dict.fromkeys(split_condition(c)[0] for c in conditions))
    poles = [data.data_key(cache.unwrap(profile), f"{t}_{lv}") for t in traits
             for lv in ("high", "low")]
    points = [{"condition": c, "trait": split_condition(c)[0], "level": split_condition(c)[1],
               "alpha": float(alpha), "_uses": [c, f"direction:{split_condition(c)[0]}"]}
              for c in conditions]
    return BRIDGE, points, (poles, per_condition)


def bridge_sweep(model, tokenizer, vectors: Mapping[str, str | Path],
                 directions: Mapping[str, str | Path], profile, datasets: Mapping[str, Any],
                 per_condition: int | None = None, alpha: float = 1.0) -> pd.DataFrame:
    """`bridge_cosines` as a cached stage, one point per vector, on the `pole_chats` of the
    profile's trait data `datasets` (`data.trait_datasets(profile)`, as `direction_files`
    takes them); the base's activations are computed only when a point is not cached.
    The rows of `bridge_cosines`, with an `alpha` column."""
    P = BRIDGE.view(profile)
    check_per_condition(per_condition)
    traits = list(dict.fromkeys(split_condition(c)[0] for c in vectors))
    inputs = {**vectors, **{f"direction:{t}": f for t, f in directions.items()}}
    state: dict[str, Any] = {}

    def measure(point):
        if not state:  # only when a point is not cached
            state["chats"] = pole_chats(datasets, traits, per_condition)
            state["base"] = answer_activations(model, tokenizer, state["chats"]).mean(0)
        vector, direction = (inputs[name] for name in point["_uses"])
        return bridge_point(model, tokenizer, state["chats"], state["base"], vector,
                            direction, point["condition"], point["alpha"])

    plan = bridge_plan(P, list(vectors), per_condition, alpha)
    return run_sweep(plan, P, measure, inputs=inputs)


def plot_layer_sweep(table: pd.DataFrame, chosen: int | None = None):
    """Score separation of ±c steering by layer, one line per trait; the chosen layer dashed."""
    import matplotlib.pyplot as plt  # plotting only where a figure is drawn
    import seaborn as sns  # plotting: only for the figure

    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.lineplot(data=table, x="layer", y="gap", hue="trait", marker="o", ax=ax)
    if chosen is not None:
        ax.axvline(chosen, ls="--", color="black", lw=1)
    ax.set_ylabel("score(+c) − score(−c)")
    fig.tight_layout()
    return fig


def plot_bridge(table: pd.DataFrame):
    """Cosine between a vector's residual shift and the steering direction, by layer."""
    import matplotlib.pyplot as plt  # plotting: only for the figure
    import seaborn as sns  # plotting: only for the figure

    fig, ax = plt.subplots(figsize=(7, 3.6))
    sns.lineplot(data=table, x="layer", y="cosine", hue="condition", ax=ax)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("cos(shift by θ+φ, steering direction)")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig
