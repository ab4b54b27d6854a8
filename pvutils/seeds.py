"""The seed study: do a vector's dial and its direction survive a different training seed?

`profile.seed_study_conditions` are trained with each of `profile.seed_study_seeds` (the
seed of both the generated data and the fine-tune): each is an ordinary cached fine-tune
(`training.train_condition` under `profile.replace(seed=s)`, a key of its own beside the
default vectors). They are then measured exactly like the default vectors, with the
default profile's evaluation settings (its sampling seed too), so the only thing that
differs between the rows of one condition is the training seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import data, plans, plusminus, stats, training
from .profiles import Profile


def seed_profiles(profile: Profile) -> dict[int, Profile]:
    """The profile that trains each seed of the study, restricted to the study's
    conditions (the profile's own seed gives its default vectors)."""
    return {s: profile.replace(seed=s, conditions=profile.seed_study_conditions)
            for s in dict.fromkeys(profile.seed_study_seeds)}


def train_seeds(profile: Profile) -> dict[int, dict[str, Path]]:
    """Seed → condition → vector file, training what is not cached (data first, batched
    across the study's conditions, then one fine-tune per condition)."""
    out = {}
    for seed, P in seed_profiles(profile).items():
        data.trait_datasets(P)
        out[seed] = {c: training.train_condition(P, c) for c in P.conditions}
    return out


def seed_sweeps(model, tokenizer, seed_vectors: Mapping[int, Mapping[str, Any]],
                profile: Profile, judge=None, n_boot: int = 1000
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(RQ1 dial table, ±1 effect table) of every seed's vectors, with a `seed` column.
    RQ1 is the chapters' own contrast sweep (`plans.vector_sweep`); the ±1 effects are
    `plusminus.effect_table`."""
    dials, effects = [], []
    for seed, vecs in seed_vectors.items():
        sweep = plans.vector_sweep(model, tokenizer, dict(vecs), profile)
        dials.append(stats.dial_table(sweep).assign(seed=seed))
        rows = plusminus.plusminus_sweep(model, tokenizer, dict(vecs), profile, judge=judge)
        effects.append(plusminus.effect_table(rows, n_boot).assign(seed=seed))
    return pd.concat(dials, ignore_index=True), pd.concat(effects, ignore_index=True)


def seed_table(dials: pd.DataFrame, effects: pd.DataFrame) -> pd.DataFrame:
    """Per condition: the signed ρ of each seed, its range, whether every seed moves the
    intended way (RQ1), how many seeds go the right way at α = ±1 on both measures, and
    whether that holds under every seed, under none, or depends on the seed (right: the
    intended way on both measures at both α). Rows:
    condition, seeds, signed ρ by seed, ρ range, RQ1 holds, ±1 right (seeds), ±1 outcome."""
    rows = []
    for cond, sub in dials.groupby("condition", sort=False):
        eff = effects[effects.vector == cond]
        right = eff.groupby("seed")["right_way"].all()
        rho = sub.set_index("seed")["signed spearman"]
        rows.append({
            "condition": cond, "seeds": len(sub),
            "signed ρ by seed": ", ".join(f"{s}: {r:+.2f}" for s, r in rho.items()),
            "ρ range": float(np.ptp(rho.to_numpy())) if len(rho) else np.nan,
            "RQ1 holds": bool(sub["moves as intended"].all()),
            "±1 right (seeds)": f"{int(right.sum())} of {len(right)}",
            "±1 outcome": ("no ±1 check" if right.empty else
                           "right under every seed" if right.all() else
                           "not right under any seed" if not right.any() else
                           "depends on the seed"),
        })
    return pd.DataFrame(rows)


def seed_summary(table: pd.DataFrame) -> str:
    """One sentence a reader can check against `seed_table`'s rows: for how many conditions
    the RQ1 dial keeps its intended direction under every seed, and for how many the ±1
    check is right under every seed, under none, depends on the seed, or was not run."""
    n = len(table)
    holds = table.loc[table["RQ1 holds"], "condition"].tolist()
    fails = table.loc[~table["RQ1 holds"], "condition"].tolist()
    seeds = int(table["seeds"].max()) if n else 0
    plural = "s" if seeds != 1 else ""
    text = (f"Over {seeds} training seed{plural}, the RQ1 dial moves the intended way under "
            f"every seed for {len(holds)} of {n} conditions")
    text += f" ({', '.join(holds)})" if holds else ""
    text += f"; not for {', '.join(fails)}." if fails else "."
    groups = {o: table.loc[table["±1 outcome"] == o, "condition"].tolist()
              for o in ("right under every seed", "not right under any seed",
                        "depends on the seed")}
    parts = [f"{outcome} for {len(conds)} ({', '.join(conds)})" if conds else
             f"{outcome} for 0" for outcome, conds in groups.items()]
    text += f" The ±1 check (right way on both measures at α = ±1) is {'; '.join(parts)}."
    unchecked = table.loc[table["±1 outcome"] == "no ±1 check", "condition"].tolist()
    return text + (f" No ±1 check was run for {', '.join(unchecked)}." if unchecked else "")
