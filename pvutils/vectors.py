"""Personality vectors: φ = θ_fine-tuned − θ_base, read and written tensor by tensor.

A vector is an ordinary safetensors file whose keys are the base model's parameter names
and whose metadata names the base it came from (`base_fingerprint`). Models and vectors
are opened as tensor sources (`pvutils.tensorio`), so extracting or merging never holds two
whole models in memory. `check_vector` is the one set of rules every command applies to a
vector before using it against a base (merge, score, `applied`, the sweeps).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch

from .artifacts import artifacts_dir, atomic_path, fingerprint, read_json, write_json
from .outputs import check_local_path, check_output, report_error, run_cli
from .similarity import cosine_similarity_table, layer_of, module_of
from .tensorio import (
    INDEX_FILE,
    PICKLE_SUFFIXES,
    DeltaSource,
    DictSource,
    MergeError,
    SafetensorsSource,
    TensorSource,
    check_compatible,
    check_finite,
    is_embedding,
    open_tensors,
    validated_layout,
)
from .writer import StreamingSafetensorsWriter

__all__ = [
    "INDEX_FILE", "PICKLE_SUFFIXES", "DeltaSource", "DictSource", "MergeError",
    "SafetensorsSource", "StreamingSafetensorsWriter", "TensorSource", "check_compatible",
    "check_finite", "open_tensors", "weights_fingerprint", "module_fingerprint",
    "check_vector", "check_vector_files", "check_forward_finite", "open_vector",
    "check_weights", "extract_vector", "save_vector", "load_vector", "vector_metadata",
    "scale_vector", "add_vectors", "cli_extract",
    "cosine_similarity_table", "layer_of", "module_of",
]

_is_embedding = is_embedding  # the merging engine's name for it

# --- fingerprints ---------------------------------------------------------------------


def weights_fingerprint(source: str | Path | Mapping[str, torch.Tensor] | TensorSource) -> str:
    """A hash of every tensor's name, shape, dtype and bytes: which base a vector belongs to.

    For files the result is cached, keyed by the files' identity (path, size, mtime, inode),
    in memory and under the artifacts directory: hashing 16 GB at 8B costs ~12 s."""
    src = open_tensors(source)
    key = _file_identity(src)
    if key is not None:
        cached = _cached_fingerprint(key)
        if cached:
            return cached
    value = _combine_digests({name: _tensor_digest(name, src.get(name)) for name in src.keys()})
    if key is not None:
        _store_fingerprint(key, value)
    return value


_MODULE_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (key, fp)


def module_fingerprint(model: torch.nn.Module, names: Sequence[str],
                       dtypes: Mapping[str, torch.dtype] | None = None) -> str:
    """`weights_fingerprint` of a loaded model's parameters `names` (cast to `dtypes`).

    Cached per model while its parameters keep the same storage and in-place version
    (`applied` restores the very same tensors, so a sweep hashes the base once)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    state = tuple((n, params[n].data_ptr(), params[n]._version) for n in names if n in params)
    key = (state, tuple(sorted((dtypes or {}).items())))
    hit = _MODULE_FINGERPRINTS.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    digests = {}
    for n in names:
        if n in params:
            tensor = params[n].detach().cpu()
            digests[n] = _tensor_digest(n, tensor.to((dtypes or {}).get(n, tensor.dtype)))
    value = _combine_digests(digests)
    _MODULE_FINGERPRINTS[model] = (key, value)
    return value


def _tensor_digest(name: str, tensor: torch.Tensor) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{name}|{list(tensor.shape)}|{tensor.dtype}|".encode())
    digest.update(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
    return digest.digest()


def _combine_digests(digests: Mapping[str, bytes]) -> str:
    total = hashlib.blake2b(digest_size=8)
    for name in sorted(digests):
        total.update(digests[name])
    return total.hexdigest()


_FINGERPRINTS: dict[str, str] = {}


def _file_identity(src: TensorSource) -> str | None:
    if not isinstance(src, SafetensorsSource):
        return None
    parts = []
    for file in sorted(set(src.files.values())):
        stat = file.stat()
        parts.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino])
    return fingerprint(parts, length=24)


