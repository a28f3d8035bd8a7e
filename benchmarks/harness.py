"""Speed of the evaluation harness itself.

1. Overhead per sample beyond the backend call: a run at concurrency 1, (wall time of the run's
   requests - time inside the backend) / samples: reading and hashing pictures, building messages,
   cache lookups and commits, extraction, scoring records. Measured with the builtin backend on the
   VQA-RAD test-like task (pictures!) when --vqa-model is given, and with the llama.cpp model.
2. Throughput against the llama.cpp server (`python -m llama_cpp.server`, SmolLM2-135M, 1 thread) on
   the anatomy-mcq text task with 1 and with 4 requests in flight (fresh caches).
3. A fully cached re-run: the same run again, every answer from the cache.

    .venv/bin/python benchmarks/harness.py [--vqa-model runs/vqa-testlike] [--samples 24]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def timed_run(task, backend, out: Path, **kw) -> tuple[float, dict]:
    from medweave.evaluate.harness import run_task

    t0 = time.perf_counter()
    run_task(task, backend, out, progress=False, n_boot=200, **kw)
    wall = time.perf_counter() - t0
    return wall, json.loads((out / "run.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vqa-model", type=Path, help="A builtin VQA model (medweave vqa train --split testlike).")
    ap.add_argument("--samples", type=int, default=24, help="Samples of anatomy-mcq (at most 24).")
    ap.add_argument("--vqa-samples", type=int, default=200, help="Samples of vqa-rad-testlike for the overhead.")
    args = ap.parse_args()
    from medweave.evaluate.tasks import load_task
    from medweave.generate import load_backend
    from medweave.generate.testing import llama_cpp_available, llama_cpp_problem, smollm2_gguf, start_llama_server

    work = Path(tempfile.mkdtemp(prefix="mw-harness-bench-"))
    rows = []
    if args.vqa_model:
        task = load_task("vqa-rad-testlike")
        with load_backend("builtin", model=str(args.vqa_model)) as b:
            wall, info = timed_run(task, b, work / "vqa", limit=args.vqa_samples, concurrency=1)
            n = info["counts"]["samples"]
            rows.append(("builtin, vqa-rad-testlike, first run (concurrency 1)", n, wall, n / wall,
                         info["timing"]["overhead_ms_per_sample"]))
            wall2, info2 = timed_run(task, b, work / "vqa", limit=args.vqa_samples, concurrency=1)
            rows.append(("builtin, vqa-rad-testlike, fully cached re-run", n, wall2, n / wall2,
                         1000 * wall2 / n))
    gguf = smollm2_gguf()
    if gguf is None or not llama_cpp_available():
        print(f"skipping the llama.cpp rows: {llama_cpp_problem() or 'the SmolLM2 GGUF is absent (make setup)'}")
    else:
        task = load_task("anatomy-mcq")
        with load_backend("llama-cpp", model=str(gguf)) as b:
            wall, info = timed_run(task, b, work / "llama-in-process", limit=args.samples, concurrency=1)
            n = info["counts"]["samples"]
            rows.append(("llama-cpp in-process, anatomy-mcq (concurrency 1)", n, wall, n / wall,
                         info["timing"]["overhead_ms_per_sample"]))
        proc, url = start_llama_server(gguf, work / "llama-server.log")
        try:
            for c in (1, 4):
                with load_backend("openai", base_url=url, images=False, concurrency=c) as srv:
                    wall, info = timed_run(task, srv, work / f"llama-server-{c}", limit=args.samples, concurrency=c)
                    rows.append((f"llama.cpp server via openai, {c} in flight", n, wall, n / wall,
                                 info["timing"]["overhead_ms_per_sample"]))
            with load_backend("openai", base_url=url, images=False, concurrency=4) as srv:
                wall, info = timed_run(task, srv, work / "llama-server-4", limit=args.samples, concurrency=4)
                assert info["counts"]["sent"] == 0
                rows.append(("llama.cpp server, fully cached re-run", n, wall, n / wall, 1000 * wall / n))
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    print(f"{'run':58s} {'samples':>7s} {'wall s':>8s} {'samples/s':>10s} {'harness ms/sample':>18s}")
    for label, n, wall, rate, over in rows:
        ov = f"{over:18.2f}" if over is not None else f"{'-':>18s}"
        print(f"{label:58s} {n:7d} {wall:8.2f} {rate:10.1f} {ov}")
    print("harness ms/sample: beyond the backend call (concurrency 1); for cached re-runs, the whole cost per sample"
          " (wall includes loading the task and scoring with 200 bootstrap resamples)")


if __name__ == "__main__":
    main()
