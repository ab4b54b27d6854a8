"""Writing safetensors one tensor at a time, and the shard size a config may ask for."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .tensorio import _ST_NAMES, MergeError, validated_layout

HEADER_SLACK = 512  # spare header bytes, so metadata known only at the end can be filled in

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: int | str, where: str = "max_shard_size") -> int:
    """Bytes from an int or a size such as "5GB" / "500MiB" (as mergekit and transformers
    accept); refuse anything not positive. Shards are planned in base order, not by
    huggingface_hub's splitter, which moves oversized tensors first: the streaming writer
    needs the order the tensors are merged in."""
    found = _SIZE.match(str(value)) if not isinstance(value, bool) else None
    size = int(float(found[1]) * _UNITS[(found[2] or "").upper()]) if found else 0
    if size <= 0:
        raise MergeError(f"{where} must be a positive size in bytes or like '5GB', "
                         f"got {value!r}")
    return size


class StreamingSafetensorsWriter:
    """Write a safetensors file one tensor at a time.

    Hand-written because `safetensors.torch.save_file` needs every tensor of a shard in
    memory at once (5 GB per shard at paper scale); the format only needs the header
    (names, dtypes, shapes, offsets) up front, which we know beforehand. `close` re-opens
    the file with the library, so what we wrote is what `safe_open` reads.
    """

    def __init__(self, path: Path, specs: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
                 metadata: Mapping[str, str] | None = None):
        self.path, self.specs = Path(path), list(specs)
        self.header: dict = {}
        offset = 0
        for name, shape, dtype in self.specs:
            if dtype not in _ST_NAMES:
                raise MergeError(f"{path}: cannot store tensor {name!r} of dtype {dtype}")
            nbytes = math.prod(shape) * dtype.itemsize
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
        total = math.prod(shape) * dtype.itemsize
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
        validated_layout(self.path)
