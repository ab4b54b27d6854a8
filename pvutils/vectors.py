"""Personality vectors: φ = θ_fine-tuned − θ_base, read and written tensor by tensor.

A vector is an ordinary safetensors file whose keys are the base model's parameter names.
Models and vectors are opened as *tensor sources* that read one tensor at a time from
safetensors (single file or shards listed in `model.safetensors.index.json`), so extracting
or merging never holds two whole models in memory — at paper scale (8B parameters) that is
the difference between a few hundred MB and 64 GB.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from .artifacts import atomic_path

INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
HEADER_SLACK = 512  # spare header bytes, so metadata known only at the end can be filled in

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


class MergeError(ValueError):
    """Bad input to extraction or merging; the message names the file, tensor or field."""


# --- tensor sources -------------------------------------------------------------------


class TensorSource:
    """Named tensors that can be read one at a time (shape and dtype known without reading)."""

    label: str = "tensors"

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> torch.dtype:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of a tensor (big tensors are merged in row blocks)."""
        return self.get(name)[start:stop]

    def block(self, name: str, span: tuple[int, int]) -> torch.Tensor:
        """The whole tensor (span end −1) or rows span[0]:span[1]."""
        return self.get(name) if span[1] < 0 else self.get_rows(name, *span)

    def read_into(self, name: str, span: tuple[int, int], out: torch.Tensor) -> None:
        """Copy a block into the flat float32 tensor `out` (reused buffers, no new tensor)."""
        out.copy_(self.block(name, span).reshape(-1))

    def __contains__(self, name: str) -> bool:
        return name in set(self.keys())


class DictSource(TensorSource):
    """Tensors already in memory (a state dict or a loaded vector)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], label: str = "in-memory vector"):
        self.tensors, self.label = tensors, label

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self.tensors[name].dtype

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]


class SafetensorsSource(TensorSource):
    """A safetensors file, or a model directory with one file or index-listed shards."""

    fresh = True  # every read returns a new tensor that the caller may modify

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.label = str(self.path)
        self.files = _weight_files(self.path)  # name -> file
        self._headers = {f: _read_header(f) for f in dict.fromkeys(self.files.values())}
        self._header_len = {f: _header_length(f) for f in self._headers}
        self._fds: dict[Path, int] = {}

    def keys(self) -> list[str]:
        return list(self.files)

    def _info(self, name: str) -> dict:
        try:
            return self._headers[self.files[name]][name]
        except KeyError:
            raise MergeError(f"{self.label}: no tensor named {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info(name)["shape"])

    def dtype(self, name: str) -> torch.dtype:
        code = self._info(name)["dtype"]
        if code not in _ST_DTYPES:
            raise MergeError(f"{self.label}: tensor {name!r} has unsupported dtype {code}")
        return _ST_DTYPES[code]

    def metadata(self) -> dict[str, str]:
        first = next(iter(self._headers.values()), {})
        return dict(first.get("__metadata__") or {})

    def get(self, name: str) -> torch.Tensor:
        info = self._info(name)
        return self._read(name, info["data_offsets"][0], tuple(info["shape"]))

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        shape = self.shape(name)
        stop = min(stop, shape[0])
        row_bytes = math.prod(shape[1:]) * _itemsize(self.dtype(name))
        first = self._info(name)["data_offsets"][0] + start * row_bytes
        return self._read(name, first, (max(0, stop - start), *shape[1:]))

    def read_into(self, name: str, span: tuple[int, int], out: torch.Tensor) -> None:
        if self.dtype(name) != torch.float32:
            return super().read_into(name, span, out)
        offset = self._info(name)["data_offsets"][0]
        if span[1] >= 0:
            offset += span[0] * math.prod(self.shape(name)[1:]) * 4
        self._read(name, offset, tuple(out.shape), out=out)

    def _read(self, name: str, offset: int, shape: tuple[int, ...],
              out: torch.Tensor | None = None) -> torch.Tensor:
        # plain reads into a new tensor instead of safetensors' memory map: mapped file pages
        # count as resident memory while the file stays open (GBs across k models)
        file = self.files[name]
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(file, os.O_RDONLY)
        tensor = torch.empty(shape, dtype=self.dtype(name)) if out is None else out
        buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        start = 8 + self._header_len[file] + offset
        done = 0
        while done < len(buffer):
            n = os.preadv(fd, [buffer[done:]], start + done)
            if n <= 0:
                raise MergeError(f"{file}: truncated file (tensor {name!r})")
            done += n
        return tensor

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)


class DeltaSource(TensorSource):
    """θ_fine-tuned − θ_base computed on the fly in float32 (a vector without a file)."""

    fresh = True

    def __init__(self, finetuned: TensorSource, base: TensorSource):
        self.finetuned, self.base = finetuned, base
        self.label = f"{finetuned.label} − {base.label}"
        check_compatible(base, finetuned, what="model")

    def keys(self) -> list[str]:
        return self.base.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        dtype = self.base.dtype(name)
        return torch.float32 if dtype.is_floating_point else dtype

    def get(self, name: str) -> torch.Tensor:
        return self._diff(self.finetuned.get(name), self.base.get(name))

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._diff(self.finetuned.get_rows(name, start, stop),
                          self.base.get_rows(name, start, stop))

    def read_into(self, name: str, span: tuple[int, int], out: torch.Tensor) -> None:
        self.finetuned.read_into(name, span, out)
        out.sub_(self.base.block(name, span).reshape(-1))

    def _diff(self, ft: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        if not base.is_floating_point():
            return ft - base
        if ft.dtype == torch.float32 and getattr(self.finetuned, "fresh", False):
            return ft.sub_(base)  # the fresh read is ours: no second 4-byte-per-entry tensor
        return ft.float() - base.float()


def open_tensors(source: str | Path | Mapping[str, torch.Tensor] | TensorSource) -> TensorSource:
    """A tensor source for a vector file, a model directory / embedded name, or a dict."""
    if isinstance(source, TensorSource):
        return source
    if isinstance(source, Mapping):
        return DictSource(source)
    path = Path(source).expanduser()
    if not path.exists():
        from .models import EMBEDDED_MODELS, resolve_model_dir

        if str(source).lower() in EMBEDDED_MODELS:
            path = Path(resolve_model_dir(source))
        else:
            raise MergeError(f"{path}: no such file or directory")
    source = SafetensorsSource(path)
    if path.is_file() and source.metadata().get("format") == "pvutils-lowrank-vector":
        from .lowrank import LowRankSource  # lowrank imports this module

        return LowRankSource(source)
    return source


def _weight_files(path: Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file holding it; refuse pickle checkpoints."""
    if not path.exists():
        raise MergeError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise MergeError(
                f"{path} is a pickle checkpoint; only safetensors are read (pickles can run "
                "code). Convert it: load it once and save_pretrained(..., safe_serialization=True)"
            )
        if path.name.endswith(".index.json"):
            return _weight_files_from_index(path)
        return {name: path for name in _read_header(path) if name != "__metadata__"}
    index = path / INDEX_FILE
    if index.exists():
        return _weight_files_from_index(index)
    single = sorted(path.glob("*.safetensors"))
    if len(single) == 1:
        return _weight_files(single[0])
    if len(single) > 1:
        raise MergeError(f"{path} holds several .safetensors files but no {INDEX_FILE}")
    pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise MergeError(
            f"{path} holds only pickle checkpoints ({', '.join(sorted(pickles)[:3])}); only "
            "safetensors are read. Re-save the model with save_pretrained(safe_serialization=True)"
        )
    raise MergeError(f"{path} holds no .safetensors weights")


