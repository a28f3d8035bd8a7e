"""Reports and notes: plain text files, and Open-i (Indiana University chest X-ray) XML reports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from ...store.catalog import Item, Modality
from ..base import Adapter, IngestContext, IngestError, Unit


class TextReportAdapter(Adapter):
    """A plain-text report or note (UTF-8). The patient is taken from a ``<patient>_...`` file
    name prefix or the parent folder name (option ``patient_from``: ``stem`` | ``prefix`` | ``parent``)."""

    name = "text"
    version = "1"
    extensions = (".txt",)
    description = "plain-text reports and notes (.txt)"

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        raw = unit.path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IngestError(f"not UTF-8 text (byte {exc.start}); expected a UTF-8 report") from exc
        if not text.strip():
            raise IngestError("empty report: expected some text")
        how = ctx.options.get("patient_from", "prefix")
        stem = unit.path.stem
        if how == "parent":
            raw_pid = unit.path.parent.name
        elif how == "stem":
            raw_pid = stem
        else:
            raw_pid = re.split(r"[_\-.]", stem, maxsplit=1)[0]
        pid = ctx.patient(raw_pid)
        clean = ctx.scrub(text, known=[raw_pid])
        yield Item(
            patient_id=pid,
            study_id=ctx.study(pid, stem),
            modality=Modality.TEXT,
            blob=clean.encode("utf-8"),
            blob_ext=".txt",
            fields={"format": "text", "text": clean},
        )
