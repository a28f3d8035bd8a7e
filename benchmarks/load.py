"""Load test: C concurrent clients on loopback for T seconds against a running ``medweave serve``, over a
mix of predict, explain (modalities), similar cases (retrieval), VQA answers (``/api/ask``) and
OpenAI-compatible chat completions; then the limits: request bodies over the size limit (413) and a
server with a per-client rate limit (429 with Retry-After).

    .venv/bin/python benchmarks/load.py [--clients 32] [--seconds 60] [--runs 1] [--store DIR --model DIR --vqa-model DIR]

Without ``--model``/``--vqa-model`` it builds the small phantom cohort with its sequential model and
the tiny VQA model the tests use (a few minutes the first time, kept in ``--work``). Starts
``medweave serve`` as a subprocess, samples its RSS (with children) every 0.2 s, and prints one row
per endpoint: requests, errors by status, p50/p95/p99 latency, throughput; the server's RSS before,
at its peak and after; the limits table. Clients are threads of this process (each with its own
connection), so they share the two CPUs with the server: latencies include waiting for a CPU.
Exits 1 when any request of the mixed run failed or a limit did not answer as it should.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

ENDPOINTS = ("predict", "explain", "similar", "ask", "chat")


def fixtures(work: Path) -> tuple[Path, Path, Path]:
    """(store, model, vqa model): the tests' phantom model and tiny VQA model, built once in ``work``."""
    from medweave.report.demo import small_phantom_model
    from medweave.vqa.model import VqaConfig
    from medweave.vqa.pipeline import train_vqa
    from medweave.vqa.testing import write_tiny_set

    model = small_phantom_model(work / "mw-phantom")
    vqa = work / "vqa-model"
    if not (vqa / "config.json").exists():
        train_vqa(write_tiny_set(work / "tiny-vqa"), vqa, VqaConfig(seeds=2, epochs=40))
    return model.parent.parent / "store", model, vqa


def picture_png(side: str, seed: int) -> bytes:
    from PIL import Image

    from medweave.vqa.testing import picture

    buf = io.BytesIO()
    Image.fromarray(picture(side, "CHEST", seed)).save(buf, format="PNG")
    return buf.getvalue()


