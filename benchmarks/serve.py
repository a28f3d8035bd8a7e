"""Load test of the server: N concurrent clients on loopback for T seconds against predict and ask,
and the latency of an answer over the OpenAI-compatible chat endpoint.

Starts ``medweave serve`` as a subprocess on 127.0.0.1, runs bounded client loops, prints requests/s,
p50/p99 latency, errors, and the server's memory before and after. Stops by itself.

With ``--vqa-model DIR`` it also starts ``medweave serve --vqa-model DIR`` alone and measures
``/v1/chat/completions`` one request at a time (the latency a client sees): a picture the model has
seen (a training picture, or one asked before) and a new picture each time (a random picture never
sent before), beside the same requests answered in-process by the ``builtin`` backend, and beside the
answer path the server used before (the picture decoded to a float RGB array and re-encoded, the
question re-embedded, on every call). Targets: p50 <= 100 ms seen, <= 300 ms new.

    .venv/bin/python benchmarks/serve.py [--model DIR --store DIR] [--clients 8] [--seconds 30]
    .venv/bin/python benchmarks/serve.py --vqa-model runs/vqa --only-chat [--requests 40]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image


def client_loop(url: str, kind: str, cases: list[str], image: bytes, deadline: float, out: dict) -> None:
    """One client: alternate requests of ``kind`` until the deadline; record latencies and errors."""
    with httpx.Client(timeout=60) as c:
        i = 0
        while time.time() < deadline:
            t0 = time.perf_counter()
            try:
                if kind == "predict":
                    r = c.post(url + "/api/predict", json={"case_id": cases[i % len(cases)]})
                elif kind == "similar":
                    r = c.post(url + "/api/similar", files={"image": ("q.png", image, "image/png")})
                else:
                    r = c.post(url + "/api/ask", data={"question": "Is there an opacity?"},
                               files={"image": ("q.png", image, "image/png")})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            out.setdefault(kind, []).append((time.perf_counter() - t0, ok))
            i += 1


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def chat_body(image: bytes, question: str, mime: str) -> dict:
    import base64

    return {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(image).decode()}"}},
        {"type": "text", "text": question + "\nAnswer the question using a single word or phrase."}]}]}


def chat_latency(vqa_model: Path, n: int, work: Path) -> None:
    """p50/p90 of chat answers over HTTP (seen / new picture) beside in-process and the old path."""
    import json

    from medweave.generate import ImageData
    from medweave.generate.builtin import BuiltinBackend
    from medweave.serve.state import decode_image
    from medweave.serve.testing import start_server, stop_server

    cfg = json.loads((vqa_model / "config.json").read_text())
    cases = cfg["cases"]
    data = Path(cfg["meta"].get("data", ""))
    folder = data.parent / "images"
    seen = [(folder / c["image"], c["question"]) for c in cases[:: max(1, len(cases) // n)]][:n]
    seen = [(p.read_bytes(), q, "image/jpeg") for p, q in seen if p.is_file()]
    rng = np.random.default_rng(1)
    new = [(png_bytes((rng.random((256, 256)) * 255).astype(np.uint8)), "What organ system is shown?", "image/png")
           for _ in range(n)]
    if not seen:
        print(f"no training pictures found beside {data}: 'seen' uses pictures asked once before")
        seen = [(b, q, m) for b, q, m in new[: n // 2]]
    proc, url = start_server(None, None, ["--vqa-model", str(vqa_model)], log=work / "vqa-server.log", timeout=300)
    rows, cpu = [], {}
    try:
        server = psutil.Process(proc.pid)
        with httpx.Client(timeout=120) as c:
            c.post(url + "/v1/chat/completions", json=chat_body(*new[0]))  # warm-up: encoders load
            for label, items in (("seen picture", seen), ("new picture", new[1:])):
                lat, ok = [], 0
                c0 = sum(server.cpu_times()[:2])
                for b, q, m in items:
                    t0 = time.perf_counter()
                    r = c.post(url + "/v1/chat/completions", json=chat_body(b, q, m))
                    lat.append(time.perf_counter() - t0)
                    ok += r.status_code == 200
                cpu[label] = 1000 * (sum(server.cpu_times()[:2]) - c0) / max(len(items), 1)
                rows.append((f"HTTP /v1/chat/completions, {label}", lat, ok))
        mem = server.memory_info().rss
    finally:
        stop_server(proc)
    backend = BuiltinBackend(model=vqa_model)
    from medweave.generate import user
    backend.generate([user(ImageData(new[0][0]), "warm up?")])
    for label, items in (("seen picture", seen), ("new picture", [(png_bytes((rng.random((256, 256)) * 255)
                                                                           .astype(np.uint8)), q, m)
                                                                 for _, q, m in new[1:]])):
        lat = []
        for b, q, m in items:
            t0 = time.perf_counter()
            backend.generate([user(ImageData(b, m), q + "\nAnswer the question using a single word or phrase.")])
            lat.append(time.perf_counter() - t0)
        rows.append((f"in-process builtin backend, {label}", lat, len(items)))
    from medweave.report.vqa import VqaAnswerer

    old = VqaAnswerer(backend.model, "old")
    for label, items in (("seen picture", seen[: max(3, n // 4)]),):
        lat = []
        for b, q, m in items:
            t0 = time.perf_counter()
            old.answer(decode_image(b), q + "\nAnswer the question using a single word or phrase.")
            lat.append(time.perf_counter() - t0)
        rows.append((f"old answer path in-process (RGB float decode, both views re-encoded), {label}", lat,
                     len(items)))
    print(f"{'chat answer latency':78s} {'n':>4s} {'p50 ms':>8s} {'p90 ms':>8s} ok")
    for label, lat, ok in rows:
        a = np.array(lat) * 1000
        print(f"{label:78s} {len(a):4d} {np.percentile(a, 50):8.1f} {np.percentile(a, 90):8.1f} {ok}")
    print("server CPU per answer (user+system, independent of other load): "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in cpu.items()))
    print(f"VQA server RSS {mem / 2**20:.0f} MiB; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(latencies on a busy machine include waiting for a CPU)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--store", type=Path)
    ap.add_argument("--vqa-model", type=Path)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--requests", type=int, default=40, help="Chat requests per picture kind.")
    ap.add_argument("--only-chat", action="store_true", help="Only the chat latency (needs --vqa-model).")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mw-serve-bench-"))
    if args.vqa_model:
        chat_latency(args.vqa_model, args.requests, work)
    elif args.only_chat:
        ap.error("--only-chat needs --vqa-model DIR")
    if args.only_chat:
        return
    from medweave.report.demo import small_phantom_model
    from medweave.serve.testing import start_server, stop_server

    model = args.model or small_phantom_model(work / "phantom")
    store = args.store or model.parent.parent / "store"
    extra = ["--vqa-model", str(args.vqa_model)] if args.vqa_model else []
    proc, url = start_server(store, model, extra, log=work / "server.log")
    try:
        mem0 = psutil.Process(proc.pid).memory_info().rss
        cases = [c["case_id"] for c in httpx.get(url + "/api/cases", params={"limit": 500}).json()["cases"]]
        buf = io.BytesIO()
        Image.fromarray((np.random.default_rng(0).random((224, 224)) * 255).astype(np.uint8)).save(buf, "PNG")
        ask_ok = httpx.post(url + "/api/ask", data={"question": "q"}, files={"image": ("q.png", buf.getvalue(), "image/png")},
                            timeout=300)  # the first ask loads the encoders: a warm-up, not measured
        kinds = ["predict", "ask"] if ask_ok.status_code == 200 else ["predict", "similar"]
        if "ask" not in kinds:
            print(f"ask without its VQA model ({ask_ok.json()['error']['message']}): benchmarking /api/similar, "
                  "the image half of ask (decode, EfficientNet embedding, nearest cases)")
        for kind in kinds:
            results: dict = {}
            deadline = time.time() + args.seconds
            threads = [threading.Thread(target=client_loop, args=(url, kind, cases, buf.getvalue(), deadline, results))
                       for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            lat = np.array([x for x, _ in results[kind]])
            errors = sum(not ok for _, ok in results[kind])
            print(f"{kind:8s} clients={args.clients} seconds={args.seconds:.0f} requests={len(lat)} "
                  f"req/s={len(lat) / args.seconds:.1f} p50={1000 * np.percentile(lat, 50):.1f}ms "
                  f"p99={1000 * np.percentile(lat, 99):.1f}ms errors={errors}")
        mem1 = psutil.Process(proc.pid).memory_info().rss
        print(f"server RSS before {mem0 / 2**20:.0f} MiB, after {mem1 / 2**20:.0f} MiB")
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()
