"""The paper's judge path against a real OpenAI-compatible server: `transformers serve` with
the embedded model, on loopback only (no network).

What it shows: the request (structured output included) is accepted and answered, the
reply is read, and when the small model does not write the JSON asked for, the judge asks
again and then fails with a clear error, caching nothing. (`transformers serve` accepts
`response_format` but does not constrain decoding, so the schema alone cannot help here.)
Marked slow: starting the server dominates (about 15 s on an idle 2-core machine).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pvutils import judges as jd

pytest.importorskip("fastapi", reason="transformers serve needs fastapi (the dev extra)")
pytest.importorskip("uvicorn", reason="transformers serve needs uvicorn (the dev extra)")

pytestmark = pytest.mark.slow
START_TIMEOUT = 120.0  # seconds; a loaded CI machine imports torch slowly


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_model(embedded_model_dir, tmp_path_factory):
    """`transformers serve` of the embedded model on a free loopback port; its log."""
    port, log = _free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    exe = Path(sys.executable).with_name("transformers")
    with open(log, "w") as out:
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port),
                                 str(embedded_model_dir)], stdout=out, stderr=subprocess.STDOUT,
                                env={**__import__("os").environ, "HF_HUB_OFFLINE": "1",
                                     "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"transformers serve did not start: {log.read_text()[-800:]}")
                time.sleep(0.5)
        yield f"{url}/v1", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_judge_asks_a_real_server_and_gives_up_clearly(served_model, embedded_model_dir,
                                                            tmp_path):
    url, log = served_model
    judge = jd.OpenAIJudge(model=str(embedded_model_dir), base_url=url, api_key="loopback",
                           max_attempts=2, timeout=90.0, max_tokens=12,
                           cache_dir=tmp_path / "cache")
    pairs = [("Are you talkative?", "Yes, I talk to everyone I meet.")]
    try:
        result = judge.score("extraversion", pairs)
    except jd.JudgeError as err:  # what the embedded model does: prose, not the JSON
        assert "gave no usable score after 2 attempts" in str(err)
        assert "unusable reply" in str(err)
        assert not list((tmp_path / "cache").glob("*.json"))  # nothing cached on failure
        asked = 2
    else:  # a model that does write the JSON gets a score, cached by endpoint and request
        assert 1.0 <= result.score <= 5.0
        assert len(list((tmp_path / "cache").glob("*.json"))) == 1
        asked = 1
    assert judge.structured  # the endpoint accepted response_format (no plain-text fallback)
    assert log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200') == asked
