"""BFI-44 data and scoring, answer likelihoods, the contrast measure, interview, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import EMBEDDED, make_tiny_llama

from pvutils import evaluation as ev

# DESIGN.md's table (John & Srivastava 1999): items and reverse-keyed items per dimension
DESIGN_TABLE = {
    "extraversion": ([1, 6, 11, 16, 21, 26, 31, 36], [6, 21, 31]),
    "agreeableness": ([2, 7, 12, 17, 22, 27, 32, 37, 42], [2, 12, 27, 37]),
    "conscientiousness": ([3, 8, 13, 18, 23, 28, 33, 38, 43], [8, 18, 23, 43]),
    "neuroticism": ([4, 9, 14, 19, 24, 29, 34, 39], [9, 24, 34]),
    "openness": ([5, 10, 15, 20, 25, 30, 35, 40, 41, 44], [35, 41]),
}


def test_bfi_items_match_the_published_keying():
    assert [it.number for it in ev.BFI_ITEMS] == list(range(1, 45))
    for dim, (items, reverse) in DESIGN_TABLE.items():
        assert [it.number for it in ev.BFI_ITEMS if it.dimension == dim] == items
        assert [it.number for it in ev.BFI_ITEMS if it.dimension == dim and it.reverse] == reverse
    assert ev.DIMENSIONS == ("openness", "conscientiousness", "extraversion", "agreeableness",
                             "neuroticism")
    assert set(ev.HUMAN_NORMS) == set(ev.DIMENSIONS) == set(ev.DIMENSION_DESCRIPTIONS)


def test_interview_questions_are_44_distinct_questions():
    qs = ev.interview_questions()
    assert len(qs) == len(set(qs)) == 44
    assert all(q.endswith("?") and q[0].isupper() for q in qs)
    assert qs[0] == "Are you talkative?"


def test_score_items_reverse_keys_and_averages():
    everything_five = ev.score_items({n: 5 for n in range(1, 45)})
    for dim, (items, reverse) in DESIGN_TABLE.items():
        expected = (5 * (len(items) - len(reverse)) + 1 * len(reverse)) / len(items)
        assert everything_five[dim] == pytest.approx(expected)
    # answering x to a forward item is the same evidence as 6 - x to a reverse item
    assert ev.score_items({1: 4, 6: 2}) == {"extraversion": 4.0}
    assert ev.score_items({3: 2.5}) == {"conscientiousness": 2.5}  # absent dimensions left out


@pytest.mark.parametrize("bad, match", [({45: 3}, "unknown BFI-44 item"), ({1: 6}, "1..5"),
                                        ({1: 0.5}, "1..5"), ({}, "at least one")])
def test_score_items_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        ev.score_items(bad)


def test_unknown_dimension_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dimension"):
        ev.items_for(["extroversion"])


def test_contrast_pairs_cover_every_item_with_three_distinct_pairs():
    pairs = ev.contrast_pairs()
    assert sorted(pairs) == list(range(1, 45))
    for number, item_pairs in pairs.items():
        assert len(item_pairs) >= 3, number
        assert len(set(item_pairs)) == len(item_pairs), number
        assert all(agree != disagree and agree and disagree for agree, disagree in item_pairs)


# --- answer likelihoods on a tiny model with the real chat tokenizer -------------------------


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from pvutils.models import load_tokenizer

    return load_tokenizer(EMBEDDED)


@pytest.fixture(scope="module")
def tiny_chat(tokenizer):
    return make_tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2)


def reference_logprob(model, tokenizer, system, question, answer):
    """The plain definition: full sequence, full logits, mean over the answer's tokens."""
    convo = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(convo + [{"role": "assistant", "content": answer}],
                                         tokenize=False).rstrip()
    ids = tokenizer(full, return_tensors="pt", add_special_tokens=False).input_ids
    start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return logp[start - 1 : -1].gather(1, ids[0, start:, None]).mean().item()


PAIRS = [("Are you talkative?", "Yes, I love to talk."),
         ("Do you worry a lot?", "No, hardly ever; I stay calm."),
         ("Are you talkative?", "No."),
         ("Are you inventive?", "I like to tinker and make new things every weekend.")]


@pytest.mark.parametrize("system", [ev.REAL_PERSON_PROMPT, None])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_answer_logprobs_match_the_plain_definition(tiny_chat, tokenizer, system, share_prefix):
    got = ev.answer_logprobs(tiny_chat, tokenizer, system, PAIRS, batch_size=3,
                             share_prefix=share_prefix)
    want = [reference_logprob(tiny_chat, tokenizer, system, q, a) for q, a in PAIRS]
    assert got.tolist() == pytest.approx(want, abs=1e-4)