def _cached_fingerprint(key: str) -> str | None:
    if key in _FINGERPRINTS:
        return _FINGERPRINTS[key]
    path = artifacts_dir() / "fingerprints" / f"{key}.json"
    try:
        _FINGERPRINTS[key] = str(read_json(path)["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _FINGERPRINTS[key]


def _store_fingerprint(key: str, value: str) -> None:
    _FINGERPRINTS[key] = value
    write_json(artifacts_dir() / "fingerprints" / f"{key}.json", {"fingerprint": value})


# --- the one set of rules for a vector against a base ---------------------------------


def open_vector(source: str | Path | Mapping[str, torch.Tensor] | TensorSource) -> TensorSource:
    """A vector source; a model directory given as a vector is refused."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir() and (path / "config.json").exists():
            raise MergeError(f"vector {source} is a model directory, not a vector: list it "
                             "as `model:` (merge) or extract its vector first")
    return open_tensors(source)


def check_vector(base: TensorSource, vector: TensorSource, names: Sequence[str] | None = None,
                 base_fingerprints: Callable[[], Iterable[str]] | None = None,
                 allow_foreign_base: bool = False) -> None:
    """Refuse a vector that does not belong to `base`: missing or extra tensors, other
    shapes, a dtype other than the base's or float32, a full model instead of a difference,
    or a `base_fingerprint` (metadata) that is none of the base's (`base_fingerprints()`
    yields them lazily, the cheapest first)."""
    check_compatible(base, vector, what="vector", names=names, allow_float32=True)
    _refuse_full_model(base, vector, names)
    made_from = vector.metadata().get("base_fingerprint")
    if allow_foreign_base or not made_from or base_fingerprints is None or \
            set(made_from) == {"0"}:
        return
    if not any(made_from == candidate for candidate in base_fingerprints()):
        named = vector.metadata().get("base_model") or "an unnamed base"
        raise MergeError(f"vector {vector.label} was made from another base ({named}, "
                         f"fingerprint {made_from}), not {base.label}; pass "
                         "--allow-foreign-base (allow_foreign_base=True) to use it anyway")


def check_vector_files(base: TensorSource, vectors: Sequence[str | Path],
                       allow_foreign_base: bool = False) -> None:
    """`check_vector` for vector files against a base on disk (before loading a model)."""
    for path in vectors:
        check_local_path(str(path), "vector", MergeError)
        check_vector(base, open_vector(path), None, lambda: [weights_fingerprint(base)],
                     allow_foreign_base)


def check_vectors_for_model(model: torch.nn.Module, vectors: Sequence[TensorSource],
                            names: Sequence[str], allow_foreign_base: bool = False) -> None:
    """`check_vector` against a loaded model (`applied`, sweeps, `score --vector`) over the
    parameter `names` it must hold (tied parameters under their first name)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    base = DictSource({n: p.detach() for n, p in params.items()},
                      getattr(getattr(model, "config", None), "_name_or_path", "") or "the model")
    for vector in vectors:
        def fingerprints(vector=vector):
            keys = vector.keys()
            yield module_fingerprint(model, keys)  # the base as loaded, then as stored
            yield module_fingerprint(model, keys, {n: vector.dtype(n) for n in keys})

        check_vector(base, vector, names, fingerprints, allow_foreign_base)


def _refuse_full_model(base: TensorSource, vector: TensorSource,
                       names: Sequence[str] | None) -> None:
    """A difference is far from the base; a full model is close to it. Checked on the
    smallest few floating tensors (norm weights: ~1 in a model, ~0 in a difference)."""
    chosen = [n for n in (names if names is not None else base.keys())
              if base.dtype(n).is_floating_point and math.prod(base.shape(n)) >= 8]
    probe = sorted(chosen, key=lambda n: math.prod(base.shape(n)))[:3]
    if not probe:
        return
    for name in probe:
        v, b = vector.get(name).double(), base.get(name).double()
        if not float(v.norm()) > 0 or float((v - b).norm()) >= 0.5 * float(v.norm()):
            return
    raise MergeError(f"vector {vector.label} looks like a full model, not a difference from "
                     f"{base.label} (tensor {probe[0]!r} is close to the base's): pass it as "
                     "`model:` or extract its vector first")


def check_weights(weights: Sequence[float], dtype: torch.dtype = torch.float32,
                  where: str = "weights") -> list[float]:
    """Finite numbers a `dtype` can hold (a numeric string such as YAML's `1e30` counts)."""
    limit = torch.finfo(dtype).max if dtype.is_floating_point else math.inf
    out = []
    for i, w in enumerate(weights):
        field = f"{where}[{i}]" if len(weights) > 1 else where
        if isinstance(w, str):
            try:
                w = float(w)
            except ValueError:
                raise MergeError(f"{field} must be a number, got {w!r}") from None
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) \
                or abs(w) > limit:
            raise MergeError(f"{field} must be a finite number within ±{limit:.3g} "
                             f"(what {str(dtype).removeprefix('torch.')} holds), got {w!r}")
        out.append(float(w))
    return out


@torch.no_grad()
def check_forward_finite(model: torch.nn.Module, tokenizer, label: str = "the model") -> None:
    """One forward pass on a short text. Finite weights can still overflow the activations
    (α = 1e30): a hidden state whose mean square overflows float32 is zeroed by RMSNorm,
    and the flat log-probabilities that follow would score as a neutral 3.0."""
    ids = tokenizer("Tell me about yourself.", return_tensors="pt")["input_ids"]
    out = model(input_ids=ids.to(model.device), output_hidden_states=True)
    squares = [h.float().pow(2).mean(-1) for h in out.hidden_states or ()]
    if not all(bool(torch.isfinite(x).all()) for x in [out.logits, *squares]):
        raise MergeError(f"{label} gives NaN or Inf activations or outputs (they overflow "
                         "float32); use smaller weights (--alpha)")


# --- extraction and files -------------------------------------------------------------


