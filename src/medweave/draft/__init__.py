"""Writing with sources: impressions from findings, reports from pictures; every draft cites the
retrieved training items it rests on."""

from .data import DraftDataError, Report, load_split, read_jsonl
from .impression import DRAFTERS, Draft, ImpressionDrafter

__all__ = ["DRAFTERS", "Draft", "DraftDataError", "ImpressionDrafter", "Report", "load_split", "read_jsonl"]
