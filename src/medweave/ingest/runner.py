"""Walk paths, pick an adapter per file (or per folder layout), and commit items in batches.

Every unit is all-or-nothing: its blobs are written first, its rows and its "source done" mark are
committed in one transaction. A failing unit is recorded as one line (file and reason) and the run
goes on. Re-running skips sources already done (same path, same bytes, same adapter version).

Each unit found ends in one of four outcomes: ingested, already stored, skipped as not a data file
(a README, a DICOMDIR, a checksum list: an adapter raises ``NotADataFile``, or no adapter reads a file
met while walking a folder), or failed (a file that should have ingested). Only failures make the
run not ``ok`` (exit code 1).

Paths are stored de-identified: ``unit_id`` is a keyed fingerprint of the absolute path (so a re-read
finds its earlier rows), ``source_path`` the path relative to the folder the user gave, each part
that names or numbers a patient replaced (``Deidentifier.display_path``). The report the user sees
keeps the paths as they are on disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..engine import LOCAL, Engine
from ..progress import progress_bar
from ..store.catalog import ITEM_FIELDS, Item, Modality, Store, StoreFullError, canonical_json
from ..store.deid import Deidentifier
from .base import (ADAPTERS, HOLD_MAX_BYTES, QUOTE_CLOSE, QUOTE_OPEN, Adapter, IngestContext, IngestError,
                   NotADataFile, Unit, hold_source_bytes)

HEAD_BYTES = 4096
NONE_ADAPTER = "(none)"  # per_adapter key of files that no adapter took


@dataclass
class IngestReport:
    """What one run did. Every unit found ends in exactly one of four outcomes, so
    ``n_units == n_ok + n_already + n_not_data + n_failed``, and the same holds per adapter."""

    run_id: str = ""
    n_ok: int = 0  # units ingested now
    n_already: int = 0  # units already in the store (same path, bytes and adapter version)
    n_not_data: int = 0  # skipped: not a data file (a DICOMDIR, a README, ...), with the reason
    n_failed: int = 0  # should have ingested and did not: bad or unreadable files
    n_derived: int = 0  # units an adapter built from stored items after the walk (volumes from slices)
    n_items_added: int = 0
    n_items_replaced: int = 0  # rows of sources whose bytes changed, replaced by their new version
    errors: list[tuple[str, str]] = field(default_factory=list)  # failed: (path as given, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # not data files: (path, reason)
    unexpected: list[str] = field(default_factory=list)  # failed paths whose reason is a reader's bug
    per_adapter: dict[str, dict[str, int]] = field(default_factory=dict)
    patients: dict[str, dict[str, Any]] = field(default_factory=dict)  # adapter -> {rule, patients}
    warnings: list[str] = field(default_factory=list)

    @property
    def n_units(self) -> int:
        return self.n_ok + self.n_already + self.n_not_data + self.n_failed

    @property
    def n_skipped(self) -> int:
        """Units already stored (the name this count had before "skipped, not a data file" existed)."""
        return self.n_already

    @property
    def ok(self) -> bool:
        """True when nothing that should have ingested failed (skipped non-data files are fine)."""
        return self.n_failed == 0

    @property
    def items_per_adapter(self) -> dict[str, int]:
        """{adapter: items stored by this run}, for adapters that stored any."""
        return {a: c["items"] for a, c in sorted(self.per_adapter.items()) if c["items"]}

    def count(self, adapter: str, outcome: str, n: int = 1) -> None:
        counts = self.per_adapter.setdefault(adapter, {k: 0 for k in PER_ADAPTER_KEYS})
        counts[outcome] += n

    def to_dict(self) -> dict[str, Any]:
        unexpected = set(self.unexpected)
        return {
            "run_id": self.run_id,
            "units": self.n_units,
            "ingested": self.n_ok,
            "already_stored": self.n_already,
            "skipped": self.n_not_data,
            "failed": self.n_failed,
            "derived": self.n_derived,
            "items_added": self.n_items_added,
            "items_replaced": self.n_items_replaced,
            "per_adapter": self.per_adapter,
            "patients": self.patients,
            "errors": [{"source": p, "reason": r, "unexpected": p in unexpected} for p, r in self.errors],
            "skipped_files": [{"source": p, "reason": r} for p, r in self.skipped],
            "warnings": self.warnings,
        }


PER_ADAPTER_KEYS = ("ingested", "already_stored", "skipped", "failed", "items")


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


def _read_whole(path: Path, size: int) -> bytes:
    """The whole content of a file, read with os-level calls (a buffered file object cost as much as
    the read of a small file): ``size`` bytes asked first, then on to the end."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        first = os.read(fd, size + 1)
        if len(first) <= size:  # a short read of a regular file is its end: no second call (an
            return first  # os.read(fd, 1 MiB) at the end allocated 1 MiB first, ~10 us a file)
        chunks = [first]
        while chunks[-1]:  # the file grew since its stat: on to the end
            chunks.append(os.read(fd, 1 << 20))
    finally:
        os.close(fd)
    return b"".join(chunks)


