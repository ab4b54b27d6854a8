"""Tensor reads: the safetensors library (`safe_open` + `get_tensor`/`get_slice`) vs plain
`os.preadv` at the offsets the library validated (`SafetensorsSource(reader=...)`).

    .venv/bin/python benchmarks/bench_reads.py MODEL_DIR VECTOR.safetensors [VECTOR ...]

Reads every tensor of the base and each vector once, as a task-arithmetic merge does
(whole tensors, then row blocks of 1/8 of each matrix, then `read_into` a reused buffer),
each reader in its own process under /usr/bin/time: wall time and peak RSS; min of 3.

Measured 2026-12-01 (2 shared cores, load ~3.5; SmolLM2-135M float32 + 2 vectors):
pread 3.03 s / 0.38 GB peak RSS, library 2.12 s / 1.83 GB (wall times vary 2-4x run to
run on this machine; RSS does not). The default reader stays "pread".
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import torch

from pvutils.tensorio import SafetensorsSource


def read_all(paths: list[str], reader: str) -> float:
    start = time.perf_counter()
    sources = [SafetensorsSource(p, reader=reader) for p in paths]
    total = 0.0
    for name in sources[0].keys():
        for src in sources:
            shape = src.shape(name)
            total += float(src.get(name).sum())
            if len(shape) == 2:
                step = max(1, shape[0] // 8)
                for a in range(0, shape[0], step):
                    total += float(src.get_rows(name, a, a + step).sum())
                buf = torch.empty(step * shape[1])
                src.read_into(name, (0, step), buf)
                total += float(buf.sum())
    return time.perf_counter() - start


def measure(paths: list[str], reader: str) -> tuple[float, float]:
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", reader, *paths]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = float(done.stdout.split()[-1])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    return wall, rss / 1e6


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        print(read_all(sys.argv[3:], sys.argv[2]))
        sys.exit(0)
    paths = sys.argv[1:]
    for reader in ("pread", "library", "pread", "library", "pread", "library"):
        wall, rss = measure(paths, reader)
        print(f"{reader:8s} wall {wall:6.2f} s  peak RSS {rss:5.2f} GB", flush=True)
