"""`python -m pvutils ablate`: train the ten vectors under recipe variants and compare
how many dials turn both ways.

A variant is a name and profile overrides (`name=field:value,field:value` on the command
line, or a YAML file `{name: {field: value}}`). Overridden training fields give new cache
keys, so every variant's vectors live beside the others and the default's; each variant
gets the ±1 table of `plusminus` (its own trait at α = ±1 on the contrast BFI and the
embedding judge, with paired-bootstrap intervals), and one comparison table counts, per
variant, the vectors that go the right way at both α on both measures, with a 95 %
interval from the same bootstrap (every unit of every vector resampled at once).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from . import book, components, models, plusminus, training
from .artifacts import artifacts_dir, atomic_path
from .bundled import resource
from .judges import get_judge
from .launch import parse_overrides
from .outputs import report_error
from .profiles import field_names, get_profile

DEFAULT = "default"


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """`"long=n_dialogues:128,train_epochs:1"` -> ("long", {"n_dialogues": 128, ...});
    values are YAML (numbers, lists `[a, b]`, booleans)."""
    name, sep, body = spec.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--variant {spec!r}: expected NAME=FIELD:VALUE[,FIELD:VALUE...]")
    overrides: dict[str, Any] = {}
    for item in _split_top(body):
        field, colon, value = item.partition(":")
        if not colon or not field.strip():
            raise ValueError(f"--variant {spec!r}: {item!r} is not FIELD:VALUE")
        overrides[field.strip()] = yaml.safe_load(value)
    return name.strip(), overrides


def _split_top(body: str) -> list[str]:
    """Split on commas outside brackets (so `alphas:[1, 2]` stays one item)."""
    parts, depth, cur = [], 0, ""
    for ch in body:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in [*parts, cur] if p.strip()]


def load_variants(path: str | Path) -> dict[str, dict[str, Any]]:
    """A YAML (or JSON) file mapping variant name → {field: value}, or the name of a
    bundled set (`pvutils/resources/ablation_<name>.json`, e.g. "recipe")."""
    if Path(path).is_file():
        raw = yaml.safe_load(Path(path).read_text())
    elif "/" not in str(path) and not str(path).endswith((".yaml", ".yml", ".json")):
        raw = {k: v for k, v in resource(f"ablation_{path}").items() if not k.startswith("_")}
    else:
        raise ValueError(f"no variants file {path}")
    if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping) for v in raw.values()):
        raise ValueError(f"{path}: expected a mapping of variant name -> {{field: value}}")
    return {str(k): dict(v) for k, v in raw.items()}


def check_variants(profile: str, variants: Mapping[str, Mapping[str, Any]],
                   base: Mapping[str, Any] | None = None) -> None:
    """Every variant is a valid profile (unknown fields, bad values: one clear error)."""
    known = set(field_names())
    for name, overrides in variants.items():
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"variant {name!r}: unknown profile field(s) {unknown}")
        get_profile(profile, **{**(base or {}), **overrides})


# --- the count of dials that turn both ways, with its interval ---------------------------


def count_interval(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Vectors right at every α on every measure: the count and its 95 % interval from a
    bootstrap that resamples the units of every (vector, α, measure) at once."""
    rng = np.random.default_rng(seed)
    base = rows[rows.vector == "base"].set_index(["trait", "measure", "unit"])["value"]
    base = base.sort_index()  # a lookup on an unsorted index warns and is slow
    right: dict[str, np.ndarray] = {}
    point: dict[str, bool] = {}
    for (vector, trait, alpha, measure), sub in rows[rows.vector != "base"].groupby(
            ["vector", "trait", "alpha", "measure"], sort=False):
        x = sub["value"].to_numpy(float)
        y = base.loc[trait, measure].reindex(sub["unit"]).to_numpy(float)
        stat, sign = plusminus.statistic(measure), plusminus.expected_sign(vector, alpha)
        idx = rng.integers(0, len(x), size=(n_boot, len(x)))
        ok = stat(x[idx], y[idx], axis=1) * sign > 0
        right[vector] = right.get(vector, np.ones(n_boot, bool)) & ok
        point[vector] = point.get(vector, True) and bool(stat(x, y) * sign > 0)
    counts = np.sum(list(right.values()), axis=0)
    lo, hi = np.percentile(counts, [2.5, 97.5])
    return {"right both ways": int(sum(point.values())), "lo": float(lo), "hi": float(hi),
            "of": len(point)}


def comparison(results: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]],
               variants: Mapping[str, Mapping[str, Any]], n_boot: int = 1000) -> pd.DataFrame:
    """One row per variant: its overrides, the count right both ways [interval], how many
    are also sure (every interval excludes zero), and the count right at each α."""
    out = []
    for name, (rows, effects) in results.items():
        c = count_interval(rows, n_boot)
        s = plusminus.summary(effects)
        out.append({"variant": name,
                    "overrides": ", ".join(f"{k}={v}" for k, v in variants[name].items()) or "-",
                    "right both ways": f"{c['right both ways']} of {c['of']} "
                                       f"[{c['lo']:.0f}, {c['hi']:.0f}]",
                    "sure both ways": s["sure both ways"],
                    **{k: v for k, v in s.items() if k.startswith("right at")}})
    return pd.DataFrame(out)