def _read_head(path: Path) -> bytes:
    """The first ``HEAD_BYTES`` of a file (fewer when it is shorter), read with os-level calls."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        head = os.read(fd, HEAD_BYTES)
        while len(head) < HEAD_BYTES:
            more = os.read(fd, HEAD_BYTES - len(head))
            if not more:
                break
            head += more
        return head
    finally:
        os.close(fd)


def _sniff(path: Path, adapters: dict[str, Adapter]) -> tuple[Adapter | None, bytes]:
    try:
        head = _read_head(path)
    except OSError:
        return None, b""
    best, score = None, 0.0
    for adapter in adapters.values():
        s = adapter.sniff(path, head)
        if s > score:
            best, score = adapter, s
    return best, head


# Files that are documentation, checksums or tooling beside data, never data themselves.
_NOT_DATA_NAMES = re.compile(
    r"^(?:readme|license|licence|copying|notice|authors|changes|changelog|history|contributing|"
    r"install|manifest|makefile|records|annotators|sha\d*sums|md5sums|checksums)(?:[._-].*)?$",
    re.IGNORECASE)
_NOT_DATA_SUFFIXES = {
    ".md": "a Markdown document", ".rst": "a reStructuredText document", ".html": "a web page",
    ".htm": "a web page", ".pdf": "a PDF document", ".py": "Python source", ".pyc": "compiled Python",
    ".sh": "a shell script", ".icc": "an ICC colour profile", ".icm": "an ICC colour profile",
    ".yml": "a YAML file", ".yaml": "a YAML file", ".toml": "a TOML file", ".cfg": "a configuration file",
    ".ini": "a configuration file", ".log": "a log file", ".sha256": "a checksum", ".md5": "a checksum",
    ".zip": "a zip archive (unpack it first)", ".whl": "a Python wheel",
}


def _not_data_reason(path: Path, head: bytes) -> str:
    """Why a file no adapter reads is not a data file, as precisely as its name and bytes tell."""
    name = path.name
    if _NOT_DATA_NAMES.match(name):
        return "documentation or an index file beside the data (by its name)"
    kind = _NOT_DATA_SUFFIXES.get(path.suffix.lower())
    if kind:
        return kind
    if len(head) >= 40 and head[36:40] == b"acsp":
        return "an ICC colour profile"
    if not head:
        return "an empty file"
    return "no adapter recognises its content or extension"


@dataclass
class _Outcome:
    """A file that became no unit: skipped (not a data file) or failed before reading."""

    path: Path
    root: Path | None
    kind: str  # "skip" or "error"
    reason: str | tuple  # the tool's own words, or an exception described by ``_describe``
    adapter: str = NONE_ADAPTER


def walk(paths: Iterable[Path], adapters: dict[str, Adapter], ctx: IngestContext,
         forced: Adapter | None = None) -> Iterator["tuple[Adapter, Unit] | _Outcome"]:
    """The (adapter, unit) pairs of ``paths``, and an outcome for each file that became no unit, one
    at a time in walk order (folders sorted by name): nothing of the walk is held but the folders
    being walked and the names of the one being listed, so planning costs no memory per file.

    A file found while walking a folder that no adapter reads is skipped as not a data file; one the
    user named explicitly fails. Folder links are followed once: a link leading back to a folder
    already walked (a loop) is not entered again.
    """
    walked: set[str] = set()  # folders resolved (one entry a folder, not a file)

    def is_companion(p: Path) -> bool:
        return any(getattr(a, "is_companion", lambda _p: False)(p) for a in adapters.values())

    store_root = ctx.store.root.resolve()

    def visit(p: Path, root: Path, explicit: bool):
        if not explicit and p.name.startswith("."):
            return
        # A plain file (not a link) needs no resolving (it cannot be the store's folder nor a
        # loop); links, folders and named paths are resolved (Path.resolve looks at every component).
        plain_file = not p.is_symlink() and p.is_file()
        try:
            real = None if plain_file else p.resolve()
        except (OSError, RuntimeError):  # a link that loops on itself
            yield _Outcome(p, root, "skip", "a link that cannot be resolved (it loops)")
            return
        if real == store_root:  # never ingest the store into itself
            return
        if not plain_file and p.is_dir():
            if p.is_symlink() and not explicit:
                above = p.parent.resolve()
                if real == above or real in above.parents:
                    ctx.warn(f"{p}: a folder link back to a folder above it (a loop); not followed")
                    return
            if str(real) in walked:
                ctx.warn(f"{p}: a folder link to a folder already walked; not followed again")
                return
            walked.add(str(real))
            for a in ([forced] if forced else adapters.values()):
                if a.claims_dir(p):
                    yield from add_units(a, p, root)
                    return
            try:  # names, not paths: a folder of 30,000 files holds 30,000 short strings while walked
                names = sorted(os.listdir(p))  # (the order of sorted ``Path`` children: by name)
            except OSError as exc:
                yield _Outcome(p, root, "error", f"folder cannot be listed ({exc.strerror})")
                return
            for name in names:
                yield from visit(p / name, root, False)
            return
        if not plain_file and not p.is_file():
            what = "a broken link" if p.is_symlink() and not p.exists() else "not a regular file"
            yield _Outcome(p, root, "error" if explicit else "skip", what)
            return
        if not explicit and is_companion(p):
            return
        adapter, head = (forced, b"") if forced else _sniff(p, adapters)
        if adapter is None:
            reason = _not_data_reason(p, head)
            if explicit:
                reason = (f"unknown file format: {reason} (formats: {', '.join(sorted(adapters))}; "
                          "use --format NAME)")
            yield _Outcome(p, root, "error" if explicit else "skip", reason)
            return
        yield from add_units(adapter, p, root)

    def add_units(adapter: Adapter, p: Path, root: Path):
        try:
            units = list(adapter.units(p, ctx))
        except NotADataFile as exc:
            yield _Outcome(p, root, "skip", str(exc), adapter.name)
            return
        except Exception as exc:  # a source whose parts cannot even be listed is one error line
            yield _Outcome(p, root, "error", _describe(exc), adapter.name)
            return
        for u in units:
            u.root = root
            yield adapter, u

    for path in paths:
        path = Path(path)
        if not path.exists() and not path.is_symlink():
            yield _Outcome(path, path, "error", "no such file or folder")
            continue
        yield from visit(path, path, True)


PLAN_CHUNK = 1024  # entries of the walk (units and files that became none) planned at a time


def _chunks(entries: Iterator, ctx: IngestContext, report: IngestReport):
    """``walk``'s entries ``PLAN_CHUNK`` at a time, as (units, outcomes): the walk runs only while a
    chunk is taken, and what it warns of (a folder link not followed) goes to the report, not to the
    unit being read then."""
    while True:
        saved, ctx.warnings = ctx.warnings, []
        try:
            chunk = list(itertools.islice(entries, PLAN_CHUNK))
        finally:
            report.warnings.extend(ctx.warnings)
            ctx.warnings = saved
        if not chunk:
            return
        units = [e for e in chunk if not isinstance(e, _Outcome)]
        yield units, [e for e in chunk if isinstance(e, _Outcome)]
        del chunk, units


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str | None:
    """sha256 of a file (None: not a regular file, or none there: a folder unit), memoised by (path,
    size, mtime) so a file of many units is read once. A file of up to ``HOLD_MAX_BYTES`` is read whole
    and its bytes held for its adapter (``source_bytes``): hashed while read, parsed from the same
    bytes, read from disk once."""
    try:
        st = os.stat(path)  # (one stat: ``Path.is_file`` before it was a second)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        if st.st_size <= HOLD_MAX_BYTES:
            data = _read_whole(path, st.st_size)
            h.update(data)
            hold_source_bytes(path, data)
        else:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        if len(_FILE_HASHES) > 4096:
            _FILE_HASHES.clear()
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def _fingerprint(adapter: Adapter, unit: Unit, ctx: IngestContext) -> str:
    """What makes a unit "already stored": adapter and version, the unit, its bytes and its extras,
    the patient namespace and the options the adapter reads (``Adapter.option_names``), keyed with
    the store's secret (the unit's path is part of it and must not be recoverable). The default
    namespace and no options add nothing, so stores written before they counted keep their fingerprints."""
    h = hashlib.sha256()
    h.update(f"{adapter.name}\x1f{adapter.version}\x1f{unit.source_id}\x1f".encode())
    digest = None if unit.virtual else _file_sha256(unit.path)
    if digest is not None:
        h.update(digest.encode())
    extra = unit.extra
    h.update(b"{}" if type(extra) is dict and not extra else canonical_json(extra).encode())
    names = adapter.option_names
    options = {k: str(v) for k, v in ctx.options.items() if names is None or k in names}
    if options or ctx.namespace != "default":
        h.update(canonical_json({"namespace": ctx.namespace, "options": options}).encode())
    return ctx.deid.keyed("source", h.hexdigest())


_ITEM_FIELD_NAMES = frozenset(ITEM_FIELDS)
_NO_FIELDS = dict.fromkeys(ITEM_FIELDS)  # every item column, None until an item sets it


class _Batch:
    """Rows waiting for one transaction."""

    def __init__(self, store: Store, run_id: str, deid: Deidentifier):
        self.store = store
        self.run_id = run_id
        self.deid = deid
        self.items: list[dict[str, Any]] = []
        self.patients: dict[str, dict[str, Any]] = {}
        self.studies: dict[str, dict[str, Any]] = {}
        self.sources: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def add_unit(self, adapter: Adapter, unit: Unit, fingerprint: str, items: list[Item],
                 known: Iterable[str] = ()) -> None:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        source_path = self.deid.display_path(unit.path, unit.root, tuple(known))
        unit_id = self.deid.unit_id(unit.source_id)
        rows = self.item_rows(adapter, items, source_path, unit_id, now, {}, self.patients, self.studies)
        self.items.extend(rows)
        self.sources.append(self.source_row(adapter, fingerprint, unit_id, source_path, len(rows), now))

    def source_row(self, adapter: Adapter, fingerprint: str, unit_id: str, source_path: str, n_items: int,
                   now: dt.datetime) -> dict[str, Any]:
        return {"source_id": fingerprint, "unit_id": unit_id, "source_path": source_path,
                "raw_sha256": fingerprint, "adapter": adapter.name, "adapter_version": adapter.version,
                "n_items": n_items, "run_id": self.run_id, "done_at": now}

    def item_rows(self, adapter: Adapter, items: list[Item], source_path: str, unit_id: str, now: dt.datetime,
                  ids_by_ref: dict[str, str], patients: dict[str, dict[str, Any]],
                  studies: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """The catalog rows of a unit's items (their blobs written), its patients and studies merged
        into ``patients`` / ``studies``; ``ids_by_ref`` collects the unit's refs (links resolve
        against it: a streamed unit's links must follow their refs)."""
        rows = []
        for it in items:
            Modality(it.modality)  # validates
            chash = it.content_hash()
            iid = it.item_id(chash)
            if it.ref:
                ids_by_ref[it.ref] = iid
            rel = None
            if it.blob is not None:
                rel = self.store.put_blob(it.blob, chash, it.blob_ext, keep=it.read_back)
            unknown = it.fields.keys() - _ITEM_FIELD_NAMES
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
                **_NO_FIELDS,
                **it.fields,
                "labels": canonical_json(it.labels) if it.labels else None,
                "meta": canonical_json(it.meta) if it.meta else None,
                "source_path": source_path,
                "source_key": it.source_key,
                "unit_id": unit_id,
                "adapter": adapter.name,
                "adapter_version": adapter.version,
                "ingested_at": now,
                "run_id": self.run_id,
                "_link_ref": it.link_ref,
            }
            rows.append(row)
            p = patients.setdefault(it.patient_id, {"namespace": None})
            p.update({k: v for k, v in it.patient_attrs.items() if v is not None})
            if it.study_id:
                s = studies.setdefault(it.study_id, {"patient_id": it.patient_id})
                s.update({k: v for k, v in it.study_attrs.items() if v is not None})
        for row in rows:
            ref = row.pop("_link_ref")
            if ref is not None:
                if ref not in ids_by_ref:
                    raise IngestError(f"item links to {ref!r}, which this source does not contain")
                row["linked_item"] = ids_by_ref[ref]
        return rows

    def stream_unit(self, adapter: Adapter, unit: Unit, fingerprint: str, slices, report: "IngestReport",
                    known: Iterable[str]) -> int:
        """Store a unit given as slices of items (``Adapter.read_slices``, the first pass done: every
        raw patient key in ``known``): one slice joins the batch like any unit; more are inserted
        slice by slice in a transaction of their own (``Store.unit_writer``), after the batch waiting
        is committed, so memory holds a slice or two, never the whole unit. Returns its items."""
        first = next(slices, [])
        second = next(slices, None)
        if second is None:
            self.add_unit(adapter, unit, fingerprint, first, known)
            return len(first)
        try:
            self.flush(report)
        except Exception as exc:  # the batch's commit, not this unit: it ends the run as a flush does
            raise _BatchFailed() from exc
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        source_path = self.deid.display_path(unit.path, unit.root, tuple(known))
        unit_id = self.deid.unit_id(unit.source_id)
        writer = self.store.unit_writer(unit_id)
        pending = [second, first]
        del first, second
        n, ids_by_ref = 0, {}
        try:
            while True:
                items = pending.pop() if pending else next(slices, None)
                if items is None:
                    break
                patients: dict[str, dict[str, Any]] = {}
                studies: dict[str, dict[str, Any]] = {}
                rows = self.item_rows(adapter, items, source_path, unit_id, now, ids_by_ref, patients, studies)
                writer.add(rows, patients, studies)
                n += len(rows)
                del rows, items
            added, replaced = writer.commit(self.source_row(adapter, fingerprint, unit_id, source_path, n, now))
        finally:
            writer.rollback()  # (nothing once committed)
        report.n_items_added += added
        report.n_items_replaced += replaced
        return n

    def add_error(self, path: str, unit_id: str | None, adapter: str, reason: str, kind: str) -> None:
        self.errors.append({"run_id": self.run_id, "source_path": path, "unit_id": unit_id, "adapter": adapter,
                            "reason": reason, "kind": kind,
                            "at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)})

    def due(self) -> bool:
        return len(self.items) >= 4000 or len(self.sources) >= 1024 or time.monotonic() - self.started > 2.0

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


def _init_worker(secret: bytes, keep_phi: bool, namespace: str, options: dict[str, Any], forced: bool) -> None:
    """A reader process: its own adapters and a context without the store (only the main process
    writes; readers never open the catalog)."""
    _WORKER["adapters"] = _adapter_instances([])
    _WORKER["ctx"] = IngestContext(store=None, deid=Deidentifier(secret, keep_phi), namespace=namespace,
                                   options=options, forced=forced)


def _describe(exc: BaseException) -> tuple[str, str, str | None]:
    """An exception as (kind, message, quoted cause): kind ``skip`` (not a data file), ``error`` (the
    adapter's own IngestError) or ``unexpected`` (any other exception: a reader's bug). It crosses
    processes (not every exception pickles) and becomes the report's reason (``_render``)."""
    if isinstance(exc, _Failed):
        return exc.err
    if isinstance(exc, StoreFullError):  # not the file's fault nor a reader's bug: say what happened
        return "error", exc.strerror, None
    if isinstance(exc, NotADataFile):
        return "skip", str(exc), None
    if isinstance(exc, IngestError):
        cause = exc.__cause__
        quoted_cause = str(cause) if cause is not None and not isinstance(cause, (IngestError, NotADataFile)) else None
        return "error", str(exc), quoted_cause or None
    return "unexpected", str(exc) or exc.__class__.__name__, None


_Read = tuple  # (items or None, error description or None, warnings, raw patient keys seen)


def _read_unit(adapter: Adapter, unit: Unit, ctx: IngestContext) -> _Read:
    """(items, None, warnings, ids), or (None, the failure described, ...): a bad unit never stops the batch."""
    ctx.warnings, ctx.seen_ids = [], set()
    try:
        return list(adapter.read(unit, ctx)), None, ctx.warnings, ctx.seen_ids
    except Exception as exc:
        return None, _describe(exc), ctx.warnings, ctx.seen_ids


def _stream(adapter: Adapter, unit: Unit, fp: str, ctx: IngestContext, batch: _Batch, report: IngestReport):
    """Read and store a streamed unit here, in the writer: (items, error or None, warnings, raw
    patient keys). Its first pass (``read_slices`` up to its first slice) finds every
    error of a bad unit before anything is stored; an error later rolls the unit's transaction back."""
    ctx.warnings, ctx.seen_ids = [], set()
    try:  # (the keys are all in ctx.seen_ids once the first slice is taken)
        n = batch.stream_unit(adapter, unit, fp, adapter.read_slices(unit, ctx), report, ctx.seen_ids)
        return n, None, ctx.warnings, ctx.seen_ids
    except _BatchFailed as exc:
        raise exc.__cause__ from None
    except Exception as exc:  # a bad unit never stops the batch
        return 0, _describe(exc), ctx.warnings, ctx.seen_ids


class _BatchFailed(Exception):
    """The commit of the batch waiting before a streamed unit failed (not the unit's fault)."""


def _read_in_worker(adapter_name: str, unit: Unit) -> _Read:
    return _read_unit(_WORKER["adapters"][adapter_name], unit, _WORKER["ctx"])


def _read_in_ray_task(setup: tuple, adapter_name: str, unit: Unit) -> _Read:
    """A Ray task: the worker process sets its adapters and context up once per run (``setup`` is
    ``_init_worker``'s arguments), then reads the unit as a local reader process would."""
    if _WORKER.get("setup") != setup:
        _init_worker(*setup)
        _WORKER["setup"] = setup
    return _read_in_worker(adapter_name, unit)


def _read_all(work: Iterable[tuple[Adapter, Unit]], ctx: IngestContext, known: set[str], workers: int,
              engine: Engine = LOCAL, small: bool = False):
    """Yield (adapter, unit, fingerprint, read) in the order of ``work``; ``read`` is None for a unit
    already stored (its fingerprint in ``known`` when it is reached), else (items, error, warnings,
    raw patient keys) as ``_read_unit`` gives it.

    Units are read here (``small``: too few units for reader processes to pay), by ``workers``
    reader processes, or (``engine`` Ray) by Ray tasks; in each case at most a bounded window of read
    units waits for the writer, in order, and ``work`` is taken as it comes (it may be a generator)."""
    def fingerprint(adapter, unit):
        try:
            return _fingerprint(adapter, unit, ctx), None
        except Exception as exc:
            return None, _describe(exc)

    setup = (ctx.deid.secret, ctx.deid.keep_phi, ctx.namespace, ctx.options, ctx.forced)
    if engine.is_ray:
        tasks = engine.tasks(_read_in_ray_task, setup)
        yield from _windowed(work, known, fingerprint, lambda a, u: tasks.submit(a.name, u), 4 * engine.cpus())
        return
    if workers < 2 or small:
        for adapter, unit in work:
            fp, err = fingerprint(adapter, unit)
            if err:
                yield adapter, unit, fp, (None, err, [], set())
            elif fp in known:
                yield adapter, unit, fp, None
            else:
                yield adapter, unit, fp, STREAMED if _streams(adapter, unit) else _read_unit(adapter, unit, ctx)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=setup) as pool:
        yield from _windowed(work, known, fingerprint, lambda a, u: pool.submit(_read_in_worker, a.name, u),
                             4 * workers)


STREAMED = "streamed"  # a unit the writer reads itself, slice by slice (``Adapter.read_slices``)


STREAM_MIN_BYTES = 1 << 18  # a streaming adapter's unit this large on disk (gzip: an eighth) is read in the writer


def _streams(adapter: Adapter, unit: Unit) -> bool:
    """Whether the writer reads ``unit`` itself, slice by slice: only a unit of a streaming adapter
    (``Adapter.streams``) that is large enough for its items to matter in memory. A smaller one (a
    table of about one slice) is read like any unit, by reader processes or Ray tasks, so many small
    tables still parse in parallel; either way its items and the store are the same."""
    if not getattr(adapter, "streams", False):
        return False
    try:
        size = unit.path.stat().st_size
    except OSError:
        return True  # the writer reads it and reports what is wrong with it
    return size * (8 if unit.path.name.lower().endswith(".gz") else 1) >= STREAM_MIN_BYTES


def _windowed(work, known: set[str], fingerprint, submit, limit: int):
    """Submit the units not yet stored (``submit(adapter, unit)`` gives a future), yield in order,
    at most ``limit`` waiting."""
    from collections import deque

    window: deque = deque()  # (adapter, unit, fingerprint, future or None, error): bounded, in order

    def drain(limit: int):
        while len(window) > limit:
            adapter, unit, fp, fut, err = window.popleft()
            if fut is STREAMED:
                yield adapter, unit, fp, STREAMED
            elif fut is not None:
                yield adapter, unit, fp, fut.result()
            else:
                yield adapter, unit, fp, (None, err, [], set()) if err else None

    for adapter, unit in work:
        fp, err = fingerprint(adapter, unit)
        fut = None if err or fp in known else STREAMED if _streams(adapter, unit) else submit(adapter, unit)
        window.append((adapter, unit, fp, fut, err))
        yield from drain(limit)
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
    also_finish: tuple[str, ...] = (),
    engine: Engine = LOCAL,
) -> IngestReport:
    """Ingest files and folders into ``store`` (opened for writing). See the module docstring.

    Units are read (parsed, de-identified) by ``workers`` reader processes when there are many;
    this process alone writes blobs and commits, in the order of the work list. ``also_finish``
    names adapters whose ``finish`` step (derived items) runs even if no unit of theirs was read.
    With ``engine`` Ray, units are read (parsed, de-identified) by Ray tasks instead, and this process
    still alone writes and commits, in the same order: the store ends the same.
    """
    report = IngestReport()
    paths = [p if isinstance(p, Path) else Path(p) for p in paths]
    if fmt:
        ADAPTERS.get(fmt)  # an unknown name raises, listing the allowed formats
    adapters = _adapter_instances(report.warnings)
    if fmt and fmt not in adapters:
        raise IngestError(f"format {fmt!r} cannot be used: {'; '.join(report.warnings)}")
    forced = adapters[fmt] if fmt else None
    deid = store.deid
    ctx = IngestContext(store=store, deid=deid, namespace=namespace, options=options or {}, forced=bool(fmt))
    report.run_id = store.start_run(_stored_args(args, paths, deid))
    batch = _Batch(store, report.run_id, deid)
    workers = default_workers() if workers is None else workers
    used: dict[str, Adapter] = {}
    known: set[str] = set()  # the fingerprints stored of the chunk's units (refilled per chunk)
    planned = [0]  # units planned so far (the progress bar's total grows with the walk)
    chunks = _chunks(walk(paths, adapters, ctx, forced), ctx, report)
    queue = [next(chunks, ([], []))]
    # (fewer entries than a chunk: the walk is over and the run is known, maybe too small for readers)
    small = len(queue[0][0]) + len(queue[0][1]) < PLAN_CHUNK and len(queue[0][0]) < PARALLEL_MIN_UNITS

    def work() -> Iterator[tuple[Adapter, Unit]]:
        """The units, chunk by chunk: each chunk's outcomes recorded, then which of its units are
        stored already asked of the catalog in one query (by unit id: no file is read for it), then
        its units handed on; nothing of a chunk is kept once the next is planned."""
        while queue:
            units, outcomes = queue.pop()
            for o in outcomes:
                unit = Unit(o.path, root=o.root)
                desc = o.reason if isinstance(o.reason, tuple) else (o.kind, o.reason, None)
                _record(report, batch, ctx, o.adapter, unit, desc, ())
            known.clear()
            known.update(store.stored_sources([deid.unit_id(u.source_id) for _a, u in units]))
            known.update(src["source_id"] for src in batch.sources)  # (a unit named twice: not read twice)
            planned[0] += len(units)
            advance(0, total=planned[0])
            yield from units
            del units, outcomes
            queue.extend(itertools.islice(chunks, 1))

    with progress_bar("ingest", total=None, unit="files", enabled=progress) as advance:
        for adapter, unit, fp, read in _read_all(work(), ctx, known, workers, engine, small):
            used[adapter.name] = adapter
            if read is None:
                report.n_already += 1
                report.count(adapter.name, "already_stored")
            else:
                if read is STREAMED:
                    n_items, err, warnings, seen = _stream(adapter, unit, fp, ctx, batch, report)
                else:
                    items, err, warnings, seen = read
                    n_items = 0
                    if err is None:
                        try:
                            batch.add_unit(adapter, unit, fp, items, seen)
                            n_items = len(items)
                        except Exception as exc:  # a bad unit never stops the batch
                            err = _describe(exc)
                report.warnings.extend(f"{unit.path}: {w}" for w in warnings)
                if err is None:
                    known.add(fp)
                    report.n_ok += 1
                    report.count(adapter.name, "ingested")
                    report.count(adapter.name, "items", n_items)
                else:
                    _record(report, batch, ctx, adapter.name, unit, err, seen)
            advance()
            if batch.due():
                batch.flush(report)
        batch.flush(report)
    for name in also_finish:
        used.setdefault(name, adapters[name])
    for adapter in used.values():
        for unit, items in _derived(adapter, ctx, report):  # one at a time: memory stays bounded
            try:
                batch.add_unit(adapter, unit, _fingerprint(adapter, unit, ctx), items)
                report.n_derived += 1
                report.count(adapter.name, "items", len(items))
            except Exception as exc:
                text = _render(_describe(exc), unit, ctx)[0]
                report.warnings.append(f"{adapter.name}: derived item from {unit.path} not stored: {text}")
            if batch.due():
                batch.flush(report)
        batch.flush(report)
    # Patients counted by the catalog, not held here (a set of every patient id grew with the data):
    # the distinct patients of the items this run stored, per adapter that ingested a unit.
    counts = store.patients_of_run(report.run_id)
    for name in sorted(n for n, c in report.per_adapter.items() if c["ingested"] and n in adapters):
        report.patients[name] = {"patients": counts.get(name, 0), "rule": adapters[name].patient_rule(ctx.options)}
    if report.n_items_replaced:
        store.sweep()  # blobs of replaced rows that no row references any more
    store.finish_run(report.run_id, report.n_units, report.n_already, report.n_failed, report.n_items_added,
                     report.n_not_data)
    return report


