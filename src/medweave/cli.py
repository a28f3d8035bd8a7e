"""The ``medweave`` command. Thin: each sub-command parses options and calls one function."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="medweave: multimodal medical AI on a CPU, offline. Ingest -> store -> cohort -> ...",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
store_app = typer.Typer(help="Inspect a store.", no_args_is_help=True, rich_markup_mode=None)
cohort_app = typer.Typer(help="Build and inspect cohorts (cases x modalities).", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(store_app, name="store")
app.add_typer(cohort_app, name="cohort")
from .draft.cli import draft_app  # noqa: E402
from .retrieve.cli import retrieve as _retrieve_command  # noqa: E402
from .vqa.cli import vqa_app  # noqa: E402
from .evaluate.cli import eval_app  # noqa: E402

app.add_typer(vqa_app, name="vqa")
app.add_typer(eval_app, name="eval")
app.add_typer(draft_app, name="draft")
app.command("retrieve", epilog="Example: medweave retrieve --model runs/vqa "
            "--image ../shared/data/vqa-rad/images/synpic54610.jpg -k 5")(_retrieve_command)

out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _parse_options(pairs: list[str]) -> dict[str, str]:
    opts = {}
    for p in pairs:
        if "=" not in p:
            _fail(f"--option {p!r}: expected KEY=VALUE")
        k, v = p.split("=", 1)
        opts[k.strip()] = v.strip()
    return opts


@app.command(epilog="Example: medweave ingest ../shared/data/wfdb ./scans --store ./store")
def ingest(
    paths: List[Path] = typer.Argument(..., help="Files and folders to ingest."),
    store: Path = typer.Option(..., "--store", help="Store folder (created if needed)."),
    format: Optional[str] = typer.Option(None, "--format", help="Force one adapter (see `medweave formats`)."),
    keep_phi: bool = typer.Option(False, "--keep-phi", help="Turn de-identification off (data already de-identified)."),
    namespace: str = typer.Option("default", "--namespace", help="Patient id namespace (keeps ids of different sources apart)."),
    mapping: Optional[Path] = typer.Option(None, "--mapping", help="TOML mapping for CSV tables."),
    option: List[str] = typer.Option([], "--option", help="Adapter option KEY=VALUE (repeatable)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Reader processes (default: CPU count - 1, max 8; below 2 = none)."),
    engine: str = typer.Option("local", "--engine", help="local, or ray: parse and de-identify in Ray tasks (pip install 'medweave[ray]')."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: the Ray cluster to join (default: a local Ray instance)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="With --engine ray and no --address: CPUs of the local Ray instance (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the ingest report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Ingest files into a store: picks an adapter per file by content, reports every bad file.

    Every file found is counted once: ingested, already stored, skipped as not a data file (a
    README, a DICOMDIR, ...: listed with the reason) or failed. Exit code 0 when nothing failed, 1
    when any file that should have ingested did not.
    """
    from .ingest import ingest as run_ingest
    from .registry import UnknownNameError
    from .store import Store

    opts = _parse_options(option)
    if format:
        from .ingest import ADAPTERS

        if format not in ADAPTERS:
            _fail(f"unknown ingest format {format!r}; allowed values: {', '.join(ADAPTERS.names())}")
    if mapping:
        opts["mapping"] = str(mapping)
    from .engine import Engine, EngineError

    try:
        eng = Engine(engine, address, num_cpus)
        with Store(store, write=True, keep_phi=keep_phi) as st:
            report = run_ingest(paths, st, fmt=format, namespace=namespace, options=opts,
                                progress=not quiet and not as_json, workers=workers,
                                args=shlex.join(["ingest", *map(str, paths)]), engine=eng)
    except (UnknownNameError, EngineError) as exc:
        _fail(str(exc))
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        _print_ingest_report(report)
    raise typer.Exit(0 if report.ok else 1)


SKIPPED_LISTED = 20  # above this many skipped files, the human report groups them by reason


