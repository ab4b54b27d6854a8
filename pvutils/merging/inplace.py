"""`applied`: θ = θ_model + merge(vectors) on a loaded model, restored bitwise (for sweeps)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..vectors import TensorSource, check_finite, check_vectors_for_model
from ..vectors import check_weights as check_representable
from . import functional as F
from .api import TensorLike, iter_merged_blocks, open_all, select_names
from .engine import Input
from .options import check_weights, parse_params

SMALL_TENSOR = 1 << 22  # below this an element-wise op is faster on one thread
_SPARES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {name: tensor}
# in-memory deltas already checked, by id (a WeakSet would compare tensors elementwise)
_CHECKED_FINITE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_MAX_ABS: dict[int, float] = {}  # id -> max |x| of a live tensor in _CHECKED_FINITE / a θ


@contextlib.contextmanager
def applied(model: torch.nn.Module, vectors: Sequence[TensorLike], weights: Sequence[float],
            method: str = "task_arithmetic", trim_scope: str = "per_tensor",
            include: str | Sequence[str] | None = None,
            exclude: str | Sequence[str] | None = None, reuse_buffers: bool = False,
            allow_foreign_base: bool = False, **params: Any) -> Iterator[torch.nn.Module]:
    """Temporarily set θ = θ_model + merge(vectors): α sweeps without writing models.

    Each touched parameter gets a new tensor (θ + Δ) while its old tensor is kept aside, so
    leaving the block (normally or by an exception) puts back the very same storage:
    bitwise equal, with no round-off from subtracting Δ. Tied parameters (SmolLM2's lm_head
    is embed_tokens) are one Parameter object and are updated once.

    `reuse_buffers=True` keeps the merged tensors after exit and writes the next merge into
    them: no fresh allocation (its page faults cost more than the add on a CPU), at the
    price of one extra copy of the touched weights held until `release_buffers(model)`.

    The vectors must pass the rules `merge` applies (`vectors.check_vectors_for_model`: every
    selected parameter, the model's shapes, its base fingerprint unless
    `allow_foreign_base`), and every merged weight must be finite in the model's dtype.
    """
    sources = open_all(vectors)
    params_by_name = dict(model.named_parameters(remove_duplicate=False))
    required = select_names([n for n, _ in model.named_parameters()], include, exclude)
    check_vectors_for_model(model, sources, required, allow_foreign_base)
    names = _touched(params_by_name, sources, include, exclude)
    weights = check_weights(weights, len(sources))
    dtype = params_by_name[names[0]].dtype if names else torch.float32
    weights = check_representable(weights, dtype)
    opts = parse_params(method, params)
    originals: dict[str, torch.Tensor] = {}
    spares = _SPARES.setdefault(model, {}) if reuse_buffers else {}
    try:
        with torch.no_grad():
            if opts.sparsification is None and not opts.spec.consensus:
                total = F.weight_total(weights) if opts.do_normalize else torch.tensor(1.0)
                scaled = [w * opts.lambda_ / float(total) for w in weights]
                _add_task_arithmetic(params_by_name, sources, scaled, names, originals, spares)
            else:
                blocks = iter_merged_blocks([Input(s) for s in sources], weights, names,
                                            method, trim_scope, **params)
                _add_blocks(params_by_name, blocks, originals, spares)
        yield model
    finally:
        for name, tensor in originals.items():
            if reuse_buffers:
                spares[name] = params_by_name[name].data
            params_by_name[name].data = tensor


def release_buffers(model: torch.nn.Module) -> None:
    """Free the merged tensors `applied(..., reuse_buffers=True)` kept for `model`."""
    _SPARES.pop(model, None)


def _touched(params_by_name: dict, sources: Sequence[TensorSource], include, exclude
             ) -> list[str]:
    """The selected parameter names, each tied parameter once (the vectors were checked
    against the model by `check_vectors_for_model`)."""
    names, seen = [], set()
    for n in select_names(sources[0].keys(), include, exclude):
        if id(params_by_name[n]) not in seen:
            seen.add(id(params_by_name[n]))
            names.append(n)
    return names


def _swap(params_by_name: dict, name: str, new: torch.Tensor, originals: dict) -> None:
    originals[name] = params_by_name[name].data
    params_by_name[name].data = new


def _add_task_arithmetic(params_by_name, sources, weights, names, originals, spares) -> None:
    """θ + Σ w_i φ_i straight into the new tensor, one pass per vector."""
    small = [n for n in names if params_by_name[n].numel() < SMALL_TENSOR]
    large = [n for n in names if params_by_name[n].numel() >= SMALL_TENSOR]
    with _torch_threads(1):
        _add_deltas(params_by_name, sources, weights, small, originals, spares)
    _add_deltas(params_by_name, sources, weights, large, originals, spares)


def _add_deltas(params_by_name, sources, weights, names, originals, spares) -> None:
    for name in names:
        param = params_by_name[name]
        deltas = [_checked(src, name) for src in sources]
        # |θ + Σ w δ| <= max|θ| + Σ |w| max|δ|: only when that bound nears the dtype's range
        # can the sum overflow, and only then is the merged tensor scanned
        bound = _max_abs(param.data) + sum(abs(w) * _max_abs(d) for w, d in zip(weights, deltas))
        new = F.weighted_sum((d.to(param.device) for d in deltas), weights, base=param.data,
                             out=_spare_or_new(spares, name, param.data))
        if not bound < torch.finfo(new.dtype).max / 2:
            check_finite(new, name, f"merged model (weights x vectors overflow {new.dtype})")
        _swap(params_by_name, name, new, originals)


def _add_blocks(params_by_name, blocks, originals, spares) -> None:
    """θ + merged delta, block by block, into each parameter's new tensor."""
    new, current = None, None
    for name, start, stop, block in blocks:
        param = params_by_name[name]
        if name != current:
            if current is not None:
                check_finite(new, current, f"merged model (overflows {new.dtype})")
                _swap(params_by_name, current, new, originals)
            current, new = name, _spare_or_new(spares, name, param.data)
        rows = slice(None) if stop < 0 else slice(start, stop)
        block = block.to(param.device)
        if param.dtype == torch.float32:
            torch.add(param.data[rows], block, out=new[rows])
        else:
            new[rows] = (param.data[rows].float() + block).to(param.dtype)
    if current is not None:
        check_finite(new, current, f"merged model (overflows {new.dtype})")
        _swap(params_by_name, current, new, originals)


