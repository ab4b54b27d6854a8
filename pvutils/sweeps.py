"""The chapters' sweeps: one generic driver (points x apply x measure), cached per point.

A sweep evaluates many models that differ only by what `apply` does to one loaded base
(θ + Σ α_i φ_i in place, NPTI hooks, or nothing); it never writes a model (see
`merging.applied`). Every finished point is stored on its own under its stage's key,
`<artifacts>/<stage>/<key>/points/<point key>.json`, so a killed chapter resumes where it
stopped, a longer grid reuses the points it has, and a changed field that the stage reads
starts a new key beside the old one. A point's key holds its settings and the identity of
the vectors it applies (`cache.identity`: the key of the fine-tune that made them).

The chapters' plans and measures live in `plans` (RQ1–RQ4, layer-wise) and `bench`
(chapter 06).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from . import cache, progress
from .artifacts import fingerprint, read_json, write_json
from .cache import Stage
from .merging import applied
from .profiles import PROFILES

Plan = tuple[Stage, list[dict], tuple]  # the stage, its points, extra inputs of its key


def point_key(point: Mapping[str, Any], ids: Mapping[str, str]) -> str:
    """A point's settings (keys without a leading "_") and the identities of `_uses`."""
    labels = {k: v for k, v in point.items() if not k.startswith("_")}
    return fingerprint(labels, [ids[name] for name in point.get("_uses", ())])


def run_sweep(plan: Plan, profile: Any, measure: Callable[[dict], Mapping | Sequence[Mapping]],
              apply: Callable[[dict], contextlib.AbstractContextManager] | None = None,
              inputs: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Evaluate every point of `plan` once: `with apply(point): measure(point)`.

    Rows are the point's settings plus each result row. `inputs` maps the names in a
    point's `_uses` to what it applies (vector files or tensors), whose identities key it.
    """
    stage, points, extra = plan
    key = stage.key(profile, *extra)
    entry = stage.entry(key)
    files = point_files(plan, profile, inputs)
    done = sum(f.exists() for f in files)
    progress.log(f"stage {stage.name} [key {key}]: {done} of {len(points)} points cached, "
                 f"{len(points) - done} to compute")
    rows: list[dict] = []
    for point, file in progress.bar(list(zip(points, files)), desc=stage.name):
        if file.exists():
            result = read_json(file)
        else:
            with apply(point) if apply else contextlib.nullcontext():
                out = measure(point)
            result = [dict(out)] if isinstance(out, Mapping) else [dict(r) for r in out]
            write_json(file, result)
        labels = {k: v for k, v in point.items() if not k.startswith("_")}
        rows += [{**labels, **r} for r in result]
    cache.touch(entry, stage.name, profile.name, summary(stage, profile, len(points)))
    return pd.DataFrame(rows)


def point_files(plan: Plan, profile: Any, inputs: Mapping[str, Any] | None = None) -> list:
    """Each point's cache file: `<stage>/<stage key>/points/<point key>.json`."""
    stage, points, extra = plan
    entry = stage.entry(stage.key(profile, *extra))
    ids = {name: cache.identity(v) for name, v in (inputs or {}).items()
           if any(name in p.get("_uses", ()) for p in points)}
    return [entry / "points" / f"{point_key(p, ids)}.json" for p in points]


def summary(stage: Stage, profile: Any, n_points: int) -> dict[str, Any]:
    """The short key summary `cache` lists: the stage's fields that were overridden (differ
    from the named profile's, or from `cpu` for an unnamed one), and the number of points."""
    p = cache.unwrap(profile)
    ref = PROFILES.get(p.name, PROFILES["cpu"])
    return {**{f: getattr(p, f) for f in stage.fields if getattr(p, f) != getattr(ref, f)},
            "points": n_points}


def applying(model, vectors: Mapping[str, Any]) -> Callable[[dict], Any]:
    """`apply` for points that add their `_uses` vectors with `weights` (default: alpha)."""
    def apply(point: dict):
        uses = point.get("_uses", ())
        if not uses:
            return contextlib.nullcontext(model)
        weights = point.get("_weights", [point.get("alpha", 1.0)] * len(uses))
        return applied(model, [vectors[n] for n in uses], weights, reuse_buffers=True)

    return apply

