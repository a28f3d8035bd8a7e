"""Ingestion: one adapter per source format, a runner that walks paths and commits atomically."""

from .base import ADAPTERS, Adapter, IngestContext, IngestError, NotADataFile, Unit, quoted
from .runner import IngestReport, ingest

__all__ = ["ADAPTERS", "Adapter", "IngestContext", "IngestError", "NotADataFile", "Unit", "quoted",
           "IngestReport", "ingest"]
