"""BFI-44 data and scoring, answer likelihoods, the contrast measure, interview, CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from pvutils import bfi, likelihood
from pvutils import evaluation as ev
from pvutils.merging import applied
from pvutils.vectors import save_vector

# DESIGN.md's table (John & Srivastava 1999): items and reverse-keyed items per dimension
DESIGN_TABLE = {
    "extraversion": ([1, 6, 11, 16, 21, 26, 31, 36], [6, 21, 31]),
    "agreeableness": ([2, 7, 12, 17, 22, 27, 32, 37, 42], [2, 12, 27, 37]),
    "conscientiousness": ([3, 8, 13, 18, 23, 28, 33, 38, 43], [8, 18, 23, 43]),
    "neuroticism": ([4, 9, 14, 19, 24, 29, 34, 39], [9, 24, 34]),
    "openness": ([5, 10, 15, 20, 25, 30, 35, 40, 41, 44], [35, 41]),
}
# DESIGN.md: human norms (mean, sd; n = 6076)
DESIGN_NORMS = {"extraversion": (3.25, 0.90), "agreeableness": (3.64, 0.72),
                "conscientiousness": (3.45, 0.73), "neuroticism": (3.32, 0.82),
                "openness": (3.92, 0.66)}


def test_bfi_items_match_the_published_keying():
    assert [it.number for it in bfi.BFI_ITEMS] == list(range(1, 45))
    for dim, (items, reverse) in DESIGN_TABLE.items():
        assert [it.number for it in bfi.BFI_ITEMS if it.dimension == dim] == items
        assert [it.number for it in bfi.BFI_ITEMS if it.dimension == dim and it.reverse] \
            == reverse
    assert bfi.DIMENSIONS == ("openness", "conscientiousness", "extraversion", "agreeableness",
                              "neuroticism")
    assert bfi.HUMAN_NORMS == DESIGN_NORMS
    assert set(bfi.DIMENSION_DESCRIPTIONS) == set(bfi.DIMENSIONS)


def test_interview_questions_are_44_distinct_questions():
    qs = bfi.interview_questions()
    assert len(qs) == len(set(qs)) == 44
    assert all(q.endswith("?") and q[0].isupper() for q in qs)
    assert qs[0] == "Are you talkative?"


def test_interview_script_asks_the_dimension_items_as_a_real_person():
    system, items = ev.interview_script(["neuroticism"])
    assert system == ev.REAL_PERSON_PROMPT and "real person" in system
    assert [it.number for it in items] == DESIGN_TABLE["neuroticism"][0]


def test_score_items_reverse_keys_and_averages():
    everything_five = bfi.score_items({n: 5 for n in range(1, 45)})
    for dim, (items, reverse) in DESIGN_TABLE.items():
        expected = (5 * (len(items) - len(reverse)) + 1 * len(reverse)) / len(items)
        assert everything_five[dim] == pytest.approx(expected)
    # answering x to a forward item is the same evidence as 6 - x to a reverse item
    assert bfi.score_items({1: 4, 6: 2}) == {"extraversion": 4.0}
    assert bfi.score_items({3: 2.5}) == {"conscientiousness": 2.5}  # absent dimensions left out


@pytest.mark.parametrize("bad, match", [({45: 3}, "unknown BFI-44 item"), ({1: 6}, "1..5"),
                                        ({1: 0.5}, "1..5"), ({}, "at least one")])
def test_score_items_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        bfi.score_items(bad)


def test_unknown_dimension_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dimension"):
        bfi.items_for(["extroversion"])


def test_contrast_pairs_cover_every_item_with_three_distinct_pairs():
    pairs = bfi.contrast_pairs()
    assert sorted(pairs) == list(range(1, 45))
    for number, item_pairs in pairs.items():
        assert len(item_pairs) >= 3, number
        assert len(set(item_pairs)) == len(item_pairs), number
        assert all(agree != disagree and agree and disagree for agree, disagree in item_pairs)


def test_anchors_are_keyed_by_the_item_direction():
    high, low = bfi.dimension_anchors("extraversion")
    pairs = bfi.contrast_pairs()
    assert pairs[1][0][0] in high and pairs[1][0][1] in low  # "talkative": agreeing is high
    assert pairs[6][0][0] in low and pairs[6][0][1] in high  # "reserved" is reverse-keyed


# --- answer likelihoods on a tiny model with the real chat tokenizer -------------------------

PAIRS = [("Are you talkative?", "Yes, I love to talk."),
         ("Do you worry a lot?", "No, hardly ever; I stay calm."),
         ("Are you talkative?", "No."),
         ("Are you inventive?", "I like to tinker and make new things every weekend.")]


@pytest.mark.parametrize("system", [ev.REAL_PERSON_PROMPT, None])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_answer_logprobs_match_the_plain_definition(tiny_chat_model, reference_logprob, system,
                                                    share_prefix):
    model, tok = tiny_chat_model
    got = likelihood.answer_logprobs(model, tok, system, PAIRS, batch_size=3,
                                     share_prefix=share_prefix)
    want = [reference_logprob(model, tok, system, q, a) for q, a in PAIRS]
    assert got.tolist() == pytest.approx(want, abs=1e-4)


def test_persona_difference_is_the_difference_of_likelihoods(tiny_chat_model, reference_logprob):
    model, tok = tiny_chat_model
    hi, lo = "You are outgoing.", "You are quiet."
    got = likelihood.persona_difference(model, tok, hi, lo, PAIRS)
    want = [reference_logprob(model, tok, hi, q, a) - reference_logprob(model, tok, lo, q, a)
            for q, a in PAIRS]
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    assert likelihood.persona_difference(model, tok, hi, hi, PAIRS).tolist() == [0.0] * 4


def test_empty_answer_is_a_clear_error(tiny_chat_model):
    model, tok = tiny_chat_model
    with pytest.raises(ValueError, match="empty answer"):
        likelihood.answer_logprobs(model, tok, None, [("Are you talkative?", "  ")])


def test_contrast_scores_follow_from_item_preferences(tiny_chat_model, reference_logprob):
    model, tok = tiny_chat_model
    detail = ev.contrast_item_scores(model, tok, ["extraversion", "openness"])
    assert sorted(detail["item"]) == sorted(DESIGN_TABLE["extraversion"][0]
                                            + DESIGN_TABLE["openness"][0])
    # p(agree) of item 1 from the textbook likelihoods: the mean over its pairs of
    # sigmoid(log p(agree) - log p(disagree))
    want = sum(torch.sigmoid(torch.tensor(
        reference_logprob(model, tok, ev.REAL_PERSON_PROMPT, "Are you talkative?", a)
        - reference_logprob(model, tok, ev.REAL_PERSON_PROMPT, "Are you talkative?", d))).item()
        for a, d in bfi.contrast_pairs()[1]) / len(bfi.contrast_pairs()[1])
    assert detail.set_index("item").loc[1, "p_agree"] == pytest.approx(want, abs=1e-4)
    assert (detail["raw"] - (1 + 4 * detail["p_agree"])).abs().max() < 1e-12
    rev = detail["reverse"]
    assert (detail.loc[rev, "keyed"] - (6 - detail.loc[rev, "raw"])).abs().max() < 1e-12
    scores = ev.contrast_scores(model, tok, ["extraversion", "openness"])
    for dim in ("extraversion", "openness"):
        assert scores[dim] == pytest.approx(detail[detail.dimension == dim]["keyed"].mean())


def test_interview_transcripts_are_cached_by_key(tiny_chat_model, isolated_home):
    model, tok = tiny_chat_model
    kw = dict(n_samples=2, max_new_tokens=3, dimensions=["extraversion"], progress=False)
    first = ev.interview(model, tok, cache_key="tiny", **kw)
    assert list(first.columns) == ["item", "dimension", "sample", "question", "answer"]
    assert len(first) == 2 * 8 and set(first["sample"]) == {0, 1}
    assert set(first["dimension"]) == {"extraversion"}
    assert len(list((isolated_home / "interviews").glob("*.json"))) == 1
    # a cached interview needs no model at all; another setting is another key
    assert ev.interview(None, tok, cache_key="tiny", **kw).equals(first)
    with pytest.raises(AttributeError):
        ev.interview(None, tok, cache_key="tiny", seed=1, **kw)


def test_judge_interview_scores_each_dimension_from_its_own_rows():
    class LengthJudge:
        """Scores a dimension by how many pairs it was given."""

        def score(self, dimension, transcripts):
            return ev.JudgeResult(float(len(transcripts)), dimension)

    transcripts = pd.DataFrame([
        dict(dimension="extraversion", question="Are you talkative?", answer="Yes."),
        dict(dimension="extraversion", question="Are you reserved?", answer="No."),
        dict(dimension="neuroticism", question="Do you worry a lot?", answer="Never."),
    ])
    assert ev.judge_interview(transcripts, LengthJudge()) == {"extraversion": 2.0,
                                                              "neuroticism": 1.0}
    with pytest.raises(ValueError, match="lack column"):
        ev.judge_interview(transcripts.drop(columns="answer"), LengthJudge())


def test_validity_summary_known_answer():
    table = pd.DataFrame([
        dict(dimension="openness", level="high", a=4.0, b=3.5),
        dict(dimension="openness", level="low", a=2.0, b=3.0),
        dict(dimension="neuroticism", level="high", a=3.0, b=2.0),
        dict(dimension="neuroticism", level="low", a=3.5, b=1.0),
    ])
    separation, agreement = ev.validity_summary(table)
    assert separation.loc["openness"].tolist() == [2.0, 0.5]
    assert separation.loc["neuroticism"].tolist() == [-0.5, 1.0]
    # ranks a: 4 1 2 3, b: 4 3 2 1 -> Spearman rho = 1 - 6 * (0 + 4 + 0 + 4) / (4 * 15) = 0.2
    assert agreement.loc["a", "b"] == pytest.approx(0.2)
    assert agreement.loc["a", "a"] == 1.0


# --- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_chat_dir(tiny_chat_model, tmp_path_factory):
    model, tok = tiny_chat_model
    out = tmp_path_factory.mktemp("tiny-chat")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_cli_score_prints_contrast_scores_as_json(tiny_chat_model, tiny_chat_dir, capsys):
    assert ev.cli_score([str(tiny_chat_dir), "--dimensions", "neuroticism"]) == 0
    printed = json.loads(capsys.readouterr().out)
    want = ev.contrast_scores(*tiny_chat_model, ["neuroticism"])
    assert printed == {"neuroticism": pytest.approx(want["neuroticism"], abs=1e-4)}


def test_cli_score_with_a_vector_scores_the_merged_model(tiny_chat_model, tiny_chat_dir,
                                                         tmp_path, capsys):
    model, tok = tiny_chat_model
    torch.manual_seed(1)
    vector = {n: 0.5 * torch.randn_like(p) if "layers.1." in n else torch.zeros_like(p)
              for n, p in model.named_parameters()}  # a vector covers every tensor
    path = save_vector(vector, tmp_path / "v.safetensors", {"condition": "test"})
    argv = [str(tiny_chat_dir), "--vector", str(path), "--alpha", "2", "--dimensions",
            "agreeableness"]
    assert ev.cli_score(argv) == 0
    printed = json.loads(capsys.readouterr().out)["agreeableness"]
    base = ev.contrast_scores(model, tok, ["agreeableness"])["agreeableness"]
    with applied(model, [path], [2.0]):
        merged = ev.contrast_scores(model, tok, ["agreeableness"])["agreeableness"]
    assert abs(merged - base) > 1e-3, "the test vector must be large enough to tell them apart"
    assert printed == pytest.approx(merged, abs=1e-4)


def test_cli_score_interview_with_a_judge(tiny_chat_dir, isolated_home, capsys):
    argv = [str(tiny_chat_dir), "--measure", "interview", "--judge", "persona", "--samples", "1",
            "--max-new-tokens", "3", "--dimensions", "openness", "extraversion"]
    assert ev.cli_score(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"openness", "extraversion"}
    assert all(1 <= v <= 5 for v in printed.values())


def test_cli_score_bad_arguments(tiny_chat_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        ev.cli_score([str(tiny_chat_dir), "--alpha", "1"])
    with pytest.raises(SystemExit):
        ev.cli_score([str(tiny_chat_dir), "--vector", "a", "--vector", "b", "--alpha", "1",
                      "--alpha", "2", "--alpha", "3"])
    assert ev.cli_score([str(tmp_path / "missing-model")]) == 1
    assert "missing-model does not exist" in capsys.readouterr().err


# --- validity on the embedded model -------------------------------------------------------------


@pytest.mark.slow
def test_measures_order_guided_high_above_low(embedded_model_dir):
    """Persona-guided answers (γ = 2): each offline judge, and the contrast measure under the
    high vs the low persona, rank high above low for at least 4 of the 5 traits."""
    from pvutils.judges import get_judge
    from pvutils.models import load_model, load_tokenizer

    model, tok = load_model(embedded_model_dir), load_tokenizer(embedded_model_dir)
    answers = ev.guided_answers(model, tok, n_questions=3, max_new_tokens=40)
    judges = {"persona": get_judge("persona", reference=model, tokenizer=tok),
              "embedding": get_judge("embedding")}
    table = ev.measure_validity(model, tok, answers, judges)
    separation, _ = ev.validity_summary(table)
    for measure in ("persona", "embedding", "contrast"):
        assert (separation[measure] > 0).sum() >= 4, (measure, separation[measure])
