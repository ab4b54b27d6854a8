"""Judges: reply parsing, the OpenAI judge over loopback, the two offline judges."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
from conftest import EMBEDDED, make_tiny_llama

from pvutils import evaluation as ev

# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, score", [
    ('{"analysis": "talks a lot", "result": 4}', 4.0),
    ('```json\n{"analysis": "x", "result": 4.5}\n```', 4.5),
    ('Here is my verdict:\n{"analysis": "x", "result": "2"}\nHope this helps!', 2.0),
    ('{"analysis": "brace } inside", "result": 1}', 1.0),
    ('{"analysis": "x", "score": 5}', 5.0),
])
def test_parse_tolerates_fences_prose_and_strings(text, score):
    assert ev.parse_judge_reply(text).score == score


@pytest.mark.parametrize("text, match", [
    ("", "empty"), ("I think 4.", "no JSON object"), ('{"analysis": "x"}', "no JSON object"),
    ('{"analysis": "x", "result": "high"}', "not a number"),
    ('{"analysis": "x", "result": 7}', "outside 1..5"),
    ('{"analysis": "x", "result": true}', "not a number"),
])
def test_parse_rejects_replies_without_a_usable_score(text, match):
    with pytest.raises(ev.JudgeParseError, match=match):
        ev.parse_judge_reply(text)


def test_judge_messages_hold_description_and_every_pair():
    pairs = [("Are you talkative?", "Very."), ("Are you reserved?", "Not at all.")]
    system, user = ev.judge_messages("extraversion", pairs)
    assert "psychometrics" in system["content"]
    assert ev.DIMENSION_DESCRIPTIONS["extraversion"] in system["content"]
    assert '"analysis"' in system["content"] and '"result"' in system["content"]
    assert all(q in user["content"] and a in user["content"] for q, a in pairs)


# --- the OpenAI judge against a loopback server -------------------------------------------------

SECRET = "sk-test-not-a-real-key-123"


class FakeEndpoint:
    """An OpenAI-compatible /v1/chat/completions that plays a script of replies."""

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
        opts = dict(model="gpt-test", base_url=endpoint.url, api_key=SECRET, backoff=0.001,
                    max_attempts=3, timeout=2.0, cache_dir=tmp_path / "cache")
        opts.update(kw)
        return ev.OpenAIJudge(**opts)
    return make


PAIRS = [("Are you talkative?", "Yes, I chat with everyone."),
         ("Are you reserved?", "No, I share everything.")]
GOOD = '{"analysis": "Outgoing and chatty.", "result": 4.5}'


def test_normal_reply(endpoint, make_judge):
    endpoint.script = [("ok", GOOD)]
    result = make_judge().score("extraversion", PAIRS)
    assert result == ev.JudgeResult(4.5, "Outgoing and chatty.")
    sent = endpoint.requests[0]
    assert sent["body"]["model"] == "gpt-test"
    assert sent["body"]["messages"] == ev.judge_messages("extraversion", PAIRS)
    assert sent["auth"] == f"Bearer {SECRET}"


def test_rate_limit_then_success(endpoint, make_judge):
    endpoint.script = [("status", 429), ("status", 429), ("ok", GOOD)]
    assert make_judge().score("extraversion", PAIRS).score == 4.5
    assert len(endpoint.requests) == 3


def test_server_errors_until_failure(endpoint, make_judge):
    endpoint.script = [("status", 500)] * 3
    with pytest.raises(ev.JudgeError, match="after 3 attempts.*InternalServerError"):
        make_judge().score("extraversion", PAIRS)
    assert len(endpoint.requests) == 3


def test_timeout_is_retried(endpoint, make_judge):
    endpoint.script = [("sleep", 1.0), ("ok", GOOD)]
    assert make_judge(timeout=0.2).score("extraversion", PAIRS).score == 4.5


def test_malformed_json_is_retried_then_fails(endpoint, make_judge):
    endpoint.script = [("ok", '{"analysis": "oops", "result": 4'), ("ok", GOOD)]
    assert make_judge().score("openness", PAIRS).score == 4.5
    endpoint.script = [("ok", "not json")] * 3
    with pytest.raises(ev.JudgeError, match="unusable reply"):
        make_judge().score("neuroticism", PAIRS)


def test_reply_without_a_score_fails_clearly(endpoint, make_judge):
    endpoint.script = [("ok", '{"analysis": "cannot tell"}')] * 3
    with pytest.raises(ev.JudgeError, match="no usable score.*'result'"):
        make_judge().score("agreeableness", PAIRS)


def test_client_errors_are_not_retried(endpoint, make_judge):
    endpoint.script = [("status", 401)]
    with pytest.raises(ev.JudgeError, match="HTTP 401"):
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


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ev.JudgeError, match="OPENAI_API_KEY"):
        ev.OpenAIJudge()


def test_judge_interview_scores_each_dimension_from_its_own_rows(endpoint, make_judge):
    transcripts = pd.DataFrame([
        dict(dimension="extraversion", question="Are you talkative?", answer="Yes."),
        dict(dimension="neuroticism", question="Do you worry a lot?", answer="Never."),
    ])
    endpoint.script = [("ok", '{"analysis": "a", "result": 3}'),
                       ("ok", '{"analysis": "b", "result": 2}')]
    judge = make_judge()
    scores = ev.judge_interview(transcripts, judge)
    sent = [r["body"]["messages"][1]["content"] for r in endpoint.requests]
    assert "talkative" in sent[0] and "worry" not in sent[0]
    assert "worry" in sent[1] and scores == {"neuroticism": 2.0, "extraversion": 3.0}


# --- offline judges --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from pvutils.models import load_tokenizer

    return load_tokenizer(EMBEDDED)


def test_persona_judge_maps_the_likelihood_gap(tokenizer, monkeypatch):
    model = make_tiny_llama(vocab_size=len(tokenizer), num_hidden_layers=2)
    judge = ev.get_judge("persona", model=model, tokenizer=tokenizer, scale=0.05)
    diff = judge.difference("extraversion", PAIRS)
    result = judge.score("extraversion", PAIRS)
    assert result.score == pytest.approx(ev._tanh_score(float(diff.mean()), 0.05))
    assert 1 <= result.score <= 5 and "high minus low" in result.analysis
    # with one persona for both levels there is no evidence either way: exactly neutral
    monkeypatch.setattr("pvutils.personas.persona", lambda trait, level: "You are a person.")
    assert judge.score("extraversion", PAIRS).score == pytest.approx(3.0)


@pytest.fixture(scope="module")
def embedding_judge():
    return ev.get_judge("embedding")


def test_embedding_judge_places_anchors_on_their_sides(embedding_judge):
    for dim in ev.DIMENSIONS:
        high, low = ev.dimension_anchors(dim)
        assert len(high) == len(low) >= 24
        t_high, t_low = embedding_judge.positions(dim, high), embedding_judge.positions(dim, low)
        # the centroids sit at +1 and -1 by construction
        assert float(t_high.mean()) == pytest.approx(1, abs=1e-4)
        assert float(t_low.mean()) == pytest.approx(-1, abs=1e-4)
    answers = ev.dimension_anchors("extraversion")[0][:3]
    result = embedding_judge.score("extraversion", [("q", a) for a in answers])
    mean = float(embedding_judge.positions("extraversion", answers).mean())
    assert result.score == pytest.approx(ev._tanh_score(mean, embedding_judge.scale))


def test_judges_refuse_empty_answers(embedding_judge):
    with pytest.raises(ev.JudgeError, match="no non-empty answers"):
        embedding_judge.score("openness", [("q", " ")])
    with pytest.raises(ValueError, match="unknown judge"):
        ev.get_judge("gpt")
