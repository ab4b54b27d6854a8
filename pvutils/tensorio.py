"""Tensor I/O: models and vectors read one tensor (or one tile of one) at a time.

Every safetensors file is opened through `safetensors.safe_open` first, so its header is
validated exactly as the library validates it (a header it refuses is refused here, the
file named). Reads then go through `SafetensorsSource(reader=...)`: "library"
(`get_tensor` / `get_slice`, memory-mapped) or "pread" (default: `os.preadv` at the offsets
the library validated, into a new or a reused buffer). pread is kept because
benchmarks/bench_reads.py measured it leaner (SmolLM2 base + two vectors: peak RSS 0.38 GB
vs 1.83 GB through the map, whose touched pages stay resident while the file is open;
wall time within noise) and because it fills reused buffers and single tiles (the merge
engine's hot path). Writing is in `pvutils.writer`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
READERS = ("pread", "library")

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

    def tiles_cheaply(self, name: str) -> bool:
        """Whether `read_tile` costs only the tile (not a read of the whole block)."""
        return False

    def read_tile(self, name: str, span: tuple[int, int], start: int, out: torch.Tensor) -> None:
        """Entries start:start + out.numel() of the flattened block into `out`."""
        out.copy_(self.block(name, span).reshape(-1)[start:start + out.numel()])

    def metadata(self) -> dict[str, str]:
        return {}

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

    def __init__(self, path: str | Path, reader: str = "pread"):
        if reader not in READERS:
            raise MergeError(f"reader must be one of {list(READERS)}, got {reader!r}")
        self.path, self.reader = Path(path), reader
        self.label = str(self.path)
        self.files = _weight_files(self.path)  # name -> file
        unique = list(dict.fromkeys(self.files.values()))
        # open first, validate second, then check it is the same file: a file replaced in
        # between would be read at another file's offsets
        self._fds: dict[Path, int] = {f: os.open(f, os.O_RDONLY) for f in unique}
        self._layouts = {f: validated_layout(f) for f in unique}
        for file, fd in self._fds.items():
            if os.fstat(fd).st_ino != os.stat(file).st_ino:
                raise MergeError(f"{file} was replaced while being opened; try again")
        self._handles: dict[Path, object] = {}

    def keys(self) -> list[str]:
        return list(self.files)

    def _info(self, name: str) -> tuple[str, tuple[int, ...], int]:
        try:
            return self._layouts[self.files[name]]["tensors"][name]
        except KeyError:
            raise MergeError(f"{self.label}: no tensor named {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info(name)[1]

    def dtype(self, name: str) -> torch.dtype:
        code = self._info(name)[0]
        if code not in _ST_DTYPES:
            raise MergeError(f"{self.label}: tensor {name!r} has unsupported dtype {code}")
        return _ST_DTYPES[code]

    def metadata(self) -> dict[str, str]:
        first = next(iter(self._layouts.values()), {})
        return dict(first.get("metadata") or {})

    def get(self, name: str) -> torch.Tensor:
        if self.reader == "library":
            return self._handle(name).get_tensor(name)
        return self._read(name, self._info(name)[2], self.shape(name))

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        shape = self.shape(name)
        stop = min(stop, shape[0])
        if self.reader == "library":
            return self._handle(name).get_slice(name)[start:stop]
        row_bytes = math.prod(shape[1:]) * self.dtype(name).itemsize
        first = self._info(name)[2] + start * row_bytes
        return self._read(name, first, (max(0, stop - start), *shape[1:]))

    def read_into(self, name: str, span: tuple[int, int], out: torch.Tensor) -> None:
        self.read_tile(name, span, 0, out)

    def tiles_cheaply(self, name: str) -> bool:
        return self.reader == "pread" and self.dtype(name) == torch.float32

    def read_tile(self, name: str, span: tuple[int, int], start: int, out: torch.Tensor) -> None:
        if not self.tiles_cheaply(name):
            return super().read_tile(name, span, start, out)
        row = 0 if span[1] < 0 else span[0] * math.prod(self.shape(name)[1:])
        self._read(name, self._info(name)[2] + 4 * (row + start), tuple(out.shape), out=out)

    def _handle(self, name: str):
        file = self.files[name]
        if file not in self._handles:
            self._handles[file] = safe_open(str(file), framework="pt")
        return self._handles[file]

    def _read(self, name: str, offset: int, shape: tuple[int, ...],
              out: torch.Tensor | None = None) -> torch.Tensor:
        """Bytes at `offset` (absolute, validated by the library) into a tensor."""
        file = self.files[name]
        fd = self._fds[file]
        tensor = torch.empty(shape, dtype=self.dtype(name)) if out is None else out
        buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        done = 0
        while done < len(buffer):
            n = os.preadv(fd, [buffer[done:]], offset + done)
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
        from .models import EMBEDDED_MODELS, resolve_model_dir  # models imports torch models

        if str(source).lower() in EMBEDDED_MODELS:
            path = Path(resolve_model_dir(source))
        else:
            raise MergeError(f"{path}: no such file or directory")
    source = SafetensorsSource(path)
    if path.is_file() and source.metadata().get("format") == "pvutils-lowrank-vector":
        from .lowrank import LowRankSource  # lowrank imports this module

        return LowRankSource(source)
    return source


# --- files and headers ----------------------------------------------------------------


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
        return {name: path for name in validated_layout(path)["tensors"]}
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
        files = {str(name): index.parent / str(shard) for name, shard in weight_map.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise MergeError(f"{index}: unreadable shard index ({err})") from err
    for shard in dict.fromkeys(files.values()):
        if shard.suffix in PICKLE_SUFFIXES:
            raise MergeError(f"{index} lists pickle shard {shard.name}; only safetensors are read")
        if not shard.is_file():
            raise MergeError(f"{index} lists shard {shard.name}, which is missing")
    for shard in dict.fromkeys(files.values()):
        held = validated_layout(shard)["tensors"]
        wrong = [n for n, f in files.items() if f == shard and n not in held]
        if wrong:
            raise MergeError(f"{index} places {wrong[0]!r} in {shard.name}, which lacks it")
    return files


def validated_layout(path: str | Path) -> dict:
    """{"tensors": {name: (dtype code, shape, absolute offset)}, "metadata": {...}}.

    The header is validated by `safetensors.safe_open` (the library's own rules); the
    offsets, which the library does not expose, come from our parse of the same JSON, which
    must then agree with the library's view (a duplicated key, read differently by two JSON
    parsers, is refused). Not cached across opens: a file rewritten in place within one
    timestamp tick would look unchanged, and the check costs milliseconds."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            seen = {n: (f.get_slice(n).get_dtype(), tuple(f.get_slice(n).get_shape()))
                    for n in f.keys()}
            metadata = f.metadata() or {}
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size), object_pairs_hook=_refuse_duplicates)
    except (OSError, SafetensorError, ValueError) as err:
        reason = " ".join(str(err).split())[:300]
        raise MergeError(f"{path}: not a valid safetensors file ({reason})") from None
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        start = info["data_offsets"][0]
        tensors[name] = (info["dtype"], tuple(info["shape"]), 8 + size + start)
    if {n: t[:2] for n, t in tensors.items()} != seen:
        raise MergeError(f"{path}: header read differently by two parsers; refusing it")
    return {"tensors": tensors, "metadata": dict(metadata)}


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"duplicate key {dup!r} in the header")
    return dict(pairs)


# --- checks shared by every reader ----------------------------------------------------


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
            vocab = " (different vocabulary sizes)" if is_embedding(name) else ""
            raise MergeError(f"{what} {other.label}: tensor {name!r} has shape {list(os_)}, "
                             f"base {base.label} has {list(bs)}{vocab}")
        bd, od = base.dtype(name), other.dtype(name)
        if bd != od and not (allow_float32 and od == torch.float32 and bd.is_floating_point):
            raise MergeError(f"{what} {other.label}: tensor {name!r} is {od}, "
                             f"base {base.label} has {bd}")


def is_embedding(name: str) -> bool:
    return bool(re.search(r"(embed_tokens|lm_head|wte|word_embeddings)", name))


def check_finite(tensor: torch.Tensor, name: str, label: str) -> None:
    """Refuse NaN / Inf. A NaN or Inf makes the sum non-finite; the sum is one cheap pass
    where `torch.isfinite(...).all()` costs ~15 (only an overflowing sum needs the second)."""
    if not tensor.is_floating_point() or math.isfinite(float(tensor.sum())):
        return
    if not bool(torch.isfinite(tensor).all()):
        raise MergeError(f"{label}: tensor {name!r} contains NaN or Inf")