def _weight_files_from_index(index: Path) -> dict[str, Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MergeError(f"{index}: unreadable shard index ({err})") from err
    files = {name: index.parent / shard for name, shard in weight_map.items()}
    for shard in dict.fromkeys(files.values()):
        if shard.suffix in PICKLE_SUFFIXES:
            raise MergeError(f"{index} lists pickle shard {shard.name}; only safetensors are read")
        if not shard.exists():
            raise MergeError(f"{index} lists shard {shard.name}, which is missing")
    return files


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _header_length(path: Path) -> int:
    with open(path, "rb") as f:
        return int.from_bytes(f.read(8), "little")


def _read_header(path: Path) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if size <= 0 or size > 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(f.read(size))
    except (OSError, ValueError) as err:
        raise MergeError(f"{path}: not a readable safetensors file ({err})") from err
    return header


def check_compatible(base: TensorSource, other: TensorSource, what: str = "vector",
                     names: Iterable[str] | None = None, allow_float32: bool = False) -> None:
    """Same tensor names, shapes and dtypes as `base` (over `names`, default all)."""
    all_base = list(base.keys())
    base_keys = all_base if names is None else list(names)
    other_keys = set(other.keys())
    missing = [k for k in base_keys if k not in other_keys]
    extra = sorted(other_keys - set(all_base))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} tensor(s) of the base, e.g. {missing[:3]}")
        if extra:
            parts.append(f"has {len(extra)} tensor(s) the base lacks, e.g. {extra[:3]}")
        raise MergeError(f"{what} {other.label} does not match base {base.label}: "
                         + "; ".join(parts))
    for name in base_keys:
        bs, os_ = base.shape(name), other.shape(name)
        if bs != os_:
            vocab = " (different vocabulary sizes)" if _is_embedding(name) else ""
            raise MergeError(f"{what} {other.label}: tensor {name!r} has shape {list(os_)}, "
                             f"base {base.label} has {list(bs)}{vocab}")
        bd, od = base.dtype(name), other.dtype(name)
        if bd != od and not (allow_float32 and od == torch.float32 and bd.is_floating_point):
            raise MergeError(f"{what} {other.label}: tensor {name!r} is {od}, "
                             f"base {base.label} has {bd}")


