"""Answer scores, each under its own name, all computed on the same predictions (moved here from
``medweave.vqa`` so that every model, the built-in answerer included, is scored by this code).

Every answer is compared after ``normalize_answer`` (case, punctuation, articles, whitespace, yes/no
synonyms).

- ``overall_acc``: exact match over all questions.
- ``closed_acc`` / ``open_acc``: exact match over the questions the data set marks CLOSED / OPEN
  (its ``answer_type``).
- ``closed_acc_yesno``: exact match over the questions whose reference answer is yes or no
  (the MedEvalKit convention for "closed").
- ``open_recall``: over OPEN questions, the share of the reference's tokens found among the
  prediction's tokens, averaged (the LLaVA-Med convention; a longer prediction is not penalised).

Each figure comes with a bootstrap 95% interval (questions resampled with replacement) and the
count it is over; ``by_question_type`` and ``by_organ`` break ``overall_acc`` down.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from ..vqa.normalize import is_yesno, normalize_answer, tokens
from .metrics import bootstrap_ci

SCORE_NAMES = ("overall_acc", "closed_acc", "open_acc", "closed_acc_yesno", "open_recall")


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def token_recall(prediction: str, reference: str) -> float:
    """Share of the reference's normalised tokens that appear in the prediction's."""
    ref = tokens(normalize_answer(reference))
    if not ref:
        return float(normalize_answer(prediction) == "")
    pred = set(tokens(normalize_answer(prediction)))
    return sum(t in pred for t in ref) / len(ref)


def mean_with_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """{"value", "lo", "hi", "n"} for the mean of per-question values; NaNs when there are none."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    lo, hi = bootstrap_ci(v, v, lambda y, _p: float(np.mean(y)), False, n_boot, seed) if n_boot else (np.nan, np.nan)
    return {"value": float(v.mean()), "lo": lo, "hi": hi, "n": int(v.size)}


def vqa_scores(questions: Sequence, predictions: Sequence[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """All scores (see the module docstring) for predictions aligned with questions (objects with
    ``answer``, ``closed``, ``question_type`` and ``organ``, such as ``medweave.vqa.Question``)."""
    if len(questions) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(questions)} questions")
    correct = np.array([exact_match(p, q.answer) for q, p in zip(questions, predictions)], dtype=float)
    closed = np.array([q.closed for q in questions], dtype=bool)
    yesno = np.array([is_yesno(q.answer) for q in questions], dtype=bool)
    recall = np.array([token_recall(p, q.answer) for q, p in zip(questions, predictions)])
    out = {
        "overall_acc": mean_with_ci(correct, n_boot, seed),
        "closed_acc": mean_with_ci(correct[closed], n_boot, seed),
        "open_acc": mean_with_ci(correct[~closed], n_boot, seed),
        "closed_acc_yesno": mean_with_ci(correct[yesno], n_boot, seed),
        "open_recall": mean_with_ci(recall[~closed], n_boot, seed),
    }
    out["by_question_type"] = _breakdown([q.question_type or "?" for q in questions], correct, n_boot, seed)
    out["by_organ"] = _breakdown([q.organ or "?" for q in questions], correct, n_boot, seed)
    return out


def _breakdown(groups: list[str], correct: np.ndarray, n_boot: int, seed: int) -> dict:
    """``overall_acc`` per group value."""
    idx: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        idx[g].append(i)
    return {g: mean_with_ci(correct[ix], n_boot, seed) for g, ix in sorted(idx.items())}
