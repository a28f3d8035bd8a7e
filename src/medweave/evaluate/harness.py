"""Runs: a task's samples asked of a backend through the response cache, answers extracted, every metric
scored with clustered intervals, everything written to a run folder.

``RUN_DIR`` holds ``samples.jsonl`` (per sample: prompt with images by hash, raw output, extracted
answer, per-metric score, latency, tokens, whether it came from the cache, the error if it failed),
``metrics.json`` (each metric with its bootstrap 95% interval clustered by picture, breakdowns,
failures, probe tables), ``run.json`` (the exact task, backend, generation parameters, data files
with their hashes, code version, timings) and, unless ``cache`` says otherwise, ``cache.sqlite``.
Files are written whole (temporary file, then rename); a killed run leaves the previous ones intact
and the cache holding every completion it got.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..generate import Backend, BackendError, GenParams, ImageData, Message
from ..generate.messages import canonical, request_key
from .cache import ResponseCache
from .extract import EXTRACTORS, is_abstention
from .sample_metrics import METRICS
from .samples import Sample, TaskError
from .stats import mean_ci
from .tasks import Task

RUN_FORMAT = "medweave-eval-run/1"


@dataclass
class Request:
    """One request of a run: a sample (possibly probed: ``variant``) and its messages."""

    sample: Sample
    messages: list[Message]
    variant: str = ""
    key: str = ""
    reference: str | None = None  # overrides the sample's (paired probes)
    context: list | None = None    # the retrieved context entries in its prompt (task ``context``)


@dataclass
class Outcome:
    ok: bool
    generation: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    cached: bool = False


def code_version() -> str:
    from .. import __version__

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, timeout=5,
                             capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{__version__}+{rev}" if rev else __version__


def build_messages(task: Task, sample: Sample, *, template: str | None = None, system: str | None = "task",
                   image: ImageData | None | str = "sample", shots: Sequence[tuple[Sample, str]] = (),
                   images: dict | None = None, context: Sequence | None = None) -> list[Message]:
    """The conversation for one sample: optional system prompt, few-shot turns (each example's picture
    and question, then its answer as the assistant's turn), then the sample itself; ``context``:
    retrieved entries (``generate.context.ContextEntry``), a text block before the sample's prompt."""
    images = images if images is not None else {}

    def picture(s: Sample) -> ImageData | None:
        if s.image is None:
            return None
        if s.image not in images:
            images[s.image] = ImageData.from_file(s.image)
        return images[s.image]

    def turn(s: Sample, pic: ImageData | None, tmpl: str | None, ctx: Sequence | None = None) -> Message:
        text = task.render(s, tmpl)
        if ctx:
            from ..generate.context import format_context

            text = format_context(list(ctx)) + "\n" + text
        if task.image_position == "none":
            pic = None
        parts: list = [text] if pic is None else ([pic, text] if task.image_position == "before" else [text, pic])
        return Message("user", parts)

    out = []
    sys_text = task.system if system == "task" else system
    if sys_text:
        out.append(Message("system", [sys_text]))
    for ex, answer in shots:
        out.append(turn(ex, picture(ex), template))
        out.append(Message("assistant", [answer]))
    out.append(turn(sample, picture(sample) if image == "sample" else image, template, context))
    return out


class Executor:
    """Sends requests through the cache: cached ones are not sent; the rest go to the backend with at
    most ``concurrency`` in flight; each completion is committed to the cache as it arrives."""

    def __init__(self, backend: Backend, cache: ResponseCache, params: GenParams, run_id: str,
                 concurrency: int | None = None, progress: bool = True, engine=None,
                 remote: tuple[str, dict] | None = None):
        self.backend, self.cache, self.params, self.run_id = backend, cache, params, run_id
        # On Ray (``engine`` a Ray engine): requests go to actors that each build the backend once
        # from ``remote`` = (backend name, options); this process keeps the cache and the records.
        self.engine, self.remote = engine, remote
        if engine is not None and engine.is_ray and remote is None:
            raise ValueError("a Ray harness run needs the backend's name and options to build it in each actor")
        self.concurrency = max(1, min(concurrency or backend.max_concurrency, backend.max_concurrency))
        self.progress = progress
        self.fingerprint = backend.fingerprint()
        self.sent = self.failed = self.hits = 0
        self.backend_seconds = 0.0
        self.backend_cpu_seconds = 0.0  # CPU of the calling thread inside backend calls (concurrency 1)
        self._params = params.as_dict()

    def key(self, messages: list[Message]) -> str:
        return request_key(self.fingerprint, messages, self._params)

    def run(self, requests: list[Request], description: str) -> dict[str, Outcome]:
        from ..progress import progress_bar

        for r in requests:
            if not r.key and r.sample.error is None:
                r.key = self.key(r.messages)
        keys = list(dict.fromkeys(r.key for r in requests if r.key))
        found = self.cache.get_many(keys)
        outcomes = {k: Outcome(True, g, cached=True) for k, g in found.items()}
        self.hits += len(found)
        todo = {r.key: r for r in requests if r.key and r.key not in outcomes}
        per_key: dict[str, int] = {}
        for r in requests:
            if r.key:
                per_key[r.key] = per_key.get(r.key, 0) + 1
        with progress_bar(description, len(requests), unit="samples", enabled=self.progress) as advance:
            advance(len(requests) - sum(per_key[k] for k in todo))  # cached or not askable: done at once
            if self.engine is not None and self.engine.is_ray:  # Ray actors, results in order
                items = ((req.messages, self.params) for req in todo.values())
                for (key, req), called in zip(todo.items(), self.engine.map_actors(
                        RemoteBackend, self.remote, "call", items)):
                    outcomes[key] = self._record(key, req, called)
                    advance(per_key[key])
                return outcomes
            if self.concurrency == 1:  # in this thread: no hand-over to a worker and back per request
                for key, req in todo.items():
                    outcomes[key] = self._record(key, req, self._call(req, inline=True))
                    advance(per_key[key])
                return outcomes
            pending: dict = {}
            queue = iter(todo.items())
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                while True:
                    while len(pending) < self.concurrency:
                        nxt = next(queue, None)
                        if nxt is None:
                            break
                        pending[pool.submit(self._call, nxt[1])] = nxt
                    if not pending:
                        break
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        key, req = pending.pop(fut)
                        outcomes[key] = self._record(key, req, fut.result())
                        advance(per_key[key])
        return outcomes

    def _call(self, req: Request, inline: bool = False):
        c0 = time.thread_time() if inline else 0.0
        called = _called(self.backend, req.messages, self.params)
        if inline:
            self.backend_cpu_seconds += time.thread_time() - c0
        return called

    def _record(self, key: str, req: Request, called) -> Outcome:
        result, seconds = called
        self.sent += 1
        self.backend_seconds += seconds
        if isinstance(result, Exception):
            self.failed += 1
            msg = f"sample {req.sample.id}: {result}"
            self.cache.log_failure(key, self.run_id, msg)
            return Outcome(False, error=msg)
        gen = result.to_dict()
        self.cache.put(key, self.fingerprint, canonical(req.messages), gen, self.run_id)
        return Outcome(True, gen)


def _called(backend: Backend, messages, params: GenParams):
    """(generation or the failure as an exception, seconds): one backend call as the harness sees it."""
    t0 = time.perf_counter()
    try:
        result = backend.generate(messages, params)
    except BackendError as exc:
        result = exc
    except Exception as exc:  # a backend's own failure is this sample's failure, not the run's
        result = RuntimeError(f"{type(exc).__name__}: {exc}")
    return result, time.perf_counter() - t0


class RemoteBackend:
    """A Ray actor's backend: built once from its name and options, then asked request by request.
    Failures travel back as plain RuntimeErrors with the same message (any exception pickles so)."""

    def __init__(self, kind: str, options: dict[str, Any]):
        from ..generate import load_backend

        self.backend = load_backend(kind, **options)

    def call(self, messages, params: GenParams):
        result, seconds = _called(self.backend, messages, params)
        if isinstance(result, Exception):
            result = RuntimeError(str(result))
        return result, seconds


def sample_record(task: Task, req: Request, out: Outcome | None) -> dict[str, Any]:
    """The JSONL record of one asked sample: prompt, output, extracted answer, scores."""
    s = req.sample
    reference = s.reference if req.reference is None else req.reference
    scored = Sample(s.id, s.question, reference, s.image, s.image_name, s.options, s.meta, s.error)
    error = s.error or (out.error if out is not None else "not asked")
    text = out.generation.get("text", "") if out is not None and out.ok else ""
    # an abstention ("[abstained] ...": the VQA answerer's picture gate) is no answer, whatever it says
    extracted = EXTRACTORS.get(task.extract)(text, scored) if not error and not is_abstention(text) else ""
    scores = {m: (METRICS.get(m).score(extracted, scored) if not error else 0.0)
              if METRICS.get(m).applies(scored) else None for m in task.metrics}
    gen = out.generation if out is not None and out.ok else {}
    return {"id": s.id, "variant": req.variant, "cluster": s.cluster, "reference": reference,
            "output": text, "extracted": extracted, "scores": scores, "error": error,
            "cached": bool(out and out.cached), "latency_s": gen.get("latency_s"),
            "prompt_tokens": gen.get("prompt_tokens"), "completion_tokens": gen.get("completion_tokens"),
            "logprobs": gen.get("logprobs"),
            "prompt": canonical(req.messages) if req.messages else None,
            "images": [p.sha256 for m in req.messages for p in m.images] if req.messages else [],
            "meta": {k: v for k, v in s.meta.items() if isinstance(v, (str, int, float, bool)) or v is None},
            **({"context": [{"id": e.id, "score": round(e.score, 4)} for e in req.context]}
               if req.context is not None else {})}


def score_records(task: Task, records: list[dict], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every task metric with its clustered interval, the breakdowns, and the failure count."""
    clusters = [r["cluster"] if task.cluster == "image" else r["id"] for r in records]
    out: dict[str, Any] = {"samples": len(records), "failed": sum(1 for r in records if r["error"]),
                           "metrics": {}, "breakdown": {}}
    for m in task.metrics:
        if METRICS.get(m).corpus is not None:
            out["metrics"][m] = corpus_ci(METRICS.get(m), records, clusters, n_boot, seed)
            continue
        keep = [i for i, r in enumerate(records) if r["scores"].get(m) is not None]
        out["metrics"][m] = mean_ci([records[i]["scores"][m] for i in keep], [clusters[i] for i in keep], n_boot, seed)
    first = task.metrics[0]
    for f in task.breakdown:
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            if r["scores"].get(first) is not None:
                groups.setdefault(str(r["meta"].get(f) or "?"), []).append(i)
        out["breakdown"][f] = {g: mean_ci([records[i]["scores"][first] for i in ix], [clusters[i] for i in ix],
                                          n_boot, seed) for g, ix in sorted(groups.items())}
    out["errors"] = [r["error"] for r in records if r["error"]][:20]
    return out


def corpus_ci(metric, records: list[dict], clusters: list[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """A corpus metric over every record (a failed sample counts as an empty output) with a cluster
    bootstrap 95% interval: whole clusters are resampled and the metric is computed on the resample."""
    preds = [r["extracted"] if not r["error"] else "" for r in records]
    refs = [r["reference"] or "" for r in records]
    if not records:
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, "clusters": 0}
    try:
        fn = metric.corpus(preds, refs)
    except (RuntimeError, OSError) as exc:  # e.g. no Java for CIDEr: say so, score nothing
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": len(records), "error": str(exc)}
    from .text import NO_INTERVAL

    if metric.name in NO_INTERVAL:
        n_boot = 0
    inv = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)[1]
    members = [np.flatnonzero(inv == c) for c in range(int(inv.max()) + 1)]
    rng = np.random.default_rng(seed)
    vals = [fn(np.concatenate([members[c] for c in rng.integers(0, len(members), len(members))]))
            for _ in range(n_boot)]
    lo, hi = (float(x) for x in np.percentile(vals, [2.5, 97.5])) if vals else (float("nan"),) * 2
    return {"value": float(fn(np.arange(len(records)))), "lo": lo, "hi": hi, "n": len(records),
            "clusters": len(members)}


def select(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """``limit`` samples drawn at random (seeded), in their original order; all without a limit."""
    if not limit or limit >= len(samples):
        return samples
    idx = np.sort(np.random.default_rng(seed).choice(len(samples), size=limit, replace=False))
    return [samples[int(i)] for i in idx]


def _write(path: Path, text: str) -> None:
    from ..atomic import write_text

    write_text(path, text)  # temporary name, fsync, rename


def _file_hash(path: Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_task(task: Task, backend: Backend, out_dir: str | Path, *, data: str | Path | None = None,
             images: str | Path | None = None, limit: int | None = None, seed: int = 0,
             concurrency: int | None = None, cache_path: str | Path | None = None, probes: Iterable[str] = (),
             n_boot: int = 1000, progress: bool = True, generation: dict[str, Any] | None = None,
             probe_limit: int | None = None, engine=None, remote: tuple[str, dict] | None = None) -> dict[str, Any]:
    """Run ``task`` against ``backend`` into ``out_dir``; returns the metrics (also in ``metrics.json``).
    With a Ray ``engine``, requests not in the cache are answered by Ray actors that each build the
    backend once from ``remote`` = (backend name, options); ``backend`` (the same, built here) gives
    the fingerprint the cache keys on, and this process writes the cache and the run folder."""
    from .probes import run_probes

    from ..atomic import begin_folder

    # run.json marks a complete run: removed before anything else changes, written last (a run killed
    # half-way never leaves new samples beside an old run.json).
    out = begin_folder(out_dir, "run.json")
    t0 = time.perf_counter()
    samples = select(task.load_samples(data, images), limit, seed)
    t_load = time.perf_counter() - t0
    if not samples:
        raise TaskError(f"task {task.name}: no samples in {data or task.data}")
    params = GenParams.from_dict({"temperature": 0.0, "max_tokens": 64, **task.generation, **(generation or {}),
                                  "seed": seed})
    run_id = uuid.uuid4().hex[:12]
    with ResponseCache(cache_path or out / "cache.sqlite") as cache:
        ex = Executor(backend, cache, params, run_id, concurrency, progress, engine=engine, remote=remote)
        t1, c1 = time.perf_counter(), time.thread_time()
        pictures: dict = {}
        reqs = []
        retrieved = None
        t_ctx = 0.0
        if task.context is not None:
            from .context import ContextRetriever, context_pool

            tc = time.perf_counter()
            emb = task.path(task.context.embeddings) if task.context.embeddings else out / "context.duckdb"
            retrieved = ContextRetriever(task, context_pool(task, data), emb).retrieve(samples)
            t_ctx = time.perf_counter() - tc
        for s in samples:
            ctx = retrieved.get(s.id, []) if retrieved is not None else None
            try:
                msgs = build_messages(task, s, images=pictures, context=ctx) if s.error is None else []
            except OSError as exc:
                s.error = f"sample {s.id}: image {s.image} cannot be read ({exc})"
                msgs = []
            reqs.append(Request(s, msgs, context=ctx))
        outcomes = ex.run(reqs, f"{task.name} × {backend.name}")
        records = [sample_record(task, r, outcomes.get(r.key)) for r in reqs]
        t_ask, c_ask = time.perf_counter() - t1, time.thread_time() - c1
        t_main = time.perf_counter() - t0
        main_stats = {"sent": ex.sent, "cache_hits": ex.hits, "failed_requests": ex.failed,
                      "backend_seconds": ex.backend_seconds}
        main_backend_cpu = ex.backend_cpu_seconds
        t2 = time.perf_counter()
        result = score_records(task, records, n_boot, seed)
        t_score = time.perf_counter() - t2
        probe_records: list[dict] = []
        if probes:
            result["probes"], probe_records = run_probes(task, ex, samples, list(probes), n_boot, seed, pictures,
                                                         probe_limit)
        stats = cache.stats()
    wall = time.perf_counter() - t0
    asked = [r for r in reqs if r.key]
    result.update({"task": task.name, "backend": backend.name})
    run_info = {
        "format": RUN_FORMAT, "run_id": run_id, "task": task.model_dump(mode="json"), "backend": backend.describe(),
        "generation": params.as_dict(), "limit": limit, "seed": seed,
        "data": {"path": str(data or task.path(task.data)), "sha256": _file_hash(Path(data) if data else task.path(task.data)),
                 "images": str(images or task.path(task.images) or "")},
        "code_version": code_version(), "python": sys.version.split()[0], "command": sys.argv,
        "counts": {"samples": len(samples), "asked": len(asked), "failed": result["failed"], **main_stats,
                   "probe_requests_sent": ex.sent - main_stats["sent"], "cache": stats},
        # Per sample, beyond the backend call (concurrency 1 only: with several requests in flight the
        # backend's time overlaps): building the messages (reading and hashing pictures), cache lookups
        # and commits, extraction and per-sample scores; in wall time, and in this thread's CPU time
        # (what other load on the machine does not inflate). Loading the task, the bootstrap and the
        # files are per run: load_seconds, score_seconds, and the rest of wall_seconds.
        "timing": {"wall_seconds": wall, "main_seconds": t_main, "load_seconds": t_load, "ask_seconds": t_ask,
                   "context_seconds": t_ctx,
                   "score_seconds": t_score,
                   "overhead_ms_per_sample": 1000 * (t_ask - main_stats["backend_seconds"]) / max(len(samples), 1)
                   if ex.concurrency == 1 else None,
                   "overhead_cpu_ms_per_sample": 1000 * (c_ask - main_backend_cpu) / max(len(samples), 1)
                   if ex.concurrency == 1 else None},
    }
    _write(out / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records + probe_records))
    _write(out / "metrics.json", json.dumps(result, indent=1, default=str))
    _write(out / "run.json", json.dumps(run_info, indent=1, default=str))
    return result


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``run.json``, ``metrics.json`` and records; a clear error for anything else."""
    d = Path(run_dir)
    files = [d / n for n in ("run.json", "metrics.json", "samples.jsonl")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise TaskError(f"{d}: not a run folder of `medweave eval run` (missing {', '.join(missing)})")
    info = json.loads(files[0].read_text())
    if info.get("format") != RUN_FORMAT:
        raise TaskError(f"{files[0]}: field format is {info.get('format')!r}; expected {RUN_FORMAT!r}")
    records = [json.loads(line) for line in files[2].read_text().splitlines() if line.strip()]
    return {"dir": str(d), "run": info, "metrics": json.loads(files[1].read_text()), "records": records}
