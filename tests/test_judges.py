"""Judges: reply parsing, the OpenAI judge over loopback, the two offline judges, the one
constructor."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from pvutils import bfi, get_profile, personas
from pvutils import judges as jd

# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, score", [
    ('{"analysis": "talks a lot", "result": 4}', 4.0),
    ('```json\n{"analysis": "x", "result": 4.5}\n```', 4.5),
    ('Here is my verdict:\n{"analysis": "x", "result": "2"}\nHope this helps!', 2.0),
    ('{"analysis": "brace } inside", "result": 1}', 1.0),
    ('{"analysis": "x", "score": 5}', 5.0),
])
def test_parse_tolerates_fences_prose_and_strings(text, score):
    assert jd.parse_judge_reply(text).score == score


@pytest.mark.parametrize("text, match", [
    ("", "empty"), ("I think 4.", "no JSON object"), ('{"analysis": "x"}', "no JSON object"),
    ('{"analysis": "x", "result": "high"}', "not a number"),
    ('{"analysis": "x", "result": 7}', "outside 1..5"),
    ('{"analysis": "x", "result": true}', "not a number"),
])
def test_parse_rejects_replies_without_a_usable_score(text, match):
    with pytest.raises(jd.JudgeParseError, match=match):
        jd.parse_judge_reply(text)


def test_judge_messages_hold_description_and_every_pair():
    pairs = [("Are you talkative?", "Very."), ("Are you reserved?", "Not at all.")]
    system, user = jd.judge_messages("extraversion", pairs)
    assert "psychometrics" in system["content"]
    assert bfi.DIMENSION_DESCRIPTIONS["extraversion"] in system["content"]
    assert '"analysis"' in system["content"] and '"result"' in system["content"]
    assert all(q in user["content"] and a in user["content"] for q, a in pairs)


def test_reply_schema_asks_for_analysis_and_result():
    schema = jd.reply_format()["json_schema"]["schema"]
    assert schema["required"] == ["analysis", "result"]
    assert schema["properties"]["result"]["type"] == "number"


# --- the OpenAI judge against a loopback server -------------------------------------------------

SECRET = "sk-test-not-a-real-key-123"


class FakeEndpoint:
    """An OpenAI-compatible /v1/chat/completions that plays a script of replies.

    Error replies carry `retry-after-ms: 1`, which the openai client honours, so its
    retries take milliseconds.
    """

    def __init__(self):
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append({"body": body, "auth": self.headers["Authorization"]})
                kind, payload = endpoint.script.pop(0) if endpoint.script else ("ok", "")
                if kind == "sleep":
                    time.sleep(payload)
                    kind, payload = "ok", '{"analysis": "late", "result": 3}'
                if kind == "status":
                    self._send(payload, {"error": {"message": "scripted", "type": "x"}})
                    return
                self._send(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": payload}}],
                })

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if code != 200:
                    self.send_header("retry-after-ms", "1")
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    server = FakeEndpoint()
    yield server
    server.close()


@pytest.fixture
def make_judge(endpoint, tmp_path):
    def make(**kw):
        opts = dict(model="gpt-test", base_url=endpoint.url, api_key=SECRET, max_attempts=3,
                    timeout=2.0, cache_dir=tmp_path / "cache")
        opts.update(kw)
        return jd.OpenAIJudge(**opts)
    return make


PAIRS = [("Are you talkative?", "Yes, I chat with everyone."),
         ("Are you reserved?", "No, I share everything.")]
GOOD = '{"analysis": "Outgoing and chatty.", "result": 4.5}'


def test_normal_reply_asks_for_structured_output(endpoint, make_judge):
    endpoint.script = [("ok", GOOD)]
    result = make_judge().score("extraversion", PAIRS)
    assert result == jd.JudgeResult(4.5, "Outgoing and chatty.")
    sent = endpoint.requests[0]
    assert sent["body"]["model"] == "gpt-test"
    assert sent["body"]["messages"] == jd.judge_messages("extraversion", PAIRS)
    assert sent["body"]["response_format"] == jd.reply_format()
    assert sent["auth"] == f"Bearer {SECRET}"


def test_endpoint_without_structured_output_is_asked_plainly(endpoint, make_judge):
    endpoint.script = [("status", 400), ("ok", GOOD), ("ok", GOOD)]
    judge = make_judge(use_cache=False)
    assert judge.score("extraversion", PAIRS).score == 4.5
    assert judge.score("openness", PAIRS).score == 4.5  # remembered: asked plainly at once
    assert ["response_format" in r["body"] for r in endpoint.requests] == [True, False, False]


def test_rate_limit_then_success(endpoint, make_judge):
    endpoint.script = [("status", 429), ("status", 429), ("ok", GOOD)]
    assert make_judge().score("extraversion", PAIRS).score == 4.5
    assert len(endpoint.requests) == 3


def test_server_errors_until_failure(endpoint, make_judge):
    endpoint.script = [("status", 500)] * 3
    with pytest.raises(jd.JudgeError, match="after 3 attempts.*InternalServerError"):
        make_judge().score("extraversion", PAIRS)
    assert len(endpoint.requests) == 3


def test_timeout_is_retried(endpoint, make_judge):
    endpoint.script = [("sleep", 1.0), ("ok", GOOD)]
    assert make_judge(timeout=0.2).score("extraversion", PAIRS).score == 4.5


def test_malformed_json_is_asked_again_then_fails(endpoint, make_judge):
    endpoint.script = [("ok", '{"analysis": "oops", "result": 4'), ("ok", GOOD)]
    assert make_judge().score("openness", PAIRS).score == 4.5
    endpoint.script = [("ok", "not json")] * 3
    with pytest.raises(jd.JudgeError, match="unusable reply"):
        make_judge().score("neuroticism", PAIRS)


def test_reply_without_a_score_fails_clearly(endpoint, make_judge):
    endpoint.script = [("ok", '{"analysis": "cannot tell"}')] * 3
    with pytest.raises(jd.JudgeError, match="no usable score.*'result'"):
        make_judge().score("agreeableness", PAIRS)


def test_client_errors_are_not_retried(endpoint, make_judge):
    endpoint.script = [("status", 401)]
    with pytest.raises(jd.JudgeError, match="HTTP 401"):
        make_judge().score("agreeableness", PAIRS)
    assert len(endpoint.requests) == 1


def test_replies_are_cached_by_request_and_the_key_is_never_saved(endpoint, make_judge,
                                                                  tmp_path, capsys):
    endpoint.script = [("ok", GOOD)]
    judge = make_judge()
    first = judge.score("extraversion", PAIRS)
    assert make_judge().score("extraversion", PAIRS) == first  # from disk, no request
    assert len(endpoint.requests) == 1
    files = list((tmp_path / "cache").glob("*.json"))
    assert len(files) == 1 and SECRET not in files[0].read_text()
    assert SECRET not in repr(judge) and SECRET not in capsys.readouterr().out


def test_the_cache_is_keyed_by_endpoint(endpoint, make_judge, tmp_path):
    other = FakeEndpoint()
    try:
        endpoint.script, other.script = [("ok", GOOD)], [("ok", GOOD)]
        make_judge().score("extraversion", PAIRS)
        make_judge(base_url=other.url).score("extraversion", PAIRS)
        assert len(endpoint.requests) == len(other.requests) == 1
        assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    finally:
        other.close()


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(jd.JudgeError, match="OPENAI_API_KEY"):
        jd.OpenAIJudge()


# --- offline judges --------------------------------------------------------------------------


def test_persona_judge_is_the_tanh_of_the_persona_likelihood_gap(tiny_chat_model,
                                                                 reference_logprob):
    model, tok = tiny_chat_model
    judge = jd.get_judge("persona", reference=model, tokenizer=tok, scale=0.05)
    high, low = personas.persona("extraversion", "high"), personas.persona("extraversion", "low")
    gaps = [reference_logprob(model, tok, high, q, a) - reference_logprob(model, tok, low, q, a)
            for q, a in PAIRS]
    result = judge.score("extraversion", PAIRS)
    assert result.score == pytest.approx(3 + 2 * math.tanh(sum(gaps) / len(gaps) / 0.05),
                                         abs=1e-3)
    assert f"{int(sum(g > 0 for g in gaps))} of 2 answers" in result.analysis


class AxisEncoder:
    """A stand-in sentence encoder: high anchors at e0, low anchors at e1, any other text
    at a direction given by `where` (unit vectors, as normalize_embeddings asks)."""

    def __init__(self, dimension, where):
        self.high, self.low = map(set, bfi.dimension_anchors(dimension))
        self.where = where

    def encode(self, texts, **kw):
        rows = []
        for t in texts:
            v = [1.0, 0.0] if t in self.high else [0.0, 1.0] if t in self.low else self.where[t]
            rows.append(torch.tensor(v) / torch.tensor(v).norm())
        return torch.stack(rows)


def test_embedding_judge_places_answers_on_the_anchor_axis():
    # h = e0, l = e1, m = (1/2, 1/2), |h - l|^2 / 2 = 1: t = (e - m)·(1, -1) = e0 - e1
    where = {"high": [1.0, 0.0], "low": [0.0, 1.0], "middle": [1.0, 1.0], "beyond": [1.0, -1.0]}
    judge = jd.EmbeddingJudge(encoder=AxisEncoder("openness", where), scale=1.5)
    t = judge.positions("openness", ["high", "low", "middle", "beyond"])
    assert t.tolist() == pytest.approx([1.0, -1.0, 0.0, math.sqrt(2)])
    result = judge.score("openness", [("q", "high"), ("q", "middle")])
    assert result.score == pytest.approx(3 + 2 * math.tanh(0.5 / 1.5))


@pytest.fixture(scope="module")
def minilm_judge():
    return jd.get_judge("embedding")


def test_minilm_anchor_centroids_sit_at_plus_and_minus_one(minilm_judge):
    for dim in bfi.DIMENSIONS:
        high, low = bfi.dimension_anchors(dim)
        assert len(high) == len(low) >= 24
        assert float(minilm_judge.positions(dim, high).mean()) == pytest.approx(1, abs=1e-4)
        assert float(minilm_judge.positions(dim, low).mean()) == pytest.approx(-1, abs=1e-4)


def test_judges_refuse_empty_answers(minilm_judge):
    with pytest.raises(jd.JudgeError, match="no non-empty answers"):
        minilm_judge.score("openness", [("q", " ")])


# --- the one constructor -----------------------------------------------------------------------


def test_get_judge_reads_the_profile(tiny_chat_model, endpoint, tmp_path):
    profile = get_profile("paper")
    openai = jd.get_judge("openai", profile, api_key=SECRET, base_url=endpoint.url,
                          cache_dir=tmp_path)
    assert isinstance(openai, jd.OpenAIJudge) and openai.model == profile.judge_model
    assert jd.get_judge("openai", profile, judge_model="gpt-x", api_key=SECRET).model == "gpt-x"
    model, tok = tiny_chat_model
    persona = jd.get_judge("persona", profile, reference=model, tokenizer=tok)
    assert isinstance(persona, jd.PersonaJudge) and persona.model is model
    with pytest.raises(ValueError, match="needs `tokenizer`"):
        jd.get_judge("persona", reference=model)
    with pytest.raises(ValueError, match="unknown judge"):
        jd.get_judge("gpt")
