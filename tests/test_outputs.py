"""The output policy: never destroy, swap atomically, and no secret in any message."""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time

import pytest

from pvutils.artifacts import atomic_dir
from pvutils.outputs import (
    PolicyError,
    check_output,
    deferred_signals,
    redact,
    register_secret,
    write_marker,
)


def test_outputs_that_would_destroy_something_are_refused(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_text("x")
    monkeypatch.chdir(model)
    for out, rule in [(model, "current directory"), (tmp_path, "parent of it"),
                      (model / "sub", "inside the input")]:
        with pytest.raises(PolicyError, match=rule):
            check_output(out, [model], overwrite=True)
    monkeypatch.chdir(tmp_path / "..")
    with pytest.raises(PolicyError, match="contains the input"):
        check_output(tmp_path, [model], overwrite=True)
    with pytest.raises(PolicyError, match="--overwrite"):
        check_output(model, [])
    with pytest.raises(PolicyError, match="not written by pvutils"):
        check_output(model, [], overwrite=True)
    write_marker(model, "test")
    assert check_output(model, [], overwrite=True) == model
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output(empty, []) == empty and check_output(tmp_path / "new", []) is not None


def test_atomic_dir_swaps_in_the_new_and_keeps_the_old_on_failure(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("boom")
    assert (final / "a").read_text() == "old"
    with atomic_dir(final) as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing beside it


def test_a_swap_cut_between_its_two_renames_is_undone_by_the_next_run(tmp_path):
    final = tmp_path / "out"
    old = tmp_path / ".out.old-999999999-0123abcd"  # a pid that cannot be alive
    old.mkdir()
    (old / "a").write_text("old")
    with atomic_dir(tmp_path / "other") as tmp:
        (tmp / "x").write_text("")
    assert (final / "a").read_text() == "old" and not old.exists()


@pytest.mark.parametrize("text, hidden", [
    ("POST https://user:hunter2pass@api.example.com/v1 failed", "hunter2pass"),
    ("Incorrect API key provided: sk-proj-abcdEFGH12345678", "abcdEFGH12345678"),
    ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi"),
    ('{"api_key": "secret-value-123"}', "secret-value-123"),
    ("token hf_AbCdEfGhIjKlMnOp used", "AbCdEfGhIjKlMnOp"),
])
def test_redact_hides_keys_tokens_and_url_passwords(text, hidden):
    assert hidden not in redact(text) and "***" in redact(text)


def test_redact_hides_registered_and_environment_secrets(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "plainvalue42")
    register_secret("opaque-key-without-a-prefix")
    text = redact("echo plainvalue42 and opaque-key-without-a-prefix")
    assert "plainvalue42" not in text and "opaque-key-without-a-prefix" not in text
    assert redact("nothing secret here") == "nothing secret here"


class EchoingEndpoint(http.server.BaseHTTPRequestHandler):
    """An endpoint that refuses the request and echoes the key it was sent (401)."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}",
                                     "type": "invalid_request_error"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_openai_judge_never_shows_the_key_or_the_url_password(isolated_home):
    from pvutils.judges import JudgeError, OpenAIJudge

    server = http.server.HTTPServer(("127.0.0.1", 0), EchoingEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    key = "zz-unprefixed-key-0123456789"
    url = f"http://judge:urlpassword9@127.0.0.1:{server.server_port}/v1"
    try:
        judge = OpenAIJudge(base_url=url, api_key=key, max_attempts=1, use_cache=False)
        assert "urlpassword9" not in repr(judge)
        with pytest.raises(JudgeError) as caught:
            judge.complete([{"role": "user", "content": "hi"}])
    finally:
        server.shutdown()
    message = str(caught.value)
    assert "401" in message and key not in message and "urlpassword9" not in message


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_deferred_signals_hold_a_sigterm_until_the_block_ends():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append("TERM"))
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            held = list(seen)
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert held == [] and seen == ["TERM"]
