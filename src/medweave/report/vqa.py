"""The small interface through which the report and the server use a VQA model.

An *answerer* has ``name`` and ``answer(image, question) -> dict`` (``answer`` text, optional
``confidence``); ``image`` is a 2D/3D array or None. ``load_answerer(dir)`` builds one from a VQA model
folder through ``medweave.vqa``; ``vqa_tables(dir)`` reads the scores by definition and the probe
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


def load_answerer(model_dir: str | Path) -> Answerer:
    """A VQA model folder as an ``Answerer`` (through ``medweave.vqa.load_answerer``)."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise VQAUnavailable(f"{model_dir}: no such VQA model folder")
    try:
        from .. import vqa  # noqa: F401  (built in the VQA issue)
        loader = getattr(vqa, "load_answerer")
    except (ImportError, AttributeError) as exc:
        raise VQAUnavailable(f"medweave.vqa cannot load VQA models in this version ({exc})") from None
    return loader(model_dir)


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
