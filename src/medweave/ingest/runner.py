"""Walk paths, pick an adapter per file (or per folder layout), and commit items in batches.

Every unit is all-or-nothing: its blobs are written first, its rows and its "source done" mark are
committed in one transaction. A failing unit is recorded as one line (file and reason) and the run
goes on. Re-running skips sources already done (same path, same bytes, same adapter version).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..progress import progress_bar
from ..store.catalog import ITEM_FIELDS, Item, Modality, Store, canonical_json
from .base import ADAPTERS, Adapter, IngestContext, IngestError, Unit

HEAD_BYTES = 4096


@dataclass
class IngestReport:
    run_id: str = ""
    n_units: int = 0
    n_ok: int = 0
    n_skipped: int = 0
    n_failed: int = 0
    n_items_added: int = 0
    n_items_replaced: int = 0  # rows of sources whose bytes changed, replaced by their new version
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    per_adapter: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.n_failed == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "units": self.n_units,
            "ingested": self.n_ok,
            "skipped_already_stored": self.n_skipped,
            "failed": self.n_failed,
            "items_added": self.n_items_added,
            "items_replaced": self.n_items_replaced,
            "per_adapter": self.per_adapter,
            "errors": [{"source": p, "reason": r} for p, r in self.errors],
            "warnings": self.warnings,
        }


def _adapter_instances(warnings: list[str]) -> dict[str, Adapter]:
    """Instantiate every registered adapter. One that cannot be imported (a broken plug-in, a missing
    optional dependency) is left out with a warning instead of stopping every other format."""
    out: dict[str, Adapter] = {}
    for name in ADAPTERS.names():
        try:
            out[name] = ADAPTERS.get(name)()
        except Exception as exc:  # a broken plug-in must not stop the other formats
            warnings.append(f"format {name!r} unavailable: {exc}")
    return out


def _sniff(path: Path, adapters: dict[str, Adapter]) -> Adapter | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError:
        return None
    best, score = None, 0.0
    for adapter in adapters.values():
        s = adapter.sniff(path, head)
        if s > score:
            best, score = adapter, s
    return best


def plan(paths: Iterable[Path], adapters: dict[str, Adapter], ctx: IngestContext,
         forced: Adapter | None = None) -> tuple[list[tuple[Adapter, Unit]], list[tuple[str, str]]]:
    """Turn paths into (adapter, unit) pairs, and a list of (path, reason) for what nobody reads."""
    work: list[tuple[Adapter, Unit]] = []
    unknown: list[tuple[str, str]] = []

    def is_companion(p: Path) -> bool:
        return any(getattr(a, "is_companion", lambda _p: False)(p) for a in adapters.values())

    store_root = ctx.store.root.resolve()

    def visit(p: Path) -> None:
        if p.name.startswith(".") or p.resolve() == store_root:  # never ingest the store into itself
            return
        if p.is_dir():
            for a in ([forced] if forced else adapters.values()):
                if a.claims_dir(p):
                    add_units(a, p)
                    return
            for child in sorted(p.iterdir()):
                visit(child)
            return
        if not p.is_file():
            unknown.append((str(p), "not a regular file"))
            return
        if is_companion(p):
            return
        adapter = forced or _sniff(p, adapters)
        if adapter is None:
            unknown.append((str(p), "unknown file format: no adapter recognises its content or extension "
                                    f"(formats: {', '.join(sorted(adapters))}; use --format NAME)"))
            return
        add_units(adapter, p)

    def add_units(adapter: Adapter, p: Path) -> None:
        try:
            work.extend((adapter, u) for u in adapter.units(p, ctx))
        except Exception as exc:  # a source whose parts cannot even be listed is one error line
            unknown.append((str(p), _reason(exc, ctx)))

    for path in paths:
        path = Path(path)
        if not path.exists():
            unknown.append((str(path), "no such file or folder"))
            continue
        visit(path)
    return work, unknown


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime) so a file of many units is read once."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if len(_FILE_HASHES) > 4096:
            _FILE_HASHES.clear()
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def _fingerprint(adapter: Adapter, unit: Unit) -> str:
    """What makes a unit "already stored": adapter and version, the unit, its bytes and its extras."""
    h = hashlib.sha256()
    h.update(f"{adapter.name}\x1f{adapter.version}\x1f{unit.source_id}\x1f".encode())
    if unit.path.is_file():
        h.update(_file_sha256(unit.path).encode())
    h.update(canonical_json(unit.extra).encode())
    return h.hexdigest()


class _Batch:
    """Rows waiting for one transaction."""

    def __init__(self, store: Store, run_id: str):
        self.store = store
        self.run_id = run_id
        self.items: list[dict[str, Any]] = []
        self.patients: dict[str, dict[str, Any]] = {}
        self.studies: dict[str, dict[str, Any]] = {}
        self.sources: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def add_unit(self, adapter: Adapter, unit: Unit, fingerprint: str, items: list[Item]) -> None:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        rows = []
        ids_by_ref: dict[str, str] = {}
        for it in items:
            Modality(it.modality)  # validates
            chash = it.content_hash()
            iid = it.item_id(chash)
            if it.ref:
                ids_by_ref[it.ref] = iid
            rel = None
            if it.blob is not None:
                rel = self.store.put_blob(it.blob, chash, it.blob_ext)
            unknown = set(it.fields) - set(ITEM_FIELDS)
            if unknown:
                raise IngestError(f"adapter {adapter.name} set unknown item fields {sorted(unknown)}")
            row = {
                "item_id": iid,
                "patient_id": it.patient_id,
                "study_id": it.study_id,
                "modality": Modality(it.modality).value,
                "content_hash": chash,
                "blob": rel,
                "bytes": len(it.blob) if it.blob is not None else None,
                **{k: None for k in ITEM_FIELDS},
                **it.fields,
                "labels": canonical_json(it.labels) if it.labels else None,
                "meta": canonical_json(it.meta) if it.meta else None,
                "source_path": str(unit.path),
                "source_key": it.source_key,
                "unit_id": unit.source_id,
                "adapter": adapter.name,
                "adapter_version": adapter.version,
                "ingested_at": now,
                "run_id": self.run_id,
                "_link_ref": it.link_ref,
            }
            rows.append(row)
            p = self.patients.setdefault(it.patient_id, {"namespace": None})
            p.update({k: v for k, v in it.patient_attrs.items() if v is not None})
            if it.study_id:
                s = self.studies.setdefault(it.study_id, {"patient_id": it.patient_id})
                s.update({k: v for k, v in it.study_attrs.items() if v is not None})
        for row in rows:
            ref = row.pop("_link_ref")
            if ref is not None:
                if ref not in ids_by_ref:
                    raise IngestError(f"item links to {ref!r}, which this source does not contain")
                row["linked_item"] = ids_by_ref[ref]
        self.items.extend(rows)
        self.sources.append({
            "source_id": fingerprint, "unit_id": unit.source_id, "source_path": str(unit.path),
            "raw_sha256": fingerprint,
            "adapter": adapter.name, "adapter_version": adapter.version, "n_items": len(rows),
            "run_id": self.run_id, "done_at": now,
        })

    def add_error(self, path: str, adapter: str, reason: str) -> None:
        self.errors.append({"run_id": self.run_id, "source_path": path, "adapter": adapter,
                            "reason": reason, "at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)})

    def due(self) -> bool:
        return len(self.items) >= 2000 or len(self.sources) >= 256 or time.monotonic() - self.started > 2.0

    def flush(self, report: "IngestReport") -> None:
        if not (self.items or self.sources or self.errors):
            return
        added, replaced = self.store.commit_batch(self.items, self.patients, self.studies, self.sources, self.errors)
        report.n_items_added += added
        report.n_items_replaced += replaced
        self.items, self.patients, self.studies, self.sources, self.errors = [], {}, {}, [], []
        self.started = time.monotonic()


PARALLEL_MIN_UNITS = 64  # below this, starting reader processes costs more than it saves


def default_workers() -> int:
    """One reader per core beyond the one the writing process needs, at most 8. Measured on 2 cores:
    a reader process beside the writer is slower than none (they share the cores and the items
    cross a pipe), so below 3 cores everything runs in this process."""
    return max(1, min(8, (os.cpu_count() or 1) - 1))


# --- reading units, in this process or in a pool of reader processes -------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(secret: bytes, keep_phi: bool, namespace: str, options: dict[str, Any]) -> None:
    """A reader process: its own adapters and a context without the store (only the main process
    writes; readers never open the catalog)."""
    from ..store.deid import Deidentifier

    _WORKER["adapters"] = _adapter_instances([])
    _WORKER["ctx"] = IngestContext(store=None, deid=Deidentifier(secret, keep_phi), namespace=namespace,
                                   options=options)


def _describe(exc: BaseException) -> tuple[str, str, bool]:
    """An exception as (class name, message, is IngestError): it crosses processes (not every exception
    pickles) and becomes the report's reason (``_reason``)."""
    if isinstance(exc, _Failed):
        return exc.err
    return exc.__class__.__name__, str(exc), isinstance(exc, IngestError)


