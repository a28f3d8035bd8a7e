"""The openai backend against real HTTP servers on loopback that misbehave the way servers do (a 500, a
429 with Retry-After, a hang, a body that is no completion, an empty completion), and against nothing."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medweave.generate import BackendError, GenParams, load_backend, user
from medweave.serve.testing import free_port


class Flaky(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: behaviour chosen by the question text; counts requests per text."""

    hits: dict = {}

    def log_message(self, *a):
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, json.dumps({"object": "list", "data": [{"id": "flaky-model"}]}).encode())

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        n = Flaky.hits[text] = Flaky.hits.get(text, 0) + 1
        ok = {"model": body["model"], "choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"},
                                                   "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
        if text == "fail twice" and n <= 2 or text == "always 500":
            return self._send(500, b'{"error": {"message": "model crashed"}}')
        if text == "busy once" and n == 1:
            return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "0.2"})
        if text == "hang":
            time.sleep(1.5)
        if text == "malformed":
            return self._send(200, b'{"result": "yes"}')
        if text == "not json":
            return self._send(200, b"<html>oops</html>")
        if text == "empty":
            ok["choices"][0]["message"]["content"] = ""
        if text == "bad request":
            return self._send(400, b'{"error": {"message": "max_tokens too large"}}')
        self._send(200, json.dumps(ok).encode())


@pytest.fixture(scope="module")
def flaky():
    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), Flaky)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def backend(url, **kw):
    return load_backend("openai", base_url=url, images=False, backoff=0.05, **kw)


def test_retries_on_5xx_and_429_then_succeeds(flaky):
    b = backend(flaky, retries=3)
    assert b.model_name == "flaky-model"
    g = b.generate([user("fail twice")], GenParams(max_tokens=4))
    assert g.text == "yes" and Flaky.hits["fail twice"] == 3 and g.prompt_tokens == 5
    t0 = time.perf_counter()
    assert b.generate([user("busy once")]).text == "yes"
    assert time.perf_counter() - t0 >= 0.2  # Retry-After honoured
    with pytest.raises(BackendError, match=r"/v1/chat/completions: HTTP 500: model crashed \(after 4 attempts\)"):
        b.generate([user("always 500")])


@pytest.mark.parametrize("text, kind, needle", [
    ("malformed", "malformed", "malformed completion"), ("not json", "malformed", "not JSON"),
    ("empty", "empty", "empty completion"), ("bad request", "http", "HTTP 400: max_tokens too large"),
])
def test_bad_replies_are_named(flaky, text, kind, needle):
    with pytest.raises(BackendError, match=needle) as exc:
        backend(flaky, retries=0).generate([user(text)])
    assert exc.value.kind == kind and flaky in str(exc.value)


def test_timeout_and_unreachable_name_the_url(flaky):
    with pytest.raises(BackendError, match="no answer within 0.5 s") as exc:
        backend(flaky, timeout=0.5, retries=1).generate([user("hang")])
    assert exc.value.kind == "timeout"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match=f"{dead}/chat/completions: server unreachable") as exc:
        backend(dead, model="m", retries=1).generate([user("hello")])
    assert exc.value.kind == "unreachable"
    with pytest.raises(BackendError, match=f"{dead}/models: server unreachable"):
        backend(dead, retries=0).fingerprint()


def test_a_run_goes_on_past_bad_samples_and_resumes(flaky, tmp_path):
    from medweave.evaluate.harness import load_run, run_task
    from medweave.evaluate.tasks import load_task

    data = tmp_path / "qa.jsonl"
    texts = ["ok one", "always 500", "ok two", "malformed", "ok three", "empty"]
    data.write_text("".join(json.dumps({"id": i, "question": t, "answer": "yes"}) + "\n" for i, t in enumerate(texts)))
    (tmp_path / "t.yaml").write_text(f"name: qa\nlayout: jsonl\ndata: {data}\nmetrics: [accuracy]\ncluster: sample\n")
    task = load_task(tmp_path / "t.yaml")
    res = run_task(task, backend(flaky, retries=1), tmp_path / "run", n_boot=20, progress=False)
    assert res["failed"] == 3 and res["samples"] == 6 and res["metrics"]["accuracy"]["value"] == pytest.approx(0.5)
    assert any("sample qa:1" in e and "HTTP 500" in e for e in res["errors"])
    info = load_run(tmp_path / "run")["run"]
    assert info["counts"]["cache"]["responses"] == 3
    again = run_task(task, backend(flaky, retries=0), tmp_path / "run", n_boot=20, progress=False)
    info = load_run(tmp_path / "run")["run"]
    assert info["counts"]["cache_hits"] == 3 and info["counts"]["sent"] == 3  # only the failed ones again
    assert again["metrics"] == res["metrics"] and info["counts"]["cache"]["repeated"] == 0