class RssSampler(threading.Thread):
    """The server's resident memory (its process and children) every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc, self.samples, self.stop = psutil.Process(pid), [], threading.Event()

    def rss(self) -> int:
        procs = [self.proc, *self.proc.children(recursive=True)]
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(self.rss())
            self.stop.wait(0.2)


def one_request(c: httpx.Client, url: str, kind: str, i: int, cases: list[str], pngs: list[bytes]):
    case = cases[i % len(cases)]
    png = pngs[i % len(pngs)]
    if kind == "predict":
        return c.post(url + "/api/predict", json={"case_id": case})
    if kind == "explain":
        return c.get(f"{url}/api/cases/{case}/explain", params={"parts": "modalities", "fast": "1"})
    if kind == "similar":
        return c.get(f"{url}/api/cases/{case}/similar", params={"k": 5})
    if kind == "ask":
        return c.post(url + "/api/ask", data={"question": "Which side is the opacity on?", "k": "3"},
                      files={"image": ("q.png", png, "image/png")})
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    return c.post(url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url}},
        {"type": "text", "text": "Is the opacity on the left? Answer the question using a single word or phrase."}]}]})


def client(url: str, k: int, deadline: float, cases: list[str], pngs: list[bytes], out: list) -> None:
    """One client: the endpoints in turn (client k starts at endpoint k), until the deadline."""
    with httpx.Client(timeout=120) as c:
        i = k
        while time.time() < deadline:
            kind = ENDPOINTS[i % len(ENDPOINTS)]
            t0 = time.perf_counter()
            try:
                status = one_request(c, url, kind, i // len(ENDPOINTS), cases, pngs).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            out.append((kind, status, time.perf_counter() - t0, time.time()))
            i += 1


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def mixed_run(url: str, pid: int, clients: int, seconds: float, cases: list[str], pngs: list[bytes]) -> bool:
    sampler = RssSampler(pid)
    before = sampler.rss()
    sampler.start()
    out: list = []
    t_start = time.time()
    deadline = t_start + seconds
    threads = [threading.Thread(target=client, args=(url, k, deadline, cases, pngs, out)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t_start
    sampler.stop.set()
    sampler.join()
    time.sleep(1.0)
    after = sampler.rss()
    load = os.getloadavg()
    print(f"\n{clients} clients for {seconds:.0f} s ({wall:.1f} s with the last answers); load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end\n")
    print("| endpoint | requests | ok | errors by status | p50 ms | p95 ms | p99 ms | requests/s |")
    print("|---|---|---|---|---|---|---|---|")
    all_ok = True
    for kind in (*ENDPOINTS, "all"):
        rows = [r for r in out if kind == "all" or r[0] == kind]
        ok = [r[2] for r in rows if r[1] == 200]
        errors: dict = {}
        for r in rows:
            if r[1] != 200:
                errors[r[1]] = errors.get(r[1], 0) + 1
        all_ok &= not errors
        lat = [r[2] for r in rows]
        name = f"**{kind}**" if kind == "all" else kind
        print(f"| {name} | {len(rows):,} | {len(ok):,} | {', '.join(f'{k}: {v}' for k, v in sorted(errors.items(), key=str)) or '0'} | "
              f"{pct(lat, 50):,.0f} | {pct(lat, 95):,.0f} | {pct(lat, 99):,.0f} | {len(rows) / wall:.1f} |")
    mb = 2 ** 20
    print(f"\nserver RSS (with children): before {before / mb:,.0f} MB, peak {max(sampler.samples or [0]) / mb:,.0f} MB, "
          f"after {after / mb:,.0f} MB")
    return all_ok


def limits(url: str, store: Path, model: Path, work: Path, max_upload_mb: int) -> bool:
    """413 for bodies over the limit; 429 with Retry-After from a server rate-limiting loopback too."""
    from medweave.serve.testing import start_server, stop_server

    good = True
    print("\n| limit | requests | answered as expected | statuses |")
    print("|---|---|---|---|")
    limit = 2 * max_upload_mb * 2 ** 20 + 2 ** 20
    statuses: dict = {}
    with httpx.Client(timeout=60) as c:
        for i in range(10):  # a declared Content-Length over the body limit: refused before it is read
            r = c.post(url + "/v1/chat/completions", content=b"x" * (limit + 1),
                       headers={"content-type": "application/json"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    ok = statuses.get(413, 0)
    good &= ok == 10
    print(f"| body over {limit:,} bytes | 10 | {ok} (413) | {statuses} |")
    statuses = {}
    with httpx.Client(timeout=60) as c:
        for i in range(10):  # one file over the per-file upload limit, the body under the body limit
            r = c.post(url + "/api/upload", files={"files": ("big.txt", b"y" * (max_upload_mb * 2 ** 20 + 10),
                                                             "text/plain")})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    ok = statuses.get(413, 0)
    good &= ok == 10
    print(f"| upload over {max_upload_mb} MiB | 10 | {ok} (413) | {statuses} |")
    rate, seconds, n_clients = 5.0, 10.0, 4
    proc, url2 = start_server(store, None, ["--rate-limit", str(rate), "--rate-limit-loopback"],
                              log=work / "server-rate.log", timeout=600)
    try:
        out: list = []
        deadline = time.time() + seconds

        def hammer():
            with httpx.Client(timeout=30) as c:
                while time.time() < deadline:
                    r = c.get(url2 + "/api/health")
                    out.append((r.status_code, r.headers.get("retry-after"),
                                r.json().get("error", {}).get("message", "") if r.status_code != 200 else ""))

        threads = [threading.Thread(target=hammer) for _ in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop_server(proc)
    n200 = sum(s == 200 for s, _, _ in out)
    limited = [(s, ra, m) for s, ra, m in out if s == 429]
    bound = rate * seconds + 2 * rate + 1  # the tokens of the run, a full burst, the readiness probe's
    as_expected = n200 <= bound and all(ra and int(ra) >= 1 and "per client" in m for _, ra, m in limited)
    good &= as_expected and bool(limited) and n200 + len(limited) == len(out)
    counts: dict = {}
    for s, _, _ in out:
        counts[s] = counts.get(s, 0) + 1
    print(f"| {rate:g}/s per client (loopback limited), {n_clients} clients for {seconds:g} s | {len(out):,} | "
          f"{n200} allowed (at most {bound:.0f}), {len(limited):,} 429 with Retry-After | {counts} |")
    return good


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--store", type=Path)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--vqa-model", type=Path)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medweave-load")
    ap.add_argument("--no-limits", action="store_true", help="only the mixed run")
    ap.add_argument("--runs", type=int, default=1,
                    help="mixed runs one after the other on the same server (RSS before/peak/after each)")
    args = ap.parse_args()
    from medweave.serve.testing import start_server, stop_server

    args.work.mkdir(parents=True, exist_ok=True)
    if args.model is None or args.vqa_model is None:
        store, model, vqa = fixtures(args.work)
        store, model, vqa = args.store or store, args.model or model, args.vqa_model or vqa
    else:
        store, model, vqa = args.store or args.model.parent.parent / "store", args.model, args.vqa_model
    import shutil

    served = args.work / "served-store"  # a copy: the limits phase uploads into it
    shutil.rmtree(served, ignore_errors=True)
    shutil.copytree(store, served)
    max_upload_mb = 1
    proc, url = start_server(served, model, ["--vqa-model", str(vqa), "--max-upload-mb", str(max_upload_mb)],
                             log=args.work / "server.log", timeout=600)
    try:
        cases = [c["case_id"] for c in httpx.get(url + "/api/cases", params={"limit": 500}).json()["cases"]]
        cases = [c for c in cases if httpx.get(f"{url}/api/cases/{c}/similar").status_code == 200][:40]
        pngs = [picture_png(("left", "right")[i % 2], 1000 + i) for i in range(16)]  # pictures never seen
        with httpx.Client(timeout=120) as c:  # warm-up: one of each, so lazy imports are not timed
            for kind in ENDPOINTS:
                r = one_request(c, url, kind, 0, cases, pngs)
                if r.status_code != 200:
                    print(f"warm-up {kind}: HTTP {r.status_code} {r.text[:300]}")
                    return 1
        ok = True
        for run in range(args.runs):  # on the same server: does its memory keep growing, or level off?
            if args.runs > 1:
                print(f"\n### run {run + 1} of {args.runs} on the same server")
            ok &= mixed_run(url, proc.pid, args.clients, args.seconds, cases, pngs)
        if not args.no_limits:
            ok &= limits(url, served, model, args.work, max_upload_mb)
    finally:
        stop_server(proc)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
