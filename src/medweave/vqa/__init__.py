"""Visual question answering: a CPU-trained answerer over frozen picture and question embeddings,
documented scores, probes that check it reads the picture, and spoken questions."""

from .data import Question, VqaDataError, VqaSet, load_vqa
from .model import Answerer, Prediction, VqaConfig
from .normalize import normalize_answer
from .scoring import score

__all__ = ["Answerer", "Prediction", "Question", "VqaConfig", "VqaDataError", "VqaSet", "load_vqa",
           "normalize_answer", "score"]
