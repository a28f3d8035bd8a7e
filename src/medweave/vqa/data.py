"""VQA sets in the VQA-RAD JSON layout: a list of question records (``image_name``, ``question``,
``answer``, ``answer_type``, ``question_type``, ``image_organ``) and a folder of pictures.

Reading reuses the ingest adapter's record checks; a bad file, field or picture raises
``VqaDataError`` naming it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ingest.errors import IngestError
from ..ingest.vqa_json import image_folder, image_name, load_records
from .normalize import is_yesno, normalize_answer

ANSWER_TYPES = ("CLOSED", "OPEN")
_TYPE_TYPOS = {"ATRIB": "ATTRIB", "PRSE": "PRES"}


def main_question_type(question_type: str) -> str:
    """The first of a set's question types ("PRES, POS" -> "PRES"), upper case, known typos fixed;
    "OTHER" when there is none."""
    first = str(question_type).split(",")[0].strip().upper() or "OTHER"
    return _TYPE_TYPOS.get(first, first)


class VqaDataError(ValueError):
    """A VQA file, field or picture that cannot be used; the message names it."""


@dataclass
class Question:
    """One question about one picture, with its reference answer when known."""

    question: str
    image: str
    answer: str = ""
    answer_type: str = ""
    question_type: str = ""
    organ: str = ""
    qid: object = None
    phrase_type: str = ""  # VQA-RAD: freeform, para (paraphrase) or frame (templated); '' when unknown

    @property
    def closed(self) -> bool:
        """The dataset's answer type is CLOSED (falls back to a yes/no reference when it has none)."""
        return self.answer_type == "CLOSED" if self.answer_type else is_yesno(self.answer)

    @property
    def norm_answer(self) -> str:
        return normalize_answer(self.answer)


@dataclass
class VqaSet:
    """Questions plus the folder holding their pictures."""

    questions: list[Question]
    images_dir: Path
    source: str = ""
    _hashes: dict[str, str] = field(default_factory=dict, repr=False)

    def image_path(self, name: str) -> Path:
        return self.images_dir / name

    def image_names(self) -> list[str]:
        return sorted({q.image for q in self.questions})

    def subset(self, idx) -> "VqaSet":
        return VqaSet([self.questions[int(i)] for i in idx], self.images_dir, self.source, self._hashes)


def _answer_type(rec: dict, i: int, path: Path) -> str:
    raw = str(rec.get("answer_type", "") or "").strip().upper()
    if raw and raw not in ANSWER_TYPES:
        raise VqaDataError(f"{path}: record {i} (qid {rec.get('qid')!r}): field answer_type is {raw!r}; "
                           f"allowed values: {', '.join(ANSWER_TYPES)}")
    return raw


def _question_type(rec: dict) -> str:
    """The first listed question type, upper case ("PRES, POS" -> "PRES")."""
    return str(rec.get("question_type", "") or "").split(",")[0].strip().upper()


def load_vqa(questions: str | Path, images: str | Path | None = None) -> VqaSet:
    """Read a question file (or a folder holding one ``*.json`` and ``images/``) and check every picture."""
    path = Path(questions)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json"))
        if len(files) != 1:
            raise VqaDataError(f"{path}: expected exactly one question JSON file in the folder, found "
                               f"{[p.name for p in files] or 'none'}")
        images = images or image_folder(path)
        path = files[0]
    if not path.is_file():
        raise VqaDataError(f"question file {path} not found")
    folder = Path(images) if images else image_folder(path.parent)
    if folder is None or not folder.is_dir():
        raise VqaDataError(f"{path}: picture folder {folder or path.parent / 'images'} not found (pass --images DIR)")
    try:
        records = load_records(path)
    except IngestError as exc:
        raise VqaDataError(f"{path}: {exc}") from exc
    out = [Question(question=str(r["question"]), image=image_name(r), answer=str(r["answer"]),
                    answer_type=_answer_type(r, i, path), question_type=_question_type(r),
                    organ=str(r.get("image_organ", "") or "").strip().upper(), qid=r.get("qid"),
                    phrase_type=str(r.get("phrase_type", "") or "").strip().lower())
           for i, r in enumerate(records)]
    missing = sorted({q.image for q in out if not (folder / q.image).is_file()})
    if missing:
        raise VqaDataError(f"{path}: {len(missing)} picture(s) named in field image_name not in {folder}: "
                           f"{', '.join(missing[:5])}")
    return VqaSet(out, folder, str(path))


def read_image(path: str | Path) -> np.ndarray:
    """A picture file as a grayscale uint8 array; VqaDataError naming the file when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise VqaDataError(f"image {path}: cannot be read as a picture ({exc})") from exc


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (the embedding-cache key for pictures)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_vqa(path: str | Path, questions: list[Question]) -> Path:
    """Write questions as a VQA-RAD style JSON list (used for synthetic sets and probes)."""
    recs = [{"qid": q.qid if q.qid is not None else i, "image_name": q.image, "question": q.question,
             "answer": q.answer, "answer_type": q.answer_type, "question_type": q.question_type,
             "image_organ": q.organ, **({"phrase_type": q.phrase_type} if q.phrase_type else {})}
            for i, q in enumerate(questions)]
    Path(path).write_text(json.dumps(recs, indent=1))
    return Path(path)
