"""Summarisation data in the ``openi-summ`` layout: JSON lines, each with ``inputs`` (the findings)
and, for scored files, ``target`` (the impression); ``idx`` is kept when present."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DraftDataError(ValueError):
    """A data file that cannot be read; the message names the file, line and field."""


@dataclass(frozen=True)
class Report:
    """One findings -> impression pair. ``id`` is unique within a knowledge base (``train:12``)."""

    id: str
    findings: str
    impression: str | None = None
    raw: dict[str, Any] | None = None  # the line as read (written back with the prediction)
    line: int = 0  # line number in its file


def read_jsonl(path: str | Path, split: str, need_target: bool = True
               ) -> tuple[list[Report], list[tuple[int, str]]]:
    """Reports of a JSON-lines file and the errors of its bad lines: (line number, "file:line: reason").

    A line without a string ``inputs`` (or, with ``need_target``, a string ``target``) is an error;
    the other lines are still read.
    """
    path = Path(path)
    if not path.is_file():
        raise DraftDataError(f"{path}: no such file; expected a JSON-lines file with 'inputs' (findings)"
                             + (" and 'target' (impression)" if need_target else ""))
    reports, errors = [], []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append((n, f"{path}:{n}: not valid JSON ({exc.msg})"))
                continue
            if not isinstance(rec, dict):
                errors.append((n, f"{path}:{n}: expected a JSON object, got {type(rec).__name__}"))
                continue
            findings = rec.get("inputs")
            if not isinstance(findings, str) or not findings.strip():
                errors.append((n, f"{path}:{n}: field 'inputs' must be a non-empty string (the findings), "
                                  f"got {findings!r:.60}"))
                continue
            target = rec.get("target")
            if need_target and (not isinstance(target, str) or not target.strip()):
                errors.append((n, f"{path}:{n}: field 'target' must be a non-empty string (the impression), "
                                  f"got {target!r:.60}"))
                continue
            key = rec.get("idx", n - 1)
            reports.append(Report(f"{split}:{key}", findings.strip(),
                                  target.strip() if isinstance(target, str) else None, rec, n))
    ids = [r.id for r in reports]
    if len(set(ids)) != len(ids):
        raise DraftDataError(f"{path}: 'idx' values repeat; each line needs its own idx (or none)")
    return reports, errors


def load_split(folder: str | Path, split: str) -> list[Report]:
    """``FOLDER/<split>.jsonl`` as reports; any bad line is an error here (training data must be clean)."""
    reports, errors = read_jsonl(Path(folder) / f"{split}.jsonl", split)
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise DraftDataError("; ".join(m for _, m in errors[:5]) + more)
    if not reports:
        raise DraftDataError(f"{Path(folder) / f'{split}.jsonl'}: no reports")
    return reports
