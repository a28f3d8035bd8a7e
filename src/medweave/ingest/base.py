"""The adapter interface: one adapter per source format, each turning files into items.

An adapter is found by content (``sniff`` looks at the first bytes and the name) or by name
(``--format``). Some sources are whole folders with a known layout (a VQA set, images sorted into
class folders with a metadata CSV): ``claims_dir`` lets an adapter take such a folder as a whole.
Work is cut into *units* (usually one file); a unit either stores all its items or none, and a bad
unit is reported with its file and reason while the rest of the batch goes on.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..registry import Registry
from .errors import IngestError, NotADataFile  # noqa: F401  (re-exported: the adapters' errors)
from ..store.catalog import Item, Store
from ..store.deid import Deidentifier


QUOTE_OPEN, QUOTE_CLOSE = "\x02", "\x03"


def quoted(text: object) -> str:
    """Mark text inside an ``IngestError`` message as quoted data (a library's message, a value): the
    runner scrubs identifiers from marked parts only, never from the tool's own words or the paths."""
    return f"{QUOTE_OPEN}{text}{QUOTE_CLOSE}"


_RESOLVED_DIRS: dict[str, str] = {}  # absolute folder as given -> resolved (bounded)


def _resolved_file(path: Path) -> str:
    """``str(path.resolve())``, with the folder resolved once for all the files in it: a file that
    is not itself a link resolves to its resolved folder joined with its name."""
    text = os.fspath(path)
    head, tail = os.path.split(text)
    if tail in ("", ".", "..") or os.path.islink(text):
        return str(path.resolve())
    key = head if os.path.isabs(head) else os.path.join(os.getcwd(), head)
    folder = _RESOLVED_DIRS.get(key)
    if folder is None:
        folder = str(Path(key).resolve())
        if len(_RESOLVED_DIRS) >= 4096:
            _RESOLVED_DIRS.clear()
        _RESOLVED_DIRS[key] = folder
    return os.path.join(folder, tail)


# The bytes of the file the runner last fingerprinted (one file at most), so that an adapter reading
# the whole file parses the very bytes that were hashed, and each file is read from disk once.
_HELD: dict[str, bytes] = {}
HOLD_MAX_BYTES = 16 << 20  # larger files are hashed in chunks and read again by their adapter


def hold_source_bytes(path: Path, data: bytes) -> None:
    """Keep ``data`` (the whole content of ``path``, just hashed) for the adapter that reads it next."""
    _HELD.clear()
    if len(data) <= HOLD_MAX_BYTES:
        _HELD[os.fspath(path)] = data


def source_bytes(path: Path) -> bytes:
    """The content of ``path``: the bytes the runner fingerprinted it by when it holds them (handed
    over once: memory holds one file at most), else read from disk."""
    data = _HELD.pop(os.fspath(path), None)
    return data if data is not None else Path(path).read_bytes()


@dataclass
class Unit:
    """One piece of work: a file (and, for layouts, what goes with it)."""

    path: Path
    key: str = ""  # distinguishes several units of one file (rarely needed)
    extra: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None  # the path given to ``ingest`` that this unit was found under (set by the runner)
    # True: ``path`` is a name, not a file (a derived unit such as ``dicom-series:<uid>``): its
    # ``source_id`` is the name as it is, never resolved against the working folder.
    virtual: bool = False

    @property
    def source_id(self) -> str:
        """The unit's absolute, resolved path (and key), resolved once per unit (the runner asks for
        it twice; ``Path.resolve`` looks at every component of the path). A ``virtual`` unit's is its
        name (and key) as given, the same from any working folder."""
        if self.virtual:
            return os.fspath(self.path) + (f"#{self.key}" if self.key else "")
        cached = self.__dict__.get("_source_id")
        if cached is not None and cached[0] == (self.path, self.key):
            return cached[1]
        try:
            where = _resolved_file(self.path)
        except (OSError, RuntimeError):  # a link that loops: its absolute path names it well enough
            where = str(self.path.absolute())
        value = where + (f"#{self.key}" if self.key else "")
        self.__dict__["_source_id"] = ((self.path, self.key), value)
        return value


@dataclass
class IngestContext:
    """What an adapter may use while reading: the store (read access), de-identification, options."""

    store: Store
    deid: Deidentifier
    namespace: str = "default"
    options: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # per-adapter scratch space for one run
    forced: bool = False  # the user named the format (``--format``): read what a sniff would doubt
    # Filled while one unit is read, then taken by the runner: warnings for the report, and the raw
    # patient keys the unit used (so that its stored path can be scrubbed of them).
    warnings: list[str] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set)

    def warn(self, message: str) -> None:
        """A warning about the unit being read (it still ingests), shown in the ingest report."""
        self.warnings.append(message)

    # Convenience wrappers so adapters never handle a raw identifier longer than needed.
    def patient(self, raw_id: str) -> str:
        self.seen_ids.add(str(raw_id).strip())
        return self.deid.patient_id(self.namespace, str(raw_id))

    def study(self, patient_id: str, raw_study: str) -> str:
        return self.deid.study_id(patient_id, str(raw_study))

    def shift(self, patient_id: str, value: dt.date | dt.datetime | None):
        return self.deid.shift(patient_id, value)

    def scrub(self, text: str, known: tuple[str, ...] | list[str] = ()) -> str:
        return self.deid.scrub(text, known)


