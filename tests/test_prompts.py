"""Per-language interview and judge prompts, and RQ4's cross-lingual transfer path on a tiny
random model: a personality vector applied to a (tiny) 'Korean' model, interviewed in Korean."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from pvutils import bfi, judges, prompts
from pvutils import evaluation as ev
from pvutils.merging import applied

HANGUL = re.compile(r"[\uac00-\ud7a3]")


def test_english_file_is_the_protocol_the_interview_uses():
    en = prompts.load_prompts("en")
    assert en.questions == {it.number: it.question for it in bfi.BFI_ITEMS}
    assert en.real_person_prompt == ev.REAL_PERSON_PROMPT
    assert en.dimension_descriptions == bfi.DIMENSION_DESCRIPTIONS
    pairs = [("Are you talkative?", "Yes."), ("Are you reserved?", "No.")]
    assert prompts.judge_messages("extraversion", pairs, "en") == \
        judges.judge_messages("extraversion", pairs)


def test_korean_file_has_every_question_and_dimension_in_korean():
    assert {"en", "ko"} <= set(prompts.languages())
    ko = prompts.load_prompts("ko")
    assert sorted(ko.questions) == list(range(1, 45))
    assert len(set(ko.questions.values())) == 44
    for text in [*ko.questions.values(), ko.real_person_prompt,
                 *ko.dimension_descriptions.values(), *ko.dimension_names.values()]:
        assert HANGUL.search(text), text
    assert all(q.endswith("?") for q in ko.questions.values())


def test_korean_judge_request_names_the_dimension_and_keeps_the_reply_format():
    pairs = [(prompts.load_prompts("ko").questions[1], "네, 저는 말하는 걸 정말 좋아해요.")]
    system, user = prompts.judge_messages("extraversion", pairs, "ko")
    assert "외향성" in system["content"] and "{" not in system["content"].split("===")[1]
    example = system["content"][system["content"].rindex("{"):]
    assert set(re.findall(r'"(\w+)":', example)) == {"analysis", "result"}  # parser's keys
    assert user["content"].startswith("우리의 대화:") and "참가자: 네, 저는" in user["content"]
    reply = json.dumps({"analysis": "말이 많고 활발함", "result": 4})
    assert judges.parse_judge_reply(reply).score == 4.0


def test_unknown_language_is_named():
    with pytest.raises(ValueError, match="no prompts for language 'fr'.*prompts_fr.json"):
        prompts.load_prompts("fr")
    with pytest.raises(ValueError, match="unknown dimension"):
        prompts.judge_messages("humour", [("q", "a")], "ko")


def test_vector_moved_into_a_korean_model_is_interviewed_in_korean(tiny_chat_model,
                                                                   isolated_home):
    """RQ4: θ_ko + β φ_p, where θ_ko is another model of the same architecture (the paper: a
    Korean continued-pretraining of the base) and φ_p was extracted against the base."""
    base, tok = tiny_chat_model
    gen = torch.Generator().manual_seed(5)
    korean = copy.deepcopy(base)  # a 'Korean LM': the base moved by a domain delta
    with torch.no_grad():
        for p in korean.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    phi = {n: 0.05 * torch.randn(p.shape, generator=gen) for n, p in base.named_parameters()}
    before = {n: p.detach().clone() for n, p in korean.named_parameters()}
    with applied(korean, [phi], [1.0]):
        table = ev.interview(korean, tok, n_samples=1, max_new_tokens=4, progress=False,
                             dimensions=["extraversion"], language="ko", cache_key="ko@1")
    assert all(torch.equal(p, before[n]) for n, p in korean.named_parameters())
    ko = prompts.load_prompts("ko")
    assert list(table["question"]) == [ko.questions[i] for i in (1, 6, 11, 16, 21, 26, 31, 36)]
    english = ev.interview(korean, tok, n_samples=1, max_new_tokens=4, progress=False,
                           dimensions=["extraversion"], cache_key="ko@1")
    assert list(english["question"])[0] == "Are you talkative?"  # its own cache entry