def _print_ingest_report(report) -> None:
    """The ingest report for people: counts that add up, how patients were assigned, one line per
    failed file (never wrapped, so that ``grep FAILED`` finds whole paths), skipped files by reason."""
    def line(text: str) -> None:
        out.print(text, highlight=False, markup=False, soft_wrap=True)

    line(f"{report.n_units} unit(s): {report.n_ok} ingested, {report.n_already} already stored, "
         f"{report.n_not_data} skipped (not data files), {report.n_failed} failed; "
         f"{report.n_items_added} new item(s)" + (f", {report.n_derived} derived" if report.n_derived else ""))
    for name, c in sorted(report.per_adapter.items()):
        parts = [f"{c[k]} {k.replace('_', ' ')}" for k in ("ingested", "already_stored", "skipped", "failed") if c[k]]
        line(f"  {name}: {', '.join(parts) or 'nothing'}; {c['items']} item(s)")
    for name, info in sorted(report.patients.items()):
        line(f"  patients ({name}): {info['patients']}, {info['rule']}")
    for path, reason in report.errors:
        line(f"  FAILED {path}: {reason}")
    if len(report.skipped) <= SKIPPED_LISTED:
        for path, reason in report.skipped:
            line(f"  SKIPPED {path}: not a data file: {reason}")
    else:
        by_reason: dict[str, list[str]] = {}
        for path, reason in report.skipped:
            by_reason.setdefault(reason, []).append(path)
        for reason, paths in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
            line(f"  SKIPPED {len(paths)} file(s), not data files: {reason} (e.g. {', '.join(paths[:3])}{more})")
        line("  (--json lists every skipped file)")
    for w in report.warnings:
        line(f"  warning: {w}")


@app.command(epilog="Example: medweave listen --store ./store --port 11112 --ae-title MEDWEAVE --allow-ae CT_SCANNER")
def listen(
    store: Path = typer.Option(..., "--store", help="Store folder (created if needed)."),
    port: int = typer.Option(..., "--port", help="TCP port to listen on (DICOM's registered port is 104; 11112 needs no root)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default; others need --allow-ae)."),
    ae_title: str = typer.Option("MEDWEAVE", "--ae-title", help="This receiver's AE title (associations to another title are rejected)."),
    allow_ae: List[str] = typer.Option([], "--allow-ae", help="Calling AE title allowed to send (repeatable); others are rejected."),
    keep_phi: bool = typer.Option(False, "--keep-phi", help="Turn de-identification off (data already de-identified)."),
    namespace: str = typer.Option("default", "--namespace", help="Patient id namespace."),
    option: List[str] = typer.Option([], "--option", help="DICOM adapter option KEY=VALUE (repeatable), e.g. burned_in=allow."),
) -> None:
    """Receive DICOM over the network (C-STORE; answers C-ECHO) and ingest each instance.

    Every instance is de-identified and committed to the store before its success status is sent,
    so an acknowledged instance is never lost. Stops on Ctrl-C or SIGTERM.
    """
    from .ingest.listen import Listener, ListenError

    try:
        listener = Listener(store, port, host=host, ae_title=ae_title, allow=allow_ae, namespace=namespace,
                            options=_parse_options(option), keep_phi=keep_phi,
                            on_event=lambda line: out.print(line, highlight=False, markup=False))
    except ListenError as exc:
        _fail(str(exc))
    out.print(f"listening on {host}:{port} as {listener.ae_title}"
              + (f", accepting {', '.join(listener.allow)}" if listener.allow else "")
              + f"; storing into {store}", highlight=False)
    try:
        listener.serve_forever()
    except ListenError as exc:
        _fail(str(exc))
    s = listener.stats
    out.print(f"stopped: {s.stored} instance(s) stored, {s.already_stored} already stored, {s.failed} refused, "
              f"{s.echoes} echo(es), {s.associations} association(s)", highlight=False)


