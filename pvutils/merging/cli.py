"""`merge_from_config` / `python -m pvutils merge CONFIG OUT`: a mergekit YAML, written
tensor by tensor into a loadable model directory (nothing is left at OUT on failure)."""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
import yaml

from ..artifacts import atomic_dir
from ..outputs import check_local_path, check_output, report_error, write_marker
from ..vectors import (
    MergeError,
    StreamingSafetensorsWriter,
    TensorSource,
    check_compatible,
    check_finite,
    check_vector,
    check_weights,
    open_tensors,
    open_vector,
    weights_fingerprint,
)
from .api import iter_merged_blocks, select_names
from .config import MergeConfig, load_config
from .engine import Input

WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt",
                        "*.index.json", "pvutils-manifest.json")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16}
Spec = tuple[str, tuple[int, ...], torch.dtype]
Blocks = Iterator[tuple[str, int, int, torch.Tensor]]


class LastBlock(TensorSource):
    """The base, remembering the block read last: each model's delta and the output need
    the same base block, which is then read once."""

    def __init__(self, inner: TensorSource):
        self.inner, self.label = inner, inner.label
        self._key, self._block = None, None

    def keys(self):
        return self.inner.keys()

    def shape(self, name):
        return self.inner.shape(name)

    def dtype(self, name):
        return self.inner.dtype(name)

    def get(self, name):
        return self.block(name, (0, -1))

    def get_rows(self, name, start, stop):
        return self.block(name, (start, stop))

    def block(self, name, span):
        if (name, span) != self._key:
            self._key, self._block = None, self.inner.block(name, span)
            self._key = (name, span)
        return self._block


def merge_from_config(config: str | Path | Mapping, out_dir: str | Path,
                      accelerate: str | None = None, overwrite: bool = False,
                      allow_foreign_base: bool = False) -> Path:
    """Run a mergekit-style merge and write a loadable model directory.

    Output weights are θ_base + merged delta in `dtype` (default: the base's), sharded like
    `save_pretrained` above `max_shard_size`; config, tokenizer and generation config are
    copied from the base. `accelerate="numba"`: the compiled TIES kernel (same result).
    An existing output is refused unless `overwrite` and pvutils wrote it (its marker); a
    vector made from another base is refused unless `allow_foreign_base`.
    """
    cfg, _ = load_config(dict(config) if isinstance(config, Mapping) else config)
    base_dir = Path(_local_model(cfg.base_model, "base_model"))
    sources = [e.model or e.vector for e in cfg.entries]
    check_output(out_dir, [base_dir, *sources]
                 + ([] if isinstance(config, Mapping) else [config]), overwrite)
    base = LastBlock(open_tensors(base_dir))
    inputs = [_input(entry, base) for entry in cfg.entries]
    names = base.keys()
    chosen = select_names(names, cfg.include, cfg.exclude)
    for entry, inp in zip(cfg.entries, inputs, strict=True):
        if entry.vector is not None:
            check_vector(base.inner, inp.source, chosen, lambda: [weights_fingerprint(base.inner)],
                         allow_foreign_base)
    out_dtype = DTYPES[cfg.out_dtype or cfg.dtype] if (cfg.out_dtype or cfg.dtype) else None
    check_weights([e.parameters.weight for e in cfg.entries], out_dtype or torch.float32,
                  where="models[].parameters.weight"
                  + (f" (out_dtype {cfg.out_dtype or cfg.dtype})" if out_dtype else ""))
    check_weights([cfg.parameters.lambda_], out_dtype or torch.float32, where="parameters.lambda")
    specs = [(n, base.shape(n), out_dtype if out_dtype and base.dtype(n).is_floating_point
              else base.dtype(n)) for n in names]
    blocks = iter_merged_blocks(inputs, [e.parameters.weight for e in cfg.entries], chosen,
                                cfg.merge_method, cfg.parameters.trim_scope,
                                **cfg.merge_params(), accelerate=accelerate)
    return write_model(Path(out_dir), base_dir, base, specs, blocks, cfg, out_dtype)


def _input(entry, base: TensorSource) -> Input:
    if entry.model is not None:
        model = open_tensors(_local_model(entry.model, "model"))
        check_compatible(base, model, what="model")
        return Input(model, base)
    check_local_path(entry.vector, "vector", MergeError)
    return Input(open_vector(entry.vector))