def _is_embedding(name: str) -> bool:
    return bool(re.search(r"(embed_tokens|lm_head|wte|word_embeddings)", name))


def check_finite(tensor: torch.Tensor, name: str, label: str) -> None:
    """Refuse NaN / Inf. A NaN or Inf makes the sum non-finite; the sum is one cheap pass
    where `torch.isfinite(...).all()` costs ~15 (only an overflowing sum needs the second)."""
    if not tensor.is_floating_point() or math.isfinite(float(tensor.sum())):
        return
    if not bool(torch.isfinite(tensor).all()):
        raise MergeError(f"{label}: tensor {name!r} contains NaN or Inf")


# --- streaming safetensors writer -----------------------------------------------------


class StreamingSafetensorsWriter:
    """Write a safetensors file one tensor at a time.

    `safetensors.torch.save_file` needs every tensor in memory at once; the format only
    needs the header (names, dtypes, shapes, offsets) up front, which we know beforehand.
    """

    def __init__(self, path: Path, specs: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
                 metadata: Mapping[str, str] | None = None):
        self.path, self.specs = Path(path), list(specs)
        self.header: dict = {}
        offset = 0
        for name, shape, dtype in self.specs:
            if dtype not in _ST_NAMES:
                raise MergeError(f"{path}: cannot store tensor {name!r} of dtype {dtype}")
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            self.header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape),
                                 "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        blob = self._header_bytes()
        self.header_len = (len(blob) + HEADER_SLACK + 7) // 8 * 8  # 8-byte aligned, with slack
        self.file = open(self.path, "wb")
        self._write_header()
        self.next, self.written = 0, 0

    def _header_bytes(self) -> bytes:
        header = dict(self.header)
        if self.metadata:
            header["__metadata__"] = self.metadata
        return json.dumps(header, separators=(",", ":")).encode()

    def _write_header(self) -> None:
        blob = self._header_bytes()
        if len(blob) > self.header_len:
            raise MergeError(f"{self.path}: metadata too long for the reserved header")
        self.file.seek(0)
        self.file.write(self.header_len.to_bytes(8, "little"))
        self.file.write(blob + b" " * (self.header_len - len(blob)))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor whole."""
        self.write_part(name, tensor, last=True)

    def write_part(self, name: str, part: torch.Tensor, last: bool) -> None:
        """Write the next rows of the current tensor (`last` once it is complete)."""
        if self.next >= len(self.specs):
            raise MergeError(f"{self.path}: tensor {name!r} is beyond the planned tensors")
        expected, shape, dtype = self.specs[self.next]
        nbytes = part.numel() * part.element_size()
        total = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if name != expected or part.dtype != dtype or self.written + nbytes > total or (
                last and self.written + nbytes != total):
            raise MergeError(f"{self.path}: expected tensor {expected!r} {list(shape)} {dtype}, "
                             f"got {name!r} {list(part.shape)} {part.dtype}")
        if last and self.written == 0 and tuple(part.shape) != tuple(shape):
            raise MergeError(f"{self.path}: tensor {name!r} has shape {list(part.shape)}, "
                             f"planned {list(shape)}")
        if sys.byteorder != "little":
            raise MergeError("safetensors needs a little-endian machine")
        data = part.detach().contiguous().reshape(-1).view(torch.uint8)
        self.file.write(memoryview(data.numpy()))
        self.written += nbytes
        if last:
            self.next, self.written = self.next + 1, 0

    def close(self, metadata_updates: Mapping[str, str] | None = None) -> None:
        if self.next != len(self.specs):
            self.file.close()
            raise MergeError(f"{self.path}: only {self.next} of {len(self.specs)} tensors written")
        if metadata_updates:
            self.metadata.update({str(k): str(v) for k, v in metadata_updates.items()})
            self._write_header()
        self.file.close()


# --- vectors --------------------------------------------------------------------------


def weights_fingerprint(source: str | Path | Mapping[str, torch.Tensor] | TensorSource) -> str:
    """A hash of every tensor's name, shape, dtype and bytes: which base a vector belongs to."""
    src = open_tensors(source)
    return _combine_digests({name: _tensor_digest(name, src.get(name)) for name in src.keys()})


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


