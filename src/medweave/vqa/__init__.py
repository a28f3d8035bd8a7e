"""Visual question answering: a CPU-trained answerer over frozen picture and question embeddings,
and spoken questions (its scores and probes are in ``medweave.evaluate``)."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what the names below resolve to, imported only on first use
    from .data import Question, VqaDataError, VqaSet, load_vqa
    from .model import Answerer, Prediction, VqaConfig
    from .normalize import normalize_answer

__getattr__, __dir__ = lazy_exports(__name__, {
    "Question": ".data", "VqaDataError": ".data", "VqaSet": ".data", "load_vqa": ".data",
    "Answerer": ".model", "Prediction": ".model", "VqaConfig": ".model",
    "normalize_answer": ".normalize",
})
__all__ = [
    "Answerer", "Prediction", "Question", "VqaConfig", "VqaDataError", "VqaSet", "load_vqa",
    "normalize_answer",
]
