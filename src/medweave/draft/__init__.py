"""Writing with sources: impressions from findings, reports from pictures; every draft cites the
retrieved training items it rests on."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what the names below resolve to, imported only on first use
    from .data import DraftDataError, Report, load_split, read_jsonl
    from .impression import DRAFTERS, Draft, ImpressionDrafter

__getattr__, __dir__ = lazy_exports(__name__, {
    "DraftDataError": ".data", "Report": ".data", "load_split": ".data", "read_jsonl": ".data",
    "DRAFTERS": ".impression", "Draft": ".impression", "ImpressionDrafter": ".impression",
})
__all__ = [
    "DRAFTERS", "Draft", "DraftDataError", "ImpressionDrafter", "Report", "load_split", "read_jsonl",
]
