"""Retrieved context for any backend (a task's ``context``): for each sample, the k most similar
training question-answer pairs, put into the prompt as text (``medweave.generate.context``) and
listed, by id and similarity, in the sample's record.

```yaml
context: {kind: retrieved, k: 3}                       # pool: the other side of the task's split
context: {kind: retrieved, k: 3, from: train.json}     # pool: a training file of the same layout
```

Similarity is the answerer's (``medweave.vqa.model.neighbours``, the one search behind the VQA
model's retrieved context and the agents' ``similar_questions``): the mean of the picture cosine
(EfficientNet-Lite0 at 224 pixels) and the question cosine (e5-small, query prefix), embeddings cached
in ``embeddings`` (default ``RUN_DIR/context.duckdb``; a ``medweave vqa train`` model's
``embeddings.duckdb`` holds the same vectors).

Leakage is impossible by construction: the pool is the training side only — with no ``from``, the
other side of the task's split (a task without a split needs ``from``); with ``from`` naming the
task's own data file and a split, that file's training side — and a pool item with the sample's id, or
with the same picture (by content hash) and the same question text, is never a candidate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..generate.context import ContextEntry
from .samples import Sample, TaskError


def _same_file(a: Path | None, b: Path | None) -> bool:
    try:
        return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def context_pool(task, data: str | Path | None = None) -> list[Sample]:
    """The training question-answer pairs the task's context draws on (module notes)."""
    spec = task.context
    own = Path(data) if data is not None else task.path(task.data)
    source = task.path(spec.from_) if spec.from_ else None
    if source is None or _same_file(source, own):
        if task.split is None:
            raise TaskError(f"task {task.name}: context needs a training pool: give context.from (a training "
                            "file of the task's layout) or a split (its other side is the pool)")
        other = task.model_copy(update={"context": None, "split": task.split.model_copy(
            update={"side": "train" if task.split.side == "held" else "held"})})
        if other.split.side != "train":
            raise TaskError(f"task {task.name}: the task asks the training side of its split; its context pool "
                            "would be the held-out side: give context.from")
        pool = other.load_samples(data)
    else:
        other = task.model_copy(update={"context": None, "split": None})
        pool = other.load_samples(source, task.path(spec.images) if spec.images else None)
    return [s for s in pool if s.error is None]


class ContextRetriever:
    """The pool's embeddings and the search; ``retrieve(samples)`` gives each sample its entries."""

    def __init__(self, task, pool: list[Sample], cache_path: str | Path):
        from ..vqa.features import embed_questions, open_cache
        from ..vqa.model import _l2

        self.task, self.pool, self.k = task, pool, task.context.k
        if not pool:
            raise TaskError(f"task {task.name}: the context pool is empty")
        self.cache_path = Path(cache_path)
        self._open = open_cache
        with open_cache(self.cache_path) as cache:
            self.mem_img = _l2(self._pictures([s.image for s in pool], cache))  # neighbours wants it normalised
            self.mem_q = embed_questions([s.question for s in pool], cache)
        self._hash = [_picture_hash(s.image) for s in pool]
        self._text = [_text(s.question) for s in pool]
        self._ids = [s.id for s in pool]

    @staticmethod
    def _pictures(paths: list[Path | None], cache) -> np.ndarray:
        from ..vqa.features import IMAGE_ENCODERS, embed_image_files

        out = np.zeros((len(paths), 1280), np.float32)
        have = [i for i, p in enumerate(paths) if p is not None]
        if have:
            out[have] = embed_image_files([paths[i] for i in have], cache, IMAGE_ENCODERS[:1])
        return out

    def retrieve(self, samples: list[Sample]) -> dict[str, list[ContextEntry]]:
        """Sample id -> its k entries (most similar first)."""
        from ..vqa.features import embed_questions
        from ..vqa.model import neighbours

        ok = [s for s in samples if s.error is None]
        if not ok:
            return {}
        with self._open(self.cache_path) as cache:
            img = self._pictures([s.image for s in ok], cache)
            q = embed_questions([s.question for s in ok], cache)
        pool_hash, pool_text = np.array(self._hash, dtype=object), np.array(self._text, dtype=object)
        ids = np.array(self._ids, dtype=object)
        exclude = np.zeros((len(ok), len(self.pool)), dtype=bool)
        for r, s in enumerate(ok):
            h = _picture_hash(s.image)
            exclude[r] = (ids == s.id) | ((pool_hash == h) & (pool_text == _text(s.question)))
        rows, scores = neighbours(img, q, self.mem_img, self.mem_q, self.k, exclude)
        out = {}
        for r, s in enumerate(ok):
            out[s.id] = [ContextEntry(self.pool[i].id, float(sc), self.pool[i].question, self.pool[i].reference)
                         for i, sc in zip(rows[r], scores[r]) if i >= 0]
        return out


_HASHES: dict[Path, str] = {}


def _picture_hash(path: Path | None) -> str:
    if path is None:
        return ""
    if path not in _HASHES:
        from ..vqa.data import file_hash

        _HASHES[path] = file_hash(path)
    return _HASHES[path]


def _text(question: str) -> str:
    return " ".join(str(question).lower().split())
