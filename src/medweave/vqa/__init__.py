"""Visual question answering: a CPU-trained answerer over frozen picture and question embeddings,
and spoken questions (its scores and probes are in ``medweave.evaluate``)."""

from .data import Question, VqaDataError, VqaSet, load_vqa
from .model import Answerer, Prediction, VqaConfig
from .normalize import normalize_answer

__all__ = ["Answerer", "Prediction", "Question", "VqaConfig", "VqaDataError", "VqaSet", "load_vqa",
           "normalize_answer"]
