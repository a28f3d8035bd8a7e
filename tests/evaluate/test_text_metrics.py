"""Text metrics: the libraries' own numbers, under their own names, with intervals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medweave.evaluate.text import bleu, coco_scores, distinct_share, rouge_per_report, text_report

PRED = ["No acute cardiopulmonary abnormality.", "Mild cardiomegaly. No effusions.",
        "Small left pleural effusion.", "Clear lungs."]
REF = ["No acute cardiopulmonary abnormalities.", "Cardiomegaly without effusion.",
       "No pleural effusion.", "The lungs are clear."]


def test_rouge_is_rouge_score_with_and_without_stemming():
    from rouge_score import rouge_scorer

    got = rouge_per_report(PRED, REF)
    plain = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    want = [100 * plain.score(r, p)["rougeL"].fmeasure for p, r in zip(PRED, REF)]
    assert np.allclose(got["rougeL"], want)
    # "abnormality" vs "abnormalities", "effusions" vs "effusion": stemming raises them
    assert got["rougeL_stem"][0] > got["rougeL"][0] and got["rougeL_stem"][1] > got["rougeL"][1]


def test_bleu_is_sacrebleu_and_distinct_share():
    import sacrebleu

    assert bleu(PRED, REF) == pytest.approx(sacrebleu.corpus_bleu(PRED, [REF]).score)
    assert distinct_share(["a", "a ", "b", "c"]) == pytest.approx(0.75)
    assert distinct_share(["same"] * 10) == pytest.approx(0.1)


def test_report_intervals_contain_their_value_and_errors_name_the_problem():
    rep = text_report(PRED * 5, REF * 5, n_boot=200, coco=False)
    for k in ("rouge1", "rouge2", "rougeL", "bleu_sacre", "obs_f1_rules_micro14"):
        assert rep[k]["lo"] <= rep[k]["value"] <= rep[k]["hi"], k
    assert rep["n"] == 20 and rep["distinct_share"]["value"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="3 predictions but 4 references"):
        text_report(PRED[:3], REF)


@pytest.mark.skipif(shutil.which("java") is None, reason="the COCO metrics need Java (default-jre-headless)")
def test_coco_metrics_run_through_java():
    scores, per = coco_scores(PRED, REF)
    assert set(scores) == {"coco_bleu1", "coco_bleu2", "coco_bleu3", "coco_bleu4", "coco_meteor", "coco_rougeL",
                           "coco_cider"}
    assert 0 < scores["coco_meteor"] < 100 and len(per) == 4
    same, _ = coco_scores(REF, REF, meteor=False)
    assert same["coco_bleu1"] == pytest.approx(100.0, abs=1e-3) and same["coco_rougeL"] == pytest.approx(100.0)
    assert np.mean(per) == pytest.approx(scores["coco_cider"])
