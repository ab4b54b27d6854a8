"""Contrastive-pair fine-tuning (DPO): the pairing, what the key reads, and that training
raises the policy's preference of the pole's answer over the opposite pole's."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from pvutils import models, preference, training
from pvutils.profiles import get_profile


def dialogue(question: str, answer: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_pairs_match_prompts_in_order_of_occurrence():
    mine = [dialogue("p1", "a1", "be high"), dialogue("p2", "a2", "be high"),
            dialogue("p1", "a3", "be high"), dialogue("p4", "a4", "be high")]
    theirs = [dialogue("p2", "b2", "be low"), dialogue("p1", "b1", "be low"),
              dialogue("p3", "b3", "be low")]
    rows = preference.preference_pairs(mine, theirs)
    # p1's second answer has no second counterpart, p4 none at all; system turns do not
    # take part in the match, and the prompt is mine (with my system turn)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("a1", "b1"), ("a2", "b2")]
    assert rows[0]["prompt"] == mine[0][:-1]
    assert preference.preference_pairs(mine, []) == []


def test_dpo_reads_the_opposite_pole_and_a_domain_stays_supervised():
    dpo = get_profile("smoke", train_objective="dpo")
    assert preference.training_conditions(dpo, "openness_low") == ("openness_low",
                                                                   "openness_high")
    assert preference.training_conditions(dpo, "domain_captain_mara") == ("domain_captain_mara",)
    assert preference.training_conditions(get_profile("smoke"), "openness_low") == (
        "openness_low",)


def test_a_key_holds_only_what_its_objective_reads():
    sft = get_profile("smoke")
    dpo = sft.replace(train_objective="dpo")
    domain = "domain_captain_mara"
    assert training.train_key(sft, "openness_high") == training.train_key(
        sft.replace(dpo_beta=0.5), "openness_high")  # β unread by SFT
    assert training.train_key(dpo, "openness_high") != training.train_key(
        dpo.replace(dpo_beta=0.5), "openness_high")
    assert training.train_key(dpo, "openness_high") != training.train_key(sft, "openness_high")
    assert training.train_key(dpo, domain) == training.train_key(sft, domain)


def test_a_dpo_key_follows_the_opposite_poles_data(monkeypatch):
    """The opposite pole's answers are half of each DPO pair: when only their data key
    changes (a stand-in for new answers, via pytest's monkeypatch), the DPO vector's key
    changes and the SFT vector's does not."""
    dpo = get_profile("smoke", train_objective="dpo")
    sft = dpo.replace(train_objective="sft")
    before = {P.train_objective: training.train_key(P, "openness_high") for P in (dpo, sft)}
    own = training.pvdata.data_key
    monkeypatch.setattr(training.pvdata, "data_key", lambda P, c: own(P, c) + (
        "-new" if c == "openness_low" else ""))
    assert training.train_key(dpo, "openness_high") != before["dpo"]
    assert training.train_key(sft, "openness_high") == before["sft"]


def test_dpo_keys_ignore_padding_free_and_its_data_step_adds_the_opposite_poles():
    dpo = get_profile("smoke", train_objective="dpo", conditions=("openness_high",))
    assert training.train_key(dpo, "openness_high") == training.train_key(
        dpo.replace(padding_free=not dpo.padding_free), "openness_high")  # TRL's DPO pads
    assert preference.extra_data_conditions(dpo) == ("openness_low",)
    assert preference.extra_data_conditions(dpo.replace(train_objective="sft")) == ()
    assert preference.code_inputs(dpo.replace(train_objective="sft"), "openness_high") == []
    assert preference.code_inputs(dpo, "openness_high")


@pytest.fixture
def dpo_profile(tiny_profile):
    return tiny_profile.replace(train_objective="dpo", train_epochs=3.0,
                                conditions=("openness_high", "openness_low"))


def test_dpo_raises_the_margin_of_the_poles_answer(dpo_profile, tiny_chat_dir,
                                                   reference_logprob):
    """DPO's defining property: log p(chosen) − log p(rejected) grows over the base's."""
    training.train_condition(dpo_profile, "openness_high", keep_model=True)
    tokenizer = models.load_tokenizer(str(tiny_chat_dir))
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_dir)
    tuned = AutoModelForCausalLM.from_pretrained(
        training.finetuned_path(dpo_profile, "openness_high"))
    mine = training.pvdata.generate_trait_data(dpo_profile, "openness_high")
    theirs = training.pvdata.generate_trait_data(dpo_profile, "openness_low")
    pairs = preference.preference_pairs(mine["messages"], theirs["messages"])
    assert len(pairs) == 4

    def margin(model) -> float:
        total = 0.0
        for p in pairs:
            system, question = p["prompt"][0]["content"], p["prompt"][-1]["content"]
            total += (reference_logprob(model, tokenizer, system, question,
                                        p["chosen"][0]["content"])
                      - reference_logprob(model, tokenizer, system, question,
                                          p["rejected"][0]["content"]))
        return total / len(pairs)

    assert margin(tuned) > margin(base) + 0.05
    info = json.loads(training.sidecar_path(dpo_profile, "openness_high").read_text())
    # 4 pairs in batches of 2, three epochs
    assert info["steps"] == 6 and info["tokens"] > 0
    assert training.is_trained(dpo_profile, "openness_high")


def test_poles_without_shared_prompts_are_a_clear_error(dpo_profile, tiny_chat_dir):
    mine = training.pvdata.generate_trait_data(dpo_profile, "openness_high")
    other = mine.map(lambda r: {"messages": dialogue("elsewhere", "x")})
    with pytest.raises(ValueError, match="share fewer than 2 prompts"):
        preference.build_dpo_trainer(dpo_profile, None, models.load_tokenizer(str(tiny_chat_dir)),
                                     mine, other, {})


def test_dpo_with_lora_trains_a_merged_low_rank_vector(dpo_profile):
    profile = dpo_profile.replace(use_lora=True, train_epochs=1.0)
    path = training.train_condition(profile, "openness_low")
    info = json.loads(training.sidecar_path(profile, "openness_low").read_text())
    assert path.exists() and info["n_examples"] == 4 and len(info["data_keys"]) == 2