def extract_vector(base: str | Path, finetuned: str | Path, out: str | Path,
                   condition: str | None = None, dtype: str | None = None) -> Path:
    """Write φ = θ_finetuned − θ_base (every parameter) to `out`, one tensor at a time.

    Differences are taken in float32 and stored in `dtype` (default: the base's dtype per
    tensor). The metadata records the base model, a fingerprint of its weights (see
    `weights_fingerprint`), the condition and the dtype.
    """
    base_src, ft_src = open_tensors(base), open_tensors(finetuned)
    check_compatible(base_src, ft_src, what="fine-tuned model")
    out_dtype = _parse_dtype(dtype) if dtype else None
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
            writer.write(name, delta.to(dt))
        writer.close({"base_fingerprint": _combine_digests(digests)})
    return out


def save_vector(vector: Mapping[str, torch.Tensor], path: str | Path,
                metadata: Mapping[str, str]) -> Path:
    """Save an in-memory vector atomically (safetensors, string metadata)."""
    from safetensors.torch import save_file

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


# --- cosine similarity ----------------------------------------------------------------

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def layer_of(name: str) -> str:
    """'12' for `model.layers.12.mlp.up_proj.weight`, else the module name (`embed_tokens`)."""
    found = _LAYER.search(name)
    if found:
        return found.group(1)
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 else parts[0]


def module_of(name: str) -> str:
    """The module a parameter belongs to (its name without `.weight` / `.bias`)."""
    return re.sub(r"\.(weight|bias)$", "", name)


def cosine_similarity_table(vectors: Mapping[str, str | Path | Mapping[str, torch.Tensor]],
                            by: str = "model"):
    """Cosine similarity between vectors, over all parameters or per layer / module.

    `by="model"` returns a square DataFrame (name × name); `by="layer"` or `"module"` a long
    one with columns vector_a, vector_b, layer|module, cosine (each unordered pair once).
    Streams: one tensor of every vector at a time, Gram matrices accumulated in float64.
    """
    import pandas as pd

    if by not in ("model", "layer", "module"):
        raise MergeError(f"by must be 'model', 'layer' or 'module', not {by!r}")
    if len(vectors) < 1:
        raise MergeError("cosine_similarity_table needs at least one vector")
    names = list(vectors)
    sources = [open_tensors(vectors[n]) for n in names]
    for src, label in zip(sources, names, strict=True):
        src.label = label if not isinstance(vectors[label], (str, Path)) else src.label
    for src in sources[1:]:
        check_compatible(sources[0], src, allow_float32=True)
    group_of: Callable[[str], str] = {"model": lambda n: "all", "layer": layer_of,
                                      "module": module_of}[by]
    grams: dict[str, torch.Tensor] = {}
    for key in sources[0].keys():
        if not sources[0].dtype(key).is_floating_point:
            continue
        stacked = torch.stack([s.get(key).reshape(-1).float() for s in sources])
        gram = (stacked @ stacked.T).double()
        group = group_of(key)
        grams[group] = grams[group] + gram if group in grams else gram
    k = len(names)
    if by == "model":
        cos = _cosine(grams["all"])
        return pd.DataFrame(cos.numpy(), index=names, columns=names)
    rows = []
    for group, gram in grams.items():
        cos = _cosine(gram)
        for i in range(k):
            for j in range(i + 1, k):
                rows.append({"vector_a": names[i], "vector_b": names[j], by: group,
                             "cosine": float(cos[i, j])})
    table = pd.DataFrame(rows, columns=["vector_a", "vector_b", by, "cosine"])
    if by == "layer":
        order = {g: (0, int(g)) if g.isdigit() else (1, 0) for g in grams}
        table = table.sort_values(by, key=lambda c: c.map(order), kind="stable")
    return table.reset_index(drop=True)


def _cosine(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))


# --- helpers and CLI ------------------------------------------------------------------


def _parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}
    dt = getattr(torch, aliases.get(str(name), str(name)), None)
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise MergeError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return dt


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def iter_tensors(source: TensorSource, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for name in names:
        yield name, source.get(name)


def cli_extract(argv: list[str]) -> int:
    """`python -m pvutils extract --base B --finetuned F --out V [--condition C] [--dtype D]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pvutils extract",
                                     description="personality vector = fine-tuned − base")
    parser.add_argument("--base", required=True, help="base model directory or embedded name")
    parser.add_argument("--finetuned", required=True, help="fine-tuned model directory")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--condition", default=None, help="e.g. extraversion_high")
    parser.add_argument("--dtype", default=None, help="storage dtype (default: the base's)")
    args = parser.parse_args(argv)
    try:
        path = extract_vector(args.base, args.finetuned, args.out, args.condition, args.dtype)
    except MergeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0
