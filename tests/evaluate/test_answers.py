"""Normalisation and every answer-score definition on hand-made cases."""

from __future__ import annotations

import math

import pytest

from medweave.evaluate.answers import exact_match, token_recall, vqa_scores as score
from medweave.vqa.data import Question
from medweave.vqa.normalize import normalize_answer


@pytest.mark.parametrize("raw, norm", [
    ("Yes", "yes"), ("  YES. ", "yes"), ("True", "yes"), ("nope", "no"), ("The left lung.", "left lung"),
    ("an MRI", "mri"), ("2.5 cm", "2.5 cm"), ("Right,  upper", "right upper"), ("x-ray", "x ray"),
    ("yes, left", "yes left"),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_and_recall():
    assert exact_match("The Left Lung", "left lung.")
    assert not exact_match("left", "left lung")
    assert token_recall("left", "left lung") == 0.5
    assert token_recall("the left upper lung lobe", "left lung") == 1.0
    assert token_recall("no", "yes") == 0.0


def _q(answer: str, kind: str, qtype: str = "PRES", organ: str = "CHEST") -> Question:
    return Question("q?", "i.png", answer, kind, qtype, organ)


def test_score_definitions():
    qs = [_q("Yes", "CLOSED"), _q("No", "CLOSED", organ="HEAD"), _q("CT", "CLOSED", "MODALITY"),
          _q("left lung", "OPEN", "POS"), _q("no", "OPEN", "PRES")]
    preds = ["yes", "yes", "CT", "left", "no"]
    res = score(qs, preds, n_boot=200)
    assert res["overall_acc"]["value"] == pytest.approx(3 / 5)
    assert res["closed_acc"]["value"] == pytest.approx(2 / 3) and res["closed_acc"]["n"] == 3
    assert res["open_acc"]["value"] == pytest.approx(1 / 2) and res["open_acc"]["n"] == 2
    # closed by the reference being yes/no: Yes, No and the OPEN-typed "no"
    assert res["closed_acc_yesno"]["n"] == 3 and res["closed_acc_yesno"]["value"] == pytest.approx(2 / 3)
    assert res["open_recall"]["value"] == pytest.approx((0.5 + 1.0) / 2)
    assert res["by_organ"]["HEAD"]["value"] == 0.0 and res["by_organ"]["CHEST"]["n"] == 4
    assert res["by_question_type"]["MODALITY"]["value"] == 1.0
    lo, hi = res["overall_acc"]["lo"], res["overall_acc"]["hi"]
    assert 0.0 <= lo <= 0.6 <= hi <= 1.0


def test_score_empty_group_and_length_mismatch():
    res = score([_q("yes", "CLOSED")], ["yes"], n_boot=10)
    assert res["open_acc"]["n"] == 0 and math.isnan(res["open_acc"]["value"])
    with pytest.raises(ValueError, match="1 predictions for 2 questions"):
        score([_q("yes", "CLOSED"), _q("no", "CLOSED")], ["yes"])