def test_empty_answer_is_a_clear_error(tiny_chat, tokenizer):
    with pytest.raises(ValueError, match="empty answer"):
        ev.answer_logprobs(tiny_chat, tokenizer, None, [("Are you talkative?", "  ")])


def test_contrast_scores_follow_from_item_preferences(tiny_chat, tokenizer):
    detail = ev.contrast_item_scores(tiny_chat, tokenizer, ["extraversion", "openness"])
    assert sorted(detail["item"]) == sorted(DESIGN_TABLE["extraversion"][0]
                                            + DESIGN_TABLE["openness"][0])
    assert detail["p_agree"].between(0, 1).all()
    assert (detail["raw"] - (1 + 4 * detail["p_agree"])).abs().max() < 1e-12
    rev = detail["reverse"]
    assert (detail.loc[rev, "keyed"] - (6 - detail.loc[rev, "raw"])).abs().max() < 1e-12
    scores = ev.contrast_scores(tiny_chat, tokenizer, ["extraversion", "openness"])
    for dim in ("extraversion", "openness"):
        assert scores[dim] == pytest.approx(detail[detail.dimension == dim]["keyed"].mean())


def test_interview_transcripts_are_cached_by_key(tiny_chat, tokenizer, isolated_home,
                                                 monkeypatch):
    kw = dict(n_samples=2, max_new_tokens=3, dimensions=["extraversion"], progress=False)
    first = ev.interview(tiny_chat, tokenizer, cache_key="tiny", **kw)
    assert list(first.columns) == ["item", "dimension", "sample", "question", "answer"]
    assert len(first) == 2 * 8 and set(first["sample"]) == {0, 1}
    assert set(first["dimension"]) == {"extraversion"}
    assert len(list((isolated_home / "interviews").glob("*.json"))) == 1

    def no_generation(*a, **k):
        raise AssertionError("a cached interview must not generate again")

    monkeypatch.setattr("pvutils.models.chat", no_generation)
    again = ev.interview(tiny_chat, tokenizer, cache_key="tiny", **kw)
    assert again.equals(first)
    with pytest.raises(AssertionError, match="cached"):  # another setting is another key
        ev.interview(tiny_chat, tokenizer, cache_key="tiny", seed=1, **kw)


# --- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_chat_dir(tiny_chat, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-chat")
    tiny_chat.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_cli_score_prints_contrast_scores_as_json(tiny_chat, tokenizer, tiny_chat_dir, capsys):
    assert ev.cli_score([str(tiny_chat_dir), "--dimensions", "neuroticism"]) == 0
    printed = json.loads(capsys.readouterr().out)
    want = ev.contrast_scores(tiny_chat, tokenizer, ["neuroticism"])
    assert printed == {"neuroticism": pytest.approx(want["neuroticism"], abs=1e-4)}


def test_cli_score_with_a_vector_scores_the_merged_model(tiny_chat, tokenizer, tiny_chat_dir,
                                                         tmp_path, capsys):
    from pvutils.merging import applied
    from pvutils.vectors import save_vector

    torch.manual_seed(1)
    vector = {n: 0.5 * torch.randn_like(p) if "layers.1." in n else torch.zeros_like(p)
              for n, p in tiny_chat.named_parameters()}  # a vector covers every tensor
    path = save_vector(vector, tmp_path / "v.safetensors", {"condition": "test"})
    argv = [str(tiny_chat_dir), "--vector", str(path), "--alpha", "2", "--dimensions",
            "agreeableness"]
    assert ev.cli_score(argv) == 0
    printed = json.loads(capsys.readouterr().out)["agreeableness"]
    base = ev.contrast_scores(tiny_chat, tokenizer, ["agreeableness"])["agreeableness"]
    with applied(tiny_chat, [path], [2.0]):
        merged = ev.contrast_scores(tiny_chat, tokenizer, ["agreeableness"])["agreeableness"]
    assert printed == pytest.approx(merged, abs=1e-4)
    assert abs(merged - base) > 1e-3  # the vector did change what was scored


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
    from pvutils.models import load_model, load_tokenizer

    model, tok = load_model(EMBEDDED), load_tokenizer(EMBEDDED)
    answers = ev.guided_answers(model, tok, n_questions=3, max_new_tokens=40)
    judges = {"persona": ev.PersonaJudge(model, tok), "embedding": ev.EmbeddingJudge()}
    table = ev.measure_validity(model, tok, answers, judges)
    separation, agreement = ev.validity_summary(table)
    print(f"\n{table}\n{separation}\n{agreement}")
    for measure in ("persona", "embedding", "contrast"):
        assert (separation[measure] > 0).sum() >= 4, (measure, separation[measure])
