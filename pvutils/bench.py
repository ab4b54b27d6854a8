"""Chapter 06's bench: its own settings, the plan of every dial's cached sweep, and the runs.

The four dials (`harness`: vector α, steering c at the chosen layer, NPTI γ, P2 intensity)
are swept from "off" (strength 0) upward, each a `dose-<dial>` and a `capability-<dial>`
stage; the rank-r copies of the vectors (`lowrank`) at the largest α are `dose-lowrank`.
`bench_plans` is pure (the key tests walk it); `bench_sweeps` and `lowrank_dose` run them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from .cache import Stage
from .evaluation import contrast_scores
from .harness import (
    CAPABILITY,
    DOSE,
    capability_sweep,
    dial_points,
    dose_sweep,
    npti_dial,
    p2_dial,
    steering_dial,
    vector_dial,
)
from .merging import applied
from .personas import split_condition
from .plans import CONTRAST
from .steering import load_directions
from .sweeps import Plan, run_sweep


@dataclass(frozen=True)
class Bench:
    """Chapter 06's own strengths and sizes (notebook parameters; None there means these).
    Smoke sweeps fewer points so CI proves every cell in about a minute, `cpu` fewer vectors
    and strengths to fit its time on 2 cores; larger profiles sweep the full grids."""

    steering_coefficients: tuple[float, ...] = (0.5, 1.0, 2.0)
    steering_probe: float = 2.0  # c of the layer sweep
    steering_layer_step: int = 3
    p2_intensities: tuple[int, ...] = (1, 2, 3)
    n_questions: int = 40
    ranks: tuple[int, ...] = (4, 16, 64)
    mixer_alphas: tuple[float, ...] = (1.0, 2.0)
    mixer_questions: int = 3
    n_conditions: int | None = None  # the first n swept vectors (None: all)
    n_targets: int = 3  # dialled targets per vector
    npti_prompts: int | None = None  # NPTI's neurons from the first n prompts (None: all)
    bridge_chats: int | None = None  # the bridge's chats per condition (None: all)

    def describe(self) -> str:
        """The settings as a reader reads them (the page prints this, not the repr)."""
        def listed(values) -> str:
            return ", ".join(f"{v:g}" for v in values)

        return "; ".join([
            f"{'all swept' if self.n_conditions is None else self.n_conditions} vectors",
            f"steering at c = {listed(self.steering_coefficients)} (layers probed every "
            f"{self.steering_layer_step} at c = {self.steering_probe:g})",
            f"P2 at intensity {listed(self.p2_intensities)}",
            f"NPTI's neurons from {'all' if self.npti_prompts is None else self.npti_prompts}"
            " prompts",
            f"{self.n_questions} factual questions",
            f"low-rank copies at rank {listed(self.ranks)}",
            f"{self.n_targets} dialled targets per vector",
            f"the mixer at α = {listed(self.mixer_alphas)} on {self.mixer_questions} questions",
            f"the bridge on {'all' if self.bridge_chats is None else self.bridge_chats} "
            "chats per condition"])

    def chosen(self, vectors: Mapping[str, Any]) -> dict[str, Any]:
        """The vectors the chapter compares: the first `n_conditions` swept ones."""
        return dict(list(vectors.items())[: self.n_conditions])


# smoke: one vector (extraversion_high) on every dial at one strength, one dialled target,
# the layer sweep on three layers, NPTI's neurons from 4 of its 12 prompts
SMOKE_BENCH = {"steering_coefficients": (2.0,), "steering_layer_step": 10,
               "p2_intensities": (3,), "n_questions": 3, "ranks": (4,), "mixer_alphas": (1.0,),
               "mixer_questions": 1, "n_conditions": 1, "n_targets": 1, "npti_prompts": 4}


# cpu: the four dials on the first four vectors (openness and conscientiousness, high and
# low), two strengths of steering, P2 at its strongest, 20 factual questions, the bridge on
# 32 chats per condition, 128 in all (all 474 took ~24 min in a two-kernel run)
CPU_BENCH = {"steering_coefficients": (1.0, 2.0), "p2_intensities": (3,), "n_questions": 20,
             "n_conditions": 4, "mixer_alphas": (1.0, 2.0), "bridge_chats": 32}
PROFILE_BENCH = {"smoke": SMOKE_BENCH, "cpu": CPU_BENCH}


def bench_settings(name: str, **given: Any) -> Bench:
    """The chapter's settings for the profile named `name` (the notebook's `profile`
    parameter, so a renamed profile keeps them): each given (not None) value, else the
    profile's (`PROFILE_BENCH`: smoke, cpu), else the full default. (NPTI's γ is the
    profile's field.)"""
    unknown = sorted(set(given) - {f.name for f in fields(Bench)})
    if unknown:
        raise ValueError(f"unknown chapter-06 setting(s) {unknown}")
    chosen = {**PROFILE_BENCH.get(name, {}),
              **{k: v for k, v in given.items() if v is not None}}
    return Bench(**{k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items()})


