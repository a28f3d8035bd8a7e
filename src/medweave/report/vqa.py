"""The small interface through which the report and the server use a VQA model.

An *answerer* has ``name`` and ``answer(image, question) -> dict`` (``answer`` text, optional
``confidence``); ``image`` is a 2D/3D array or None. ``load_answerer(dir)`` wraps a model folder of
``medweave vqa train``; ``vqa_tables(dir)`` reads the scores by definition and the probe
tables that the VQA package wrote next to its model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class VQAUnavailable(RuntimeError):
    """No VQA model is loaded, or the VQA package cannot load the given folder."""


class Answerer(Protocol):
    name: str

    def answer(self, image: np.ndarray | None, question: str) -> dict[str, Any]: ...


class VqaAnswerer:
    """``medweave.vqa``'s trained ``Answerer`` behind the ``Answerer`` protocol: the picture through its
    EfficientNet-Lite0 embedding, the question through e5 (query prefix)."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name

    def answer(self, image: np.ndarray | None, question: str) -> dict[str, Any]:
        from ..vqa.features import embed_image_arrays, embed_questions

        if image is None:
            raise VQAUnavailable("this VQA model answers questions about a picture: send an image")
        emb, stats = embed_image_arrays([image], None, self.model.image_encoders(), with_stats=True)
        pred = self.model.predict(emb, embed_questions([question]), questions=[question], picture_stats=stats)[0]
        return {"answer": pred.answer, "confidence": float(pred.prob),
                "type": "closed" if pred.closed else "open", "abstained": pred.abstained,
                **({"reason": pred.reason} if pred.abstained else {})}


def load_answerer(model_dir: str | Path) -> Answerer:
    """A VQA model folder (``medweave vqa train``) as an ``Answerer``."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise VQAUnavailable(f"{model_dir}: no such VQA model folder")
    try:
        from ..vqa import Answerer as VqaModel
    except ImportError as exc:
        raise VQAUnavailable(f"medweave.vqa cannot be imported ({exc})") from None
    try:
        return VqaAnswerer(VqaModel.load(model_dir), f"medweave-vqa-{model_dir.name}")
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise VQAUnavailable(f"{model_dir}: not a VQA model folder ({exc})") from None


def vqa_tables(model_dir: str | Path) -> dict[str, Any]:
    """Scores by definition and probe tables of a VQA model, as {title: {columns, rows}}."""
    model_dir = Path(model_dir)
    try:
        from .. import vqa
        tables = getattr(vqa, "report_tables")(model_dir)
    except (ImportError, AttributeError):
        path = model_dir / "evaluation.json"
        if not path.exists():
            raise VQAUnavailable(f"{model_dir}: no VQA evaluation found (medweave.vqa.report_tables or "
                                 "evaluation.json)") from None
        tables = json.loads(path.read_text())
    return {"model": str(model_dir), "note": "Each score is reported under the name of its definition.",
            "tables": tables}
