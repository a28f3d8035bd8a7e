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
- text metrics (``medweave.evaluate.text``): ``rouge1``, ``rouge2``, ``rougeL`` (rouge-score F, no
  stemming), ``rougeL_stem`` (Porter stemmer) per sample; corpus metrics ``bleu_sacre``,
  ``coco_cider``, ``obs_f1_rules_micro14`` / ``_micro5`` / ``_macro14``, ``distinct_share``, each
  computed over the whole set (a failed sample counts as an empty output) with a cluster bootstrap.

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
    # a corpus metric: (predictions, references) -> f(index array of a resample) -> value; scored over
    # the whole set (with a cluster bootstrap of the index), never as a mean of per-sample scores
    corpus: Callable[[list[str], list[str]], Callable] | None = None


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


def _text_metrics() -> None:
    """The text metrics of ``medweave.evaluate.text`` (drafts, summaries): per-sample ROUGE F-measures
    (0..1; rouge-score, no stemming, and ROUGE-L with the Porter stemmer) and corpus metrics."""
    from . import text

    docs = {"rouge1": "ROUGE-1 F (rouge-score, no stemming)", "rouge2": "ROUGE-2 F (rouge-score, no stemming)",
            "rougeL": "ROUGE-L F (rouge-score, no stemming)", "rougeL_stem": "ROUGE-L F (rouge-score, Porter stemmer)"}
    for name, doc in docs.items():
        fn: dict = {}

        def score(p: str, s: Sample, _n: str = name, _fn: dict = fn) -> float:
            if "f" not in _fn:
                _fn["f"] = text.rouge_sample(_n)
            return _fn["f"](p, s.reference)

        METRICS.register(name, Metric(name, doc, score))
    for name, doc in text.CORPUS_METRICS.items():
        METRICS.register(name, Metric(name, doc, lambda p, s: 0.0, lambda s: False,
                                      corpus=lambda preds, refs, _n=name: text.corpus_scorer(_n, preds, refs, 0.01)))


_text_metrics()
