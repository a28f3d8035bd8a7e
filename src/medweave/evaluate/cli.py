"""``medweave eval``: tasks, run, compare, report. Thin: each command calls one function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

eval_app = typer.Typer(help="Evaluate any model (builtin, OpenAI-compatible server, GGUF, Hugging Face folder) "
                            "on tasks declared as data.", no_args_is_help=True, rich_markup_mode=None)
out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _errors():
    from ..generate import BackendError, MessageError, OptionsError
    from ..registry import UnknownNameError
    from .samples import TaskError

    return (TaskError, OptionsError, BackendError, MessageError, UnknownNameError, FileNotFoundError)


def fmt(v: dict) -> str:
    if not v.get("n"):
        return "-"
    ci = f" [{v['lo']:.3f}, {v['hi']:.3f}]" if v.get("lo") == v.get("lo") else ""
    return f"{v['value']:.3f}{ci}"


@eval_app.command("tasks", epilog="Example: medweave eval tasks --json")
def tasks(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The task files shipped with medweave: name, layout, data (and whether it is here), metrics."""
    from .tasks import builtin_tasks, load_task

    rows = []
    for name, path in builtin_tasks().items():
        t = load_task(path)
        data = t.path(t.data)
        rows.append({"name": name, "layout": t.layout, "data": str(data), "present": bool(data and data.exists()),
                     "split": t.split.model_dump() if t.split else None, "metrics": t.metrics,
                     "description": t.description, "file": str(path)})
    if as_json:
        out.print_json(json.dumps(rows))
        return
    tab = Table(title="shipped tasks (add your own: write a YAML/TOML file and pass its path to --task)")
    tab.add_column("task", no_wrap=True)
    tab.add_column("layout", no_wrap=True)
    tab.add_column("split", no_wrap=True)
    tab.add_column("data", overflow="fold")
    for r in rows:
        split = f"{r['split']['name']}/{r['split']['side']}" if r["split"] else "-"
        tab.add_row(r["name"], r["layout"], split, ("" if r["present"] else "(absent) ") + r["data"])
    out.print(tab)


def print_metrics(res: dict, title: str) -> None:
    t = Table(title=title)
    for c in ("metric", "value [95% CI, clustered by picture]", "n"):
        t.add_column(c)
    for name, v in res["metrics"].items():
        t.add_row(name, fmt(v), str(v["n"]))
    for field, groups in res.get("breakdown", {}).items():
        for key, v in groups.items():
            t.add_row(f"  {field}={key}", fmt(v), str(v["n"]))
    out.print(t)
    if res.get("failed"):
        out.print(f"{res['failed']} of {res['samples']} samples failed (scored 0); first errors:", highlight=False)
        for e in res.get("errors", [])[:5]:
            out.print(f"  {e}", highlight=False, markup=False)
    for name, table in (res.get("probes") or {}).items():
        print_probe(name, table, list(res["metrics"]))


def print_probe(name: str, table: dict, metrics: list[str]) -> None:
    if name == "paired":
        t = Table(title=f"paired probes (random guessing: {table.get('random_pair_acc', 0.25):.0%} of pairs)")
        for c in ("fact", "pairs", "pair_acc", "true_acc (yes)", "false_acc (no)"):
            t.add_column(c)
        for kind, v in table.get("by_kind", {}).items():
            t.add_row(kind, str(v["pairs"]), fmt(v["pair_acc"]), f"{v['true_acc']:.3f}", f"{v['false_acc']:.3f}")
        out.print(t)
        return
    first = metrics[0]
    t = Table(title=f"{name} probe: {first} on the same samples (every metric: metrics.json, eval report)")
    for c in ("variant", "n", first, "Δ", "same answer"):
        t.add_column(c, no_wrap=c != "variant")
    for r in table.get("rows", []):
        t.add_row(r["variant"], str(r["n"]), fmt(r["metrics"][first]), f"{r['delta']:+.3f}", f"{r['agreement']:.3f}")
    out.print(t)
    if table.get("note"):
        out.print(table["note"])


@eval_app.command("run", epilog=(
    "Examples: medweave eval run --task vqa-rad-testlike --backend builtin --model runs/vqa-testlike --out runs/eval/builtin;  "
    "medweave eval run --task vqa-rad-testlike --backend openai --base-url http://127.0.0.1:8000/v1 --out runs/eval/http;  "
    "medweave eval run --task my-task.yaml --backend llama-cpp --model model.gguf --out runs/eval/gguf --probes prompt,fewshot"))
