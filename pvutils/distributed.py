"""The RQ1/RQ2 grids as Ray tasks: 200 and 128 merged models without writing one of them.

Each Ray worker (an actor holding one GPU, or some CPUs) loads the base model once and
evaluates points with the same in-place merge as the local sweep (`merging.applied`), so
the grid needs the base weights once per worker and never a merged model on disk.
`run_points` is the executor: points and an evaluate callable in, the local loop's row
dicts out (in point order), so it can stand behind any sweep driver. `run_sweep_ray` adds
the local sweep's cache: the same file, the same keys, so a grid started on a cluster can
be finished on a laptop, and the reverse.

`ray` is an optional extra (`pip install -e .[ray]`); local execution stays the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .artifacts import fingerprint, read_json, write_json

Point = Mapping[str, Any]
Rows = Mapping[str, Any] | Sequence[Mapping[str, Any]]


def _ray():
    try:
        import ray  # optional: only the distributed path needs it
    except ImportError as err:
        raise ImportError("the Ray sweep needs ray: pip install 'pvutils[ray]'") from err
    return ray


class _Worker:
    """One Ray actor: keeps its evaluate callable (and whatever model it loads) alive."""

    def __init__(self, evaluate: Callable[[Point], Rows]):
        self.evaluate = evaluate

    def run(self, index: int, point: Point) -> tuple[int, list[dict]]:
        result = self.evaluate(point)
        results = [result] if isinstance(result, Mapping) else list(result)
        return index, [{**point, **r} for r in results]


def run_points(points: Sequence[Point], evaluate: Callable[[Point], Rows],
               num_workers: int = 1, num_cpus: float = 1, num_gpus: float = 0,
               on_result: Callable[[int, list[dict]], None] | None = None) -> list[dict]:
    """Evaluate every point on Ray actors; the rows `{**point, **result}` in point order.

    `evaluate` is pickled once per actor (give it a model *name*, not a loaded model, and
    load lazily: see `ContrastPoint`). `num_gpus=1` gives each actor its own GPU (Ray sets
    CUDA_VISIBLE_DEVICES). `on_result(index, rows)` is called as each point finishes.
    Ray must be initialised (`ray.init()`), or it starts a local instance.
    """
    if not points:
        return []
    ray = _ray()
    from ray.util import ActorPool

    worker = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(_Worker)
    shared = ray.put(evaluate)
    pool = ActorPool([worker.remote(shared) for _ in range(min(num_workers, len(points)))])
    by_index: dict[int, list[dict]] = {}
    for index, rows in pool.map_unordered(lambda actor, job: actor.run.remote(*job),
                                          list(enumerate(points))):
        by_index[index] = rows
        if on_result is not None:
            on_result(index, rows)
    return [row for i in range(len(points)) for row in by_index[i]]


def run_sweep_ray(points: Sequence[Point], evaluate: Callable[[Point], Rows],
                  cache_file: str | Path | None = None, **resources: Any) -> pd.DataFrame:
    """`analysis.run_sweep` on Ray: same cache file and keys, same table.

    Points already in the cache are not sent to Ray; each finished point is written to the
    cache as it arrives (atomically), so a killed grid resumes, locally or on Ray.
    """
    done: dict[str, list[dict]] = {}
    if cache_file is not None and Path(cache_file).exists():
        done = read_json(cache_file)
    keys = [fingerprint(dict(p)) for p in points]
    todo = [i for i, k in enumerate(keys) if k not in done]

    def store(j: int, rows: list[dict]) -> None:
        done[keys[todo[j]]] = rows
        if cache_file is not None:
            write_json(cache_file, done)

    run_points([points[i] for i in todo], evaluate, on_result=store, **resources)
    return pd.DataFrame([row for k in keys for row in done[k]])


# --- the chapters' grids as picklable evaluators ----------------------------------------


@dataclass
class _ModelPoint:
    """Loads the base model on first use in its worker, then keeps it (one load per actor)."""

    model: str
    vectors: dict[str, str]
    dtype: str = "float32"
    device: str = "cpu"
    n_pairs: int | None = None
    _loaded: Any = field(default=None, repr=False, compare=False)

    def loaded(self):
        if self._loaded is None:
            from . import models

            self._loaded = (models.load_model(self.model, self.dtype, self.device),
                            models.load_tokenizer(self.model))
        return self._loaded

    def __getstate__(self):  # ship the names, never a loaded model
        return {**self.__dict__, "_loaded": None}


@dataclass
class ContrastPoint(_ModelPoint):
    """RQ1: the contrast score of a vector's own trait at (condition, alpha), as
    `analysis.vector_sweep` computes it."""

    def __call__(self, point: Point) -> dict:
        from .analysis import _at_point
        from .evaluation import contrast_scores

        model, tok = self.loaded()
        trait, level = point["condition"].rsplit("_", 1)
        with _at_point(model, self.vectors, point):
            score = contrast_scores(model, tok, [trait], n_pairs=self.n_pairs)[trait]
        return {"trait": trait, "level": level, "score": score}


@dataclass
class CompositionPoint(_ModelPoint):
    """RQ2: one merged profile (one vector per trait, a shared alpha, a merge method), as
    `analysis.composition_sweep` computes it."""

    profiles: list[dict[str, str]] = field(default_factory=list)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __call__(self, point: Point) -> dict:
        from .evaluation import contrast_scores
        from .merging import applied

        model, tok = self.loaded()
        profile = {_code(p): p for p in self.profiles}[point["profile"]]
        chosen = [self.vectors[f"{t}_{lv}"] for t, lv in profile.items()]
        params = dict(self.methods[point["method"]])
        method, alpha = params.pop("method"), point["alpha"]
        weights = [alpha] * len(chosen)
        if params.pop("scale", "weight") == "lambda":
            weights, params = [1.0] * len(chosen), {**params, "normalize": True, "lambda_": alpha}
        with applied(model, chosen, weights, method=method, reuse_buffers=True, **params):
            scores = contrast_scores(model, tok, list(profile), n_pairs=self.n_pairs)
        targets = {f"target_{t}": 1 if lv == "high" else -1 for t, lv in profile.items()}
        return {**targets, **scores}


def _code(profile: Mapping[str, str]) -> str:
    return "".join(lv[0].upper() for lv in profile.values())


def vector_points(vectors: Mapping[str, Any], alphas: Sequence[float]) -> list[dict]:
    """RQ1's points, exactly the local sweep's (the base once per trait, then vector x alpha)."""
    from .analysis import _sweep_points

    return _sweep_points(vectors, alphas)


def composition_points(profiles: Sequence[Mapping[str, str]], alphas: Sequence[float],
                       methods: Mapping[str, Any]) -> list[dict]:
    """RQ2's points, exactly the local sweep's (method x alpha x profile)."""
    return [{"method": m, "alpha": float(a), "profile": _code(p)}
            for m in methods for a in alphas for p in profiles]


def ray_resources(device: str) -> dict[str, float]:
    """One GPU per worker on CUDA; one CPU per worker otherwise."""
    return {"num_cpus": 1, "num_gpus": 1 if device.startswith("cuda") else 0}


def rq1_grid(profile, vectors: Mapping[str, str | Path], num_workers: int,
             cache_file: str | Path | None = None) -> pd.DataFrame:
    """RQ1 on Ray: every vector at every alpha of the profile (200 models at paper scale).

    The default cache is the chapter's own (`analysis.sweep_cache(P, "rq1", vectors,
    P.alphas)`), so the notebook then reads the grid instead of computing it.
    """
    from .analysis import sweep_cache

    cache_file = cache_file or sweep_cache(profile, "rq1", vectors, profile.alphas)
    evaluate = ContrastPoint(profile.model, {k: str(v) for k, v in vectors.items()},
                             profile.dtype, profile.device, profile.contrast_pairs)
    return run_sweep_ray(vector_points(vectors, profile.alphas), evaluate, cache_file,
                         num_workers=num_workers, **ray_resources(profile.device))


def rq2_grid(profile, vectors: Mapping[str, str | Path], num_workers: int,
             cache_file: str | Path | None = None) -> pd.DataFrame:
    """RQ2 on Ray: 2^k profiles x shared alphas x merge methods (128 models per method
    family at paper scale: 32 profiles x 4 alphas); cached where the chapter looks."""
    from .analysis import merge_methods, sweep_cache, trait_profiles

    profiles = trait_profiles(profile.composition_traits)
    methods = merge_methods(profile)
    cache_file = cache_file or sweep_cache(profile, "rq2", vectors, profile.composition_traits,
                                           profile.composition_alphas, methods)
    evaluate = CompositionPoint(profile.model, {k: str(v) for k, v in vectors.items()},
                                profile.dtype, profile.device, profile.contrast_pairs,
                                profiles=profiles, methods=methods)
    return run_sweep_ray(composition_points(profiles, profile.composition_alphas, methods),
                         evaluate, cache_file, num_workers=num_workers,
                         **ray_resources(profile.device))
