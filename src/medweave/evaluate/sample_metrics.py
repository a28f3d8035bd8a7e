"""The harness's metrics, registered by name (``METRICS``): each scores every sample of a subset and
reports the mean with a bootstrap 95% interval clustered by the task's key (the picture).

Answers are compared after ``normalize_answer`` (``medweave.evaluate.answers``), exactly as the VQA
scores are:

- ``overall_acc``: exact match over all samples; ``accuracy`` is the same, by its usual name
  (multiple choice: the extracted option letter equals the reference letter).
- ``closed_acc`` / ``open_acc``: exact match over the samples the data marks CLOSED / OPEN.
- ``closed_acc_yesno``: exact match over the samples whose reference is yes or no.
- ``open_recall``: over OPEN samples, the share of the reference's tokens found in the prediction.
- ``token_f1``: token-overlap F1 of prediction and reference (normalised tokens; SQuAD style).

A sample that failed (no completion) scores 0 on every metric and is counted in ``failed``; a
metric is never computed over the successful samples only. Add a metric with
``METRICS.register(name, Metric(...))``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

from ..registry import Registry
from ..vqa.normalize import is_yesno, normalize_answer, tokens
from .answers import exact_match, token_recall
from .samples import Sample


@dataclass(frozen=True)
class Metric:
    """``score(prediction, sample) -> float`` over the samples where ``applies(sample)``."""

    name: str
    doc: str
    score: Callable[[str, Sample], float]
    applies: Callable[[Sample], bool] = lambda s: True


def token_f1(prediction: str, reference: str) -> float:
    p, r = tokens(normalize_answer(prediction)), tokens(normalize_answer(reference))
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _exact(pred: str, s: Sample) -> float:
    return float(exact_match(pred, s.reference))


METRICS: Registry[Metric] = Registry("metric", "medweave.metrics")
for _m in (
    Metric("overall_acc", "exact match after normalisation, all samples", _exact),
    Metric("accuracy", "exact match after normalisation, all samples (multiple choice: the option letter)", _exact),
    Metric("closed_acc", "exact match over samples with answer_type CLOSED", _exact, lambda s: s.closed),
    Metric("open_acc", "exact match over samples with answer_type OPEN", _exact, lambda s: not s.closed),
    Metric("closed_acc_yesno", "exact match over samples whose reference is yes/no", _exact,
           lambda s: is_yesno(s.reference)),
    Metric("open_recall", "share of reference tokens in the prediction, OPEN samples",
           lambda p, s: token_recall(p, s.reference), lambda s: not s.closed),
    Metric("token_f1", "token-overlap F1 of prediction and reference", lambda p, s: token_f1(p, s.reference)),
):
    METRICS.register(_m.name, _m)
