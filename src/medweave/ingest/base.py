"""The adapter interface: one adapter per source format, each turning files into items.

An adapter is found by content (``sniff`` looks at the first bytes and the name) or by name
(``--format``). Some sources are whole folders with a known layout (a VQA set, images sorted into
class folders with a metadata CSV): ``claims_dir`` lets an adapter take such a folder as a whole.
Work is cut into *units* (usually one file); a unit either stores all its items or none, and a bad
unit is reported with its file and reason while the rest of the batch goes on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..registry import Registry
from ..store.catalog import Item, Store
from ..store.deid import Deidentifier


class IngestError(Exception):
    """A source that cannot be ingested. The message says what was expected; the runner adds the path."""


@dataclass
class Unit:
    """One piece of work: a file (and, for layouts, what goes with it)."""

    path: Path
    key: str = ""  # distinguishes several units of one file (rarely needed)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source_id(self) -> str:
        return str(self.path.resolve()) + (f"#{self.key}" if self.key else "")


@dataclass
class IngestContext:
    """What an adapter may use while reading: the store (read access), de-identification, options."""

    store: Store
    deid: Deidentifier
    namespace: str = "default"
    options: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # per-adapter scratch space for one run

    # Convenience wrappers so adapters never handle a raw identifier longer than needed.
    def patient(self, raw_id: str) -> str:
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

    def sniff(self, path: Path, head: bytes) -> float:
        """How sure (0..1) this adapter is that it reads ``path`` (``head`` = its first 4 KiB)."""
        return 0.5 if path.name.lower().endswith(self.extensions) else 0.0

    def claims_dir(self, path: Path) -> bool:
        """True when ``path`` is a whole data set in this adapter's layout."""
        return False

    def units(self, path: Path, ctx: IngestContext) -> Iterator[Unit]:
        """The units of a file or a claimed folder. Default: the file is one unit."""
        yield Unit(path)

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        """Yield the items of one unit; raise ``IngestError`` (or any exception) for bad input."""
        raise NotImplementedError

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
        "vqa": "medweave.ingest.adapters.vqa:VqaAdapter",
    }.items():
        if name not in ADAPTERS._paths:
            ADAPTERS.register(name, path)


register_builtin_adapters()
