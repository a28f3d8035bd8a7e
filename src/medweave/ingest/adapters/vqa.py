"""Visual question answering sets in the VQA-RAD / SLAKE layout: a JSON list of question records
(``image_name`` or ``img_name``, ``question``, ``answer``, ...) beside an ``images/`` or ``imgs/``
folder. One unit per JSON file; it stores every referenced picture once (an IMAGE item) and every
question (a QA item linked to its picture), all or nothing.

A picture no question refers to is not stored. A question whose picture is missing fails its whole
file, with a message naming the first missing pictures.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from ...store.catalog import Item, Modality
from ..base import Adapter, IngestContext, IngestError, Unit
from ..vqa_json import IMAGE_FOLDERS, IMAGE_KEYS, image_folder, image_name, load_records, looks_like_vqa  # noqa: F401
from .image import picture_item

SHOW_MISSING = 5


def _head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _first(rec: dict[str, Any], *keys: str) -> str | None:
    """The first present, non-empty value among ``keys``, as text."""
    for key in keys:
        if rec.get(key) not in (None, ""):
            return str(rec[key])
    return None


def _resolve(folder: Path, name: str) -> Path:
    """The picture file ``name`` inside ``folder``; names reaching outside it are refused."""
    path = (folder / name).resolve()
    if folder.resolve() not in path.parents:
        raise IngestError(f"image name {name!r} points outside {folder.name}/")
    return path


def images_digest(folder: Path | None, names: list[str]) -> str:
    """A hash of the referenced pictures' bytes, so that a changed picture re-ingests its set."""
    h = hashlib.sha256()
    for name in names:
        path = folder / name if folder else None
        h.update(name.encode() + b"\x00")
        if path is not None and path.is_file():
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


class VqaAdapter(Adapter):
    """VQA-RAD / SLAKE question sets: a folder with a question JSON and ``images/`` (or ``imgs/``),
    or the JSON file itself. The patient is the image name without extension (these sets carry no
    patient ids); the study is the image name."""

    name = "vqa"
    version = "1"
    option_names = ()
    extensions = (".json",)
    description = "VQA-RAD / SLAKE question sets (JSON + images/)"

    def sniff(self, path: Path, head: bytes) -> float:
        return 0.9 if path.name.lower().endswith(".json") and looks_like_vqa(head) else 0.0

    def _question_files(self, folder: Path) -> list[Path]:
        return [p for p in sorted(folder.glob("*.json")) if looks_like_vqa(_head(p))]

    def claims_dir(self, path: Path) -> bool:
        return image_folder(path) is not None and bool(self._question_files(path))

    def units(self, path: Path, ctx: IngestContext) -> Iterator[Unit]:
        for json_path in self._question_files(path) if path.is_dir() else [path]:
            try:
                names = sorted({image_name(r) for r in load_records(json_path)})
            except IngestError:
                names = []  # read() reports the problem
            yield Unit(json_path, extra={"images_sha256": images_digest(image_folder(json_path.parent), names)})

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        records = load_records(unit.path)
        folder = image_folder(unit.path.parent)
        if folder is None:
            raise IngestError(f"no {' or '.join(f + '/' for f in IMAGE_FOLDERS)} folder beside the question file")
        organs: dict[str, str | None] = {}
        for rec in records:
            organs.setdefault(image_name(rec), _first(rec, "image_organ", "location"))
        self._check_images(folder, records)
        ids = {name: self._ids(name, ctx) for name in organs}
        for name, organ in organs.items():
            pid, sid = ids[name]
            yield picture_item(_resolve(folder, name).read_bytes(), name, ctx, pid, sid,
                               fields={"organ": organ}, ref=f"img:{name}", source_key=name,
                               study_attrs={"description": organ})
        for i, rec in enumerate(records):
            yield self._question(i, rec, ids[image_name(rec)], organs[image_name(rec)], unit, ctx)

    @staticmethod
    def _ids(name: str, ctx: IngestContext) -> tuple[str, str]:
        """(patient id, study id) of a picture: its name without extension, and its name."""
        pid = ctx.patient(str(PurePosixPath(name).with_suffix("")))
        return pid, ctx.study(pid, name)

    @staticmethod
    def _check_images(folder: Path, records: list[dict[str, Any]]) -> None:
        """Fail the file, naming the first few, when questions refer to pictures that are absent."""
        missing: dict[str, Any] = {}
        for rec in records:
            name = image_name(rec)
            if name not in missing and not _resolve(folder, name).is_file():
                missing[name] = rec.get("qid")
        if missing:
            shown = ", ".join(f"{n} (qid {q})" for n, q in list(missing.items())[:SHOW_MISSING])
            raise IngestError(f"{len(missing)} referenced image(s) missing from {folder.name}/: {shown}")

    @staticmethod
    def _question(i: int, rec: dict[str, Any], ids: tuple[str, str], organ: str | None, unit: Unit,
                  ctx: IngestContext) -> Item:
        """The QA item of record ``i``."""
        name = image_name(rec)
        answer = ctx.scrub(str(rec["answer"]).strip())
        meta = {"qid": rec.get("qid"), "phrase_type": rec.get("phrase_type"), "source_file": unit.path.name,
                "language": rec.get("q_lang"), "image_modality": rec.get("modality")}
        return Item(
            patient_id=ids[0], study_id=ids[1], modality=Modality.QA,
            fields={"text": ctx.scrub(str(rec["question"]).strip()), "answer": answer,
                    "answer_type": _first(rec, "answer_type"),
                    "question_type": _first(rec, "question_type", "content_type"), "organ": organ},
            labels={"answer": answer},
            meta={k: v for k, v in meta.items() if v is not None},
            source_key=f"{unit.path.name}#{i}", link_ref=f"img:{name}",
            patient_attrs={"namespace": ctx.namespace},
        )
