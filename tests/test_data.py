"""Trait data: the prompt bank, the quality filter, the Big5-Chat loader, the generator."""

from __future__ import annotations

import json

import pytest

from pvutils import data, models
from pvutils.bfi import interview_questions
from pvutils.data import DataError
from pvutils.profiles import CONDITIONS, get_profile
from pvutils.side_effects import is_disclaimer

# --- the prompt bank --------------------------------------------------------------------


def test_bank_has_at_least_300_distinct_prompts():
    normalized = [data.normalize_text(p) for p in data.USER_PROMPTS]
    assert len(data.USER_PROMPTS) >= 300
    assert len(set(normalized)) == len(normalized)


def test_bank_is_varied_in_form_and_length():
    questions = [p for p in data.USER_PROMPTS if p.rstrip().endswith("?")]
    statements = [p for p in data.USER_PROMPTS if not p.rstrip().endswith("?")]
    lengths = sorted(len(p.split()) for p in data.USER_PROMPTS)
    assert len(questions) >= 100 and len(statements) >= 100
    assert lengths[0] <= 3 and lengths[-1] >= 15


def test_near_duplicate_check_flags_rewordings():
    assert data.near_duplicates(["Are you TALKATIVE?!"], ["Are you talkative?"])
    assert data.near_duplicates(["Do you worry a lot, usually?"], ["Do you worry a lot?"])
    assert not data.near_duplicates(["What did you eat today?"], ["Are you talkative?"])


def test_bank_does_not_overlap_the_bfi_interview_questions():
    questions = interview_questions()
    assert len(questions) == 44
    assert data.near_duplicates(data.USER_PROMPTS, questions, threshold=0.5) == []


def test_heldout_and_training_prompts_partition_the_bank():
    train, held = set(data.training_prompts()), set(data.heldout_prompts())
    assert not train & held
    assert train | held == set(data.USER_PROMPTS)
    assert len(held) >= 32


# --- the quality filter -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Sure thing.", "too_short"),
        ("word " * 400, "too_long"),
        ("As an AI, I do not have a favourite food, but many people love pasta.", "ai_disclaimer"),
        ("Je pense que c'est une très bonne idée, vraiment très bonne pour toi.", "non_english"),
        ("我很喜欢这个地方，我们明天再去吧，好吗？真的很好玩。", "non_english"),
        ("I love it so much. I love it so much. I love it so much.", "degenerate_loop"),
        ("That is great great great great great great great great news for all.",
         "degenerate_loop"),
        ("Wow!!!!!!!!!! That is such a fun plan for the weekend.", "degenerate_loop"),
        ("fun fun party time fun party fun time party fun time fun party time yes", "repetitive"),
        ("Oh, I love rainy Sundays! I make pancakes, call a friend and read for hours.", None),
    ],
)
def test_quality_issue_known_answers(text, reason):
    assert data.quality_issue(text) == reason


@pytest.mark.parametrize("text", [
    "I'm just a language model, so I can't say, but many people love hiking.",
    "I am a helpful assistant and I would be glad to plan your weekend.",
    "I don't have personal experiences of rain, but a warm drink helps many people.",
    "Honestly, as an AI assistant I would suggest trying a new recipe.",
])
def test_the_filter_drops_exactly_what_rq3_counts_as_a_disclaimer(text):
    assert is_disclaimer(text)
    assert data.quality_issue(text) == "ai_disclaimer"
    assert data.quality_issue("I'm a big fan of hiking and cooking on weekends.") is None


# --- Big5-Chat --------------------------------------------------------------------------


