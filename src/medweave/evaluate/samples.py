"""Samples and the data layouts that read them (``LAYOUTS``, one registry: add a layout by registering
a reader ``(task, data, images) -> list[Sample]``).

- ``vqa-rad`` (also ``slake``, ``pathvqa``): a JSON list of question records (``image_name`` or
  ``img_name``, ``question``, ``answer``, ``answer_type``, ``question_type``, ``image_organ`` or
  SLAKE's ``location``, ``q_lang``, ``phrase_type``) beside ``images/`` or ``imgs/``.
- ``jsonl``: one JSON object a line: ``question``, ``answer``, optional ``image`` (a path relative to
  the file, or to ``images``), ``id``, ``answer_type``; every other field is kept as metadata.
- ``multiple-choice``: JSONL with ``question``, ``options`` (``{"A": text, ...}`` or a list, lettered
  in order), ``answer`` (a letter or the text of an option), optional ``image`` and ``id``.
- ``findings-impression``: JSONL with the findings in ``inputs`` (or ``findings``) and the impression
  in ``target`` (or ``impression``), e.g. the Open-i summarisation split.

A task may rename fields (``fields = {question = "q", answer = "a"}``). A record whose picture is
missing becomes a sample with an ``error`` (reported, never sent); a file that cannot be read, or a
record without a required field, is a ``TaskError`` naming the file, line and field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..registry import Registry
from ..vqa.normalize import is_yesno

LETTERS = "ABCDEFGHIJ"


class TaskError(ValueError):
    """A task file or its data that cannot be used; the message names the file, key or field."""


@dataclass
class Sample:
    """One item to ask: the question (or findings), the reference, the picture (if any) and metadata."""

    id: str
    question: str
    reference: str
    image: Path | None = None
    image_name: str = ""
    options: dict[str, str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def closed(self) -> bool:
        """CLOSED by the data's answer type; a yes/no reference when the data has none."""
        kind = str(self.meta.get("answer_type", "") or "").upper()
        return kind == "CLOSED" if kind else is_yesno(self.reference)

    @property
    def cluster(self) -> str:
        """The key clustered statistics group by: the picture, else the sample itself."""
        return self.image_name or self.id

    def fields(self) -> dict[str, Any]:
        """The values a prompt template may use: question, findings, options, and every metadata field."""
        opts = "\n".join(f"{k}. {v}" for k, v in (self.options or {}).items())
        return {**{k: v for k, v in self.meta.items() if isinstance(v, (str, int, float))},
                "question": self.question, "findings": self.question, "options": opts,
                "letters": ", ".join(self.options or {})}


Reader = Callable[[Any, Path, "Path | None"], list[Sample]]
LAYOUTS: Registry[Reader] = Registry("task layout", "medweave.layouts")


def _field(task, name: str) -> str:
    return (getattr(task, "fields", None) or {}).get(name, name)


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise TaskError(f"data file {path} not found")
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}: line {n} is not JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise TaskError(f"{path}: line {n} is a {type(rec).__name__}; expected an object")
            out.append((n, rec))
    return out


def _need(rec: dict, key: str, path: Path, where: str):
    if key not in rec or rec[key] is None:
        raise TaskError(f"{path}: {where} has no field {key!r} (fields: {', '.join(sorted(rec)) or 'none'})")
    return rec[key]


class _Pictures:
    """Resolves a sample's picture reference to (path, name, error). A folder is listed once: a plain
    file name that the listing shows as a regular file (not a link) is inside the folder by
    construction, so only names with separators, links and absent names take ``Path.resolve`` (one
    system call per path component, per question, was most of the cost of loading a task)."""

    def __init__(self) -> None:
        self._folders: dict[Path, tuple[Path, frozenset[str]]] = {}

    def _listing(self, folder: Path) -> tuple[Path, frozenset[str]]:
        hit = self._folders.get(folder)
        if hit is None:
            try:
                with os.scandir(folder) as it:
                    files = frozenset(e.name for e in it if e.is_file(follow_symlinks=False))
            except OSError:
                files = frozenset()
            hit = self._folders[folder] = (folder.resolve(), files)
        return hit

    def __call__(self, value: Any, base: Path, images: Path | None) -> tuple[Path | None, str, str | None]:
        if value in (None, ""):
            return None, "", None
        name = str(value)
        folder = images or base
        root, files = self._listing(folder)
        if name in files and name not in (".", "..") and "/" not in name and os.sep not in name:
            return root / name, name, None
        path = (folder / name).resolve()
        if not path.is_relative_to(root):
            return None, name, f"image {name!r} points outside {folder}"
        if not path.is_file():
            return None, name, f"image {name!r} not found in {folder}"
        return path, name, None