def _stored_args(args: str, paths: list[Path], deid: Deidentifier) -> str:
    """The command line as stored in the runs table: the paths the user gave reduced to their
    de-identified names (the full paths may name a patient; the user knows what they typed)."""
    if deid.keep_phi:
        return args or json.dumps([str(p) for p in paths])
    if not args:
        return json.dumps([deid.display_path(p, p) for p in paths])
    # One pass over the command line for all paths, longest first (a path per replace was quadratic:
    # minutes for a command naming 20,000 files).
    names = {str(p): deid.display_path(p, p) for p in paths if str(p)}
    if not names:
        return args
    pattern = re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)))
    return pattern.sub(lambda m: names[m.group(0)], args)


def _derived(adapter: Adapter, ctx: IngestContext, report: IngestReport):
    """The (unit, items) pairs of an adapter's ``finish``, taken one by one (a series volume at a
    time, not all of them in memory); a failure inside it is reported and ends it."""
    try:
        yield from adapter.finish(ctx)
    except Exception as exc:
        report.warnings.append(f"{adapter.name}: building derived items failed: {_render(_describe(exc), None, ctx)[0]}")


class _Failed(Exception):
    """A unit that failed in a reader process: carries its ``_describe`` triple."""

    def __init__(self, err: tuple[str, str, str | None]):
        super().__init__(err[1])
        self.err = err


