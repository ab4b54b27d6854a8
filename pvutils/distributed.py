"""The RQ1/RQ2 grids as Ray tasks: 200 and 128 merged models without writing one of them.

Each Ray worker (an actor holding one GPU, or some CPUs) loads the base model once and
evaluates points with the same in-place merge and measure as the local sweep
(`sweeps.applying`, `merging.applied`, `plans._contrast`, `plans._trait_interview`),
so the grid needs the base weights once per worker and never a merged model on disk (with
`generation_backend="vllm"` each actor also runs one vLLM engine, fed the merged weights
in place: `backends.generator`). `run_points` is the executor:
points and an evaluate callable in, each point's result rows out. `run_sweep_ray` puts it
behind the local cache: it takes a `sweeps` plan, sends only the points whose JSON file is
missing, and writes each result to the very file `sweeps.run_sweep` would, as it arrives.
The grids then return the local driver's table (`plans.vector_sweep`, which finds every
point cached), so a grid started on a cluster can be finished on a laptop, and the reverse.

`ray` is an optional extra (`pip install -e .[ray]`); local execution stays the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import cache, plans, progress, sweeps
from .artifacts import write_json
from .evaluation import judge_interview_results

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
        out = self.evaluate(point)
        return index, [dict(out)] if isinstance(out, Mapping) else [dict(r) for r in out]


def run_points(points: Sequence[Point], evaluate: Callable[[Point], Rows],
               num_workers: int = 1, num_cpus: float = 1, num_gpus: float = 0,
               on_result: Callable[[int, list[dict]], None] | None = None) -> list[list[dict]]:
    """Evaluate every point on Ray actors; each point's result rows, in point order.

    `evaluate` is pickled once per actor (give it a model *name*, not a loaded model, and
    load lazily: see `ContrastPoint`). `num_gpus=1` gives each actor its own GPU (Ray sets
    CUDA_VISIBLE_DEVICES). `on_result(index, rows)` is called as each point finishes.
    Ray must be initialised (`ray.init()`), or it starts a local instance.
    """
    if not points:
        return []
    ray = _ray()
    from ray.util import ActorPool  # part of the optional ray

    worker = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(_Worker)
    shared = ray.put(evaluate)
    pool = ActorPool([worker.remote(shared) for _ in range(min(num_workers, len(points)))])
    by_index: dict[int, list[dict]] = {}
    for index, rows in pool.map_unordered(lambda actor, job: actor.run.remote(*job),
                                          list(enumerate(points))):
        by_index[index] = rows
        if on_result is not None:
            on_result(index, rows)
    return [by_index[i] for i in range(len(points))]


def point_files(plan: sweeps.Plan, profile: Any,
                inputs: Mapping[str, Any] | None = None) -> list[Path]:
    """Each point's cache file, as `sweeps.run_sweep` names it (stage key, point key)."""
    stage, points, extra = plan
    entry = stage.entry(stage.key(profile, *extra))
    ids = {name: cache.identity(v) for name, v in (inputs or {}).items()
           if any(name in p.get("_uses", ()) for p in points)}
    return [entry / "points" / f"{sweeps.point_key(p, ids)}.json" for p in points]


def run_sweep_ray(plan: sweeps.Plan, profile: Any, evaluate: Callable[[Point], Rows],
                  inputs: Mapping[str, Any] | None = None, **resources: Any) -> int:
    """Compute on Ray the points of `plan` that the local cache lacks; how many it computed.

    Each result is written (atomically) to the file `sweeps.run_sweep` reads, as it
    arrives, so a killed grid resumes, locally or on Ray. `resources` go to `run_points`.
    """
    stage, points, _ = plan
    todo = [(p, f) for p, f in zip(points, point_files(plan, profile, inputs))
            if not f.exists()]
    progress.log(f"stage {stage.name} on Ray: {len(points) - len(todo)} of {len(points)} "
                 f"points cached, {len(todo)} to compute")
    run_points([p for p, _ in todo], evaluate,
               on_result=lambda j, rows: write_json(todo[j][1], rows), **resources)
    return len(todo)


# --- the chapters' grids as picklable evaluators ----------------------------------------


@dataclass
class _ModelPoint:
    """Loads the profile's base model on first use in its worker, then keeps it (one load
    per actor). `profile` is a plain Profile (a view is unwrapped: it does not pickle)."""

    profile: Any
    vectors: dict[str, str]
    _loaded: Any = field(default=None, repr=False, compare=False, kw_only=True)

    def __post_init__(self):
        self.profile = cache.unwrap(self.profile)

    def loaded(self):
        if self._loaded is None:
            from . import models  # transformers: loaded in the worker, not when pickled

            P = self.profile
            self._loaded = (models.load_model(P.model, P.dtype, P.device),
                            models.load_tokenizer(P.model))
        return self._loaded

    def __getstate__(self):  # ship the names, never a loaded model
        return {**self.__dict__, "_loaded": None}