def test_big5chat_csv_becomes_ten_chat_sets(tmp_path, big5chat_csv):
    dd = data.load_big5chat(str(big5chat_csv(tmp_path / "b5.csv")))
    assert sorted(dd) == sorted(CONDITIONS)
    row = dd["agreeableness_low"][0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert "low agreeableness" in row["messages"][2]["content"]
    assert set(dd["agreeableness_low"]["condition"]) == {"agreeableness_low"}


def test_big5chat_samples_per_condition_with_a_seed(tmp_path, big5chat_csv):
    path = str(big5chat_csv(tmp_path / "b5.csv", rows_per_condition=6))
    a = data.load_big5chat(path, n_per_condition=2, seed=1)
    b = data.load_big5chat(path, n_per_condition=2, seed=1)
    assert all(len(a[c]) == 2 for c in CONDITIONS)
    assert a["openness_high"]["messages"] == b["openness_high"]["messages"]


def test_big5chat_offline_names_the_offline_generator(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="data_source='guided'"):
        data.load_big5chat(None)


def test_big5chat_missing_column_is_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("train_input,train_output,trait,level\nhi,hello,openness,high\n")
    with pytest.raises(DataError, match=r"bad.csv lacks column\(s\) \['train_instruction'\]"):
        data.load_big5chat(str(bad))


def test_big5chat_unknown_trait_is_named(tmp_path, big5chat_csv):
    path = big5chat_csv(tmp_path / "b5.csv", extra_rows=[["", "hi", "yo", "humour", "high"]])
    with pytest.raises(DataError, match="humour/high"):
        data.load_big5chat(str(path))


def test_big5chat_empty_or_missing_file(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(data.BIG5CHAT_COLUMNS) + "\n")
    with pytest.raises(DataError, match="no rows|could not read"):
        data.load_big5chat(str(empty))
    with pytest.raises(DataError, match="does not exist"):
        data.load_big5chat(str(tmp_path / "nope.csv"))


def test_big5chat_condition_without_rows_is_named(tmp_path):
    path = tmp_path / "partial.csv"
    path.write_text(",".join(data.BIG5CHAT_COLUMNS) + "\nbe nice,hi,hello there,openness,high\n")
    with pytest.raises(DataError, match="no usable rows for condition 'openness_low'"):
        data.load_big5chat(str(path))


# --- the generator (generation replaced by a stand-in; the slow test runs the model) ----

CANNED = [
    "I love meeting new people and I would throw a big party for it!",
    "As an AI, I cannot go to parties.",  # filtered: ai_disclaimer
    "Let's go out tonight, everyone is invited and it will be amazing",  # no end: kept as is
    "Party party party party party party party party party party party party.",  # loop
]


@pytest.fixture
def fake_guided():
    """A stand-in for `models.chat` that records its calls and replies from CANNED."""
    calls = []

    def chat(model, tokenizer, conversations, negative_conversations=None,
             guidance_scale=1.0, **kw):
        calls.append({"n": len(conversations), "persona": conversations[0][0]["content"],
                      "anti": negative_conversations[0][0]["content"],
                      "gamma": guidance_scale - 1, "conversations": conversations, **kw})
        return [CANNED[i % len(CANNED)] for i in range(len(conversations))]

    chat.calls = calls
    return chat


class _Tok:
    def __call__(self, text):
        return {"input_ids": text.split()}


def test_generated_data_have_no_persona_and_a_card(isolated_home, fake_guided):
    profile = get_profile("smoke", n_dialogues=4)
    ds = data.generate_trait_data(profile, "extraversion_high", model=object(), tokenizer=_Tok(),
                                  chat=fake_guided)
    assert len(ds) == 3  # 5 candidates (ceil(4 x 1.15)): 3 usable, 1 disclaimer, 1 loop
    for row in ds:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][0]["content"] in data.training_prompts()
    call = fake_guided.calls[0]
    assert call["gamma"] == profile.guidance_gamma and call["n"] == 5
    assert "outgoing" in call["persona"] and "quiet" in call["anti"]
    card = json.loads((data.data_dir(profile, "extraversion_high") / "data_card.json").read_text())
    assert card["n_candidates"] == 5 and card["n_kept"] == len(ds)
    assert card["filtered"] == {"ai_disclaimer": 1, "degenerate_loop": 1}
    assert card["filter_rates"]["ai_disclaimer"] == pytest.approx(0.2)
    assert len(card["examples"]) == min(3, len(ds))
    assert data.data_dir(profile, "extraversion_high").parent == isolated_home / "data"


def test_generated_data_are_cached_by_their_inputs(isolated_home, fake_guided):
    profile = get_profile("smoke", n_dialogues=4)
    kw = dict(model=object(), tokenizer=_Tok(), chat=fake_guided)
    first = data.generate_trait_data(profile, "openness_low", **kw)
    again = data.generate_trait_data(profile, "openness_low", **kw)
    assert len(fake_guided.calls) == 1 and first["messages"] == again["messages"]
    data.generate_trait_data(profile.replace(guidance_gamma=3.0), "openness_low", **kw)
    assert len(fake_guided.calls) == 2
    assert data.data_key(profile, "openness_low") != data.data_key(profile, "openness_high")


def test_all_answers_filtered_is_a_clear_error(isolated_home):
    with pytest.raises(DataError,
                       match="no usable dialogues for neuroticism_low .filtered: {'ai_disclaimer'"):
        data.generate_trait_data(get_profile("smoke", n_dialogues=4), "neuroticism_low",
                                 model=object(), tokenizer=_Tok(),
                                 chat=lambda *a, **k: ["As an AI, no."] * 5)
    assert not data.data_dir(get_profile("smoke", n_dialogues=4), "neuroticism_low").exists()