def _record(report: IngestReport, batch: _Batch, ctx: IngestContext, adapter: str, unit: Unit,
            desc: tuple[str, str, str | None], seen: Iterable[str]) -> None:
    """Count a unit that did not ingest and log it: skipped (not a data file) or failed."""
    shown, stored = _render(desc, unit, ctx, tuple(seen))
    path = str(unit.path)
    stored_path = ctx.deid.display_path(unit.path, unit.root, tuple(seen))
    unit_id = ctx.deid.unit_id(unit.source_id)
    if desc[0] == "skip":
        report.n_not_data += 1
        report.count(adapter, "skipped")
        report.skipped.append((path, shown))
        batch.add_error(stored_path, unit_id, adapter, stored, "skipped")
        return
    report.n_failed += 1
    report.count(adapter, "failed")
    report.errors.append((path, shown))
    if desc[0] == "unexpected":
        report.unexpected.append(path)
    batch.add_error(stored_path, unit_id, adapter, stored, "failed")


# --- reasons: the tool's words as written, quoted data scrubbed, paths kept findable --------------

_QUOTED_RE = re.compile(f"{QUOTE_OPEN}(.*?){QUOTE_CLOSE}", re.DOTALL)
_PATHISH_RE = re.compile(r"[^\s'\"(),;:\[\]<>{}|`]+")
MAX_REASON = 500
# Python exception class names ("TypeError: ", "(ValueError)") are left out of reasons: they say
# nothing to a user. What the exception says stays.
_CLASS_NAME_RE = re.compile(r"\b(?:[a-z_]\w*\.)*[A-Z]\w*(?:Error|Exception)\b(?::\s*|\s*(?=\)))")


