"""Low-rank personality vectors: each matrix of φ truncated by SVD to rank r.

As `mergekit-extract-lora` does, every 2-D tensor Δ becomes B A with B = U_r Σ_r and
A = V_rᵀ (the best rank-r approximation, Eckart–Young); 1-D tensors (norms) stay dense.
The file is safetensors with `<name>.lora_B` / `<name>.lora_A` pairs and metadata
`format = pvutils-lowrank-vector`; `vectors.open_tensors` dispatches on that flag to
`LowRankSource`, which multiplies B A back on read, so a low-rank file loads wherever a
vector does (`applied`, `merge_vectors`, `pvutils merge`).

The truncated files are a cached stage (`lowrank`, keyed by the source vector's identity
and the rank); `kept_table` says how much of the full vector's trait shift each keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save_file

from . import cache
from .artifacts import atomic_path, write_json
from .cache import Stage
from .personas import split_condition
from .vectors import MergeError, SafetensorsSource, TensorSource, check_finite, open_tensors

FORMAT = "pvutils-lowrank-vector"
_A, _B = ".lora_A", ".lora_B"


def truncate(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B A the best rank-`rank` approximation of the matrix `delta`."""
    if delta.dim() != 2:
        raise ValueError(f"truncate needs a matrix, got shape {list(delta.shape)}")
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    r = min(rank, s.numel())
    return (u[:, :r] * s[:r]).contiguous(), vh[:r].contiguous()


def lowrank_tensors(source: TensorSource, rank: int) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of the low-rank file: factor pairs for matrices wider than `rank` in
    both dimensions, the tensor itself otherwise (truncation would save nothing)."""
    for per_rank in _factored(source, (rank,)):
        yield from per_rank[rank]


def _factored(source: TensorSource, ranks: tuple[int, ...]):
    """{rank: [(file key, tensor), ...]} per tensor, one SVD shared by all ranks."""
    for name in source.keys():
        tensor = source.get(name)
        if tensor.dim() != 2 or min(tensor.shape) <= min(ranks):
            yield {r: [(name, tensor.float())] for r in ranks}
            continue
        u, s, vh = torch.linalg.svd(tensor.float(), full_matrices=False)
        out = {}
        for r in ranks:
            if min(tensor.shape) <= r:
                out[r] = [(name, tensor.float())]
            else:
                out[r] = [(name + _B, (u[:, :r] * s[:r]).contiguous()),
                          (name + _A, vh[:r].contiguous())]
        yield out


def write_lowrank(vector: str | Path | TensorSource, out: str | Path, rank: int) -> Path:
    """Write `vector` truncated to `rank` as a low-rank vector file (atomically)."""
    return write_lowrank_ranks(vector, {rank: out})[rank]


def write_lowrank_ranks(vector: str | Path | TensorSource,
                        outs: dict[int, str | Path]) -> dict[int, Path]:
    """Write `vector` truncated to each rank in `outs` (rank -> file), one SVD per matrix."""
    if not outs or min(outs) < 1:
        raise ValueError(f"ranks must be at least 1, got {sorted(outs)}")
    source = open_tensors(vector)
    tensors: dict[int, dict[str, torch.Tensor]] = {r: {} for r in outs}
    for per_rank in _factored(source, tuple(outs)):
        for r, pairs in per_rank.items():
            for key, tensor in pairs:
                check_finite(tensor, key, str(outs[r]))
                tensors[r][key] = tensor
    base_meta = source.metadata() if isinstance(source, SafetensorsSource) else {}
    written = {}
    for r, out in outs.items():
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            save_file(tensors[r], str(tmp), metadata={**base_meta, "format": FORMAT,
                                                      "rank": str(r)})
        written[r] = out
    return written


class LowRankSource(TensorSource):
    """A low-rank vector file read as the dense vector it stands for (B A on each read)."""

    fresh = True

    def __init__(self, file: SafetensorsSource):
        self.file, self.label = file, f"low-rank vector {file.label}"
        names = file.keys()
        self.factored = sorted(n[: -len(_B)] for n in names if n.endswith(_B))
        missing = [n for n in self.factored if n + _A not in names]
        if missing:
            raise MergeError(f"{file.label}: {missing[0]}{_B} has no {_A} partner")
        self.dense = [n for n in names if not n.endswith((_A, _B))]
        self._names = sorted(self.dense + self.factored)

    def keys(self) -> list[str]:
        return list(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.dense:
            return self.file.shape(name)
        return (self.file.shape(name + _B)[0], self.file.shape(name + _A)[1])

    def dtype(self, name: str) -> torch.dtype:
        return torch.float32

    def get(self, name: str) -> torch.Tensor:
        if name in self.dense:
            return self.file.get(name)
        return self.file.get(name + _B) @ self.file.get(name + _A)

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        if name in self.dense:
            return self.file.get_rows(name, start, stop)
        return self.file.get_rows(name + _B, start, stop) @ self.file.get(name + _A)

    def read_into(self, name: str, span: tuple[int, int], out: torch.Tensor) -> None:
        out.copy_(self.block(name, span).reshape(-1))

    def metadata(self) -> dict[str, str]:
        return self.file.metadata()



LOWRANK = Stage("lowrank", (), code=(_factored, write_lowrank_ranks))


def lowrank_key(vector_identity: str, rank: int) -> str:
    """The key of a rank-`rank` copy: the source vector's identity (`cache.identity`: its
    producer's key or its bytes, never its mtime) and the rank."""
    return LOWRANK.key(None, vector_identity, rank)


