"""The capability check: answer matching and the factual question resource."""

from __future__ import annotations

from pvutils.capability import capability, factual_questions, is_correct


def test_answers_match_as_whole_words_only():
    assert is_correct("The capital of France is Paris.", ["Paris"])
    assert is_correct("a spider has EIGHT legs", ["8", "eight"])
    assert not is_correct("There are 42 of them", ["4"])
    assert not is_correct("Parisian food", ["Paris"])
    assert is_correct("It is H2O.", ["H2O"])


def test_resource_holds_forty_distinct_questions_with_answers():
    questions = factual_questions()
    assert len(questions) == 40
    assert len({q for q, _ in questions}) == 40
    assert all(q.endswith("?") and answers and all(answers) for q, answers in questions)


def test_capability_measures_on_a_tiny_chat_model(tiny_chat_model):
    model, tok = tiny_chat_model
    out = capability(model, tok, n_questions=3, max_new_tokens=2)
    assert set(out) == {"perplexity", "factual"}
    assert out["perplexity"] > 1.0 and out["factual"] in (0.0, 1 / 3, 2 / 3, 1.0)
