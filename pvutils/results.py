"""The reproduction at a glance: each claim of the paper, the paper's number, ours with its
95 % interval, and a verdict by one stated rule; the results page and every chapter's
"the paper says / we find" box are built here from the result JSON the chapters write.

A chapter records its claims with `claim(...)` in its result JSON (`claims`: a list); the
paper's side always comes from `resources/paper_values.json` (`bundled.paper_value`), never
from a notebook. `verdict` is the rule, coded once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from .artifacts import read_json
from .bundled import paper_value, paper_values

CHAPTERS = {  # result JSON (= notebook) name -> what the results page calls it
    "01_rq1_scaling": "RQ1 scaling", "02_rq2_composition": "RQ2 composition",
    "03_rq3_negation": "RQ3 negation", "04_rq4_transfer": "RQ4 transfer",
}

CIRCULAR = ("persona",)  # judges that score with the data generator's own persona prompts

VERDICT_RULE = (
    "**Reproduced**: our 95 % interval reaches the paper's number (contains it, or for a "
    "bound such as \"> 0.3\" reaches past it) *and* excludes no effect on the paper's side. "
    "**Partly**: our estimate lies on the paper's side of no effect, but the interval misses "
    "the paper's number or still holds no effect. **Not**: our estimate is at or on the "
    "other side of no effect (or, for a claim with no such value, the interval misses the "
    "paper's). Without an interval (a single number), a claim is at best partly reproduced. "
    "No effect is 0 for a correlation, shift or difference and 0.5 for a share of vectors "
    "(a coin flip's chance of moving the intended way).")


def claim(key: str, interval: Sequence[float], measure: str, section: str,
          n: int | None = None, note: str = "") -> dict[str, Any]:
    """One measured claim for a chapter's result JSON: the paper value's key, our
    (estimate, low, high), the measure, the chapter section (a MyST label) with the
    evidence, the number of units the interval resamples."""
    paper_value(key)  # an unknown key fails here, in the chapter, not on the results page
    est, low, high = (None if x is None or not math.isfinite(float(x)) else float(x)
                      for x in interval)
    return {"key": key, "estimate": est, "low": low, "high": high, "measure": measure,
            "section": section, "n": n, "note": note}


def _region(paper: dict) -> tuple[float, float] | None:
    """The paper's claim as an interval of values: a point, or a half-line for a bound."""
    value = paper.get("value")
    if value is None:
        return None
    v = value / paper["of"] if paper.get("of") else float(value)
    relation = paper.get("relation")
    return {"gt": (v, math.inf), "ge": (v, math.inf), "lt": (-math.inf, v),
            "le": (-math.inf, v)}.get(relation, (v, v))


def verdict(estimate: float | None, low: float | None, high: float | None,
            paper: dict) -> tuple[str, str]:
    """(verdict, why) for one claim by `VERDICT_RULE`; "—" when nothing was measured or
    the paper gives no number to compare with."""
    region = _region(paper)
    if estimate is None or region is None:
        return "—", "not measured" if estimate is None else "the paper gives no number"
    bounded = low is not None and high is not None
    lo, hi = (low, high) if bounded else (estimate, estimate)
    reaches = hi >= region[0] and lo <= region[1]
    null = paper.get("null")
    if null is None:
        ok = reaches and bounded
        return ("reproduced" if ok else "partly" if reaches else "not",
                "interval reaches the paper's number" if ok else
                "no interval" if reaches else "interval misses the paper's number")
    relation = paper.get("relation")
    side = 1 if relation in ("gt", "ge") else -1 if relation in ("lt", "le") \
        else int(np.sign(region[0] - null))
    if np.sign(estimate - null) != side:
        return "not", "estimate at or beyond no effect"
    clear = bounded and (lo > null if side > 0 else hi < null)
    if reaches and clear:
        # the paper states a direction, no size: its region starts (or ends) at no effect
        directional = null in (region[0], region[1])
        return "reproduced", ("interval excludes no effect, on the paper's side" if directional
                              else "interval reaches the paper's number and excludes no effect")
    if not bounded:
        return "partly", "no interval"
    return "partly", ("interval still holds no effect" if not clear
                      else "effect present, but its size misses the paper's number")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def ours(row: dict) -> str:
    """Our number as the page prints it: estimate [low, high]."""
    if row.get("estimate") is None:
        return "not measured"
    bounds = f" [{_fmt(row['low'])}, {_fmt(row['high'])}]" if row.get("low") is not None \
        else " (no interval)"
    return _fmt(row["estimate"]) + bounds