def extract_vector(base: str | Path, finetuned: str | Path, out: str | Path,
                   condition: str | None = None, dtype: str | None = None) -> Path:
    """Write φ = θ_finetuned − θ_base (every parameter) to `out`, one tensor at a time.

    Differences are taken in float32 and stored in `dtype` (default: the base's dtype per
    tensor). The metadata records the base model, a fingerprint of its weights (see
    `weights_fingerprint`), the condition and the dtype.
    """
    base_src, ft_src = open_tensors(base), open_tensors(finetuned)
    check_compatible(base_src, ft_src, what="fine-tuned model")
    out_dtype = parse_dtype(dtype) if dtype else None
    names = base_src.keys()
    specs = [(n, base_src.shape(n), out_dtype or base_src.dtype(n)) for n in names]
    metadata = {
        "format": "pvutils-vector", "base_model": str(base), "finetuned_model": str(finetuned),
        "condition": condition or "", "dtype": dtype or _dtype_name(base_src.dtype(names[0])),
        "base_fingerprint": "0" * 16,
    }
    out = Path(out)
    digests: dict[str, bytes] = {}
    with atomic_path(out) as tmp:
        writer = StreamingSafetensorsWriter(tmp, specs, metadata)
        for name, _, dt in specs:
            b, f = base_src.get(name), ft_src.get(name)
            check_finite(f, name, ft_src.label)
            check_finite(b, name, base_src.label)
            digests[name] = _tensor_digest(name, b)
            delta = f.float().sub_(b.float()) if b.is_floating_point() else f - b
            delta = delta.to(dt)
            check_finite(delta, name, f"{out} (the difference in {dt})")
            writer.write(name, delta)
        base_print = _combine_digests(digests)
        writer.close({"base_fingerprint": base_print})
    key = _file_identity(base_src)
    if key is not None:
        _store_fingerprint(key, base_print)
    return out


def save_vector(vector: Mapping[str, torch.Tensor], path: str | Path,
                metadata: Mapping[str, str]) -> Path:
    """Save an in-memory vector atomically (safetensors, string metadata)."""
    from safetensors.torch import save_file  # the whole vector is in memory: the library

    for name, tensor in vector.items():
        if not isinstance(tensor, torch.Tensor):
            raise MergeError(f"vector entry {name!r} is a {type(tensor).__name__}, not a tensor")
        check_finite(tensor, name, str(path))
    path = Path(path)
    meta = {"format": "pvutils-vector", **{str(k): str(v) for k, v in metadata.items()}}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in vector.items()}, str(tmp), metadata=meta)
    return path


def load_vector(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a vector file (safetensors only)."""
    src = SafetensorsSource(path)
    return {name: src.get(name) for name in src.keys()}


def vector_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a vector file, read from its header only."""
    return SafetensorsSource(path).metadata()


def is_pvutils_vector(path: Path) -> bool:
    """Whether a file is a vector pvutils wrote (so `--overwrite` may replace it)."""
    try:
        return validated_layout(path)["metadata"].get("format") == "pvutils-vector"
    except MergeError:
        return False


def scale_vector(vector: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """α φ."""
    return {name: tensor * alpha for name, tensor in vector.items()}


def add_vectors(*vectors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """φ_1 + φ_2 + …; every vector must have the same names and shapes."""
    if not vectors:
        raise MergeError("add_vectors needs at least one vector")
    first = DictSource(vectors[0], "vector 1")
    for i, vec in enumerate(vectors[1:], start=2):
        check_compatible(first, DictSource(vec, f"vector {i}"), allow_float32=True)
    return {name: sum(v[name].float() for v in vectors).to(vectors[0][name].dtype)
            for name in vectors[0]}


# --- helpers and CLI ------------------------------------------------------------------


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}
    dt = getattr(torch, aliases.get(str(name), str(name)), None)
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise MergeError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return dt


_parse_dtype = parse_dtype  # the merging engine's name for it


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cli_extract(argv: list[str]) -> int:
    """`python -m pvutils extract --base B --finetuned F --out V [--condition C] [--dtype D]`."""
    parser = argparse.ArgumentParser(prog="python -m pvutils extract",
                                     description="personality vector = fine-tuned − base")
    parser.add_argument("--base", required=True, help="base model directory or embedded name")
    parser.add_argument("--finetuned", required=True, help="fine-tuned model directory")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--condition", default=None, help="e.g. extraversion_high")
    parser.add_argument("--dtype", default=None, help="storage dtype (default: the base's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing vector file that pvutils wrote")
    args = parser.parse_args(argv)
    try:
        inputs = [open_tensors(args.base).label, open_tensors(args.finetuned).label]
        check_output(args.out, inputs, args.overwrite,
                     ours=is_pvutils_vector)
        if Path(args.out).is_dir():
            raise MergeError(f"--out {args.out} is a directory; give a .safetensors file path")
        path = extract_vector(args.base, args.finetuned, args.out, args.condition, args.dtype)
    except ValueError as err:
        return report_error(err)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(cli_extract, sys.argv[1:]))