def write_model(out_dir: Path, base_dir: Path, base: TensorSource, specs: Sequence[Spec],
                blocks: Blocks, cfg: MergeConfig, out_dtype: torch.dtype | None) -> Path:
    """θ_base + merged blocks, shard by shard, plus the base's non-weight files."""
    with atomic_dir(out_dir) as tmp:
        _copy_model_files(base_dir, tmp, out_dtype)
        write_marker(tmp, "merge")  # after the copy: a base that is itself an output has one
        pending = next(blocks, None)
        shards = plan_shards(specs, cfg.max_shard_size)
        for shard_name, shard_specs in shards:
            writer = StreamingSafetensorsWriter(tmp / shard_name, shard_specs, {"format": "pt"})
            for name, _, dtype in shard_specs:
                if pending is None or pending[0] != name:  # not merged: the base's tensor
                    tensor = base.get(name).to(dtype)
                    check_finite(tensor, name, f"{base.label} (in {dtype})")
                    writer.write(name, tensor)
                while pending is not None and pending[0] == name:
                    _, start, stop, block = pending
                    rows = base.block(name, (start, stop))
                    pending = next(blocks, None)
                    last = pending is None or pending[0] != name
                    block = block.add_(rows).to(dtype)
                    check_finite(block, name, f"merged model (overflows {dtype})")
                    writer.write_part(name, block, last=last)
            writer.close()
        if len(shards) > 1:
            _write_index(tmp, specs, shards)
        (tmp / "mergekit_config.yml").write_text(
            yaml.safe_dump(cfg.model_dump(by_alias=True, exclude_defaults=True),
                           sort_keys=False))
    return out_dir


def plan_shards(specs: Sequence[Spec], max_bytes: int) -> list[tuple[str, list[Spec]]]:
    """Shard files and their tensors in order, named as `save_pretrained` names them.
    (huggingface_hub's `split_torch_state_dict_into_shards` does the same but imports
    torch.distributed, 1.5 s of a 3 s merge, to add up sizes we know from the headers.)"""
    shards, current, size = [], [], 0
    for spec in specs:
        nbytes = math.prod(spec[1]) * spec[2].itemsize
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        return [("model.safetensors", shards[0])]
    n = len(shards)
    return [(f"model-{i + 1:05d}-of-{n:05d}.safetensors", s) for i, s in enumerate(shards)]


def _write_index(out: Path, specs: Sequence[Spec], shards) -> None:
    total = sum(math.prod(s) * d.itemsize for _, s, d in specs)
    weight_map = {spec[0]: f for f, shard in shards for spec in shard}
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _local_model(name: str, field_name: str) -> str:
    check_local_path(name, field_name, MergeError)
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return str(path)  # a model directory; its weights are checked when opened
    # embedded names and the errors: models imports transformers (~1 s of a 3 s merge)
    from ..models import ModelError, resolve_model_dir

    try:
        resolved = resolve_model_dir(name)
    except ModelError as err:
        raise MergeError(f"{field_name} {name!r}: {err}") from err
    if not Path(resolved).is_dir():
        raise MergeError(f"{field_name} {name!r} is not a local model directory; merging reads "
                         "local safetensors only (download the model first)")
    return resolved


def _copy_model_files(base_dir: Path, out: Path, out_dtype: torch.dtype | None) -> None:
    """Config, tokenizer, generation config, chat template: everything but the weights."""
    for item in sorted(base_dir.iterdir()):
        if item.is_file() and not any(fnmatch.fnmatch(item.name, p)
                                      for p in WEIGHT_FILE_PATTERNS):
            shutil.copy2(item, out / item.name)
    cfg = out / "config.json"
    if out_dtype is not None and cfg.exists():
        data = json.loads(cfg.read_text())
        for key in ("torch_dtype", "dtype"):
            if key in data:
                data[key] = str(out_dtype).removeprefix("torch.")
        cfg.write_text(json.dumps(data, indent=2) + "\n")


def cli_merge(argv: list[str]) -> int:
    """`python -m pvutils merge CONFIG.yml OUT_DIR`: a mergekit-compatible merge."""
    parser = argparse.ArgumentParser(prog="python -m pvutils merge",
                                     description="merge models / vectors from a mergekit YAML")
    parser.add_argument("config", help="mergekit-style YAML (see pvutils.merging.config)")
    parser.add_argument("out_dir", help="output model directory (written atomically)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--accelerate", choices=["numba", "none"], default="numba",
                        help="compiled kernels where one exists (TIES); same results")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output that pvutils wrote")
    parser.add_argument("--allow-foreign-base", action="store_true",
                        help="merge vectors made from another base model")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerate = None if args.accelerate == "none" else args.accelerate
    try:
        out = merge_from_config(args.config, args.out_dir, accelerate, overwrite=args.overwrite,
                                allow_foreign_base=args.allow_foreign_base)
    except ValueError as err:
        return report_error(err)
    print(out)
    return 0
