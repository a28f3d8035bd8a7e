"""Reading a VQA question file (VQA-RAD / SLAKE / PathVQA JSON: a list of question records naming a
picture, beside an ``images/`` or ``imgs/`` folder) without the store: what the ingest adapter
(``medweave.ingest.adapters.vqa``), VQA training and the evaluation harness share. Light on purpose:
json and pathlib only, so that ``medweave eval run`` does not import pandas to read a question file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import IngestError

IMAGE_FOLDERS = ("images", "imgs")
IMAGE_KEYS = ("image_name", "img_name")
_HEAD_RE = re.compile(rb'^\s*\[\s*\{.*"(?:image_name|img_name)"', re.S)


def image_folder(parent: Path) -> Path | None:
    """The picture folder (``images/`` or ``imgs/``) in ``parent``, the question file's folder."""
    for name in IMAGE_FOLDERS:
        folder = parent / name
        if folder.is_dir():
            return folder
    return None


def looks_like_vqa(head: bytes) -> bool:
    """Whether the start of a JSON file is a list of records naming an image and a question."""
    return bool(_HEAD_RE.match(head)) and b'"question"' in head


def load_records(path: Path) -> list[dict[str, Any]]:
    """The question records of a VQA JSON file; IngestError when it is not such a list."""
    try:
        records = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IngestError(f"not valid JSON ({exc}); expected a list of question records") from exc
    except RecursionError:
        raise IngestError("JSON nested deeper than Python's parser can follow; expected a list of question "
                          "records") from None
    if not isinstance(records, list):
        raise IngestError(f"top level is a {type(records).__name__}; expected a list of question records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise IngestError(f"record {i} is a {type(rec).__name__}; expected an object")
        missing = [k for k in ("question", "answer") if k not in rec]
        if not any(k in rec for k in IMAGE_KEYS):
            missing.append(" or ".join(IMAGE_KEYS))
        if missing:
            raise IngestError(f"record {i} (qid {rec.get('qid')!r}) lacks {', '.join(missing)}")
    return records


def image_name(rec: dict[str, Any]) -> str:
    return str(next(rec[k] for k in IMAGE_KEYS if k in rec))
