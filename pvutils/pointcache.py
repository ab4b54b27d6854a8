"""Chapter 06's caches (vectors vs steering): a resumable point loop and its cache file.

The chapters RQ1–RQ4 and the layer-wise analysis cache through `sweeps.run_sweep`, whose
stages declare every field they read; chapter 06 still keys its files here, by the fields
every one of its sweeps reads and the content identity of its inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import cache, progress
from .artifacts import artifacts_dir, fingerprint, read_json, write_json


def run_points(points: Sequence[Mapping[str, Any]], evaluate: Callable[[Mapping], Any],
               cache_file: Any = None, desc: str = "sweep") -> pd.DataFrame:
    """Chapter 06's resumable point loop: each finished point is stored in `cache_file`
    (rewritten atomically after each point), keyed by its settings. Its file comes from
    `chapter_cache`; the other chapters' stages go through `run_sweep`."""
    done = read_json(cache_file) if cache_file is not None and Path(cache_file).exists() else {}
    rows: list[dict] = []
    for point in progress.bar(list(points), desc=desc):
        key = fingerprint(dict(point))
        if key not in done:
            out = evaluate(point)
            done[key] = [{**point, **r} for r in ([out] if isinstance(out, Mapping) else out)]
            if cache_file is not None:
                write_json(cache_file, done)
        rows += done[key]
    return pd.DataFrame(rows)


CHAPTER_FIELDS = ("model", "dtype", "device", "seed", "contrast_pairs")


def chapter_cache(profile: Any, name: str, *inputs: Any):
    """The cache file of a chapter-06 sweep: keyed by the fields every such sweep reads,
    the content identity of its vector / file inputs (never their mtime) and its other
    inputs."""
    p = cache.unwrap(profile)

    def ident(x: Any) -> Any:
        if isinstance(x, (str, Path)) and Path(x).exists():
            return cache.identity(x)
        if isinstance(x, Mapping):
            return {str(k): ident(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [ident(v) for v in x]
        return x

    key = fingerprint(name, {f: getattr(p, f) for f in CHAPTER_FIELDS}, [ident(x) for x in inputs])
    entry = artifacts_dir() / f"ch06-{name}" / key
    entry.mkdir(parents=True, exist_ok=True)
    cache.touch(entry, f"ch06-{name}", p.name, {"inputs": len(inputs)})
    return entry / "points.json"