def _render(desc: tuple[str, str, str | None], unit: Unit | None, ctx: IngestContext,
            known: tuple[str, ...] = ()) -> tuple[str, str]:
    """(reason shown to the user, reason stored in the catalog) for a described failure.

    Only data is scrubbed: the parts an adapter quoted (``quoted``), the text of the library
    exception it was raised from, or the whole text of an unexpected exception. The tool's own words
    are never rewritten. In what the user is shown, file and folder names stay as they are on disk
    (the user must be able to find the file); in what is stored they are de-identified like the
    stored source path.
    """
    kind, text, cause = desc
    text = " ".join((text or "").split()) if kind != "unexpected" else " ".join(str(text).split())
    spans: list[tuple[int, int]] = []
    plain = _QUOTED_RE.sub(lambda m: m.group(1), text)
    if kind == "unexpected":
        spans = [(0, len(plain))]
    else:
        pos = 0
        for m in _QUOTED_RE.finditer(text):  # positions in ``plain``: markers removed before each match
            start = m.start() - pos
            spans.append((start, start + len(m.group(1))))
            pos += len(QUOTE_OPEN) + len(QUOTE_CLOSE)
        if cause:
            for candidate in (" ".join(cause.split()), " ".join(cause.strip().splitlines()[0].split()) if cause.strip() else ""):
                at = plain.find(candidate) if candidate else -1
                if at >= 0:
                    spans.append((at, at + len(candidate)))
                    break
    names = _protected_names(unit, plain)

    def render(for_store: bool) -> str:
        out, last = [], 0
        for a, b in sorted(set(spans)):
            if a < last:
                continue
            out.append(_own(plain[last:a], names, unit, ctx, known, for_store))
            out.append(_scrub_span(plain[a:b], names, unit, ctx, known, for_store))
            last = b
        out.append(_own(plain[last:], names, unit, ctx, known, for_store))
        result = _CLASS_NAME_RE.sub("", "".join(out)).replace("()", "").strip()
        if kind == "unexpected":
            adapter_text = f"unexpected error while reading ({result}); a reader bug: please report it"
            result = adapter_text
        return result[:MAX_REASON]

    return render(False), render(True)


