"""Speed of the evaluation harness itself.

1. Overhead per sample beyond the backend call, at concurrency 1: building the messages (reading
   and hashing pictures), cache lookups and commits, extraction and per-sample scores; in wall time
   and in the CPU time of the harness's thread (the load other jobs put on the machine inflates the
   first, not the second). Loading the task (3,064 questions and the split) and the bootstrap are
   per run and shown apart. Measured on vqa-rad-testlike (pictures) with a constant-answer backend
   defined here (the harness's cost alone; its call costs microseconds), with the builtin answerer
   when --vqa-model is given, and with the llama.cpp model in-process on anatomy-mcq.
2. Throughput against the llama.cpp server (`python -m llama_cpp.server`, SmolLM2-135M, 1 thread)
   on the anatomy-mcq text task with 1 and with 4 requests in flight (fresh caches), with the
   server's CPU time per request.
3. A fully cached re-run: the same run again, every answer from the cache (whole cost per sample:
   task loading and 200 bootstrap resamples included).

    .venv/bin/python benchmarks/harness.py [--vqa-model runs/vqa-testlike] [--samples 24] [--vqa-samples 460]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from medweave.generate.base import Backend, Generation


class ConstantBackend(Backend):
    """Answers "yes" to everything, at once: what is left of a run's time is the harness's."""

    kind = "constant"
    supports_images = True
    max_concurrency = 1

    def _generate(self, messages, params) -> Generation:
        return Generation(text="yes", finish_reason="stop")

    def fingerprint(self) -> str:
        return "constant:yes"


def timed_run(task, backend, out: Path, **kw) -> tuple[float, float, dict]:
    """(wall seconds, process CPU seconds, run.json) of one run."""
    from medweave.evaluate.harness import run_task

    t0, c0 = time.perf_counter(), time.process_time()
    run_task(task, backend, out, progress=False, n_boot=200, **kw)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, json.loads((out / "run.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vqa-model", type=Path, help="A builtin VQA model (medweave vqa train --split testlike).")
    ap.add_argument("--samples", type=int, default=24, help="Samples of anatomy-mcq (at most 24).")
    ap.add_argument("--vqa-samples", type=int, default=460, help="Samples of vqa-rad-testlike (at most 460).")
    ap.add_argument("--no-llama", action="store_true", help="Skip the llama.cpp rows.")
    args = ap.parse_args()
    import psutil

    from medweave.evaluate.tasks import load_task
    from medweave.generate import load_backend
    from medweave.generate.testing import llama_cpp_available, llama_cpp_problem, smollm2_gguf, llama_server

    work = Path(tempfile.mkdtemp(prefix="mw-harness-bench-"))
    rows: list[tuple] = []

    def row(label, wall, cpu, info, cached=False, extra=""):
        n, t = info["counts"]["samples"], info["timing"]
        if cached:
            over, over_cpu = 1000 * wall / n, 1000 * cpu / n
        else:
            over, over_cpu = t.get("overhead_ms_per_sample"), t.get("overhead_cpu_ms_per_sample")
        rows.append((label, n, wall, n / wall, over, over_cpu, t.get("load_seconds"), os.getloadavg()[0], extra))

    vqa = load_task("vqa-rad-testlike")
    vqa.load_samples()  # imports and file cache warm: the rows compare runs, not the first import
    b = ConstantBackend()
    for i in range(2):  # the second shows the spread between two identical runs on a loaded machine
        wall, cpu, info = timed_run(vqa, b, work / f"const-{i}", limit=args.vqa_samples, concurrency=1)
        row(f"constant backend, vqa-rad-testlike, first run ({i + 1})", wall, cpu, info)
    wall, cpu, info = timed_run(vqa, b, work / "const-0", limit=args.vqa_samples, concurrency=1)
    row("constant backend, fully cached re-run", wall, cpu, info, cached=True)
    if args.vqa_model:
        with load_backend("builtin", model=str(args.vqa_model)) as bb:
            wall, cpu, info = timed_run(vqa, bb, work / "vqa", limit=args.vqa_samples, concurrency=1)
            row("builtin, vqa-rad-testlike, first run", wall, cpu, info,
                extra=f"backend {1000 * info['counts']['backend_seconds'] / info['counts']['samples']:.1f} ms/sample")
            wall, cpu, info = timed_run(vqa, bb, work / "vqa", limit=args.vqa_samples, concurrency=1)
            row("builtin, fully cached re-run", wall, cpu, info, cached=True)
    gguf = smollm2_gguf()
    if args.no_llama:
        pass
    elif gguf is None or not llama_cpp_available():
        print(f"skipping the llama.cpp rows: {llama_cpp_problem() or 'the SmolLM2 GGUF is absent (make setup)'}")
    else:
        task = load_task("anatomy-mcq")
        with load_backend("llama-cpp", model=str(gguf)) as lb:
            wall, cpu, info = timed_run(task, lb, work / "llama-in-process", limit=args.samples, concurrency=1)
            n = info["counts"]["samples"]
            row("llama-cpp in-process, anatomy-mcq", wall, cpu, info,
                extra=f"backend {1000 * info['counts']['backend_seconds'] / n:.0f} ms/sample")
            answers_in_process = [r["extracted"] for r in _records(work / "llama-in-process")]
        with llama_server(gguf, work / "llama-server.log") as (proc, url):
            server = psutil.Process(proc.pid)
            for c in (1, 4):
                with load_backend("openai", base_url=url, images=False, concurrency=c) as srv:
                    s0 = sum(server.cpu_times()[:2])
                    wall, cpu, info = timed_run(task, srv, work / f"llama-server-{c}", limit=args.samples,
                                                concurrency=c)
                    s_cpu = 1000 * (sum(server.cpu_times()[:2]) - s0) / info["counts"]["sent"]
                    same = sum(a == b for a, b in zip(answers_in_process,
                                                      [r["extracted"] for r in _records(work / f"llama-server-{c}")]))
                    row(f"llama.cpp server via openai, {c} in flight", wall, cpu, info,
                        extra=f"server CPU {s_cpu:.0f} ms/request; same answer as in-process {same}/{n}")
            with load_backend("openai", base_url=url, images=False, concurrency=4) as srv:
                wall, cpu, info = timed_run(task, srv, work / "llama-server-4", limit=args.samples, concurrency=4)
                assert info["counts"]["sent"] == 0
                row("llama.cpp server, fully cached re-run", wall, cpu, info, cached=True)
    print(f"{'run':52s} {'n':>4s} {'wall s':>7s} {'samples/s':>9s} {'harness ms':>10s} {'CPU ms':>7s} "
          f"{'load s':>6s} {'loadavg':>7s}  notes")
    for label, n, wall, rate, over, over_cpu, load, la, extra in rows:
        f = (lambda v, w, d: f"{v:{w}.{d}f}" if v is not None else f"{'-':>{w}s}")
        print(f"{label:52s} {n:4d} {wall:7.2f} {rate:9.1f} {f(over, 10, 2)} {f(over_cpu, 7, 2)} "
              f"{f(load, 6, 2)} {la:7.1f}  {extra}")
    print(f"harness ms / CPU ms: per sample beyond the backend call (concurrency 1; wall, and the CPU of the "
          f"harness's thread); for cached re-runs the whole cost per sample (wall, process CPU). load s: reading "
          f"the task. {os.cpu_count()} CPUs.")


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    main()