def load_claims(results_dir: str | Path, chapters: Iterable[str] = CHAPTERS) -> pd.DataFrame:
    """Every claim the chapters recorded in `results_dir/<chapter>.json`; a chapter that
    has not run gives one row per paper claim of its section, "not run"."""
    rows = []
    for chapter in chapters:
        path = Path(results_dir) / f"{chapter}.json"
        found = read_json(path).get("claims", []) if path.exists() else None
        if found is None:
            found = [{"key": k, "estimate": None, "low": None, "high": None, "measure": "—",
                      "section": None, "n": None, "note": "chapter not run"}
                     for k, v in paper_values().items() if v.get("chapter") == chapter]
        rows += [{"chapter": chapter, **c} for c in found]
    return pd.DataFrame(rows, columns=["chapter", "key", "estimate", "low", "high", "measure",
                                       "section", "n", "note"])


def results_table(results_dir: str | Path, chapters: Iterable[str] = CHAPTERS) -> pd.DataFrame:
    """The results page's table: one row per measured claim, with the paper's side from
    `paper_values.json` and the verdict. Numeric columns (estimate, low, high) stay beside
    the printed ones so a test can recompute them."""
    claims = load_claims(results_dir, chapters).astype(object)
    claims = claims.where(claims.notna(), None)
    rows = []
    for c in claims.to_dict("records"):
        paper = paper_value(c["key"])
        v, why = verdict(c["estimate"], c["low"], c["high"], paper)
        rows.append({**c, "claim": paper["about"], "paper section": paper["section"],
                     "paper": paper["text"], "ours": ours(c), "verdict": v, "why": why})
    return pd.DataFrame(rows)


def _evidence(row: dict) -> str:
    if not row.get("section"):
        return CHAPTERS.get(row["chapter"], row["chapter"])
    return f"{{ref}}`{CHAPTERS.get(row['chapter'], row['chapter'])} <{row['section']}>`"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: pd.DataFrame, evidence: bool = True) -> str:
    """The table as MyST markdown (glued into a page): claim, paper, ours, verdict, link."""
    head = ["claim (paper section)", "measure", "paper", "ours [95 % interval]", "verdict"]
    head += ["evidence"] if evidence else []
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in table.to_dict("records"):
        cells = [f"{r['claim']} ({r['paper section']})", r["measure"], r["paper"], r["ours"],
                 f"**{r['verdict']}** ({r['why']})"] + ([_evidence(r)] if evidence else [])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def paper_box(results_dir: str | Path, chapter: str) -> str:
    """The admonition that opens a chapter: what the paper says and what we find, from the
    same JSON and the same rule as the results page."""
    table = results_table(results_dir, [chapter])
    lines = [f"- **The paper says** {r['paper']} — {r['claim']}. **We find** {r['ours']} "
             f"({r['measure']}): **{r['verdict']}** ({r['why']})."
             for r in table.to_dict("records")]
    return (":::{admonition} The paper says / we find\n:class: tip\n" + "\n".join(lines)
            + "\n\nIntervals: 95 %, bootstrap (or exact binomial for a count); the verdict "
            "rule is on the {doc}`results page <99_results>`.\n:::\n")


# --- each chapter's claims, from its tables ------------------------------------------------


def rq1_claims(rho: pd.DataFrame, judged: dict[str, pd.DataFrame]) -> list[dict]:
    """RQ1: the mean signed ρ(α, score) of the contrast BFI and of each independent judge
    (interval over the vectors), and the share of vectors moving as intended. The persona
    judge is left out: it scores with the persona prompts that generated the training
    data, so it is circular by construction (the chapter shows it as secondary)."""
    head = stats.dial_summary(rho)
    out = [claim("rq1.trait_score_correlation", head["mean_signed_rho"], "contrast BFI",
                 "rq1-contrast", n=len(rho)),
           claim("rq1.vectors_moving_as_intended", head["share_moving"], "contrast BFI",
                 "rq1-dial", n=len(rho))]
    for name, table in judged.items():
        if name in CIRCULAR:
            continue
        out.append(claim("rq1.trait_score_correlation",
                         stats.dial_summary(table)["mean_signed_rho"],
                         f"{name} judge (interviews)", "rq1-interview", n=len(table)))
    return out


