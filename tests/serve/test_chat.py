"""`medweave serve` with a VQA model alone, and the chat endpoint as evaluators call it."""

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from medweave.serve.testing import start_server, stop_server


def data_url(side: str, seed: int = 100) -> str:
    from medweave.vqa.testing import picture

    buf = io.BytesIO()
    Image.fromarray(picture(side, "CHEST", seed)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def vqa_server(tiny_vqa_model, tmp_path_factory):
    proc, url = start_server(None, None, ["--vqa-model", str(tiny_vqa_model)],
                             log=tmp_path_factory.mktemp("vqa-srv") / "server.log")
    yield url
    stop_server(proc)


def chat(url, messages, **extra):
    r = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": messages, **extra}, timeout=60)
    return r


def test_vqa_model_alone_serves_chat_and_says_what_is_missing(vqa_server):
    health = httpx.get(vqa_server + "/api/health").json()
    assert health["vqa"].startswith("medweave-vqa") and health["model"] is None and health["store"] is None
    r = httpx.get(vqa_server + "/api/cases")
    assert r.status_code == 503 and "--model" in r.json()["error"]["message"]
    r = httpx.post(vqa_server + "/api/upload", files={"files": ("a.png", b"x", "image/png")})
    assert r.status_code == 503 and "--store" in r.json()["error"]["message"]
    assert [m["id"] for m in httpx.get(vqa_server + "/v1/models").json()["data"]] == [health["vqa"]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_same_answer_with_suffixes_system_prompts_order_and_turns(vqa_server, side):
    img = {"type": "image_url", "image_url": {"url": data_url(side)}}
    q = "Which side is the opacity on?"
    variants = [
        [{"role": "user", "content": [img, {"type": "text", "text": q}]}],
        [{"role": "user", "content": [{"type": "text", "text": q}, img]}],
        [{"role": "user", "content": [img, {"type": "text", "text": q + "\nAnswer the question using a single "
                                                                       "word or phrase."}]}],
        [{"role": "system", "content": "You are a helpful medical assistant."},
         {"role": "user", "content": [{"type": "text", "text": "<image>\nQuestion: " + q + " Answer:"}, img]}],
        [{"role": "user", "content": [img, {"type": "text", "text": "Is the opacity on the left?"}]},
         {"role": "assistant", "content": "yes" if side == "left" else "no"},
         {"role": "user", "content": q}],
    ]
    answers = []
    for v in variants:
        r = chat(vqa_server, v)
        assert r.status_code == 200, r.text
        answers.append(r.json()["choices"][0]["message"]["content"])
    assert answers == [side] * len(variants)
    with httpx.stream("POST", vqa_server + "/v1/chat/completions", timeout=60,
                      json={"model": "m", "messages": variants[2], "stream": True}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == side


def test_chat_errors_are_clear(vqa_server):
    r = chat(vqa_server, [{"role": "user", "content": "Which side is the opacity on?"}])
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]
    r = chat(vqa_server, [{"role": "user", "content": [
        {"type": "text", "text": "Which side?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"junk").decode()}}]}])
    assert r.status_code == 415 and "cannot be decoded" in r.json()["error"]["message"]
    r = chat(vqa_server, [{"role": "robot", "content": "hi"}])
    assert r.status_code == 400 and "messages[0].role" in r.json()["error"]["message"]
    r = chat(vqa_server, [{"role": "user", "content": [{"type": "video", "video": "x"}]}])
    assert r.status_code == 400 and "content[0].type" in r.json()["error"]["message"]


def test_serve_refuses_to_start_with_nothing_or_a_bad_vqa_model(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "medweave.cli", "serve"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--vqa-model" in p.stderr
    p = subprocess.run([sys.executable, "-m", "medweave.cli", "serve", "--vqa-model", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "not a VQA model folder" in p.stderr
