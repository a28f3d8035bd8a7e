"""The patient-centric catalog: patients -> studies -> items, in one embedded DuckDB file, with a
content-addressed blob folder beside it.

Layout of a store directory::

    DIR/catalog.duckdb      patients, studies, items, sources, runs, errors
    DIR/blobs/packs/<name>.pack  blobs of up to PACK_MAX_BLOB bytes, appended one after another; a
                                  row's ``blob`` names its range: blobs/packs/<name>.pack@<offset>+<length>/<sha256><ext>
    DIR/blobs/ab/<sha256><ext>   larger blobs, one file each (stores written before 2026-12 hold every
                                  blob so, and older ones blobs/ab/cd/<sha256><ext>: rows name their
                                  blob's address, so every layout is read)
    DIR/blobs/.tmp/         blobs being written (swept at the next open for writing)
    DIR/secret.key          the pseudonymisation key (never leaves the store)

Every reader of a blob goes through ``blob_location`` / ``read_verified`` (``Store.read_blob``), which
open a file blob or a packed range alike.

Atomicity: a blob is written first; its row is inserted later in a transaction together with the
row marking its source as done, and the packs written to are fsync'd before that transaction
(``commit_batch``). A process killed in between leaves only blobs without rows (complete or partial
files, bytes at the end of a pack), and the next writer deletes those (``sweep``: a file or a pack no
row references is deleted, a pack is cut back to the end of the last range a row references). So no
row ever points at a missing or partial blob. A pack is only appended to by the one process writing
the store, and never after that process closes it; the ranges of rows replaced later (a changed
source) stay in their pack as dead bytes (``verify`` counts them: ``VerifyReport.dead_bytes``) until
no row references the pack at all, or ``compact`` copies the pack's live blobs into a new pack, points
the rows at it in one transaction and deletes the old pack.

Integrity: a blob's name is the SHA-256 of its bytes. ``read_verified`` (used by every reader of a
blob: ``Store.read_blob``, the encoders' loaders, the server) hashes what it reads and raises
``BlobIntegrityError`` naming the item when the bytes no longer match; ``Store.verify`` (``medweave
store verify``) checks every blob of a store, and with ``forget=True`` drops the damaged items and
their sources' done-marks so that the next ``medweave ingest`` of the same files restores them.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import itertools
import json
import os
import re
import threading
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import duckdb
import pandas as pd

from .deid import Deidentifier, load_or_create_secret

# DuckDB's memory limit for the catalog and the embedding cache. Its default is 80% of the machine's
# RAM, and its buffer cache keeps the blocks of the tables it has scanned up to that limit, so a
# process's memory would follow the catalog's size. Past this limit DuckDB evicts cached blocks and
# spills large sorts and joins to a folder beside the database file.
DUCKDB_MEMORY_LIMIT = "1GB"


# DuckDB gives every connection a process opens on one file the same database instance, and so the
# same memory limit: ``release_buffers`` lowers it to nothing for a moment, in which a query of any
# other connection to that file fails (OutOfMemoryException), and the limit's restore itself could
# fail and leave it at nothing (a catalog's cursors, ``connect_catalog``, share one instance too).
# So every connection medweave opens on a DuckDB file, with ``connect_duckdb`` or ``connect_catalog``,
# is counted in one registry per file, keyed by the file's real path (``_file_key``: symlinks
# resolved, as DuckDB resolves them when it shares an instance), and the blocks are handed back only
# by a file's one open connection, whichever way it was opened; opening another of either kind waits
# while they are (the same lock). A connection counts until it is closed (``close_duckdb``,
# ``close_catalog``) or is garbage.
_OPEN_LOCK = threading.RLock()


@dataclass
class _OpenFile:
    """What this process has open on one DuckDB file (``_FILES``)."""

    connections: int = 0  # every open connection to the file: connect_duckdb's and the catalog's cursors
    cursors: int = 0  # of those, the cursors of the catalog instance (``connect_catalog``)
    instance: "duckdb.DuckDBPyConnection | None" = None  # the in-memory instance the catalog is attached to
    read_only: bool = False  # the catalog instance's mode


_FILES: dict[str, _OpenFile] = {}  # the file's real path -> what is open on it
# connection -> (its file's key, the finalizer that forgets it once: at close, or when it is garbage)
_FILE_OF: "weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, tuple[str, weakref.finalize]]" = \
    weakref.WeakKeyDictionary()


def _file_key(path: str | Path) -> str:
    """The registry's key of a DuckDB file: its absolute path with symlinks resolved (a file opened by
    a symlink and by its real path is one file, and DuckDB gives both one instance)."""
    return os.path.realpath(path)


def _register(key: str, con: "duckdb.DuckDBPyConnection", cursor: bool) -> None:
    """Count ``con`` among the connections to file ``key`` (the caller holds ``_OPEN_LOCK``)."""
    entry = _FILES.setdefault(key, _OpenFile())
    entry.connections += 1
    entry.cursors += cursor
    _FILE_OF[con] = (key, weakref.finalize(con, _forget, key, cursor))


def _forget(key: str, cursor: bool) -> None:
    """A connection to file ``key`` closed (or garbage): it no longer counts; the catalog instance
    closes with its last cursor (and the file's lock is released)."""
    with _OPEN_LOCK:
        entry = _FILES.get(key)
        if entry is None:
            return
        entry.connections -= 1
        entry.cursors -= cursor
        if cursor and entry.cursors <= 0 and entry.instance is not None:
            instance, entry.instance = entry.instance, None
            instance.close()
        if entry.connections <= 0:
            del _FILES[key]


def connect_duckdb(path: str | Path, read_only: bool = False,
                   memory_limit: str = DUCKDB_MEMORY_LIMIT) -> "duckdb.DuckDBPyConnection":
    """A DuckDB connection to ``path`` with a memory limit (medweave's, ``DUCKDB_MEMORY_LIMIT``, by
    default), counted among the file's open connections until ``close_duckdb`` (or until it is
    garbage)."""
    key = _file_key(path)
    with _OPEN_LOCK:
        con = duckdb.connect(str(path), read_only=read_only, config={"memory_limit": memory_limit})
        _register(key, con, cursor=False)
    return con


def close_duckdb(con: "duckdb.DuckDBPyConnection") -> None:
    """Close a connection of ``connect_duckdb`` or ``connect_catalog`` (it no longer counts among its
    file's; a catalog's last one closes the catalog's instance)."""
    with _OPEN_LOCK:
        con.close()
        entry = _FILE_OF.pop(con, None)
        if entry is not None:
            entry[1]()  # _forget, once


# Rows of a row group in the catalog (DuckDB's default is 122,880). A transaction's inserted rows
# wait in memory (DuckDB's transaction-local storage, about 0.5 KB an item row) until full row
# groups of them are compressed and written to the file before the commit (DuckDB's "optimistic"
# write, by ``write_buffer_row_group_count`` groups at a time, 5 by default; the commit still makes
# them visible all at once, a rollback or a crash leaves the blocks unused). With the defaults, a
# table unit of 110,000 rows (the phantom's labs at 30,000 patients) held all its rows in memory
# until its one commit, 57 MB; with row groups of 16,384 written one at a time a transaction holds
# about two of them, whatever the table's size. Scans read more, smaller row groups (zone maps per
# group). A setting of the connection, not of the file: a catalog written with either size reads
# with the other, and DuckDB keeps the groups a file already has.
CATALOG_ROW_GROUP_SIZE = 16_384
_CATALOG_NAME = "catalog"  # the name the catalog file is attached under


def connect_catalog(path: str | Path, read_only: bool = False) -> "duckdb.DuckDBPyConnection":
    """A connection to the catalog file ``path``: attached to an in-memory DuckDB instance with the
    catalog's row-group size (``CATALOG_ROW_GROUP_SIZE``, an option of ``ATTACH`` only) and medweave's
    memory limit, as the database every statement uses. Connections to the same file in one process
    share one instance, as ``duckdb.connect`` shares its instances (DuckDB refuses a file attached
    twice); as there, a second connection must ask for the same mode. Close it with
    ``close_catalog``; the instance closes (and the file's lock is released) with the last one."""
    key = _file_key(path)
    with _OPEN_LOCK:
        entry = _FILES.get(key)
        instance = entry.instance if entry is not None else None
        if instance is not None and entry.read_only != read_only:
            raise duckdb.ConnectionException(
                f"{path}: already open in this process {'read-only' if entry.read_only else 'for writing'}; "
                "a second connection must use the same mode")
        if instance is None:
            instance = duckdb.connect(":memory:", config={"memory_limit": DUCKDB_MEMORY_LIMIT,
                                                          "temp_directory": key + ".tmp",
                                                          "write_buffer_row_group_count": 1})
            quoted = key.replace("'", "''")
            try:
                instance.execute(f"ATTACH '{quoted}' AS {_CATALOG_NAME} "
                                 f"({'READ_ONLY, ' if read_only else ''}ROW_GROUP_SIZE {int(CATALOG_ROW_GROUP_SIZE)})")
                instance.execute(f"USE {_CATALOG_NAME}")
                instance.execute("DETACH memory")  # the catalog is then every cursor's database (``con.cursor()``)
            except BaseException:
                instance.close()
                raise
            entry = _FILES.setdefault(key, _OpenFile())
            entry.instance, entry.read_only = instance, read_only
        con = instance.cursor()
        _register(key, con, cursor=True)
        return con


def close_catalog(con: "duckdb.DuckDBPyConnection") -> None:
    """Close a connection ``connect_catalog`` gave; the last one of a file closes its instance (the
    connection knows its file: ``close_duckdb``)."""
    close_duckdb(con)


def release_buffers(con: "duckdb.DuckDBPyConnection", limit: str = DUCKDB_MEMORY_LIMIT) -> bool:
    """Hand back the blocks DuckDB's buffer pool keeps after a query (``limit``: the connection's
    memory limit, restored). A lookup such as ``item_id IN (...)`` scans every row group of the
    columns it reads, and those blocks stay cached up to the limit: reading a 30,000-patient catalog
    chunk by chunk held 20-25 MB of them, and the embedding cache as much, growing with the files.
    Lowering the limit to nothing makes DuckDB evict every block no query holds (it then says it
    could not reach zero); the next query reads the blocks it needs from the file again.

    Only a file's one open connection does it (False otherwise, the blocks stay, under the limit):
    the limit is the whole instance's (see ``_OPEN_LOCK``), and every connection to the file counts,
    of ``connect_duckdb`` or ``connect_catalog``, by whatever path (a symlink) it was opened. A
    connection neither opened is not known (False). A connection's own cursors (``con.cursor()``)
    are not counted: do not release while one of them runs a query."""
    with _OPEN_LOCK:
        if _open_here(con) != 1:
            return False
        _evict(con, limit)
    return True


def _open_here(con: "duckdb.DuckDBPyConnection") -> int | None:
    """How many connections of this process share ``con``'s file (under ``_OPEN_LOCK``); None for a
    connection medweave did not open."""
    known = _FILE_OF.get(con)
    entry = _FILES.get(known[0]) if known is not None else None
    return entry.connections if entry is not None else None


def _evict(con: "duckdb.DuckDBPyConnection", limit: str) -> None:
    try:
        con.execute("SET memory_limit = '0B'")
    except duckdb.OutOfMemoryException:  # what is still pinned stays; everything else went
        pass
    finally:
        con.execute(f"SET memory_limit = '{limit}'")


# DuckDB's memory while one chunk's rows are looked up (``bounded_lookup``). A lookup such as
# ``item_id IN (...)`` reads the blocks of its columns in every row group, and the buffer pool keeps
# each block it read until the limit: at 30,000 phantom patients one chunk's lookup of encoding held
# 30 MB of the catalog's blocks until ``release_buffers`` (3 MB at 3,000), so the peak of a lookup
# followed the catalog's size. Under 16 MiB DuckDB evicts them as the scan goes (they are read from
# the file again when needed): 5 MB held, RSS +11 MB instead of +44 MB, in the same time. A query
# needs some memory of its own (pinned blocks per thread, its join and sort: about 4-8 MB on 2
# threads, more with more threads or a large result); one that does not fit runs again under the
# next limit, the last time under the connection's own.
LOOKUP_MEMORY_LIMITS = ("16MiB", "64MiB")


def bounded_lookup(con: "duckdb.DuckDBPyConnection", run: "Callable[[duckdb.DuckDBPyConnection], Any]",
                   limits: Iterable[str] = LOOKUP_MEMORY_LIMITS, restore: str = DUCKDB_MEMORY_LIMIT) -> Any:
    """``run(con)`` (a query and its fetch) with DuckDB's memory limit lowered to the first of
    ``limits`` while it runs, then the blocks it read handed back (``release_buffers``) and
    ``restore`` set again. A query that needs more (DuckDB raises OutOfMemoryException) runs again
    under the next limit, and last under ``restore``. As ``release_buffers``, only for a file's one
    open connection (the limit is the instance's); otherwise ``run(con)`` runs as it is, its blocks
    kept under the limit. Other connections wait to open while it runs (the same lock)."""
    with _OPEN_LOCK:
        if _open_here(con) != 1:
            return run(con)
        try:
            for limit in limits:
                try:
                    con.execute(f"SET memory_limit = '{limit}'")  # fails too if more is pinned now
                    return run(con)
                except duckdb.OutOfMemoryException:
                    continue
            con.execute(f"SET memory_limit = '{restore}'")
            return run(con)
        finally:
            _evict(con, restore)


class Modality(str, Enum):
    """What an item is. The cohort builder makes one presence-mask column per modality."""

    IMAGE = "image"  # a 2D picture: radiograph, photo, a single DICOM frame set shown as one image
    VOLUME = "volume"  # a 3D (or 4D) array: a DICOM series stacked by position, a NIfTI file
    TEXT = "text"  # a report or note
    TABLE = "table"  # a row of a wide table, or one observation of a long table
    SIGNAL = "signal"  # a multichannel time series: ECG, pulse, waveform
    QA = "qa"  # a question with its answer, linked to the image it asks about


# Structured item columns (besides ids, provenance, labels and meta). Adapters fill what they know.
ITEM_FIELDS: dict[str, str] = {
    "format": "VARCHAR",
    "dicom_modality": "VARCHAR",
    "body_part": "VARCHAR",
    "view_position": "VARCHAR",
    "pixel_spacing_x": "DOUBLE",
    "pixel_spacing_y": "DOUBLE",
    "slice_thickness": "DOUBLE",
    "rows": "INTEGER",
    "cols": "INTEGER",
    "frames": "INTEGER",
    "series_id": "VARCHAR",
    "position": "DOUBLE",
    "instance_number": "INTEGER",
    "sampling_rate": "DOUBLE",
    "n_channels": "INTEGER",
    "n_samples": "BIGINT",
    "channel_names": "VARCHAR",
    "time": "TIMESTAMP",
    "age": "DOUBLE",
    "code": "VARCHAR",
    "value_num": "DOUBLE",
    "value_text": "VARCHAR",
    "unit": "VARCHAR",
    "text": "VARCHAR",
    "answer": "VARCHAR",
    "answer_type": "VARCHAR",
    "question_type": "VARCHAR",
    "organ": "VARCHAR",
    "label": "VARCHAR",
    "split": "VARCHAR",
    "linked_item": "VARCHAR",
}

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS patients (
    patient_id VARCHAR PRIMARY KEY,
    namespace VARCHAR,
    sex VARCHAR,
    attrs JSON,
    first_seen TIMESTAMP
);
CREATE TABLE IF NOT EXISTS studies (
    study_id VARCHAR PRIMARY KEY,
    patient_id VARCHAR,
    study_date DATE,
    description VARCHAR,
    attrs JSON
);
CREATE TABLE IF NOT EXISTS items (
    item_id VARCHAR PRIMARY KEY,
    patient_id VARCHAR NOT NULL,
    study_id VARCHAR,
    modality VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    blob VARCHAR,
    bytes BIGINT,
    {", ".join(f"{k} {v}" for k, v in ITEM_FIELDS.items())},
    labels JSON,
    meta JSON,
    source_path VARCHAR,
    source_key VARCHAR,
    unit_id VARCHAR,
    adapter VARCHAR,
    adapter_version VARCHAR,
    ingested_at TIMESTAMP,
    run_id VARCHAR
);
CREATE TABLE IF NOT EXISTS sources (
    source_id VARCHAR PRIMARY KEY,
    unit_id VARCHAR,
    source_path VARCHAR,
    raw_sha256 VARCHAR,
    adapter VARCHAR,
    adapter_version VARCHAR,
    n_items INTEGER,
    run_id VARCHAR,
    done_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    args VARCHAR,
    n_sources INTEGER,
    n_skipped INTEGER,
    n_failed INTEGER,
    n_items_added INTEGER,
    n_not_data INTEGER
);
CREATE TABLE IF NOT EXISTS errors (
    run_id VARCHAR,
    source_path VARCHAR,
    adapter VARCHAR,
    reason VARCHAR,
    logged_at TIMESTAMP,
    unit_id VARCHAR,
    kind VARCHAR
);
"""
# Columns added after the first stores were written: added to an older catalog when opened for writing.
MIGRATIONS = [
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS n_not_data INTEGER",
    "ALTER TABLE errors ADD COLUMN IF NOT EXISTS unit_id VARCHAR",
    "ALTER TABLE errors ADD COLUMN IF NOT EXISTS kind VARCHAR",
]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobIntegrityError(RuntimeError):
    """A blob is missing, or its bytes no longer hash to its name. The message names the item."""

    def __init__(self, message: str, rel: str, item_id: str | None = None):
        super().__init__(message)
        self.rel = rel
        self.item_id = item_id


def _describe(rel: str, item_id: str | None, what: str) -> str:
    who = f"item {item_id}" if item_id else "a blob"
    return f"{who}{f' ({what})' if what else ''}: blob {rel}"


PACK_MAX_BLOB = 1 << 20  # blobs up to this size are appended to a pack; larger ones get a file each
PACK_MAX_BYTES = 1 << 30  # a pack is closed (and the next blob starts a new one) past this size
_PACKED_RE = re.compile(r"(blobs/packs/[0-9a-f]{32}(?:-[0-9]+)?\.pack)@([0-9]+)\+([0-9]+)/([^/]+)")
_PACKED_SQL = f"^{_PACKED_RE.pattern}$"  # the same address pattern for DuckDB's regexp_extract (RE2)
SWEEP_CHUNK = 50_000  # blob files on disk looked up in the catalog at a time by the sweep


def blob_location(root: str | Path, rel: str) -> tuple[Path, int, int | None]:
    """Where blob ``rel`` of store ``root`` lies: (file, offset, length), length None for a blob that
    is a whole file. The one place that knows both blob layouts (a file, a range of a pack)."""
    m = _PACKED_RE.fullmatch(rel)
    root = root if isinstance(root, Path) else Path(root)  # (a Path made again per blob cost more than the match)
    if m is None:
        return root / rel, 0, None
    return root / m.group(1), int(m.group(2)), int(m.group(3))


def _read_location(path: Path, offset: int, length: int | None) -> bytes:
    if length is None:
        return path.read_bytes()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        parts, got = [], 0
        while got < length:
            chunk = os.pread(fd, length - got, offset + got)
            if not chunk:
                break  # past the end of the pack: the short read fails the hash check
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def read_verified(root: str | Path, rel: str, item_id: str | None = None, what: str = "") -> bytes:
    """The bytes of blob ``rel`` under store ``root`` (a file, or a range of a pack), checked against
    the SHA-256 in its name.

    Raises ``BlobIntegrityError`` (naming the item, the blob and what to do) when the file is missing
    or its bytes no longer match: a damaged blob is never silently decoded into wrong pixels or text.
    """
    path, offset, length = blob_location(root, rel)
    expected = rel.rstrip("/").rsplit("/", 1)[-1][:64]  # (the name: Path(rel).name, without a Path)
    try:
        data = _read_location(path, offset, length)
    except FileNotFoundError:
        raise BlobIntegrityError(
            f"{_describe(rel, item_id, what)} is missing from the store {root}; run `medweave store verify "
            f"--store {root}` to check the whole store", rel, item_id) from None
    if length is not None and len(data) < length:
        raise BlobIntegrityError(
            f"{_describe(rel, item_id, what)} is cut short: its pack {path.name} holds {len(data):,} of its "
            f"{length:,} bytes; run `medweave store verify --store {root} --forget-damaged`, then ingest its "
            f"source again", rel, item_id)
    if _SHA256_HEX.fullmatch(expected):
        got = sha256_bytes(data)
        if got != expected:
            raise BlobIntegrityError(
                f"{_describe(rel, item_id, what)} is damaged: its {len(data):,} bytes hash to {got[:16]}..., "
                f"not to {expected[:16]}... as when it was stored (the file was changed or the disk corrupted "
                f"it); run `medweave store verify --store {root} --forget-damaged`, then ingest its source "
                f"again", rel, item_id)
    return data


def _datasync(fd: int) -> None:
    """The file's data and size on disk (``fdatasync`` where there is one: no timestamps)."""
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


class StoreFullError(OSError):
    """The store's disk is full, or a file-size limit was reached, while writing a blob."""


_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


class StoreLockedError(duckdb.IOException):
    """Another process holds the store's catalog (DuckDB's lock on ``catalog.duckdb``): one writer at
    a time, and no writer while another process reads."""


@dataclass
class CompactReport:
    """What ``Store.compact`` did: the packs it rewrote and what that freed."""

    packs: int = 0  # packs in the store before
    rewritten: list[str] = field(default_factory=list)  # packs whose live blobs were copied out, then deleted
    skipped: list[dict[str, Any]] = field(default_factory=list)  # pack, reason (a damaged blob: left as it is)
    blobs_moved: int = 0  # live ranges copied into the new pack(s)
    rows_updated: int = 0  # item rows that now name a range of a new pack
    bytes_before: int = 0  # size of the rewritten packs
    bytes_after: int = 0  # what their live blobs take in the new pack(s)

    @property
    def reclaimed(self) -> int:
        return self.bytes_before - self.bytes_after


@dataclass
class VerifyReport:
    """What ``Store.verify`` found: counts, and one entry per problem."""

    blobs: int = 0
    bytes: int = 0
    damaged: list[dict[str, Any]] = field(default_factory=list)  # item_id, modality, source_path, blob, reason
    orphans: list[str] = field(default_factory=list)  # blob files (and packs) that no row references
    dead_bytes: int = 0  # bytes of packs that no row references (ranges of replaced rows; removed with the pack)
    forgotten_items: int = 0
    forgotten_sources: int = 0

    @property
    def ok(self) -> bool:
        return not self.damaged


# The encoder ``json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))`` builds on every
# call, built once: the same text (a few times a file; building it was a third of the call).
_CANONICAL = json.JSONEncoder(sort_keys=True, default=str, separators=(",", ":"))


def canonical_json(obj: Any) -> str:
    return _CANONICAL.encode(obj)


@dataclass
class Item:
    """An item ready to be stored. ``blob`` holds the (de-identified) bytes, or None when the whole
    content is in the row (a table observation, a question)."""

    patient_id: str
    modality: Modality | str
    study_id: str | None = None
    blob: bytes | None = None
    blob_ext: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    source_key: str = ""  # which part of the source this item came from (row 12, frame 3, ...)
    ref: str | None = None  # a name other items of the same source can link to
    link_ref: str | None = None  # the ``ref`` of the item this one belongs to (question -> image)
    patient_attrs: dict[str, Any] = field(default_factory=dict)
    study_attrs: dict[str, Any] = field(default_factory=dict)  # date, description, ...
    read_back: bool = False  # read again later in this run (a slice a series volume is stacked from)

    def __post_init__(self) -> None:
        # NUL bytes (DICOM padding, damaged files) have no place in a text column: removed
        for key, value in self.fields.items():
            if isinstance(value, str) and "\x00" in value:
                self.fields[key] = value.replace("\x00", "")

    def content_hash(self) -> str:
        if self.blob is not None:
            return sha256_bytes(self.blob)
        return sha256_bytes(
            canonical_json({"f": self.fields, "l": self.labels, "m": self.meta}).encode()
        )

    def item_id(self, content_hash: str) -> str:
        modality = Modality(self.modality).value
        key = canonical_json([modality, self.patient_id, self.study_id, content_hash, self.source_key])
        return sha256_bytes(key.encode())[:24]


def _columns(rows: list[dict[str, Any]]) -> tuple[Any, list[str]]:
    """Rows (dicts) as (an Arrow table, its column names), built column by column: much cheaper than
    a pandas frame built from dicts. NaN becomes NULL as it does through pandas. A column Arrow cannot
    type (values of mixed kinds) falls back to the pandas frame, which keeps them as objects."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = list(dict.fromkeys(k for row in rows for k in row))
    try:
        columns = {}
        for name in names:
            col = pa.array([row.get(name) for row in rows])
            if pa.types.is_floating(col.type) and pc.any(pc.is_nan(col)).as_py():
                col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
            columns[name] = col
        return pa.table(columns), names
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, OverflowError):
        df = pd.DataFrame(rows)
        return df, [str(c) for c in df.columns]


def _arrow_table(columns: dict[str, list]) -> Any:
    """Columns of text (or None) as an Arrow table for DuckDB to read: registering a pandas frame of a
    few dozen rows cost milliseconds a batch (the frame, then DuckDB's scan of object columns), about
    ten times an Arrow table's cost. Columns holding anything else go through pandas as before (DuckDB
    casts those values its own way)."""
    import pyarrow as pa

    if not all(v is None or type(v) is str for values in columns.values() for v in values):
        return pd.DataFrame(columns)
    return pa.table({name: pa.array(values, type=pa.string()) for name, values in columns.items()})


# Item rows a writing store commits between two DuckDB checkpoints (each followed by handing back
# DuckDB's cached blocks, ``release_buffers``). Between checkpoints DuckDB keeps in memory the rows
# committed since the last one (until its write-ahead log reaches 16 MB), the parts of the primary-key
# indexes inserted into (about 70 bytes a key, all of them by the end of a run), and the blocks every
# lookup scanned (each batch's replace check and done-mark lookup scan the unit-id columns): at 30,000
# phantom patients all three grew with the store. A checkpoint writes the rows and the indexes to the
# file, and the blocks are then dropped; the next batches read back what they need. About 0.15 s a
# checkpoint at 80,000-320,000 items (a synthetic catalog).
CHECKPOINT_ROWS = 16_384

# Addresses of the blobs packed lately that a repeat of the same content reuses. About 450 bytes
# each: 100,000 of them (the bound before) were 45 MB at 30,000 phantom patients, 8,192 are under 4 MB.
PACKED_REMEMBERED = 8192


class Store:
    """A store directory. Open it read-only for queries, or with ``write=True`` to ingest."""

    CATALOG = "catalog.duckdb"

    def __init__(self, root: str | Path, write: bool = False, keep_phi: bool = False):
        self.root = Path(root)
        self.write = write
        if write:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.blob_dir / ".tmp").mkdir(parents=True, exist_ok=True)
        elif not (self.root / self.CATALOG).exists():
            raise FileNotFoundError(
                f"{self.root}: no medweave store here (expected {self.CATALOG}); "
                f"create one with `medweave ingest PATH --store {self.root}`"
            )
        self._dirs: set[Path] = set()
        # The pack this process appends small blobs to (``put_blob``), and what it has written there
        self._pack_fd = -1
        self._pack_rel = ""
        self._pack_size = 0
        self._unsynced = False  # bytes appended to the open pack since its last fsync
        self._dir_unsynced = False  # a pack created since the packs folder's last fsync
        self._packed: dict[tuple[str, str], str] = {}  # (hash, ext) -> address, blobs packed since the last sweep
        # Bytes of blobs this process wrote (named by their hash as they were written), newest last and
        # bounded: a series is stacked from the slices just written without reading them back.
        self._fresh: OrderedDict[str, bytes] = OrderedDict()
        self._fresh_bytes = 0
        self._uncheckpointed = 0  # item rows committed since the last checkpoint (``_committed``)
        try:
            self.con = connect_catalog(self.root / self.CATALOG, read_only=not write)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            raise StoreLockedError(
                f"{self.root}: another process has the store open, so it cannot be opened "
                f"{'for writing' if write else 'to read'} (DuckDB's lock on {self.CATALOG}); wait for that "
                f"process to finish, then run this again. DuckDB says: {exc}") from None
        self._open = True
        if write:
            self.con.execute(SCHEMA)
            for sql in MIGRATIONS:
                self.con.execute(sql)
            self.deid = Deidentifier(load_or_create_secret(self.root / "secret.key"), keep_phi=keep_phi)
            self.sweep()

    # --- lifecycle --------------------------------------------------------------------------------
    @property
    def blob_dir(self) -> Path:
        return self.root / "blobs"

    def release_buffers(self) -> None:
        """Evict the catalog's cached DuckDB blocks (see ``release_buffers``); for a read-only store
        between chunks of a long read (cohort build, encoding, tabular features)."""
        release_buffers(self.con)

    def lookup(self, run: Callable[["duckdb.DuckDBPyConnection"], Any]) -> Any:
        """``run(self.con)`` (a lookup of one chunk's rows and its fetch) with DuckDB's blocks bounded
        while it runs and handed back after (``bounded_lookup``); for a read-only store's chunked reads."""
        return bounded_lookup(self.con, run)

    def _committed(self, rows: int) -> None:
        """After a commit of ``rows`` item rows: every ``CHECKPOINT_ROWS`` of them, a checkpoint, then
        DuckDB's blocks handed back (``release_buffers``: after a checkpoint no block holds rows that
        exist only in memory, so none is spilled to a temporary file). Outside any transaction; a
        checkpoint DuckDB refuses (another connection of the process in a transaction) waits for the
        next commit."""
        self._uncheckpointed += rows
        if self._uncheckpointed < CHECKPOINT_ROWS:
            return
        try:
            self.con.execute("CHECKPOINT")
        except duckdb.Error:
            return
        self._uncheckpointed = 0
        release_buffers(self.con)

    def close(self) -> None:
        self._close_pack()
        if self._open:
            self._open = False
            close_catalog(self.con)

    def __del__(self) -> None:
        # A store dropped without ``close`` (``Store(d).stats()``) lets its catalog go, as a DuckDB
        # connection dropped so closes: the instance shared by this process's connections to the file
        # is closed with its last one (``close_catalog``), so the file can be opened in another mode.
        if getattr(self, "_open", False):
            try:
                self.close()
            except Exception:
                pass

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sweep(self) -> int:
        """Delete partial blobs and blobs that no committed row references: files, packs no row
        references, and the end of a pack past its last referenced range (what a killed writer
        appended). Returns how many files were deleted or cut. The pack being written is closed
        first (the next blob starts a new one)."""
        self._close_pack()
        self._packed.clear()
        self._fresh.clear()
        self._fresh_bytes = 0
        removed = 0
        tmp = self.blob_dir / ".tmp"
        for p in tmp.glob("*"):
            p.unlink(missing_ok=True)
            removed += 1
        # Bounded by the chunk, not by the store: the catalog is asked which of SWEEP_CHUNK files on
        # disk a row names, and the packs' ends are added up by DuckDB (one row a pack comes back).
        # Holding every referenced address here cost about 75 MB at 326,000 items.
        files = self.blob_files()
        while chunk := list(itertools.islice(files, SWEEP_CHUNK)):
            rels = [sub.relative_to(self.root).as_posix() for sub in chunk]
            named = {r[0] for r in self.con.execute(
                "SELECT DISTINCT blob FROM items WHERE blob IN (SELECT unnest(?))", [rels]).fetchall()}
            for sub, rel in zip(chunk, rels):
                if rel not in named:
                    sub.unlink(missing_ok=True)
                    removed += 1
        ends, _ = self._pack_use(used=False)
        for pack in self.pack_files():
            end = ends.get(pack.relative_to(self.root).as_posix())
            if end is None:
                pack.unlink(missing_ok=True)
                removed += 1
            elif pack.stat().st_size > end:
                os.truncate(pack, end)
                removed += 1
        return removed

    def _pack_use(self, used: bool = True) -> tuple[dict[str, int], dict[str, int]]:
        """For every pack the catalog's rows name a range of: (end of its last range, bytes referenced,
        each range counted once; ``used=False``: ends only, {}). Computed by DuckDB from the rows'
        addresses (the same pattern as ``blob_location``): what comes back is one row a pack."""
        addresses = ("SELECT m.pack AS pack, CAST(m.off AS HUGEINT) AS off, CAST(m.len AS HUGEINT) AS len FROM "
                     "(SELECT regexp_extract(blob, ?, ['pack', 'off', 'len']) AS m FROM items "
                     "WHERE blob LIKE 'blobs/packs/%') WHERE m.pack <> ''")
        if used:  # a range named by several rows counts once
            sql = (f"SELECT pack, max(off + len), sum(len) FROM (SELECT pack, off, max(len) AS len FROM ({addresses}) "
                   "GROUP BY pack, off) GROUP BY pack")
        else:
            sql = f"SELECT pack, max(off + len), 0 FROM ({addresses}) GROUP BY pack"
        rows = self.con.execute(sql, [_PACKED_SQL]).fetchall()
        return {r[0]: int(r[1]) for r in rows}, ({r[0]: int(r[2]) for r in rows} if used else {})

    def pack_files(self) -> Iterator[Path]:
        """Every pack file of the store (``blobs/packs/*.pack``)."""
        yield from (p for p in (self.blob_dir / "packs").glob("*.pack") if p.is_file())

    # --- blobs -----------------------------------------------------------------------------------
    def blob_relpath(self, content_hash: str, ext: str) -> str:
        """One level of 256 folders: a second level (65,536 folders) made nearly every blob of a
        large ingest create a folder, which cost as much as writing the blob."""
        return f"blobs/{content_hash[:2]}/{content_hash}{ext}"

    def blob_files(self) -> Iterator[Path]:
        """Every blob file of the store, in either layout (``ab/<hash>`` and the older ``ab/cd/<hash>``)."""
        for sub in self.blob_dir.glob("??/*"):
            if sub.is_dir():
                yield from (p for p in sub.glob("*") if p.is_file())
            else:
                yield sub

    def put_blob(self, data: bytes, content_hash: str, ext: str, keep: bool = False) -> str:
        """Write a blob under its content hash and return its address (what a row's ``blob`` holds).

        A blob of up to ``PACK_MAX_BLOB`` bytes is appended to this process's pack (``_pack_blob``);
        a larger one gets a file of its own, a no-op when that file already exists. Written in place
        with exclusive create: a file interrupted half-way has no row yet (rows are committed after
        their blobs), and the sweep at the next open for writing deletes every blob without a row, so
        a partial blob can never be read through the catalog. With ``keep``, its bytes also stay in
        memory (bounded, ``FRESH_MAX_BYTES``) for ``read_blob`` in this process.
        """
        if len(data) <= PACK_MAX_BLOB:
            rel = self._pack_blob(data, content_hash, ext)
            if keep:
                self._remember(rel, data)
            return rel
        rel = self.blob_relpath(content_hash, ext)
        dest = self.root / rel
        parent = dest.parent
        if parent not in self._dirs:
            parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(parent)
        try:
            # os-level calls: a buffered file object cost as much as the write of a small blob
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as exc:
                if exc.errno not in _FULL_ERRNOS:
                    raise
                os.close(fd)
                fd = -1
                dest.unlink(missing_ok=True)  # no partial blob is left behind
                raise StoreFullError(
                    exc.errno, f"the store cannot take this file's data ({len(data):,} bytes): "
                    f"{os.strerror(exc.errno)} while writing {rel} under {self.root} (the disk is full or a "
                    "file-size limit was reached); nothing of it was stored: free space, then run the same "
                    "command again") from None
            finally:
                if fd >= 0:
                    os.close(fd)
        except FileExistsError:
            # The same content again. If the file there is damaged, put the good bytes back (through a
            # temporary name and a rename, so that a reader never sees a half-written blob).
            try:
                read_verified(self.root, rel)
            except BlobIntegrityError:
                tmp = self.blob_dir / ".tmp" / f"{content_hash}.{uuid.uuid4().hex}"
                tmp.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, dest)
        return rel

    def _pack_blob(self, data: bytes, content_hash: str, ext: str) -> str:
        """Append a blob to the pack this process writes (opening a new one when there is none or
        it is full) and return its address; the same content twice since the last sweep is stored
        once (unless the first copy no longer checks out: then it is appended again)."""
        known = self._packed.get((content_hash, ext))
        if known is not None and self._still_holds(known, data):
            return known
        if self._pack_fd < 0 or self._pack_size + len(data) > PACK_MAX_BYTES:
            self._open_pack(content_hash)
        offset = self._pack_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._pack_fd, view):]
        except OSError as exc:
            os.ftruncate(self._pack_fd, offset)  # no partial blob is left behind
            os.lseek(self._pack_fd, offset, os.SEEK_SET)
            if exc.errno not in _FULL_ERRNOS:
                raise
            raise StoreFullError(
                exc.errno, f"the store cannot take this file's data ({len(data):,} bytes): "
                f"{os.strerror(exc.errno)} while writing {self._pack_rel} under {self.root} (the disk is full or a "
                "file-size limit was reached); nothing of it was stored: free space, then run the same "
                "command again") from None
        self._pack_size = offset + len(data)
        self._unsynced = True
        rel = f"{self._pack_rel}@{offset}+{len(data)}/{content_hash}{ext}"
        if len(self._packed) >= PACKED_REMEMBERED:  # bounded: a repeat past this is stored twice, nothing worse
            self._packed.clear()
        self._packed[(content_hash, ext)] = rel
        return rel

    def _still_holds(self, rel: str, data: bytes) -> bool:
        """Whether the packed blob ``rel`` still holds ``data`` (the same content, stored again): its
        range read back and compared with the bytes in hand. Equal bytes are the very bytes its name
        hashes (``data`` hashed to it), so this is the check ``read_verified`` makes, without a second
        SHA-256 pass over the blob (a memory compare costs a fraction of one)."""
        path, offset, length = blob_location(self.root, rel)
        if length != len(data):
            return False
        try:
            return _read_location(path, offset, length) == data
        except FileNotFoundError:  # (the pack is gone: store the blob again, as a damaged copy is)
            return False

    def _open_pack(self, content_hash: str) -> None:
        """A new pack, named after its first blob (a counter added when that name is taken): the
        same writes in the same order give the same addresses."""
        self._close_pack()
        folder = self.blob_dir / "packs"
        if folder not in self._dirs:
            folder.mkdir(parents=True, exist_ok=True)
            self._dirs.add(folder)
        for n in range(1 << 20):
            rel = f"blobs/packs/{content_hash[:32]}{f'-{n}' if n else ''}.pack"
            try:
                self._pack_fd = os.open(self.root / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                        | getattr(os, "O_BINARY", 0), 0o666)
                break
            except FileExistsError:
                continue
        self._pack_rel, self._pack_size, self._unsynced, self._dir_unsynced = rel, 0, False, True

    def _close_pack(self) -> None:
        """Close the pack being written. A pack closed because it is full may hold blobs of rows
        not committed yet: what was appended since the last fsync is synced first."""
        if self._pack_fd >= 0:
            if self._unsynced:
                _datasync(self._pack_fd)
            os.close(self._pack_fd)
            self._pack_fd = -1
            self._unsynced = False

    def sync_blobs(self) -> None:
        """Sync what was appended to the open pack since the last call (its data and size:
        ``fdatasync``), and the packs folder when a pack was created: done before every commit, so
        that a committed row never names bytes still in flight."""
        if self._unsynced and self._pack_fd >= 0:
            _datasync(self._pack_fd)
            self._unsynced = False
        if self._dir_unsynced:
            folder = self.blob_dir / "packs"
            if hasattr(os, "O_DIRECTORY"):
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._dir_unsynced = False

    FRESH_MAX_BYTES = 32 << 20  # bytes of just-written blobs kept for reading back in this process

    def _remember(self, rel: str, data: bytes) -> None:
        if rel in self._fresh:
            self._fresh.move_to_end(rel)
            return
        self._fresh[rel] = data
        self._fresh_bytes += len(data)
        while self._fresh_bytes > self.FRESH_MAX_BYTES:
            self._fresh_bytes -= len(self._fresh.popitem(last=False)[1])

    def blob_path(self, rel: str) -> Path:
        """The file of a blob that is a file of its own; a packed blob has none (``read_blob``)."""
        path, _offset, length = blob_location(self.root, rel)
        if length is not None:
            raise ValueError(f"blob {rel} is a range of the pack {path}, not a file of its own: read it "
                             "with Store.read_blob")
        return path

    def read_blob(self, rel: str, item_id: str | None = None) -> bytes:
        """A blob's bytes, checked against its hash (``BlobIntegrityError`` naming the item if not).
        A blob this process wrote lately with ``keep`` comes from memory, once: those are the bytes
        its name was hashed from."""
        data = self._fresh.pop(rel, None)
        if data is not None:
            self._fresh_bytes -= len(data)
            return data
        return read_verified(self.root, rel, item_id)

    def verify(self, forget: bool = False, progress: Any = None) -> VerifyReport:
        """Check every blob the catalog references: present, and its bytes hashing to its name (and to
        the items' ``content_hash``). Also lists blob files no row references. With ``forget`` (needs
        a store opened for writing), damaged items are deleted with every item and done-mark of their
        sources, so that ingesting the same files again restores them."""
        rows = self.con.execute(
            "SELECT blob, list(item_id ORDER BY item_id), list(DISTINCT modality), list(DISTINCT source_path), "
            "list(DISTINCT content_hash), list(DISTINCT unit_id) FROM items WHERE blob IS NOT NULL GROUP BY blob "
            "ORDER BY blob").fetchall()
        report = VerifyReport()
        damaged_units: set[str] = set()
        for rel, item_ids, modalities, paths, hashes, units in (progress(rows) if progress else rows):
            report.blobs += 1
            try:
                data = read_verified(self.root, rel, item_ids[0], ", ".join(modalities))
                report.bytes += len(data)
                reason = None
                if any(h != Path(rel).name[:64] for h in hashes):
                    reason = f"items say content hash {hashes[0][:16]}..., the blob is named {Path(rel).name[:16]}..."
            except BlobIntegrityError as exc:
                reason = str(exc)
            if reason:
                for iid in item_ids:
                    report.damaged.append({"item_id": iid, "modality": ", ".join(modalities),
                                           "source_path": ", ".join(p for p in paths if p), "blob": rel,
                                           "reason": reason})
                damaged_units.update(u for u in units if u)
        referenced = {r[0] for r in rows}
        report.orphans = sorted(p.relative_to(self.root).as_posix() for p in self.blob_files()
                                if p.relative_to(self.root).as_posix() not in referenced)
        ends, used = self._pack_use()
        for pack in self.pack_files():
            rel = pack.relative_to(self.root).as_posix()
            if rel not in ends:
                report.orphans.append(rel)
            else:
                report.dead_bytes += max(0, pack.stat().st_size - used[rel])
        report.orphans.sort()
        if forget and report.damaged:
            if not self.write:
                raise ValueError(f"{self.root}: open the store for writing to forget damaged items")
            units = sorted(damaged_units)
            ids = sorted({r["item_id"] for r in report.damaged})
            cond = " OR ".join(c for c in (f"unit_id IN ({', '.join('?' for _ in units)})" if units else "",
                                            f"item_id IN ({', '.join('?' for _ in ids)})") if c)
            self.con.execute("BEGIN TRANSACTION")
            try:
                report.forgotten_items = self.con.execute(f"SELECT count(*) FROM items WHERE {cond}",
                                                          [*units, *ids]).fetchone()[0]
                self.con.execute(f"DELETE FROM items WHERE {cond}", [*units, *ids])
                if units:
                    marks = ", ".join("?" for _ in units)
                    report.forgotten_sources = self.con.execute(
                        f"SELECT count(*) FROM sources WHERE unit_id IN ({marks})", units).fetchone()[0]
                    self.con.execute(f"DELETE FROM sources WHERE unit_id IN ({marks})", units)
                self.con.execute("COMMIT")
            except Exception:
                self.con.execute("ROLLBACK")
                raise
            self.sweep()
        return report

    def compact(self, min_dead: float = 0.25, on_step: Any = None) -> CompactReport:
        """Rewrite the packs whose dead share (bytes no row references / pack size) is above
        ``min_dead``: their live blobs are copied (each read through ``read_verified``: hash checked)
        into new packs, which are ``fdatasync``'d with the packs folder; then every row naming a range
        of those packs is pointed at its new range in one transaction (checked: no row names an old
        pack after it); then the old packs are deleted. Needs the store open for writing (the catalog's
        lock: no other writer, no other reader). A crash at any point loses nothing: before the commit
        the rows still name the old packs, which are still whole (the new packs have no row, and the
        next open for writing deletes them, ``sweep``); after it they name the new packs, synced before
        it (an old pack left behind has no row and is deleted the same way). A pack holding a damaged
        blob is left as it is (``skipped``: run ``verify --forget-damaged``). ``on_step(step, pack)``
        is called after each blob copied (``"copied"``), after the sync (``"synced"``), inside the
        transaction before its commit (``"updated"``), after it (``"committed"``) and after each old
        pack deleted (``"removed"``)."""
        if not self.write:
            raise ValueError(f"{self.root}: open the store for writing to compact it")
        if not 0 <= min_dead < 1:
            raise ValueError(f"min_dead must be in [0, 1), got {min_dead!r}")
        step = on_step or (lambda *_: None)
        self.sweep()  # unreferenced packs and tails gone, no pack open, no address remembered
        referenced = [r[0] for r in self.con.execute(
            "SELECT DISTINCT blob FROM items WHERE blob LIKE 'blobs/packs/%'").fetchall()]
        ranges: dict[str, dict[int, str]] = {}  # pack -> offset -> one address of that range
        for rel in referenced:
            m = _PACKED_RE.fullmatch(rel)
            if m is not None:
                ranges.setdefault(m.group(1), {}).setdefault(int(m.group(2)), rel)
        _, used = self._pack_use()
        report = CompactReport()
        candidates = []
        for pack in sorted(self.pack_files()):
            report.packs += 1
            rel = pack.relative_to(self.root).as_posix()
            size = pack.stat().st_size
            if size and rel in used and (size - used[rel]) / size > min_dead:
                candidates.append((rel, size))
        remap: dict[str, str] = {}  # old address -> new address
        moved: list[tuple[str, int]] = []
        for pack, size in candidates:
            mine: dict[str, str] = {}
            try:
                for offset in sorted(ranges[pack]):
                    rel = ranges[pack][offset]
                    name = Path(rel).name
                    data = read_verified(self.root, rel)
                    mine[rel] = self._pack_blob(data, name[:64], name[64:])
                    step("copied", pack)
            except BlobIntegrityError as exc:
                report.skipped.append({"pack": pack, "reason": str(exc)})
                continue  # what was copied of it stays unreferenced in the new pack (dead bytes)
            remap.update(mine)
            moved.append((pack, size))
        if not remap:
            return report
        self.sync_blobs()  # the new packs' bytes, sizes and names on disk before any row names them
        self._close_pack()
        step("synced", None)
        # all addresses that name a moved range (the same range may be named by several addresses)
        full = {}
        moved_packs = {p for p, _ in moved}
        for rel in referenced:
            m = _PACKED_RE.fullmatch(rel)
            if m is not None and m.group(1) in moved_packs:
                full[rel] = remap[ranges[m.group(1)][int(m.group(2))]]
        import pyarrow as pa

        con = self.con
        con.register("_compact_remap", pa.table({"old": list(full), "new": list(full.values())}))
        con.execute("BEGIN TRANSACTION")
        try:
            report.rows_updated = con.execute(
                "UPDATE items SET blob = m.new FROM _compact_remap m WHERE items.blob = m.old").fetchone()[0]
            left = con.execute(
                "SELECT count(*) FROM items WHERE regexp_extract(blob, '^(blobs/packs/[^@]+)@', 1) IN "
                "(SELECT unnest(?))", [sorted(moved_packs)]).fetchone()[0]
            if left:
                raise RuntimeError(f"{self.root}: {left} row(s) still name a pack being compacted; nothing changed")
            step("updated", None)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("_compact_remap")
        step("committed", None)
        for pack, size in moved:
            (self.root / pack).unlink(missing_ok=True)
            report.rewritten.append(pack)
            report.bytes_before += size
            step("removed", pack)
        self._dir_unsynced = True
        self.sync_blobs()  # the deletions
        new_ranges = {blob_location(self.root, v) for v in remap.values()}  # (pack, offset, length), once each
        report.bytes_after = sum(length for _, _, length in new_ranges)
        report.blobs_moved = len(remap)
        return report

    # --- writing ---------------------------------------------------------------------------------
    def stored_sources(self, unit_ids: list[str]) -> set[str]:
        """The source fingerprints stored for these units (one query; what ingest checks a chunk of
        units against, instead of holding every fingerprint of the store)."""
        if not unit_ids:
            return set()
        return {r[0] for r in self.con.execute(
            "SELECT source_id FROM sources WHERE unit_id IN (SELECT unnest(?))", [unit_ids]).fetchall()}

    def patients_of_run(self, run_id: str) -> dict[str, int]:
        """{adapter: distinct patients of the items run ``run_id`` stored}. Counted adapter by
        adapter: one ``count(DISTINCT)`` grouped by adapter held every (adapter, patient) pair in one
        hash table, +31 MB of peak at 30,000 phantom patients against +22 MB so."""
        adapters = [r[0] for r in self.con.execute(
            "SELECT DISTINCT adapter FROM items WHERE run_id = ? ORDER BY 1", [run_id]).fetchall()]
        return {a: int(self.con.execute(
            "SELECT count(DISTINCT patient_id) FROM items WHERE run_id = ? AND adapter IS NOT DISTINCT FROM ?",
            [run_id, a]).fetchone()[0]) for a in adapters}

    def commit_batch(
        self,
        items: list[dict[str, Any]],
        patients: dict[str, dict[str, Any]],
        studies: dict[str, dict[str, Any]],
        sources: list[dict[str, Any]],
        errors: list[dict[str, Any]],
    ) -> tuple[int, int]:
        """Commit one batch in a single transaction: its patients, studies, items, the sources they
        came from, and errors. A source read again because its bytes changed *replaces* the items its
        earlier version gave (same ``unit_id``). Returns (new item ids added, rows of changed sources replaced)."""
        con = self.con
        self.sync_blobs()  # the blobs these rows name are on disk before the rows commit
        # First as plain inserts: DuckDB's conflict handling (INSERT OR IGNORE / OR REPLACE) costs
        # about three times a plain INSERT, and a batch of new files has no conflict. A batch that
        # has one (a key met before, or twice in the batch) fails that try as a whole, which is rolled
        # back and made again with the conflict clauses: the same rows either way.
        ids = [it["item_id"] for it in items]
        tries = (True, False) if len(set(ids)) == len(ids) else (False,)
        for plain in tries:
            con.execute("BEGIN TRANSACTION")
            try:
                old_ids = self._drop_replaced([src["unit_id"] for src in sources])
                inserted = self._insert_rows(items, patients, studies, plain)
                self._insert_sources(sources, errors, plain)
                con.execute("COMMIT")
                break
            except duckdb.ConstraintException:
                self._roll_back()
                if not plain:
                    raise
            except BaseException:
                self._roll_back()
                raise
        kept = len(old_ids & {it["item_id"] for it in items})
        self._committed(len(items))
        return inserted - kept, len(old_ids)

    def _roll_back(self) -> None:
        """Roll the open transaction back, and drop the batch tables a failed statement left
        registered (DuckDB refuses that inside an aborted transaction)."""
        self.con.execute("ROLLBACK")
        for name in ("_batch_items", "_batch_sources", "_batch_patients", "_batch_studies"):
            try:
                self.con.unregister(name)
            except duckdb.Error:
                pass

    def unit_writer(self, unit_id: str) -> "UnitWriter":
        """A transaction for one unit too large to hold whole: its rows are inserted slice by slice
        (``UnitWriter.add``) and committed with its source row at the end (``UnitWriter.commit``), so
        the unit is still all-or-nothing. See ``UnitWriter``."""
        return UnitWriter(self, unit_id)

    def _drop_replaced(self, unit_ids: list[str]) -> set[str]:
        """Inside a transaction: remove the rows (and source rows) of units read again; their item ids."""
        con = self.con
        old_ids: set[str] = set()
        # Only units already in the catalog can have rows to replace: asked of the catalog for these
        # units alone (a set of every unit id of the store, held for the run, grew with the data); a
        # batch of new units skips the deletes.
        asked = [u for u in unit_ids if u]
        units = [r[0] for r in con.execute(
            "SELECT unit_id FROM sources WHERE unit_id IN (SELECT unnest($1)) UNION "
            "SELECT DISTINCT unit_id FROM items WHERE unit_id IN (SELECT unnest($1))", [asked]).fetchall()] if asked else []
        if units:
            old_ids = {r[0] for r in con.execute(
                "SELECT item_id FROM items WHERE unit_id IN (SELECT unnest(?))", [units]).fetchall()}
            if old_ids:
                con.execute("DELETE FROM items WHERE unit_id IN (SELECT unnest(?))", [units])
            con.execute("DELETE FROM sources WHERE unit_id IN (SELECT unnest(?))", [units])
        return old_ids

    def _insert_rows(self, items: list[dict[str, Any]], patients: dict[str, dict[str, Any]],
                     studies: dict[str, dict[str, Any]], plain: bool = False) -> int:
        """Inside a transaction: patients and studies merged in, items inserted; the items inserted.
        An item already there is left as it is; with ``plain`` it raises ``duckdb.ConstraintException``
        instead (a plain INSERT: for rows known to be new, cheaper)."""
        con = self.con
        if patients:
            self._upsert_patients(patients)
        if studies:
            self._upsert_studies(studies)
        inserted = 0
        if items:
            table, cols = _columns(items)
            con.register("_batch_items", table)
            inserted = con.execute(
                f"INSERT {'' if plain else 'OR IGNORE '}INTO items ({', '.join(cols)}) "
                f"SELECT {', '.join(cols)} FROM _batch_items").fetchone()[0]
            con.unregister("_batch_items")  # (after a failure: by ``commit_batch``, once rolled back)
        return inserted

    def _insert_sources(self, sources: list[dict[str, Any]], errors: list[dict[str, Any]],
                        plain: bool = False) -> None:
        """Inside a transaction: source rows (one already there is replaced; with ``plain`` it raises
        ``duckdb.ConstraintException``) and error rows."""
        con = self.con
        if sources:
            table, cols = _columns(sources)
            con.register("_batch_sources", table)
            con.execute(f"INSERT {'' if plain else 'OR REPLACE '}INTO sources ({', '.join(cols)}) "
                        "SELECT * FROM _batch_sources")
            con.unregister("_batch_sources")
        if errors:
            con.executemany(
                "INSERT INTO errors (run_id, source_path, adapter, reason, logged_at, unit_id, kind) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [[e["run_id"], e["source_path"], e["adapter"], e["reason"], e["at"], e.get("unit_id"),
                  e.get("kind", "failed")] for e in errors],
            )

    def _upsert_patients(self, patients: dict[str, dict[str, Any]]) -> None:
        """Insert new patients and merge the attributes of known ones, in two set-based statements."""
        existing = {
            r[0]: (r[1], json.loads(r[2]) if r[2] else {})
            for r in self.con.execute(
                "SELECT patient_id, sex, attrs FROM patients WHERE patient_id IN (SELECT unnest(?))",
                [list(patients)],
            ).fetchall()
        }
        rows = {"patient_id": [], "namespace": [], "sex": [], "attrs": []}
        for pid, info in patients.items():
            sex, attrs = existing.get(pid, (None, {}))
            new_attrs = {k: v for k, v in info.items() if k not in ("sex", "namespace") and v is not None}
            rows["patient_id"].append(pid)
            rows["namespace"].append(info.get("namespace"))
            rows["sex"].append(info.get("sex") or sex)
            rows["attrs"].append(canonical_json({**attrs, **new_attrs}))
        self.con.register("_batch_patients", _arrow_table(rows))
        self.con.execute(
            "INSERT INTO patients SELECT patient_id, namespace, sex, attrs::JSON, now() FROM _batch_patients "
            "ON CONFLICT (patient_id) DO UPDATE SET sex = excluded.sex, attrs = excluded.attrs")
        self.con.unregister("_batch_patients")

    def _upsert_studies(self, studies: dict[str, dict[str, Any]]) -> None:
        rows = {"study_id": [], "patient_id": [], "study_date": [], "description": [], "attrs": []}
        for sid, info in studies.items():
            rows["study_id"].append(sid)
            rows["patient_id"].append(info["patient_id"])
            rows["study_date"].append(str(info["date"])[:10] if info.get("date") is not None else None)
            rows["description"].append(info.get("description"))
            rows["attrs"].append(canonical_json(
                {k: v for k, v in info.items() if k not in ("patient_id", "date", "description")}))
        self.con.register("_batch_studies", _arrow_table(rows))
        self.con.execute(
            "INSERT INTO studies SELECT study_id, patient_id, study_date::DATE, description, attrs::JSON "
            "FROM _batch_studies ON CONFLICT (study_id) DO UPDATE SET "
            "study_date = coalesce(excluded.study_date, studies.study_date), "
            "description = coalesce(excluded.description, studies.description)")
        self.con.unregister("_batch_studies")

    def start_run(self, args: str) -> str:
        run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.con.execute(
            "INSERT INTO runs (run_id, started_at, finished_at, args, n_sources, n_skipped, n_failed, "
            "n_items_added, n_not_data) VALUES (?, now(), NULL, ?, 0, 0, 0, 0, 0)", [run_id, args]
        )
        return run_id

    def finish_run(self, run_id: str, n_sources: int, n_skipped: int, n_failed: int, n_items: int,
                   n_not_data: int = 0) -> None:
        """Close a run: ``n_sources`` units in all, ``n_skipped`` of them already stored, ``n_failed``
        failed, ``n_not_data`` skipped as not data files; ``n_items`` new items."""
        self.con.execute(
            "UPDATE runs SET finished_at = now(), n_sources = ?, n_skipped = ?, n_failed = ?, n_items_added = ?, "
            "n_not_data = ? WHERE run_id = ?",
            [n_sources, n_skipped, n_failed, n_items, n_not_data, run_id],
        )

    def unit_id(self, path: str | Path, key: str = "") -> str:
        """The stored ``unit_id`` of a file (or of one member of it): find its items with
        ``store.items("unit_id = ?", [store.unit_id(path)])``. Needs the store's key."""
        deid = getattr(self, "deid", None) or Deidentifier(load_or_create_secret(self.root / "secret.key"))
        return deid.unit_id(str(Path(path).resolve()) + (f"#{key}" if key else ""))

    # --- reading ---------------------------------------------------------------------------------
    def items(self, where: str = "", params: Iterable[Any] = ()) -> pd.DataFrame:
        sql = "SELECT * FROM items" + (f" WHERE {where}" if where else "") + " ORDER BY item_id"
        return self.con.execute(sql, list(params)).df()

    def patients(self) -> pd.DataFrame:
        return self.con.execute("SELECT * FROM patients ORDER BY patient_id").df()

    def studies(self) -> pd.DataFrame:
        return self.con.execute("SELECT * FROM studies ORDER BY study_id").df()

    def stats(self, last_runs: int = 5) -> dict[str, Any]:
        q = lambda sql: self.con.execute(sql).fetchall()  # noqa: E731
        per_modality = {m: n for m, n in q("SELECT modality, count(*) FROM items GROUP BY 1 ORDER BY 1")}
        blob_bytes = q("SELECT coalesce(sum(bytes), 0) FROM (SELECT DISTINCT blob, bytes FROM items WHERE blob IS NOT NULL)")[0][0]
        run_cols = {r[0] for r in q("SELECT column_name FROM information_schema.columns WHERE table_name = 'runs'")}
        not_data = "n_not_data" if "n_not_data" in run_cols else "NULL AS n_not_data"
        runs = self.con.execute(
            "SELECT run_id, started_at, finished_at, args, n_sources, n_skipped AS n_already_stored, "
            f"{not_data}, n_failed, n_items_added FROM runs ORDER BY started_at DESC LIMIT {int(last_runs)}"
        ).df()
        run_ids = list(runs["run_id"])
        errs, skipped = self._recent_problems(run_ids)
        return {
            "store": str(self.root),
            "patients": q("SELECT count(*) FROM patients")[0][0],
            "studies": q("SELECT count(*) FROM studies")[0][0],
            "items": int(sum(per_modality.values())),
            "items_per_modality": per_modality,
            "bytes": int(blob_bytes),
            "sources": q("SELECT count(*) FROM sources")[0][0],
            "signals": self._signal_stats(),
            "last_runs": [
                {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}
                for r in runs.replace({pd.NaT: None}).to_dict("records")
            ],
            "errors": errs,
            "skipped": skipped,
        }

    def _signal_stats(self) -> dict[str, Any]:
        """Signals, their channels, hours of recording and annotation events (WFDB, EDF, WAV, DICOM
        waveforms alike: from the item columns and the ``annotations.count`` each signal records)."""
        n, channels, seconds, events = self.con.execute(
            "SELECT count(*), coalesce(sum(n_channels), 0), "
            "coalesce(sum(CASE WHEN sampling_rate > 0 THEN n_samples / sampling_rate END), 0), "
            "coalesce(sum(TRY_CAST(json_extract(meta, '$.annotations.count') AS BIGINT)), 0) "
            "FROM items WHERE modality = 'signal'").fetchone()
        return {"items": int(n), "channels": int(channels), "hours": round(float(seconds) / 3600, 3),
                "annotation_events": int(events)}

    def _recent_problems(self, run_ids: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Failures of the given runs, one entry per file (its latest reason, the number of runs it
        failed in), leaving out files that ingested since; and files skipped as not data, counted
        per reason (each file once)."""
        if not run_ids:
            return [], []
        cols = {r[0] for r in self.con.execute("SELECT column_name FROM information_schema.columns "
                                                "WHERE table_name = 'errors'").fetchall()}
        unit, kind = ("e.unit_id", "e.kind") if "kind" in cols else ("NULL", "NULL")  # a catalog of an older version
        df = self.con.execute(
            "SELECT e.run_id, e.source_path, e.adapter, e.reason, e.logged_at, "
            f"coalesce({unit}, e.source_path) AS key, coalesce({kind}, 'failed') AS kind, "
            f"EXISTS (SELECT 1 FROM sources s WHERE s.unit_id = {unit} AND s.done_at >= e.logged_at) AS fixed "
            "FROM errors e WHERE e.run_id IN (SELECT unnest(?)) ORDER BY e.logged_at", [run_ids]).df()
        errors, skipped = [], {}
        failed = df[(df["kind"] == "failed")]
        for key, g in failed.groupby("key", sort=False):
            last = g.iloc[-1]
            if bool(last["fixed"]):
                continue
            errors.append({"source_path": last["source_path"], "adapter": last["adapter"], "reason": last["reason"],
                           "runs": int(g["run_id"].nunique()), "run_id": last["run_id"]})
        errors.sort(key=lambda e: str(e["source_path"]))
        for reason, g in df[df["kind"] == "skipped"].groupby("reason", sort=True):
            skipped[reason] = int(g["key"].nunique())
        return errors, [{"reason": r, "files": n} for r, n in sorted(skipped.items(), key=lambda kv: -kv[1])]


class UnitWriter:
    """One unit's rows stored slice by slice inside one transaction (``Store.unit_writer``): what
    ``commit_batch`` does for a batch of units, for a unit too large to hold whole (a table of
    millions of rows). The rows of an earlier version of the unit are removed when it opens; ``add``
    inserts a slice (its patients and studies merged as a batch merges them, a later value over an
    earlier one); ``commit`` adds the source row and commits; ``rollback`` (or an error in ``add``
    or ``commit``) leaves the catalog as it was: none of the unit's rows, its earlier version kept."""

    def __init__(self, store: Store, unit_id: str):
        self.store, self.unit_id = store, unit_id
        store.con.execute("BEGIN TRANSACTION")
        self.open = True
        try:
            self.old_ids = store._drop_replaced([unit_id])
        except BaseException:
            self.rollback()
            raise
        self.inserted, self.kept = 0, set()

    def add(self, items: list[dict[str, Any]], patients: dict[str, dict[str, Any]],
            studies: dict[str, dict[str, Any]]) -> None:
        try:
            self.inserted += self.store._insert_rows(items, patients, studies)
        except BaseException:
            self.rollback()
            raise
        if self.old_ids:
            self.kept |= self.old_ids & {it["item_id"] for it in items}

    def commit(self, source: dict[str, Any]) -> tuple[int, int]:
        """Add the unit's source row and commit: (new item ids added, rows of its earlier version replaced)."""
        try:
            self.store._insert_sources([source], [])
            self.store.sync_blobs()  # the blobs these rows name are on disk before the rows commit
            self.store.con.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        self.open = False
        self.store._committed(self.inserted)
        return self.inserted - len(self.kept), len(self.old_ids)

    def rollback(self) -> None:
        if self.open:
            self.open = False
            self.store.con.execute("ROLLBACK")