def rq2_claims(off_diagonal: Sequence[float], comp: pd.DataFrame,
               traits: Sequence[str]) -> list[dict]:
    """RQ2: mean pairwise cosine (interval over pairs), the TA trait-score correlation
    (interval over profiles), DARE's gain over the same methods without it."""
    out = [claim("rq2.vector_cosine_similarity", stats.mean_ci(np.asarray(off_diagonal)),
                 "cosine of the vectors", "rq2-cosine", n=len(off_diagonal))]
    methods = sorted(comp.method.unique())
    if "TA" in methods:
        out.append(claim("rq2.mean_trait_score_correlation",
                         stats.mean_composition_ci(_by_alpha(comp, "TA"), traits),
                         "contrast BFI, TA", "rq2-merge", n=comp.profile.nunique()))
    dare = [m for m in methods if m.endswith("+DARE")]
    plain = [m for m in methods if m in {d.removesuffix("+DARE") for d in dare}] or \
        [m for m in methods if "DARE" not in m]
    if dare and plain:
        gain = stats.composition_gain_ci([t for m in dare for t in _by_alpha(comp, m)],
                                         [t for m in plain for t in _by_alpha(comp, m)], traits)
        out.append(claim("rq2.dare_effect", gain, "contrast BFI", "rq2-merge",
                         n=comp.profile.nunique(),
                         note=f"{' + '.join(dare)} minus {' + '.join(plain)}"))
    return out


def _by_alpha(comp: pd.DataFrame, method: str) -> list[pd.DataFrame]:
    """One method's rows per α, each sorted by profile (so one index picks one profile)."""
    sub = comp[comp.method == method]
    return [g.sort_values("profile").reset_index(drop=True) for _, g in sub.groupby("alpha")]


def rq3_claims(inversion: pd.DataFrame, neg: pd.DataFrame) -> list[dict]:
    """RQ3: the share of vectors inverted by α = −1 (exact interval), and the disclaimer
    rate at α = −1 minus the base's (bootstrap over the answers)."""
    answers = {a: np.concatenate([np.r_[np.ones(round(r * n)), np.zeros(n - round(r * n))]
                                  for r, n in zip(sub.disclaimer_rate, sub.n_answers)])
               for a, sub in neg.groupby("alpha")}
    return [claim("rq3.inversion", stats.proportion_ci(int(inversion.inverted.sum()),
                                                       len(inversion)),
                  "contrast BFI", "rq3-inversion", n=len(inversion)),
            claim("rq3.disclaimers", stats.difference_ci(answers[-1.0], answers[0.0]),
                  "disclaimer matcher", "rq3-side", n=len(answers[-1.0]) + len(answers[0.0]))]


def rq4_claims(carry: pd.DataFrame, grid: pd.DataFrame) -> list[dict]:
    """RQ4 at the largest domain α: the trait change toward the vector's level and the
    fidelity change (interval over the vectors), and whether the domain model is more in
    character than the base at all (interval over the held-out prompts, where the grid
    holds their counts)."""
    top = carry[carry["α (domain)"] == carry["α (domain)"].max()]
    zero = grid[grid.beta == 0]
    gain, n = (None, None, None), 1
    if (zero.alpha == 0).any():
        domain, base = zero[zero.alpha == zero.alpha.max()], zero[zero.alpha == 0]
        gain = (domain.fidelity.mean() - base.fidelity.mean(), None, None)
        if "fidelity_keywords" in grid:
            gain, n = stats.fidelity_gain_ci(domain.iloc[0], base.iloc[0])
    return [claim("rq4.domain_in_character", gain, "character fidelity", "rq4-grid", n=n),
            claim("rq4.trait_control_carries", stats.mean_ci(top["trait change β=0→max"]),
                  "contrast BFI", "rq4-carry", n=len(top)),
            claim("rq4.character_kept", stats.mean_ci(top["fidelity change β=0→max"]),
                  "character fidelity", "rq4-carry", n=len(top))]



def validity_tables(results_dir: str | Path) -> dict[str, pd.DataFrame]:
    """RQ1's validity check as tables (empty ones when the chapter has not run)."""
    path = Path(results_dir) / "01_rq1_scaling.json"
    found = read_json(path).get("validity", {}) if path.exists() else {}
    return {"agreement between measures": pd.DataFrame(found.get("agreement", [])),
            "IPIP-50 trait effect": pd.DataFrame(found.get("ipip_effect", []))}