def _protected_names(unit: Unit | None, text: str) -> list[str]:
    """Names of files and folders the text mentions that exist beside the unit (and the unit's own
    path and names): kept as they are when shown, de-identified when stored; longest first."""
    if unit is None:
        return []
    path = unit.path
    names = {str(path), str(path.parent), path.name, path.stem}
    try:
        parent = path.parent
        for token in _PATHISH_RE.findall(text):
            token = token.rstrip(".")
            base = token.rsplit("/", 1)[-1]
            if token.startswith(str(parent)) or (base and (parent / base).exists()):
                names.add(token)
                names.add(base)
    except OSError:
        pass
    return sorted((n for n in names if n and n not in (".", "/")), key=len, reverse=True)


def _stored_name(name: str, unit: Unit, ctx: IngestContext, known: tuple[str, ...]) -> str:
    if "/" in name:
        return ctx.deid.display_path(Path(name), unit.root, known)
    return ctx.deid.path_part(name, known)


def _swap_names(text: str, names: list[str]) -> tuple[str, list[str]]:
    """Replace every protected name by a placeholder that no scrubbing rule touches."""
    found: list[str] = []
    for name in names:
        if name in text:
            text = text.replace(name, f"\x00{len(found)}\x00")
            found.append(name)
    return text, found


def _unswap(text: str, found: list[str], unit: Unit | None, ctx: IngestContext, known: tuple[str, ...],
            for_store: bool) -> str:
    def back(m: re.Match) -> str:
        name = found[int(m.group(1))]
        return _stored_name(name, unit, ctx, known) if for_store and unit is not None else name
    return re.sub("\x00(\\d+)\x00", back, text)


def _own(text: str, names: list[str], unit: Unit | None, ctx: IngestContext, known: tuple[str, ...],
         for_store: bool) -> str:
    """The tool's own words: unchanged, except that stored reasons carry de-identified names."""
    if not for_store or not text:
        return text
    swapped, found = _swap_names(text, names)
    return _unswap(swapped, found, unit, ctx, known, True)


def _scrub_span(text: str, names: list[str], unit: Unit | None, ctx: IngestContext, known: tuple[str, ...],
                for_store: bool) -> str:
    """Quoted data: scrubbed of identifiers, with the file names it mentions protected."""
    swapped, found = _swap_names(text, names)
    return _unswap(ctx.scrub(swapped, known=list(known)), found, unit, ctx, known, for_store)
