"""The patient-centric store: catalog (DuckDB), content-addressed blobs, provenance, de-identification."""

from .catalog import ITEM_FIELDS, Item, Modality, Store
from .deid import Deidentifier, scrub_text

__all__ = ["Store", "Item", "Modality", "ITEM_FIELDS", "Deidentifier", "scrub_text"]