def _direction(condition: str) -> str:
    return f"direction:{split_condition(condition)[0]}"


def bench_plans(profile, bench: Bench, conditions: Sequence[str],
                layer: int) -> dict[str, Plan]:
    """The dose and capability plans of the four dials, by stage name. A vector point uses
    its vector, a steering point its trait's direction file (`steering.direction_files`)."""
    alphas = DOSE["vector"].view(profile).alphas
    gammas = DOSE["NPTI"].view(profile).npti_gammas
    dials = {
        "vector": ([0.0, *alphas], {c: [c] for c in conditions}, {}),
        "steering": ([0.0, *bench.steering_coefficients],
                     {c: [_direction(c)] for c in conditions}, {"layer": int(layer)}),
        "NPTI": ([0.0, *gammas], {}, {"npti_prompts": bench.npti_prompts}),
        "P2": ([0, *bench.p2_intensities], {}, {}),
    }
    plans = {}
    for dial, (strengths, uses, labels) in dials.items():
        points = dial_points(dial, conditions, strengths, uses, **labels)
        plans[DOSE[dial].name] = (DOSE[dial], points, ())
        plans[CAPABILITY[dial].name] = (CAPABILITY[dial], [
            {**p, "n_questions": bench.n_questions} for p in points], ())
    return plans


def bench_sweeps(model, tokenizer, profile, bench: Bench, vectors: Mapping[str, Path],
                 directions: Mapping[str, Path], layer: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(dose, capability) tables of the four dials over the vectors' conditions, cached.
    `directions`: trait -> direction file."""
    plans = bench_plans(profile, bench, list(vectors), layer)
    factories = {"vector": vector_dial(model, vectors),
                 "steering": steering_dial(model, load_directions(directions), layer),
                 "NPTI": npti_dial(model, tokenizer, n_prompts=bench.npti_prompts),
                 "P2": p2_dial(model)}
    inputs = {**vectors, **{f"direction:{t}": f for t, f in directions.items()}}
    dose = [dose_sweep(model, tokenizer, plans[DOSE[d].name], profile, at, inputs)
            for d, at in factories.items()]
    capab = [capability_sweep(model, tokenizer, plans[CAPABILITY[d].name], profile, at, inputs)
             for d, at in factories.items()]
    return pd.concat(dose, ignore_index=True), pd.concat(capab, ignore_index=True)


def lowrank_plan(profile, pairs: Sequence[tuple[str, int]]) -> Plan:
    """Each (condition, rank) copy at the profile's largest alpha."""
    top = max(LOWRANK_DOSE.view(profile).alphas)
    return LOWRANK_DOSE, [p for c, r in pairs for p in
                             dial_points(f"rank {r}", [c], [top], {c: [f"{c}@r{r}"]})], ()


def lowrank_dose(model, tokenizer, files: Mapping[tuple[str, int], Path],
                 profile) -> pd.DataFrame:
    """The intended trait's score of each low-rank copy (`lowrank.lowrank_files`) at the
    largest alpha (only that trait: `lowrank.kept_table` reads nothing else).
    Rows: method ("rank r"), condition, strength, trait, level, <trait>."""
    P = LOWRANK_DOSE.view(profile)
    inputs = {f"{c}@r{r}": f for (c, r), f in files.items()}

    def measure(point):
        trait, level = split_condition(point["condition"])
        with applied(model, [inputs[point["_uses"][0]]], [point["strength"]],
                     reuse_buffers=True):
            score = contrast_scores(model, tokenizer, [trait], n_pairs=P.contrast_pairs)
        return {"trait": trait, "level": level, **score}

    return run_sweep(lowrank_plan(P, list(files)), P, measure, inputs=inputs)


LOWRANK_DOSE = Stage("dose-lowrank", CONTRAST, grid=("alphas", "sweep_conditions"),
                     code=(lowrank_dose,))