def lowrank_file(vector: str | Path, rank: int) -> Path:
    """Where the rank-`rank` copy of `vector` lives."""
    return LOWRANK.entry(lowrank_key(cache.identity(vector), rank)) / "vector.safetensors"


def lowrank_files(vectors: Mapping[str, str | Path], ranks: tuple[int, ...] = (4, 16, 64),
                  profile: str = "") -> dict[tuple[str, int], Path]:
    """Low-rank copies of each vector at each rank, written once (one SVD per matrix for
    all missing ranks). Beside each a JSON with its key, its identity for later stages."""
    out = {}
    for condition, path in vectors.items():
        files = {r: lowrank_file(path, r) for r in ranks}
        missing = {r: f for r, f in files.items() if not f.exists()}
        if missing:
            write_lowrank_ranks(path, missing)
            for r, f in missing.items():
                write_json(f.with_suffix(".json"), {"key": f.parent.name, "rank": r})
        for r, f in files.items():
            cache.touch(f.parent, LOWRANK.name, profile, {"vector": condition, "rank": r})
            out[(condition, r)] = f
    return out


def kept_table(dose: pd.DataFrame, truncated: pd.DataFrame,
               files: Mapping[tuple[str, int], Any], vectors: Mapping[str, Any]) -> pd.DataFrame:
    """How much of the dial survives truncation: per vector and rank, the trait shift of
    the rank-r vector at its strength over the full vector's at the same strength (both
    from the base, strength 0, of the full vector's `dose` rows), with each file's size.
    `truncated` has the rank-r rows (method "rank r"). Rows: condition, label, megabytes,
    kept, shift (toward the intended pole); one "full" row per vector (kept = 1). A share
    of nothing means nothing: kept is NaN where the full vector does not move its trait
    toward its pole at that strength (a ratio over ~0 or a backwards shift)."""
    full = dose[dose["method"] == "vector"]
    rows = []
    for (condition, rank), file in files.items():
        trait, level = split_condition(condition)
        mine = truncated[(truncated["condition"] == condition)
                         & (truncated["method"] == f"rank {rank}")].iloc[0]
        ref = full[full["condition"] == condition].set_index("strength")[trait]
        base, at_full = ref.loc[0.0], ref.loc[mine["strength"]]
        toward = 1.0 if level == "high" else -1.0
        moved = toward * (at_full - base) > 0
        rows.append({"condition": condition, "label": f"r={rank}",
                     "megabytes": Path(file).stat().st_size / 1e6,
                     "kept": (mine[trait] - base) / (at_full - base) if moved else math.nan,
                     "shift": toward * (mine[trait] - base)})
    rows += [{"condition": c, "label": "full", "megabytes": Path(p).stat().st_size / 1e6,
              "kept": 1.0, "shift": float("nan")} for c, p in vectors.items()]
    return pd.DataFrame(rows)


def plot_lowrank(table):
    """Share of the full vector's trait shift kept vs file size, one line per vector."""
    import matplotlib.pyplot as plt  # plotting only where a figure is drawn

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for condition, rows in table.groupby("condition"):
        rows = rows.sort_values("megabytes")
        ax.plot(rows["megabytes"], rows["kept"], marker="o", label=condition)
        for r in rows.itertuples(index=False):
            ax.annotate(r.label, (r.megabytes, r.kept), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_xlabel("file size (MB, log scale)")
    ax.set_ylabel("trait shift kept (rank r / full)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