def run(
    task: str = typer.Option(..., "--task", help="A shipped task name (medweave eval tasks) or a task file."),
    backend: str = typer.Option(..., "--backend", help="builtin, openai, llama-cpp, transformers (or a plugin)."),
    out_dir: Path = typer.Option(..., "--out", help="Run folder to write (samples.jsonl, metrics.json, run.json)."),
    model: Optional[str] = typer.Option(None, "--model", help="Backend option model: a model folder, GGUF file or "
                                        "the server's model name."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="openai backend: the server's URL up to /v1."),
    opt: List[str] = typer.Option([], "--opt", help="Another backend option KEY=VALUE (repeatable)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Another data file of the task's layout (e.g. an "
                                        "official test split); the task's split is then not applied."),
    images: Optional[Path] = typer.Option(None, "--images", help="The picture folder for --data."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Ask this many samples (seeded random choice)."),
    seed: int = typer.Option(0, "--seed", help="Seed of --limit, the bootstrap and the generation."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Requests in flight (default: the "
                                              "backend's own limit)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Response cache file (default RUN_DIR/cache.sqlite)."),
    probes: Optional[str] = typer.Option(None, "--probes", help="Comma-separated: image, paired, prompt, fewshot."),
    probe_limit: Optional[int] = typer.Option(None, "--probe-limit", help="Ask each probe on this many samples "
                                              "(seeded choice; default: all, or the task's probes.NAME.limit)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Override the task's max_tokens."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Override the temperature (default 0)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the intervals."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    engine: str = typer.Option("local", "--engine", help="local, or ray: ask in Ray actors, each loading the "
                               "backend once (pip install 'medweave[ray]')."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: the Ray cluster to join "
                                          "(default: a local Ray instance)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="With --engine ray and no --address: CPUs "
                                           "of the local Ray instance (default: all)."),
    context: Optional[int] = typer.Option(None, "--context", help="Retrieved context: the K most similar "
                                          "training QA pairs in each prompt (the task's context with k=K; 0: "
                                          "none; default: as the task says)."),
    context_from: Optional[Path] = typer.Option(None, "--context-from", help="The training file context draws "
                                                "on (default: the other side of the task's split)."),
    context_embeddings: Optional[Path] = typer.Option(None, "--context-embeddings", help="Embedding cache for "
                                                      "context retrieval (e.g. a VQA model's embeddings.duckdb)."),
) -> None:
    """Ask every sample of a task, score it, write the run folder; resumable through the response cache."""
    from ..engine import Engine, EngineError
    from ..generate import load_backend, parse_option_pairs
    from .harness import run_task
    from .tasks import load_task

    try:
        t = load_task(task)
        if data is not None and t.split is not None:
            t = t.model_copy(update={"split": None})
        if context is not None or context_from is not None or context_embeddings is not None:
            from .tasks import ContextSpec

            spec = (t.context or ContextSpec()).model_copy(update={k: v for k, v in (
                ("k", context or None), ("from_", str(context_from.resolve()) if context_from else None),
                ("embeddings", str(context_embeddings.resolve()) if context_embeddings else None)) if v is not None})
            t = t.model_copy(update={"context": None if context == 0 else ContextSpec.model_validate(
                spec.model_dump())})
        options = parse_option_pairs(opt)
        if model is not None:
            options["model"] = model
        if base_url is not None:
            options["base_url"] = base_url
        if concurrency is not None and backend == "openai":
            options.setdefault("concurrency", concurrency)
        gen = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v is not None}
        eng = Engine(engine, address, num_cpus)
        with load_backend(backend, **options) as b:
            res = run_task(t, b, out_dir, data=data, images=images, limit=limit, seed=seed, concurrency=concurrency,
                           cache_path=cache, probes=[p.strip() for p in probes.split(",") if p.strip()] if probes else (),
                           n_boot=bootstrap, progress=not quiet, generation=gen, probe_limit=probe_limit,
                           engine=eng if eng.is_ray else None, remote=(backend, options) if eng.is_ray else None)
    except EngineError as exc:
        fail(str(exc))
    except _errors() as exc:
        fail(str(exc))
    if as_json:
        out.print_json(json.dumps(res, default=str))
    else:
        print_metrics(res, f"{res['task']} × {res['backend']}: {res['samples']} samples -> {out_dir}")
    if res["failed"]:
        raise typer.Exit(1)


@eval_app.command("compare", epilog="Example: medweave eval compare runs/eval/builtin runs/eval/http")
def compare(
    run_a: Path = typer.Argument(..., help="Run folder A."),
    run_b: Path = typer.Argument(..., help="Run folder B."),
    bootstrap: int = typer.Option(1000, "--bootstrap"),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """B - A per metric on the same samples: paired bootstrap 95% interval and exact McNemar test."""
    from .compare import compare_runs

    try:
        res = compare_runs(str(run_a), str(run_b), bootstrap)
    except _errors() as exc:
        fail(str(exc))
    if as_json:
        out.print_json(json.dumps(res, default=str))
        return
    t = Table(title=f"B ({res['b']['backend']}) - A ({res['a']['backend']}) on {res['common_samples']} common "
                    f"samples; same answer on {res['same_answers']}")
    for c in ("metric", "A", "B", "B - A [95% CI, paired]", "only A right", "only B right", "McNemar p"):
        t.add_column(c)
    for m, v in res["metrics"].items():
        mc = v.get("mcnemar")
        t.add_row(m, f"{v['a']:.3f}", f"{v['b']:.3f}", f"{v['value']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]",
                  str(mc["a_only"]) if mc else "", str(mc["b_only"]) if mc else "", f"{mc['p']:.3g}" if mc else "")
    out.print(t)


@eval_app.command("report", epilog="Example: medweave eval report runs/eval/* --out leaderboard.html")
def report(
    runs: List[Path] = typer.Argument(..., help="Run folders."),
    out_file: Path = typer.Option(..., "--out", help="HTML file to write (self-contained)."),
) -> None:
    """A leaderboard per task with intervals, breakdowns, probe tables and plots, in one HTML file."""
    from .leaderboard import write_report

    try:
        path = write_report([str(r) for r in runs], out_file)
    except _errors() as exc:
        fail(str(exc))
    out.print(f"leaderboard of {len(runs)} run(s) -> {path}", highlight=False)