def _spare_or_new(spares: dict, name: str, like: torch.Tensor) -> torch.Tensor:
    spare = spares.pop(name, None)
    # a buffer made under torch.inference_mode cannot be written outside it
    if spare is not None and spare.shape == like.shape and spare.dtype == like.dtype \
            and spare.device == like.device \
            and (not spare.is_inference() or torch.is_inference_mode_enabled()):
        return spare
    return torch.empty_like(like)


def _checked(src: TensorSource, name: str) -> torch.Tensor:
    """The delta, NaN/Inf-checked once per in-memory tensor: a sweep applies the same
    loaded vector dozens of times, and the check is a pass as costly as the add."""
    delta = src.get(name)
    if _CHECKED_FINITE.get(id(delta)) is not delta:
        check_finite(delta, name, src.label)
        _CHECKED_FINITE[id(delta)] = delta
    return delta


def _max_abs(tensor: torch.Tensor) -> float:
    """max |x|, computed once per live tensor object (a sweep adds the same θ and δ again
    and again); forgotten when the tensor is freed."""
    key = id(tensor)
    if _CHECKED_FINITE.get(key) is tensor and key in _MAX_ABS:
        return _MAX_ABS[key]
    value = float(tensor.abs().max()) if tensor.numel() else 0.0
    _CHECKED_FINITE[key] = tensor
    _MAX_ABS[key] = value
    weakref.finalize(tensor, _MAX_ABS.pop, key, None)
    return value


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with `n` intra-op threads: a memory-bound add on a small tensor is dominated by
    waking the other threads (on 2 busy cores: 1.7 s vs 0.25 s for SmolLM2's 272 tensors)."""
    before = torch.get_num_threads()
    if before <= n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
