"""The server, run for real on a loopback port: REST, errors, uploads, security, OpenAI-compatible chat."""

import base64
import io
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from medweave.demo.phantom import PhantomManifest
from medweave.serve import create_app
from medweave.serve.testing import ThreadServer, start_server, stop_server


def png_bytes(value: int = 200, size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def side_png(side: str, seed: int = 100) -> bytes:
    """A picture like those the tiny VQA model was trained on (a bright blob on one side)."""
    from medweave.vqa.testing import picture

    buf = io.BytesIO()
    Image.fromarray(picture(side, "CHEST", seed)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(phantom_model, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("srv")
    store = root / "store"
    shutil.copytree(phantom_model.parent.parent / "store", store)
    log = root / "server.log"
    proc, url = start_server(store, phantom_model, ["--max-upload-mb", "1"], log=log)
    yield {"url": url, "store": store, "log": log, "root": root}
    stop_server(proc)


def test_rest_routes(server):
    url = server["url"]
    cohort = httpx.get(url + "/api/cohort").json()
    assert cohort["cases"] == 60 and "image" in cohort["modalities"]
    cases = httpx.get(url + "/api/cases", params={"limit": 5}).json()
    assert cases["total"] == 60 and len(cases["cases"]) == 5
    cid = cases["cases"][0]["case_id"]
    detail = httpx.get(f"{url}/api/cases/{cid}").json()
    assert {"reports", "labs", "images", "signals"} <= set(detail)
    pred = httpx.post(url + "/api/predict", json={"case_id": cid}).json()
    assert 0 <= pred["heads"]["disease"] <= 1 and pred["steps"][-1]["prob"] == pytest.approx(pred["heads"]["disease"], abs=1e-6)
    ex = httpx.get(f"{url}/api/cases/{cid}/explain", params={"parts": "modalities"}, timeout=60).json()
    assert abs(sum(ex["shapley"].values()) - (ex["prediction"] - ex["all_absent"])) < 1e-6
    sim = httpx.get(f"{url}/api/cases/{cid}/similar", params={"k": 3}).json()["similar"]
    assert len(sim) == 3 and cid not in [s["case_id"] for s in sim]
    # each similar case carries its report(s) from the store: findings and impression sections
    with_text = [r for s in sim for r in s["reports"]]
    assert all("reports" in s for s in sim) and with_text
    assert all(r["impression"] or r["findings"] or r["text"] for r in with_text)
    if detail["images"]:
        img = httpx.get(url + detail["images"][0]["url"])
        assert img.headers["content-type"] == "image/png" and img.content.startswith(b"\x89PNG")
    assert "/api/predict" in httpx.get(url + "/openapi.json").json()["paths"]


@pytest.mark.parametrize("method,path,body,status,needle", [
    ("post", "/api/predict", {"case_id": "nope"}, 404, "unknown case 'nope'"),
    ("post", "/api/predict", {"wrong": 1}, 422, "case_id"),
    ("get", "/api/does-not-exist", None, 404, "not found"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 503, "--vqa-model"),
])
def test_errors_are_json_with_a_message(server, method, path, body, status, needle):
    r = httpx.request(method.upper(), server["url"] + path, json=body)
    assert r.status_code == status
    assert needle in r.json()["error"]["message"]


def test_ask_without_vqa_model_is_503_and_similar_still_works(server):
    r = httpx.post(server["url"] + "/api/ask", data={"question": "is it bright?"},
                   files={"image": ("x.png", png_bytes(), "image/png")})
    assert r.status_code == 503 and "VQA" in r.json()["error"]["message"]
    s = httpx.post(server["url"] + "/api/similar", files={"image": ("x.png", png_bytes(), "image/png")}).json()
    assert len(s["similar"]) == 5


def test_upload_type_and_size_checks(server):
    url = server["url"] + "/api/upload"
    r = httpx.post(url, files={"files": ("tool.exe", b"MZ....", "application/octet-stream")})
    assert r.status_code == 415 and "not accepted" in r.json()["error"]["message"]
    r = httpx.post(url, files={"files": ("fake.png", b"GIF89a not a png", "image/png")})
    assert r.status_code == 415 and "signature" in r.json()["error"]["message"]
    r = httpx.post(url, files={"files": ("big.png", b"\x89PNG\r\n\x1a\n" + b"0" * (1024 * 1024 + 10), "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


@pytest.mark.parametrize("name", ["../../evil.png", "..\\..\\evil.png", "/tmp/evil.png", "....//evil.png"])
def test_uploads_cannot_write_outside_the_store(server, name):
    root = server["root"]
    r = httpx.post(server["url"] + "/api/upload", files={"files": (name, png_bytes(90), "image/png")}, timeout=120)
    assert r.status_code in (200, 400), r.text
    outside = [p for p in root.rglob("evil.png") if server["store"] not in p.parents]
    assert not outside and not list(root.parent.glob("evil.png"))
    assert name not in r.text


def test_upload_ingests_a_new_case(server):
    before = httpx.get(server["url"] + "/api/cohort").json()["cases"]
    r = httpx.post(server["url"] + "/api/upload", files={"files": ("NEWPAT_scan.png", png_bytes(30, 96), "image/png")},
                   timeout=120)
    assert r.status_code == 200 and r.json()["failed"] == 0
    assert httpx.get(server["url"] + "/api/cohort").json()["cases"] >= before + 1
    assert "NEWPAT" not in r.text  # the file name's patient prefix is pseudonymised


def test_no_patient_identifier_in_responses_or_log(server, phantom_model):
    manifest = PhantomManifest.load(phantom_model.parent.parent / "phantom")
    url = server["url"]
    texts = [httpx.get(url + "/api/cases", params={"limit": 500}).text]
    for c in httpx.get(url + "/api/cases", params={"limit": 500}).json()["cases"][:20]:
        texts.append(httpx.get(f"{url}/api/cases/{c['case_id']}").text)
        texts.append(httpx.post(url + "/api/predict", json={"case_id": c["case_id"]}).text)
    texts.append(server["log"].read_text(errors="replace"))
    blob = "\n".join(texts)
    for p in manifest.patients:
        assert p.name not in blob and p.patient_id not in blob and p.birth_date not in blob


def test_non_loopback_host_needs_a_token(phantom_model):
    out = subprocess.run([sys.executable, "-m", "medweave.cli", "serve", "--store", str(phantom_model.parent.parent / "store"),
                          "--model", str(phantom_model), "--host", "0.0.0.0", "--port", "9"],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "needs an API token" in " ".join(out.stderr.split())


def test_token_is_required_when_set(phantom_model):
    proc, url = start_server(phantom_model.parent.parent / "store", phantom_model, ["--token", "s3cret"])
    try:
        r = httpx.get(url + "/api/cohort")
        assert r.status_code == 401 and "token" in r.json()["error"]["message"]
        assert httpx.get(url + "/api/cohort", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(url + "/api/cohort", headers={"Authorization": "Bearer wrong"}).status_code == 401
    finally:
        stop_server(proc)


def test_openai_client_against_the_chat_endpoint(phantom_model, tiny_vqa_model):
    """The official openai client, unchanged, against a real VQA model served by medweave."""
    openai = pytest.importorskip("openai")
    app = create_app(phantom_model.parent.parent / "store", phantom_model, vqa_model_dir=tiny_vqa_model)
    with ThreadServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
        models = [m.id for m in client.models.list().data]
        assert len(models) == 1
        data_url = "data:image/png;base64," + base64.b64encode(side_png("left")).decode()
        resp = client.chat.completions.create(model=models[0], messages=[{"role": "user", "content": [
            {"type": "text", "text": "Which side is the opacity on?"},
            {"type": "image_url", "image_url": {"url": data_url}}]}])
        assert resp.choices[0].message.content == "left"
        stream = client.chat.completions.create(model=models[0], stream=True, messages=[
            {"role": "user", "content": [{"type": "text", "text": "Which side is the opacity on?"},
                                         {"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(side_png("right")).decode()}}]}])
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "right"
        with pytest.raises(openai.BadRequestError, match="data URL"):
            client.chat.completions.create(model="x", messages=[{"role": "user", "content": [
                {"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}])
        r = httpx.post(srv.url + "/api/ask", data={"question": "Which side is the opacity on?"},
                       files={"image": ("a.png", side_png("right", 7), "image/png")})
        assert r.json()["answer"] == "right" and len(r.json()["similar"]) == 5


def test_transcribe_a_spoken_question(server, tmp_path):
    """The record button's route: a question spoken by espeak-ng comes back as text (Whisper, offline)."""
    from medweave.vqa.speech import espeak_available, speak

    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = speak("Is there an opacity in the right lung?", tmp_path / "q.wav")
    r = httpx.post(server["url"] + "/api/transcribe", files={"audio": ("q.wav", wav.read_bytes(), "audio/wav")},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert "opacity" in r.json()["text"].lower() and "right" in r.json()["text"].lower()
    bad = httpx.post(server["url"] + "/api/transcribe", files={"audio": ("q.txt", b"hello", "text/plain")})
    assert bad.status_code == 415 and ".wav" in bad.json()["error"]["message"]


def test_ask_abstains_on_a_picture_with_no_readable_content(phantom_model, tiny_vqa_model):
    """The server's answer path goes through the picture gate: a blank and a noise picture get no answer
    and the reason, a picture like the training ones its answer (REST and OpenAI-compatible chat)."""
    app = create_app(phantom_model.parent.parent / "store", phantom_model, vqa_model_dir=tiny_vqa_model)
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(noise, format="PNG")
    with ThreadServer(app) as srv:
        for name, data in (("blank.png", png_bytes(0)), ("grey.png", png_bytes(200)), ("noise.png", noise.getvalue())):
            r = httpx.post(srv.url + "/api/ask", data={"question": "Which side is the opacity on?"},
                           files={"image": (name, data, "image/png")})
            body = r.json()
            assert r.status_code == 200 and body["abstained"] is True and body["answer"] == "", (name, body)
            assert body["reason"].startswith("the picture holds no readable content") and body["confidence"] == 0.0
            assert body["picture_gate"].startswith("on:")
        r = httpx.post(srv.url + "/api/ask", data={"question": "Which side is the opacity on?"},
                       files={"image": ("a.png", side_png("left", 11), "image/png")}).json()
        assert r["abstained"] is False and r["answer"] == "left" and "reason" not in r
        blank_url = "data:image/png;base64," + base64.b64encode(png_bytes(0)).decode()
        chat = httpx.post(srv.url + "/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Which side is the opacity on?"}, {"type": "image_url", "image_url": {"url": blank_url}}]}]})
        text = chat.json()["choices"][0]["message"]["content"]
        assert chat.status_code == 200 and text.startswith("[abstained] the picture holds no readable content")
        from medweave.evaluate.extract import EXTRACTORS, is_abstention

        assert is_abstention(text) and EXTRACTORS.get("yesno")(text) == "no"  # why the harness checks it first