def read_vqa_json(task, data: Path, images: Path | None) -> list[Sample]:
    """VQA-RAD / SLAKE / PathVQA JSON (module docstring); ``task.split`` picks one side of a
    ``medweave.vqa.splits`` split, ``task.filter`` keeps records by field value (SLAKE ``q_lang``)."""
    from ..ingest.errors import IngestError
    from ..ingest.vqa_json import image_folder, image_name, load_records
    from ..vqa.data import Question, main_question_type

    path = Path(data)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if len(files) != 1:
            raise TaskError(f"{path}: expected one question JSON in the folder, found "
                            f"{[p.name for p in files] or 'none'}")
        path = files[0]
    if not path.is_file():
        raise TaskError(f"data file {path} not found")
    try:
        records = load_records(path)
    except IngestError as exc:
        raise TaskError(f"{path}: {exc}") from None
    for key, want in (getattr(task, "filter", None) or {}).items():
        records = [r for r in records if str(r.get(key, "")) == str(want)]
    folder = Path(images) if images else image_folder(path.parent)
    if folder is None:
        raise TaskError(f"{path}: no images/ or imgs/ folder beside it; give the task an images path "
                        "(or --images DIR)")
    questions, samples, pictures = [], [], {}
    resolve, stem = _Pictures(), path.stem
    qkey, akey = _field(task, "question"), _field(task, "answer")
    for i, r in enumerate(records):
        organ = str(r.get("image_organ", "") or r.get("location", "") or "").strip().upper()
        q = Question(question=str(r[qkey]), image=image_name(r), answer=str(r[akey]),
                     answer_type=str(r.get("answer_type", "") or "").strip().upper(),
                     question_type=str(r.get("question_type", "") or "").split(",")[0].strip().upper(),
                     organ=organ, qid=r.get("qid", i),
                     phrase_type=str(r.get("phrase_type", "") or "").strip().lower())
        questions.append(q)
        if q.image not in pictures:  # many questions per picture: resolve each picture once
            pictures[q.image] = resolve(q.image, folder, folder)
        pic, name, err = pictures[q.image]
        meta = {"answer_type": q.answer_type, "question_type": main_question_type(q.question_type) if
                q.question_type else "", "organ": organ, "qid": q.qid, "phrase_type": q.phrase_type,
                **{k: r[k] for k in ("q_lang", "modality", "content_type") if k in r}}
        samples.append(Sample(f"{stem}:{q.qid}", q.question, q.answer, pic, name, None, meta,
                              f"sample {stem}:{q.qid}: {err}" if err else None))
    split = getattr(task, "split", None)
    if split is not None:
        from ..vqa.splits import make_split

        train, held = make_split(split.name, questions, split.frac, split.seed)
        samples = [samples[i] for i in (held if split.side == "held" else train)]
    return samples


def read_jsonl(task, data: Path, images: Path | None) -> list[Sample]:
    data = Path(data)
    out, resolve = [], _Pictures()
    for n, rec in _read_jsonl(data):
        where = f"line {n}"
        question = str(_need(rec, _field(task, "question"), data, where))
        answer = str(_need(rec, _field(task, "answer"), data, where))
        pic, name, err = resolve(rec.get(_field(task, "image")), data.parent, images)
        sid = str(rec.get(_field(task, "id"), n))
        meta = {k: v for k, v in rec.items() if k not in {_field(task, x) for x in ("question", "answer", "image")}}
        out.append(Sample(f"{data.stem}:{sid}", question, answer, pic, name, None, meta,
                          f"sample {data.stem}:{sid} (line {n}): {err}" if err else None))
    return out


def read_multiple_choice(task, data: Path, images: Path | None) -> list[Sample]:
    from ..vqa.normalize import normalize_answer

    data = Path(data)
    out, resolve = [], _Pictures()
    for n, rec in _read_jsonl(data):
        where = f"line {n}"
        question = str(_need(rec, _field(task, "question"), data, where))
        raw = _need(rec, _field(task, "options"), data, where)
        if isinstance(raw, list):
            options = {LETTERS[i]: str(v) for i, v in enumerate(raw)}
        elif isinstance(raw, dict):
            options = {str(k).strip().upper(): str(v) for k, v in raw.items()}
        else:
            raise TaskError(f"{data}: {where}: field 'options' must be a list or an object of letter: text")
        answer = str(_need(rec, _field(task, "answer"), data, where)).strip()
        if answer.upper() in options:
            letter = answer.upper()
        else:
            match = [k for k, v in options.items() if normalize_answer(v) == normalize_answer(answer)]
            if len(match) != 1:
                raise TaskError(f"{data}: {where}: answer {answer!r} is neither an option letter "
                                f"({', '.join(options)}) nor the text of one option")
            letter = match[0]
        pic, name, err = resolve(rec.get(_field(task, "image")), data.parent, images)
        sid = str(rec.get(_field(task, "id"), n))
        meta = {k: v for k, v in rec.items() if k not in ("question", "options", "answer", "image")}
        meta["answer_text"] = options[letter]
        out.append(Sample(f"{data.stem}:{sid}", question, letter, pic, name, options, meta,
                          f"sample {data.stem}:{sid} (line {n}): {err}" if err else None))
    return out


def read_findings_impression(task, data: Path, images: Path | None) -> list[Sample]:
    data = Path(data)
    out = []
    for n, rec in _read_jsonl(data):
        fkey = _field(task, "findings") if _field(task, "findings") in rec else "inputs"
        ikey = _field(task, "impression") if _field(task, "impression") in rec else "target"
        findings = str(_need(rec, fkey, data, f"line {n}"))
        impression = str(_need(rec, ikey, data, f"line {n}"))
        sid = str(rec.get("idx", rec.get("id", n)))
        out.append(Sample(f"{data.stem}:{sid}", findings, impression, meta={"findings": findings}))
    return out


for _name, _fn in {"vqa-rad": read_vqa_json, "slake": read_vqa_json, "pathvqa": read_vqa_json,
                   "jsonl": read_jsonl, "multiple-choice": read_multiple_choice,
                   "findings-impression": read_findings_impression}.items():
    LAYOUTS.register(_name, _fn)
