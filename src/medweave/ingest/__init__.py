"""Ingestion: one adapter per source format, a runner that walks paths and commits atomically.

The names below are imported on first use (``medweave.lazy``): the store they need (pandas, DuckDB)
is not imported by a reader of one format, e.g. ``medweave.ingest.vqa_json`` for the evaluation harness."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .base import ADAPTERS, Adapter, IngestContext, IngestError, NotADataFile, Unit, quoted
    from .runner import IngestReport, ingest

__getattr__, __dir__ = lazy_exports(__name__, {
    "ADAPTERS": ".base", "Adapter": ".base", "IngestContext": ".base", "IngestError": ".base",
    "NotADataFile": ".base", "Unit": ".base", "quoted": ".base", "IngestReport": ".runner", "ingest": ".runner",
})
__all__ = ["ADAPTERS", "Adapter", "IngestContext", "IngestError", "NotADataFile", "Unit", "quoted",
           "IngestReport", "ingest"]