@app.command(epilog="Example: medweave formats")
def formats() -> None:
    """List the ingest formats (adapters) and what each reads."""
    from .ingest import ADAPTERS

    for name in ADAPTERS.names():
        try:
            cls = ADAPTERS.get(name)
            out.print(f"{name:14s} {cls.description or (cls.__doc__ or '').strip().splitlines()[0]}", highlight=False)
        except (ImportError, AttributeError) as exc:
            out.print(f"{name:14s} (unavailable: {exc})", highlight=False)


@store_app.command("stats", epilog="Example: medweave store stats --store ./store --json")
def store_stats(
    store: Path = typer.Option(..., "--store", help="Store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    runs: int = typer.Option(5, "--runs", help="How many recent ingest runs to show errors for."),
) -> None:
    """Patients, studies, items per modality, bytes, and the errors of the last ingests."""
    from .store import Store

    try:
        with Store(store) as st:
            stats = st.stats(last_runs=runs)
    except FileNotFoundError as exc:
        _fail(str(exc))
    if as_json:
        out.print_json(json.dumps(stats, default=str))
        return
    t = Table(title=f"store {stats['store']}")
    t.add_column("what")
    t.add_column("count", justify="right")
    for k in ("patients", "studies", "items", "sources"):
        t.add_row(k, f"{stats[k]:,}")
    for m, n in stats["items_per_modality"].items():
        t.add_row(f"  {m}", f"{n:,}")
    t.add_row("blob bytes", f"{stats['bytes']:,}")
    sig = stats.get("signals") or {}
    if sig.get("items"):
        t.add_row("signals", f"{sig['items']:,}")
        t.add_row("  channels", f"{sig['channels']:,}")
        t.add_row("  hours of recording", f"{sig['hours']:,.2f}")
        t.add_row("  annotation events", f"{sig['annotation_events']:,}")
    out.print(t)
    if stats["errors"]:
        out.print(f"files that failed in the last {runs} ingest run(s) and have not ingested since "
                  f"({len(stats['errors'])}):", highlight=False)
        for e in stats["errors"]:
            again = f" (in {e['runs']} runs)" if e["runs"] > 1 else ""
            out.print(f"  FAILED {e['source_path']}: {e['reason']}{again}", highlight=False, markup=False,
                      soft_wrap=True)
    else:
        out.print(f"no failed files in the last {runs} ingest run(s)")
    for s in stats.get("skipped", []):
        out.print(f"  skipped {s['files']} file(s), not data files: {s['reason']}", highlight=False, markup=False,
                  soft_wrap=True)


@store_app.command("verify", epilog="Example: medweave store verify --store ./store")
def store_verify(
    store: Path = typer.Option(..., "--store", help="Store folder."),
    forget_damaged: bool = typer.Option(False, "--forget-damaged",
                                        help="Delete damaged items and their sources' done-marks, so that "
                                             "ingesting the same files again restores them."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check every blob of a store against its SHA-256: missing or damaged blobs are listed by item
    (exit 1); blob files that no item references are counted."""
    from .progress import progress_bar
    from .store import Store

    def with_bar(rows):
        with progress_bar("verify blobs", total=len(rows), unit="blobs", enabled=bool(rows)) as advance:
            for r in rows:
                yield r
                advance()

    try:
        with Store(store, write=forget_damaged) as st:
            rep = st.verify(forget=forget_damaged, progress=with_bar)
    except FileNotFoundError as exc:
        _fail(str(exc))
    if as_json:
        out.print_json(json.dumps({"ok": rep.ok, "blobs": rep.blobs, "bytes": rep.bytes, "damaged": rep.damaged,
                                   "orphans": rep.orphans, "dead_bytes": rep.dead_bytes,
                                   "forgotten_items": rep.forgotten_items,
                                   "forgotten_sources": rep.forgotten_sources}))
    else:
        out.print(f"{rep.blobs:,} blobs checked ({rep.bytes:,} bytes): "
                  + ("all match their hashes" if rep.ok else f"{len(rep.damaged)} item(s) damaged"), highlight=False)
        for d in rep.damaged:
            out.print(f"  DAMAGED {d['item_id']} ({d['modality']}, {d['source_path']}): {d['reason']}",
                      highlight=False, markup=False, soft_wrap=True)
        if rep.orphans:
            out.print(f"  {len(rep.orphans)} blob file(s) without an item (removed at the next ingest)", highlight=False)
        if rep.dead_bytes:
            out.print(f"  {rep.dead_bytes:,} bytes of packs hold blobs of replaced or forgotten items (freed when "
                      "no item uses their pack)", highlight=False)
        if rep.forgotten_items:
            out.print(f"forgot {rep.forgotten_items} item(s) of {rep.forgotten_sources} source(s): ingest the "
                      "same files again to restore them", highlight=False)
    if not rep.ok:
        raise typer.Exit(1)


@store_app.command("compact", epilog="Example: medweave store compact --store ./store")
def store_compact(
    store: Path = typer.Option(..., "--store", help="Store folder."),
    min_dead: float = typer.Option(0.25, "--min-dead", help="Rewrite a pack when more than this share of its "
                                   "bytes belongs to no item (0 to 1)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Free the dead bytes of blob packs (blobs of replaced or forgotten items): the live blobs of
    each pack above --min-dead are copied into a new pack, the items are pointed at it in one
    transaction, then the old pack is deleted. Safe to interrupt; refuses while another process has
    the store open."""
    from .store import Store
    from .store.catalog import StoreLockedError

    if not (store / Store.CATALOG).exists():
        _fail(f"{store}: no medweave store here (expected {Store.CATALOG})")
    try:
        with Store(store, write=True) as st:
            rep = st.compact(min_dead=min_dead)
    except (StoreLockedError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        out.print_json(json.dumps({"packs": rep.packs, "rewritten": rep.rewritten, "skipped": rep.skipped,
                                   "blobs_moved": rep.blobs_moved, "rows_updated": rep.rows_updated,
                                   "bytes_before": rep.bytes_before, "bytes_after": rep.bytes_after,
                                   "reclaimed": rep.reclaimed}))
        return
    out.print(f"{len(rep.rewritten)} of {rep.packs} pack(s) rewritten: {rep.blobs_moved:,} blobs moved, "
              f"{rep.rows_updated:,} items updated, {rep.reclaimed:,} bytes freed "
              f"({rep.bytes_before:,} -> {rep.bytes_after:,})", highlight=False)
    for sk in rep.skipped:
        out.print(f"  SKIPPED {sk['pack']}: {sk['reason']}", highlight=False, markup=False, soft_wrap=True)


@cohort_app.command("build", epilog=(
    "Example: medweave cohort build --store ./store --out cohort.parquet --case study "
    "--target abnormal --covariate age --covariate sex --split-from source"))
def cohort_build(
    store: Path = typer.Option(..., "--store", help="Store folder."),
    out_path: Path = typer.Option(..., "--out", help="Parquet file to write."),
    case: str = typer.Option("patient", "--case", help="Case level: patient or study."),
    target: List[str] = typer.Option([], "--target", help="Target name (repeatable)."),
    covariate: List[str] = typer.Option([], "--covariate", help="Case-level covariate (repeatable)."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Comma-separated modalities (default: all present)."),
    split_from: str = typer.Option("hash", "--split-from", help="hash (seeded, grouped by patient) or source (the data set's own)."),
    fractions: str = typer.Option("0.7,0.15,0.15", "--fractions", help="train,valid,test fractions for hash splits."),
    seed: int = typer.Option(0, "--seed"),
    require_target: bool = typer.Option(False, "--require-target", help="Drop cases without a target value."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Turn the store into a table of cases x modalities with a presence mask, targets and splits."""
    from .cohort import CohortError, build_cohort
    from .store import Store

    try:
        fr = [float(x) for x in fractions.split(",")]
    except ValueError:
        _fail(f"--fractions {fractions!r}: expected three numbers like 0.7,0.15,0.15")
    try:
        with Store(store) as st:
            cohort = build_cohort(st, case_level=case,
                                  modalities=modalities.split(",") if modalities else None,
                                  targets=target, covariates=covariate, fractions=fr, seed=seed,
                                  split_from=split_from, require_target=require_target)
    except (CohortError, FileNotFoundError) as exc:
        _fail(str(exc))
    cohort.save(out_path)
    _print_cohort(cohort, as_json, out_path)


@cohort_app.command("show", epilog="Example: medweave cohort show cohort.parquet")
def cohort_show(path: Path = typer.Argument(..., help="Cohort Parquet file."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Print what a cohort holds: cases, splits, presence per modality, targets."""
    from .cohort import Cohort, CohortError

    try:
        cohort = Cohort.load(path)
    except (CohortError, FileNotFoundError) as exc:
        _fail(str(exc))
    _print_cohort(cohort, as_json, path)


def _print_cohort(cohort, as_json: bool, path: Path) -> None:
    s = cohort.summary()
    if as_json:
        out.print_json(json.dumps({"path": str(path), **s}, default=str))
        return
    out.print(f"cohort {path}: {s['cases']} cases ({s['case_level']}), {s['patients']} patients; "
              f"splits {s['splits']}", highlight=False)
    t = Table(title="presence by modality")
    for c in ("modality", "present", "absent", "present %"):
        t.add_column(c, justify="right" if c != "modality" else "left")
    for m in cohort.modalities:
        p, a = s["present"][m], s["absent"][m]
        t.add_row(m, str(p), str(a), f"{100 * p / max(1, p + a):.0f}%")
    out.print(t)
    for name, info in s["targets"].items():
        out.print(f"target {name}: {info}", highlight=False)


@app.command(epilog="Example: medweave train --config configs/nih-cxr14.toml --out runs/nih")
def train(
    config: Path = typer.Option(..., "--config", help="Experiment config (TOML or YAML)."),
    out_dir: Path = typer.Option(..., "--out", help="Model folder to write (safetensors + config.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the training summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    engine: Optional[str] = typer.Option(None, "--engine", help="local or ray: where ingest and encoding run (default: the config's [engine])."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: the Ray cluster to join."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="With --engine ray and no --address: CPUs of the local Ray instance (default: all)."),
    finetune_blocks: Optional[int] = typer.Option(None, "--finetune-blocks", help="Fine-tune the image encoder's "
                                                  "last N blocks on the train split first (default: the config's "
                                                  "[encode] finetune_blocks; 0: frozen)."),
) -> None:
    """Ingest the config's data (idempotent), build the cohort, encode (cached), fit, calibrate, save."""
    from .config import ConfigError, EngineConfig, load_config
    from .engine import Engine, EngineError
    from .train.pipeline import PipelineError, train_experiment

    try:
        cfg = load_config(config)
        if finetune_blocks is not None:
            if not 0 <= finetune_blocks <= 16:
                _fail(f"--finetune-blocks {finetune_blocks}: EfficientNet-Lite0 has 16 blocks (allowed 0..16)")
            cfg.encode = cfg.encode.model_copy(update={"finetune_blocks": finetune_blocks})
        if engine or address or num_cpus:
            kind = engine or ("ray" if address else cfg.engine.kind)
            Engine(kind, address, num_cpus)  # a bad name or pair fails here, in the options' words
            cfg.engine = EngineConfig(kind=kind, address=address, num_cpus=num_cpus or cfg.engine.num_cpus)
        result = train_experiment(cfg, out_dir, progress=not quiet and not as_json, config_source=str(config))
    except (ConfigError, PipelineError, FileNotFoundError, EngineError) as exc:
        _fail(str(exc))
    summary = {"model": str(out_dir), "kind": cfg.model.kind, "epochs_run": result.fit["epochs_run"],
               "best_valid_loss": result.fit["best_valid_loss"], "temperatures": result.temperatures,
               "train_samples_per_s": result.fit["train_samples_per_s"],
               "splits": result.cohort.summary()["splits"]}
    if as_json:
        out.print_json(json.dumps(summary, default=str))
    else:
        out.print(f"trained {cfg.model.kind} model -> {out_dir} ({summary['epochs_run']} epochs, best valid loss "
                  f"{summary['best_valid_loss']:.4f}, temperatures {summary['temperatures']})", highlight=False)


@app.command(epilog=(
    "Example: medweave evaluate --model runs/nih --data /data/nih-test --json   "
    "(or: --split test --missing mnar:image:0=0.5,1=0)"))
def evaluate(
    model: Path = typer.Option(..., "--model", help="Model folder from `medweave train`."),
    data: List[Path] = typer.Option([], "--data", help="New data with the training layout (default: the model's own cohort)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Store for --data (default: MODEL/eval-store)."),
    split: Optional[str] = typer.Option(None, "--split", help="train, valid, test or all (default: all for --data, else test)."),
    missing: List[str] = typer.Option([], "--missing", help="Simulated missingness MECH:MODALITY:SPEC (repeatable)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    engine: Optional[str] = typer.Option(None, "--engine", help="local or ray: where encoding and batch "
                                         "prediction run (default: the saved config's engine for encoding)."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: the Ray cluster to join."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="With --engine ray and no --address: CPUs of the local Ray instance (default: all)."),
) -> None:
    """AUROC, AUPRC, balanced accuracy, F1, Brier, ECE per task with bootstrap 95% intervals."""
    from .engine import EngineError, engine_from
    from .evaluate import EvaluateError, evaluate_model
    from .train.pipeline import PipelineError

    try:
        eng = engine_from(engine, address, num_cpus) if engine or address or num_cpus else None
        res = evaluate_model(model, data=[str(d) for d in data] or None, store=store, split=split,
                             missing=missing, n_boot=bootstrap, progress=not as_json, engine=eng)
    except (EvaluateError, PipelineError, FileNotFoundError, EngineError) as exc:
        _fail(str(exc))
    if as_json:
        out.print_json(json.dumps(res, default=str))
        return
    out.print(f"{res['cases']} cases ({res['split']}); presence {res['presence']}", highlight=False)
    for head, metrics in res["metrics"].items():
        t = Table(title=f"task {head}")
        for c in ("metric", "value", "95% CI"):
            t.add_column(c, justify="left" if c == "metric" else "right")
        for name, v in metrics.items():
            ci = f"[{v['lo']:.3f}, {v['hi']:.3f}]" if "lo" in v else ""
            t.add_row(name, f"{v['value']:.3f}" if isinstance(v["value"], float) else str(v["value"]), ci)
        out.print(t)


@app.command(epilog="Example: medweave demo --out ./demo-out")
def demo(
    out_dir: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the demo's files and store."),
    data: Optional[Path] = typer.Option(None, "--data", help="Real data folder (default: ../shared/data when present)."),
    patients: int = typer.Option(300, "--patients", help="Phantom patients to generate."),
    seed: int = typer.Option(0, "--seed"),
    no_real: bool = typer.Option(False, "--no-real", help="Skip the real data sets even when present."),
) -> None:
    """Run the main job end to end on a synthetic phantom cohort (and the real sets when present)."""
    from .demo.run import run_demo

    code = run_demo(out_dir, data_dir=data, n_patients=patients, seed=seed, use_real=not no_real, console=out)
    raise typer.Exit(code)


from .explain.cli import EPILOG as _EXPLAIN_EPILOG, explain_command  # noqa: E402
from .report.cli import EPILOG as _REPORT_EPILOG, report_command  # noqa: E402
from .serve.cli import EPILOG as _SERVE_EPILOG, serve_command  # noqa: E402

app.command("explain", epilog=_EXPLAIN_EPILOG)(explain_command)
app.command("report", epilog=_REPORT_EPILOG)(report_command)
app.command("serve", epilog=_SERVE_EPILOG)(serve_command)
from .agents.cli import AGENT_EPILOG as _AGENT_EPILOG, MCP_EPILOG as _MCP_EPILOG, agent_command, mcp_command  # noqa: E402

app.command("mcp", epilog=_MCP_EPILOG)(mcp_command)
app.command("agent", epilog=_AGENT_EPILOG)(agent_command)


def main() -> None:  # pragma: no cover - entry point
    app(prog_name="medweave")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
