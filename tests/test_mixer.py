"""The trait mixer: its grid, its data, and (in Chromium) sliders that change what is shown."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from pvutils import get_profile
from pvutils.mixer import (
    default_mixes,
    inline_code,
    mixer_data,
    mixer_point,
    mixer_points,
    mixer_sweep,
    write_mixer_page,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_grid_has_every_alpha_combination_and_the_base():
    points = mixer_points({"e": ["extraversion_high"], "ea": ["extraversion_high",
                                                              "agreeableness_low"]}, [1.0, 2.0])
    single = [p["alphas"] for p in points if p["mix"] == "e"]
    assert single == [[0.0], [1.0], [2.0]]
    assert len([p for p in points if p["mix"] == "ea"]) == 9


def synthetic_table():
    rows = []
    for a in (0.0, 1.0, 2.0):
        rows.append({"mix": "extraversion_high", "conditions": ["extraversion_high"],
                     "alphas": [a], "questions": ["Q1?", "Q2?"],
                     "answers": [f"answer one at {a:g}", f"answer two at {a:g}"],
                     "scores": {"extraversion": 3.0 + a / 4}})
    for a, b in ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)):
        rows.append({"mix": "mix", "conditions": ["extraversion_high", "agreeableness_low"],
                     "alphas": [a, b], "questions": ["Q1?"], "answers": [f"mixed {a:g} {b:g}"],
                     "scores": {"extraversion": 3 + a, "agreeableness": 3 - b}})
    return pd.DataFrame(rows)


def test_page_data_keys_points_by_their_alphas():
    data = mixer_data(synthetic_table())
    assert data["extraversion_high"]["alphas"] == [[0.0, 1.0, 2.0]]
    assert data["mix"]["points"]["1,0"]["answers"] == ["mixed 1 0"]
    assert data["mix"]["alphas"] == [[0.0, 1.0], [0.0, 1.0]]


def test_default_mixes_pair_the_first_vector_with_another_trait():
    mixes = default_mixes(["extraversion_high", "extraversion_low"],
                          ["extraversion_high", "extraversion_low", "neuroticism_low"])
    assert mixes == {"extraversion_high": ["extraversion_high"],
                     "extraversion_low": ["extraversion_low"],
                     "extraversion_high + neuroticism_low": ["extraversion_high",
                                                             "neuroticism_low"]}
    # a partner of a trait already swept, or one not trained, is no mix
    assert len(default_mixes(["agreeableness_high"], ["agreeableness_high"])) == 1


def test_sweep_records_answers_and_scores_per_point(tiny_chat_model, isolated_home):
    model, tok = tiny_chat_model
    vec = {n: 0.0 * p.detach() for n, p in model.named_parameters()}  # a whole (zero) vector
    profile = get_profile("smoke", eval_max_new_tokens=3)
    args = ({"extraversion_high": vec}, {"e": ["extraversion_high"]}, [1.0], ["How are you?"])
    table = mixer_sweep(model, tok, *args, profile)
    assert table["alphas"].tolist() == [[0.0], [1.0]]
    assert len(table["answers"][0]) == 1 and set(table["scores"][0]) == {"extraversion"}
    assert table["answers"][0] == table["answers"][1]  # a zero vector changes nothing
    assert table["scores"][0] == pytest.approx(table["scores"][1], abs=1e-6)
    # a point's row is the measure applied to that point directly
    direct = mixer_point(model, tok, args[0], args[3], mixer_points(args[1], [1.0])[1],
                         max_new_tokens=3, n_pairs=profile.contrast_pairs)
    assert table["answers"][1] == direct["answers"]
    assert table["scores"][1] == pytest.approx(direct["scores"], abs=1e-9)
    # cached: the rerun needs no model and returns the identical table
    assert mixer_sweep(None, None, *args, profile).equals(table)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_moving_a_slider_changes_the_answer_and_the_score(tmp_path):
    from playwright.sync_api import sync_playwright

    page_file = write_mixer_page(synthetic_table(), tmp_path / "mixer.html")
    errors = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:")
                   else r.abort())  # offline: nothing but the file itself may load
        page.goto(page_file.as_uri())
        assert page.text_content(".answer") == "answer one at 0"
        assert page.text_content(".score") == "extraversion 3.00"
        page.focus("input.alpha")
        page.keyboard.press("ArrowRight")
        assert page.text_content(".answer") == "answer one at 1"
        assert page.text_content(".score") == "extraversion 3.25"
        page.select_option(".question", "1")
        assert page.text_content(".answer") == "answer two at 1"
        page.select_option(".mix", "mix")
        assert page.locator("input.alpha").count() == 2
        page.locator("input.alpha").nth(1).focus()
        page.keyboard.press("ArrowRight")
        assert page.text_content(".answer") == "mixed 0 1"
        assert page.text_content(".score") == "extraversion 3.00, agreeableness 2.00"
        browser.close()
    assert errors == []


def test_the_caption_renders_its_code_spans_and_escapes_the_rest():
    assert inline_code("profile `cpu`; a < b") == "profile <code>cpu</code>; a &lt; b"
    assert inline_code("one ` tick") == "one ` tick"