@dataclass
class ContrastPoint(_ModelPoint):
    """RQ1: the contrast score of a vector's own trait at (condition, alpha), as
    `plans.vector_sweep` measures it (θ + α φ by `sweeps.applying`)."""

    def __call__(self, point: Point) -> dict:
        model, tok = self.loaded()
        P = plans.RQ1.view(self.profile)
        trait, level = plans._trait_level(point)
        with sweeps.applying(model, self.vectors)(dict(point)):
            score = plans._contrast(model, tok, [trait], P)[trait]
        return {"trait": trait, "level": level, "score": score}


@dataclass
class CompositionPoint(_ModelPoint):
    """RQ2: one merged profile (the point's `_uses` vectors, a shared alpha, a merge method
    of `plans.merge_methods`), as `plans.composition_sweep` applies and measures it."""

    def __call__(self, point: Point) -> dict:
        model, tok = self.loaded()
        P = plans.RQ2.view(self.profile)
        with plans.composition_apply(model, self.vectors, plans.merge_methods(P), point):
            return plans.composition_measure(model, tok, P, point)


@dataclass
class InterviewPoint(_ModelPoint):
    """RQ1's interview at (condition, alpha): the vector's own trait interviewed (on the
    profile's generation backend, `backends.generator`) and scored by every judge, as
    `plans.interview_sweep` measures it; the judges are built once per actor."""

    judges: tuple[str, ...] = ()
    _judges: dict = field(default_factory=dict, repr=False, compare=False, kw_only=True)

    def __call__(self, point: Point) -> list[dict]:
        model, tok = self.loaded()
        P = plans.RQ1_INTERVIEW.view(self.profile)
        if not self._judges:
            self._judges.update({n: plans._make_judge(n, P) for n in self.judges})
        trait, level = plans._trait_level(point)
        with sweeps.applying(model, self.vectors)(dict(point)):
            transcripts = plans._trait_interview(model, tok, P, trait)
        return [{"trait": trait, "level": level, "judge": name, "score": r.score,
                 "analysis": r.analysis}
                for name, judge in self._judges.items()
                for r in [judge_interview_results(transcripts, judge)[trait]]]

    def __getstate__(self):  # names only: judges and models are rebuilt in the worker
        return {**super().__getstate__(), "_judges": {}}


def ray_resources(device: str) -> dict[str, float]:
    """One GPU per worker on CUDA; one CPU per worker otherwise."""
    return {"num_cpus": 1, "num_gpus": 1 if device.startswith("cuda") else 0}


def _paths(vectors: Mapping[str, str | Path]) -> dict[str, str]:
    return {k: str(v) for k, v in vectors.items()}


def rq1_grid(profile, vectors: Mapping[str, str | Path], num_workers: int) -> pd.DataFrame:
    """RQ1 on Ray: every vector at every alpha of the profile (200 models at paper scale).

    The points and their cache are `plans.vector_sweep`'s, which then returns the table
    from the cache (no model needed), so the chapter reads the grid instead of computing it.
    """
    P, vecs = plans.RQ1.view(profile), _paths(vectors)
    run_sweep_ray(plans.rq1_plan(P, vecs), P, ContrastPoint(P, vecs), vecs,
                  num_workers=num_workers, **ray_resources(P.device))
    return plans.vector_sweep(None, None, vecs, P)


def rq2_grid(profile, vectors: Mapping[str, str | Path], num_workers: int) -> pd.DataFrame:
    """RQ2 on Ray: 2^k profiles x shared alphas x merge methods (128 models per method
    family at paper scale: 32 profiles x 4 alphas); cached where the chapter looks, and
    returned by `plans.composition_sweep` from that cache."""
    P, vecs = plans.RQ2.view(profile), _paths(vectors)
    run_sweep_ray(plans.composition_plan(P), P, CompositionPoint(P, vecs), vecs,
                  num_workers=num_workers, **ray_resources(P.device))
    return plans.composition_sweep(None, None, vecs, P)


def interview_grid(profile, vectors: Mapping[str, str | Path], num_workers: int,
                   judges: Sequence[str] | None = None) -> pd.DataFrame:
    """RQ1's interviews on Ray (200 models x 220 replies at paper scale; vLLM per actor with
    `generation_backend="vllm"`), cached where `plans.interview_sweep` looks, and returned
    by it from that cache. `judges` as `plans.interview_plan` (default: the profile's and
    the embedding judge)."""
    P, vecs = plans.RQ1_INTERVIEW.view(profile), _paths(vectors)
    plan = plans.interview_plan(P, vecs, judges)
    run_sweep_ray(plan, P, InterviewPoint(P, vecs, judges=tuple(plan[2][0])), vecs,
                  num_workers=num_workers, **ray_resources(P.device))
    return plans.interview_sweep(None, None, vecs, P, plan[2][0])