def report(table: pd.DataFrame, verdicts: Mapping[str, pd.DataFrame], command: str,
           revision: Mapping[str, Any], seconds: float,
           shares: Mapping[str, pd.DataFrame] | None = None) -> str:
    """The ablation as a markdown page (`<out>/README.md`): the command, the commit, the
    wall time of this invocation (stages already cached are only read), the comparison,
    each variant's ±1 table and (`shares`) how much of each vector the mean of its
    variant's vectors explains (`components.shared_share`)."""
    state = f"`{revision.get('commit', 'unknown')}`" + (
        " with uncommitted changes" if revision.get("dirty") else "")
    parts = [f"# Recipe ablation\n\nCommand: `{command}`  \nCommit: {state}  \n"
             f"Wall time: {seconds / 60:.1f} min\n\n## How many dials turn both ways\n\n"
             + table.to_markdown(index=False)]
    for name, t in verdicts.items():
        parts.append(f"## {name}: each vector at α = ±1 (effect vs the base [95 % interval])"
                     f"\n\n" + t.to_markdown(index=False))
    for name, t in (shares or {}).items():
        parts.append(f"## {name}: the shared component (the mean of its vectors)\n\n"
                     + t.to_markdown(index=False, floatfmt=".3f"))
    return "\n\n".join(parts) + "\n"


# --- the driver --------------------------------------------------------------------------


def run_variant(profile: str, overrides: Mapping[str, Any], judge=None,
                n_boot: int = 1000) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Path]]:
    """Train (or load) one variant's vectors, measure each on its own trait at α = ±1.
    Returns (the per-unit rows, the effect table, the vectors' files)."""
    P = get_profile(profile, **overrides)
    vectors = training.train_all_vectors(P)
    swept = {c: vectors[c] for c in P.sweep_conditions if c in vectors}
    model = models.load_model(P.model, dtype=P.dtype, device=P.device)
    tokenizer = models.load_tokenizer(P.model)
    rows = plusminus.plusminus_sweep(model, tokenizer, swept, P, judge=judge)
    return rows, plusminus.effect_table(rows, n_boot), vectors


def run_ablation(profile: str, variants: Mapping[str, Mapping[str, Any]],
                 out_dir: Path | None = None, judge=None, n_boot: int = 1000,
                 base: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Every variant in turn (its overrides over `base`, the overrides all share); writes
    `<out>/<variant>/effects.csv` and `table.csv` (the ±1 table) and
    `share.csv` (the shared component), `<out>/comparison.csv`, and `<out>/README.md`
    (`report`: command, commit, wall time, the tables). Returns the comparison."""
    base = dict(base or {})
    check_variants(profile, variants, base)
    out_dir = Path(out_dir or artifacts_dir() / "ablation" / profile)
    if judge is None:
        judge = get_judge("embedding")
    results, verdicts, shares, start = {}, {}, {}, time.perf_counter()
    for name, overrides in variants.items():
        rows, effects, vectors = run_variant(profile, {**base, **overrides}, judge, n_boot)
        results[name], verdicts[name] = (rows, effects), plusminus.verdict(effects)
        shares[name] = components.shared_share(
            {c: p for c, p in vectors.items() if not c.startswith("domain_")})
        for file, table in (("effects.csv", effects), ("table.csv", verdicts[name]),
                            ("share.csv", shares[name])):
            with atomic_path(out_dir / name / file) as tmp:
                table.to_csv(tmp, index=False)
    table = comparison(results, variants, n_boot)
    with atomic_path(out_dir / "comparison.csv") as tmp:
        table.to_csv(tmp, index=False)
    command = "python -m pvutils ablate " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if sys.argv[1:2] == ["ablate"] else f"run_ablation({profile!r}, {dict(variants)!r})"
    with atomic_path(out_dir / "README.md") as tmp:
        Path(tmp).write_text(report(table, verdicts, command, book.revision(),
                                    time.perf_counter() - start, shares))
    return table


def cli_ablate(argv: Sequence[str]) -> int:
    """`python -m pvutils ablate --profile cpu --variant long=n_dialogues:128 [...]
    [--variants FILE.yaml] [--no-default] [--set FIELD=VALUE] [--out DIR] [--boot N]`."""
    parser = argparse.ArgumentParser(prog="python -m pvutils ablate")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="NAME=FIELD:VALUE,...", help="a variant (repeatable)")
    parser.add_argument("--variants", metavar="FILE",
                        help="a YAML file {name: {field: value}}, or a bundled set: recipe")
    parser.add_argument("--no-default", action="store_true",
                        help="leave out the profile as it is (variant 'default')")
    parser.add_argument("--out", help="output directory (default <artifacts>/ablation/<profile>)")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a profile field in every variant (YAML value)")
    args = parser.parse_args(list(argv))
    try:
        base = parse_overrides(args.set)
        variants: dict[str, dict[str, Any]] = {} if args.no_default else {DEFAULT: {}}
        if args.variants:
            variants.update(load_variants(args.variants))
        variants.update(parse_variant(v) for v in args.variant)
        if not variants:
            raise ValueError("no variants: give --variant or --variants, or drop --no-default")
        table = run_ablation(args.profile, variants, Path(args.out) if args.out else None,
                             n_boot=args.boot, base=base)
    except ValueError as err:
        return report_error(err)
    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.max_colwidth", 80):
        print(table.to_string(index=False))
    return 0