def _read_unit(adapter: Adapter, unit: Unit, ctx: IngestContext) -> tuple[list[Item] | None, tuple | None]:
    """(items, None), or (None, the failure described) — a bad unit never stops the batch."""
    try:
        return list(adapter.read(unit, ctx)), None
    except Exception as exc:
        return None, _describe(exc)


def _read_in_worker(adapter_name: str, unit: Unit) -> tuple[list[Item] | None, tuple | None]:
    return _read_unit(_WORKER["adapters"][adapter_name], unit, _WORKER["ctx"])


def _read_all(work: list[tuple[Adapter, Unit]], ctx: IngestContext, known: set[str], workers: int):
    """Yield (adapter, unit, fingerprint, items, error) in the order of ``work``; ``items`` is None for
    a unit already stored, ``error`` a (class name, message, is IngestError) triple for a failed one."""
    def fingerprint(adapter, unit):
        try:
            return _fingerprint(adapter, unit), None
        except Exception as exc:
            return None, _describe(exc)

    if workers < 2 or len(work) < PARALLEL_MIN_UNITS:
        for adapter, unit in work:
            fp, err = fingerprint(adapter, unit)
            if err or fp in known:
                yield adapter, unit, fp, None, err
            else:
                yield adapter, unit, fp, *_read_unit(adapter, unit, ctx)
        return
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    window: deque = deque()  # (adapter, unit, fingerprint, future or None, error): bounded, in order
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(ctx.deid.secret, ctx.deid.keep_phi, ctx.namespace, ctx.options)) as pool:
        def drain(limit: int):
            while len(window) > limit:
                adapter, unit, fp, fut, err = window.popleft()
                yield (adapter, unit, fp, None, err) if fut is None else (adapter, unit, fp, *fut.result())

        for adapter, unit in work:
            fp, err = fingerprint(adapter, unit)
            fut = None if err or fp in known else pool.submit(_read_in_worker, adapter.name, unit)
            window.append((adapter, unit, fp, fut, err))
            yield from drain(4 * workers)
        yield from drain(0)