def test_conditions_share_batches_but_keep_their_own_answers(isolated_home):
    calls = []

    def chat(model, tokenizer, conversations, negative_conversations=None, **kw):
        calls.append(len(conversations))
        assert [c[1] for c in conversations] == [c[1] for c in negative_conversations]
        return [f"My persona says: {c[0]['content'][:60]}." for c in conversations]

    profile = get_profile("smoke", n_dialogues=4,
                          conditions=("openness_high", "neuroticism_low"))
    dd = data.trait_datasets(profile, extra_conditions=("domain_captain_mara",),
                             model=object(), tokenizer=_Tok(), chat=chat)
    assert calls == [15] and sorted(dd) == sorted([*profile.conditions, "domain_captain_mara"])
    for cond, ds in dd.items():
        persona = data._condition_personas(cond)[0]
        assert all(persona[:40] in r["messages"][1]["content"] for r in ds), cond
        assert set(ds["condition"]) == {cond}
    assert data.trait_datasets(profile, model=object(), tokenizer=_Tok(), chat=chat)  # cached
    assert calls == [15]


def test_prompt_ids_cycle_through_n_distinct_prompts():
    ids = data.prompt_ids(3, 10, seed=0)
    assert len(ids) == 10 and len(set(ids)) == 3 and ids[:3] * 3 + ids[:1] == ids
    whole = data.prompt_ids(None, len(data.training_prompts()), seed=0)
    assert sorted(whole) == list(range(len(data.training_prompts())))  # each prompt once
    assert data.prompt_ids(None, 5, seed=1) != data.prompt_ids(None, 5, seed=0)
    with pytest.raises(DataError, match="exceeds the .* training prompts"):
        data.prompt_ids(10_000, 5, seed=0)


def test_quality_filter_none_keeps_every_non_empty_answer(isolated_home):
    replies = ["As an AI, no.", "", "ha ha ha ha ha ha ha ha ha ha.", "Fine.", "Sure thing."]
    profile = get_profile("smoke", n_dialogues=4, quality_filter="none", n_prompts=2)
    ds = data.generate_trait_data(profile, "openness_high", model=object(), tokenizer=_Tok(),
                                  chat=lambda *a, **k: list(replies))
    assert [r["messages"][1]["content"] for r in ds] == [r for r in replies if r][:4]
    assert len({r["messages"][0]["content"] for r in ds}) == 2
    assert data.data_card(profile, "openness_high")["filtered"] == {"empty": 1}


def test_unknown_condition_is_a_clear_error(isolated_home):
    with pytest.raises(DataError, match="unknown condition 'humour_high'"):
        data.generate_trait_data(get_profile("smoke"), "humour_high")
    with pytest.raises(DataError, match="unknown character"):
        data.data_key(get_profile("smoke"), "domain_nobody")


def test_domain_data_use_the_character_against_a_plain_assistant(isolated_home, fake_guided):
    profile = get_profile("smoke", n_dialogues=4)
    data.generate_trait_data(profile, "domain_captain_mara", model=object(), tokenizer=_Tok(),
                             chat=fake_guided)
    assert "Captain Mara Flint" in fake_guided.calls[0]["persona"]
    assert fake_guided.calls[0]["anti"] == data.PLAIN_ASSISTANT


def test_big5chat_source_goes_through_the_loader(isolated_home, tmp_path, big5chat_csv):
    path = str(big5chat_csv(tmp_path / "b5.csv", rows_per_condition=5))
    profile = get_profile("smoke", data_source="big5chat", big5chat_path=path, n_dialogues=3)
    ds = data.generate_trait_data(profile, "conscientiousness_high")
    assert len(ds) == 3
    assert data.data_card(profile, "conscientiousness_high")["source"] == "big5chat"


@pytest.mark.slow
def test_guided_generation_on_the_embedded_model(isolated_home, embedded_model_dir):
    profile = get_profile("smoke", n_dialogues=4, gen_max_new_tokens=24, gen_batch_size=5)
    ds = data.generate_trait_data(profile, "extraversion_high",
                                  model=models.load_model(embedded_model_dir),
                                  tokenizer=models.load_tokenizer(embedded_model_dir))
    card = data.data_card(profile, "extraversion_high")
    assert 1 <= len(ds) <= 4 and card["n_kept"] == len(ds)
    assert sum(card["filtered"].values()) + card["n_kept"] >= card["n_candidates"] - 4
    assert all(data.quality_issue(r["messages"][1]["content"]) is None for r in ds)


def test_data_sentence_states_the_shared_generation_once():
    """Two conditions' shares of one batched run: 60 s + 60 s, 1500 + 900 new tokens."""
    from pvutils.data import data_sentence

    cards = [{"seconds": 60.0, "tokens_per_second": 25.0, "n_kept": 30, "n_candidates": 37,
              "filtered": {"too_short": 2, "disclaimer": 1}},
             {"seconds": 60.0, "tokens_per_second": 15.0, "n_kept": 32, "n_candidates": 37,
              "filtered": {}}]
    text = data_sentence(cards)
    # 74 drawn: 3 dropped by the filter, 9 left over once each condition had its answers
    assert "62 answers kept of 74 generated for 2 conditions" in text
    assert "dropped 3; the other 9 were drawn beyond" in text
    assert "2.0 min" in text and "20 new tokens/s" in text
    assert data_sentence([{"seconds": 3.0, "n_kept": 9}]).startswith("Data: 9 examples")
