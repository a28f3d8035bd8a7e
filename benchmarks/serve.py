"""Load test of the server: N concurrent clients on loopback for T seconds against predict and ask.

Starts ``medweave serve`` as a subprocess on 127.0.0.1 (with a stand-in VQA answerer unless
--vqa-model is given: then ask goes through the real model), runs bounded client loops, prints
requests/s, p50/p99 latency, errors, and the server's memory before and after. Stops by itself.

    .venv/bin/python benchmarks/serve.py [--model DIR --store DIR] [--clients 8] [--seconds 30]
"""

from __future__ import annotations

import argparse
import io
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--store", type=Path)
    ap.add_argument("--vqa-model", type=Path)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    from medweave.report.demo import small_phantom_model
    from medweave.serve.testing import start_server, stop_server

    work = Path(tempfile.mkdtemp(prefix="mw-serve-bench-"))
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