def ingest(
    paths: Iterable[str | Path],
    store: Store,
    fmt: str | None = None,
    namespace: str = "default",
    options: dict[str, Any] | None = None,
    progress: bool = True,
    args: str = "",
    workers: int | None = None,
) -> IngestReport:
    """Ingest files and folders into ``store`` (opened for writing). See the module docstring.

    Units are read (parsed, de-identified) by ``workers`` reader processes when there are many;
    this process alone writes blobs and commits, in the order of the work list.
    """
    report = IngestReport()
    if fmt:
        ADAPTERS.get(fmt)  # an unknown name raises, listing the allowed formats
    adapters = _adapter_instances(report.warnings)
    if fmt and fmt not in adapters:
        raise IngestError(f"format {fmt!r} cannot be used: {'; '.join(report.warnings)}")
    forced = adapters[fmt] if fmt else None
    ctx = IngestContext(store=store, deid=store.deid, namespace=namespace, options=options or {})
    report.run_id = store.start_run(args or json.dumps([str(p) for p in paths]))
    batch = _Batch(store, report.run_id)
    work, unknown = plan([Path(p) for p in paths], adapters, ctx, forced)
    for path, reason in unknown:
        report.n_failed += 1
        report.errors.append((path, reason))
        batch.add_error(path, "", reason)
    known = store.known_sources()
    report.n_units = len(work)
    used: dict[str, Adapter] = {}
    workers = default_workers() if workers is None else workers
    with progress_bar("ingest", total=len(work), unit="files", enabled=progress) as advance:
        for adapter, unit, fp, items, err in _read_all(work, ctx, known, workers):
            used[adapter.name] = adapter
            if err is None and items is None:
                report.n_skipped += 1
            else:
                try:
                    if err is not None:
                        raise _Failed(err)
                    batch.add_unit(adapter, unit, fp, items)
                    known.add(fp)
                    report.n_ok += 1
                    report.per_adapter[adapter.name] = report.per_adapter.get(adapter.name, 0) + len(items)
                except Exception as exc:  # a bad unit never stops the batch
                    _record_failure(report, batch, ctx, adapter, unit, exc)
            advance()
            if batch.due():
                batch.flush(report)
        batch.flush(report)
    for adapter in used.values():
        try:
            derived = list(adapter.finish(ctx))
        except Exception as exc:
            _record_failure(report, batch, ctx, adapter, Unit(Path(f"{adapter.name}:finish")), exc)
            derived = []
        for unit, items in derived:
            try:
                batch.add_unit(adapter, unit, _fingerprint(adapter, unit), items)
                report.per_adapter[adapter.name] = report.per_adapter.get(adapter.name, 0) + len(items)
            except Exception as exc:
                _record_failure(report, batch, ctx, adapter, unit, exc)
            if batch.due():
                batch.flush(report)
        batch.flush(report)
    if report.n_items_replaced:
        store.sweep()  # blobs of replaced rows that no row references any more
    store.finish_run(report.run_id, report.n_units, report.n_skipped, report.n_failed, report.n_items_added)
    return report


class _Failed(Exception):
    """A unit that failed in a reader process: carries (class name, message, is IngestError)."""

    def __init__(self, err: tuple[str, str, bool]):
        super().__init__(err[1])
        self.err = err


def _record_failure(report: IngestReport, batch: "_Batch", ctx: IngestContext, adapter: Adapter, unit: Unit,
                    exc: BaseException) -> None:
    reason = _reason(exc, ctx)
    report.n_failed += 1
    report.errors.append((str(unit.path), reason))
    batch.add_error(str(unit.path), adapter.name, reason)


def _reason(exc: BaseException, ctx: IngestContext) -> str:
    name, text, plain = _describe(exc)
    text = text or name
    if not plain:
        text = f"{name}: {text}"
    return ctx.scrub(text.splitlines()[0] if text else text)[:500]
