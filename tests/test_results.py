"""The results page: the verdict rule's known answers, intervals equal to scipy's own
bootstrap, and the page's table re-derived from the per-point rows a chapter stores."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from pvutils import book, bundled, results, stats
from pvutils.bfi import IPIP_ITEMS, ipip_items

POINT = {"value": 0.9, "relation": "approx", "null": 0}
BOUND = {"value": 0.3, "relation": "gt", "null": 0}
SHARE = {"value": 10, "of": 10, "relation": "eq", "null": 0.5}
KEPT = {"value": 0, "relation": "ge"}
HIGHER = {"value": 0, "relation": "gt", "null": 0}  # a direction only: "higher after"


@pytest.mark.parametrize("paper, interval, expected", [
    (POINT, (0.85, 0.7, 0.95), "reproduced"),     # holds 0.9, excludes 0
    (POINT, (0.5, 0.3, 0.7), "partly"),           # effect there, size misses 0.9
    (POINT, (0.4, -0.2, 0.95), "partly"),         # holds 0.9 and no effect
    (POINT, (-0.3, -0.6, 0.1), "not"),            # wrong side of no effect
    (POINT, (0.0, -0.5, 0.5), "not"),             # at no effect
    (POINT, (0.9, None, None), "partly"),         # no interval: at best partly
    (BOUND, (0.25, 0.1, 0.35), "reproduced"),     # reaches past 0.3, excludes 0
    (BOUND, (0.18, 0.1, 0.25), "partly"),
    (SHARE, (1.0, 0.69, 1.0), "reproduced"),      # 10 of 10
    (SHARE, (0.9, 0.55, 0.997), "partly"),        # 9 of 10: the interval misses 1
    (SHARE, (1.0, 0.16, 1.0), "partly"),          # 2 of 2: holds the coin flip
    (HIGHER, (0.06, 0.01, 0.1), "reproduced"),
    (HIGHER, (0.06, 0.0, 0.19), "partly"),        # the interval touches no effect
    (HIGHER, (-0.02, -0.1, 0.05), "not"),
    (KEPT, (-0.01, -0.1, 0.08), "reproduced"),    # no null: the interval reaches 0
    (KEPT, (-5.8, -7.0, -4.0), "not"),
])
def test_verdict_rule_known_answers(paper, interval, expected):
    assert results.verdict(*interval, paper)[0] == expected


def test_too_few_points_get_no_bootstrap_interval():
    assert all(math.isnan(b) for b in stats.mean_ci([0.2, 0.9])[1:])
    assert all(math.isnan(b) for b in stats.spearman_ci([0, 1, 2], [3, 4, 6])[1:])


def test_a_direction_claim_is_not_said_to_reach_a_number():
    assert results.verdict(0.06, 0.01, 0.1, HIGHER)[1] == (
        "interval excludes no effect, on the paper's side")
    assert "reaches the paper's number" in results.verdict(0.85, 0.7, 0.95, POINT)[1]


def test_verdict_is_blank_without_a_measurement_or_a_paper_number():
    assert results.verdict(None, None, None, POINT)[0] == "—"
    assert results.verdict(0.5, 0.1, 0.9, {"value": None})[0] == "—"


def test_every_paper_claim_of_a_chapter_is_complete():
    for key, v in bundled.paper_values().items():
        if v.get("chapter"):
            assert v["chapter"] in results.CHAPTERS, key
            assert v["value"] is not None and v["relation"] in {"approx", "eq", "gt", "ge"}, key


def test_intervals_are_scipys_bootstrap_and_exact_binomial():
    rng = np.random.default_rng(3)
    x = np.arange(15.0)
    y = 0.2 * x + rng.normal(size=15)
    ref = sst.bootstrap((x, y), lambda a, b: sst.spearmanr(a, b).statistic, paired=True,
                        vectorized=False, n_resamples=stats.N_RESAMPLES, method="percentile",
                        rng=np.random.default_rng(stats.SEED)).confidence_interval
    est, low, high = stats.spearman_ci(x, y)
    assert est == pytest.approx(sst.spearmanr(x, y).statistic)
    assert (low, high) == pytest.approx((ref.low, ref.high))
    ci = sst.binomtest(7, 9).proportion_ci(0.95, method="exact")
    assert stats.proportion_ci(7, 9) == pytest.approx((7 / 9, ci.low, ci.high))


def test_mean_composition_estimate_is_the_mean_pearson_over_traits():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"target_a": rng.choice([-1, 1], 32), "target_b": rng.choice([-1, 1], 32)})
    df["a"], df["b"] = df.target_a + rng.normal(size=32), rng.normal(size=32)
    est, low, high = stats.mean_composition_ci(df, ["a", "b"])
    r = np.mean([sst.pearsonr(df[f"target_{t}"], df[t]).statistic for t in "ab"])
    assert est == pytest.approx(r) and low < r < high


def _sweep_rows(seed: int = 0) -> pd.DataFrame:
    """A synthetic RQ1 sweep: four vectors over 12 alphas, noisy dials (one backwards)."""
    rng = np.random.default_rng(seed)
    alphas = np.round(np.linspace(0.1, 1.2, 12), 2)
    rows = [{"condition": "extraversion_base", "alpha": 0.0, "trait": "extraversion",
             "level": "base", "score": 3.0}]
    for cond, slope in [("extraversion_high", 0.5), ("extraversion_low", -0.4),
                        ("openness_high", 0.3), ("openness_low", 0.2)]:
        trait, level = cond.rsplit("_", 1)
        rows += [{"condition": cond, "alpha": float(a), "trait": trait, "level": level,
                  "score": 3 + slope * a + rng.normal(scale=0.1)} for a in alphas]
    return pd.DataFrame(rows)


def test_results_table_is_rederived_from_the_stored_rows(tmp_path, results_rederived):
    sweep = _sweep_rows()
    rho = stats.dial_table(sweep)
    claims = results.rq1_claims(rho, {})
    (tmp_path / "01_rq1_scaling.json").write_text(json.dumps(
        {"claims": claims, "rows": {"contrast": sweep.to_dict("records")}}))
    table = results_rederived(tmp_path)
    row = table.set_index("key").loc["rq1.vectors_moving_as_intended"]
    assert row.estimate == 0.75 and row.verdict == "partly"  # 3 of 4: one dial backwards
    # chapters that did not run are listed with every claim of theirs, unmeasured
    missing = table[table.chapter == "03_rq3_negation"]
    assert set(missing.key) == {"rq3.inversion", "rq3.disclaimers"}
    assert set(missing.verdict) == {"—"}
    page = results.markdown_table(table)
    assert page.count("\n") == len(table) + 1 and "{ref}`RQ1 scaling <rq1-contrast>`" in page


def test_the_published_results_page_is_rederived_from_its_stored_rows(results_rederived):
    """On the committed `cpu` run (the smoke book's own is checked in `test_book`)."""
    results_rederived(book.PUBLISHED_DIR / "cpu")


def test_the_chapter_box_states_paper_and_finding(tmp_path):
    claims = results.rq1_claims(stats.dial_table(_sweep_rows()), {})
    (tmp_path / "01_rq1_scaling.json").write_text(json.dumps({"claims": claims}))
    box = results.paper_box(tmp_path, "01_rq1_scaling")
    assert box.startswith(":::{admonition} The paper says / we find")
    assert bundled.paper_value("rq1.trait_score_correlation")["text"] in box
    assert box.count("**We find**") == len(claims)


def test_persona_judge_never_makes_a_headline(tmp_path):
    rho = stats.dial_table(_sweep_rows())
    measures = {c["measure"] for c in results.rq1_claims(rho, {"persona": rho,
                                                                "embedding": rho})}
    assert "embedding judge (interviews)" in measures
    assert not any("persona" in m for m in measures)


def test_ipip50_is_goldbergs_key():
    """10 items per factor in the pool's rotating order; reverse keys per factor as in the
    IPIP scoring key (Emotional Stability keyed here for neuroticism)."""
    assert [it.number for it in IPIP_ITEMS] == list(range(1, 51))
    reverse = {"extraversion": {6, 16, 26, 36, 46}, "agreeableness": {2, 12, 22, 32},
               "conscientiousness": {8, 18, 28, 38}, "neuroticism": {9, 19},
               "openness": {10, 20, 30}}
    for trait, numbers in reverse.items():
        items = ipip_items([trait])
        assert len(items) == 10
        assert {it.number for it in items if it.reverse} == numbers
    assert IPIP_ITEMS[0].question.endswith('"I am the life of the party."')


def _composition(seed: int = 0) -> pd.DataFrame:
    """Synthetic RQ2 rows: 8 profiles of two traits; TA follows the targets, DARE better."""
    rng = np.random.default_rng(seed)
    rows = []
    for method, noise in [("TA", 1.0), ("TIES+DARE", 0.3)]:
        for alpha in (0.2, 0.4):
            for i, code in enumerate(["HH", "HL", "LH", "LL"] * 2):
                t = {f"target_{x}": 1 if c == "H" else -1 for x, c in zip("ab", code)}
                rows.append({"method": method, "alpha": alpha, "profile": f"{code}{i}", **t,
                             **{x: t[f"target_{x}"] + noise * rng.normal() for x in "ab"}})
    return pd.DataFrame(rows)


def test_rq2_claims_read_the_composition_rows():
    comp = _composition()
    claims = {c["key"]: c for c in results.rq2_claims([0.4, 0.5, 0.6, 0.45], comp, ["a", "b"])}
    ta = comp[comp.method == "TA"]
    r = np.mean([sst.pearsonr(sub[f"target_{x}"], sub[x]).statistic
                 for _, sub in ta.groupby("alpha") for x in "ab"])
    assert claims["rq2.mean_trait_score_correlation"]["estimate"] == pytest.approx(r)
    assert claims["rq2.vector_cosine_similarity"]["estimate"] == pytest.approx(0.4875)
    gain = claims["rq2.dare_effect"]
    assert gain["estimate"] > 0 and gain["note"] == "TIES+DARE minus TA"


def test_rq3_and_rq4_claims_from_their_tables():
    neg = pd.DataFrame({"alpha": [-1.0, 0.0, 1.0], "disclaimer_rate": [0.5, 0.1, 0.0],
                        "n_answers": [10, 10, 10]})
    inversion = pd.DataFrame({"inverted": [True, True, False]})
    c = {x["key"]: x for x in results.rq3_claims(inversion, neg)}
    assert c["rq3.inversion"]["estimate"] == pytest.approx(2 / 3)
    assert c["rq3.disclaimers"]["estimate"] == pytest.approx(0.4)
    grid = pd.DataFrame([{"condition": "extraversion_high", "alpha": a, "beta": b,
                          "score": 3 + 0.2 * b, "fidelity": 0.5 * a - 0.1 * b}
                         for a in (0.0, 1.0) for b in (0.0, 1.0)])
    c = {x["key"]: x for x in results.rq4_claims(stats.carry_table(grid), grid)}
    assert c["rq4.domain_in_character"]["estimate"] == pytest.approx(0.5)
    assert c["rq4.trait_control_carries"]["estimate"] == pytest.approx(0.2)
    assert c["rq4.character_kept"]["estimate"] == pytest.approx(-0.1)


def test_rq4_fidelity_gain_has_an_interval_over_the_prompts():
    """With per-prompt counts the role-play premise gets a paired prompt bootstrap: the
    estimate is the pooled rate difference (known answer), and when every prompt shows the
    same gain the interval collapses onto it."""
    def row(alpha, keywords, words):
        return {"condition": "extraversion_high", "alpha": alpha, "beta": 0.0, "score": 3.0,
                "fidelity": 100 * sum(keywords) / sum(words), "fidelity_keywords": keywords,
                "fidelity_words": words}

    uneven = pd.DataFrame([row(0.0, [0, 1, 0, 0, 1, 0], [10] * 6),
                           row(1.0, [3, 2, 4, 1, 5, 3], [10] * 6)])
    gain = {x["key"]: x for x in results.rq4_claims(stats.carry_table(uneven), uneven)}[
        "rq4.domain_in_character"]
    assert gain["estimate"] == pytest.approx(100 * (18 - 2) / 60) and gain["n"] == 6
    assert gain["low"] < gain["estimate"] < gain["high"] and gain["low"] > 0
    even = pd.DataFrame([row(0.0, [1] * 6, [10] * 6), row(1.0, [3] * 6, [10] * 6)])
    est, low, high = stats.fidelity_gain_ci(even.iloc[1], even.iloc[0])[0]
    assert est == low == high == pytest.approx(20.0)