class Adapter:
    """Base class. Subclasses set ``name``, ``version``, ``extensions`` and implement ``read``."""

    name: str = ""
    version: str = "1"
    extensions: tuple[str, ...] = ()
    description: str = ""
    # The ``--option`` keys that change what ``read`` gives: their values are part of a unit's
    # fingerprint, so that ingesting again with another value reads again instead of saying
    # "already stored". None (a third-party adapter that does not say): every option counts.
    option_names: tuple[str, ...] | None = None

    def sniff(self, path: Path, head: bytes) -> float:
        """How sure (0..1) this adapter is that it reads ``path`` (``head`` = its first 4 KiB)."""
        return 0.5 if path.name.lower().endswith(self.extensions) else 0.0

    def patient_rule(self, options: dict[str, Any]) -> str:
        """How this adapter assigns items to patients, in words, for the ingest report."""
        return "from the patient identifier inside each file"

    def claims_dir(self, path: Path) -> bool:
        """True when ``path`` is a whole data set in this adapter's layout."""
        return False

    def units(self, path: Path, ctx: IngestContext) -> Iterator[Unit]:
        """The units of a file or a claimed folder. Default: the file is one unit."""
        yield Unit(path)

    # True: the runner reads this adapter's units itself, in the writing process, through
    # ``read_slices``, and stores a unit of several slices slice by slice in one transaction (memory
    # holds a slice, not the unit); False: ``read`` gives the unit's items, held whole until committed.
    streams: bool = False

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        """Yield the items of one unit; raise ``IngestError`` (or any exception) for bad input."""
        raise NotImplementedError

    def read_slices(self, unit: Unit, ctx: IngestContext) -> Iterator[list[Item]]:
        """(``streams`` adapters) The unit's items as lists, in order: every error of a bad unit should
        be raised before the first list (later ones roll the unit back), every raw patient key be in
        ``ctx.seen_ids`` once the first is taken, and an item that links (``link_ref``) come after the
        item it links to. Default: ``read``'s items as one slice."""
        yield list(self.read(unit, ctx))

    def finish(self, ctx: IngestContext) -> Iterator[tuple[Unit, list[Item]]]:
        """Called once after all units: derived items built from what is stored (e.g. volumes
        from DICOM slices). Yields (unit, items) pairs, each committed atomically."""
        return iter(())


ADAPTERS: Registry[type[Adapter]] = Registry("ingest format", "medweave.adapters")


def register_builtin_adapters() -> None:
    for name, path in {
        "dicom": "medweave.ingest.adapters.dicom:DicomAdapter",
        "nifti": "medweave.ingest.adapters.nifti:NiftiAdapter",
        "image": "medweave.ingest.adapters.image:ImageAdapter",
        "image-folder": "medweave.ingest.adapters.image:ImageFolderAdapter",
        "text": "medweave.ingest.adapters.report:TextReportAdapter",
        "openi": "medweave.ingest.adapters.report:OpenIAdapter",
        "csv": "medweave.ingest.adapters.table:CsvAdapter",
        "fhir": "medweave.ingest.adapters.fhir:FhirAdapter",
        "wfdb": "medweave.ingest.adapters.wfdb:WfdbAdapter",
        "edf": "medweave.ingest.adapters.biosignal:EdfAdapter",
        "wav": "medweave.ingest.adapters.biosignal:WavAdapter",
        "vqa": "medweave.ingest.adapters.vqa:VqaAdapter",
    }.items():
        if name not in ADAPTERS._paths:
            ADAPTERS.register(name, path)


register_builtin_adapters()
