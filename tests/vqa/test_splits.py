"""Validation splits: the test-like split keeps templated questions and paraphrase pairs together,
mirrors the official test's composition on VQA-RAD, and the other splits keep their rules."""

from __future__ import annotations

import numpy as np
import pytest

from medweave.vqa.data import Question, load_vqa
from medweave.vqa.splits import OFFICIAL_TEST, inner_split, make_split, paraphrase_groups, templated_twins


def _set(n_images: int = 20) -> list[Question]:
    """Per picture, VQA-RAD's layout: a free-form question, its template, a paraphrase, its template,
    and a lone free-form question; closed and open alternate between pictures."""
    out = []
    qid = 1
    for k in range(n_images):
        image = f"p{k}.jpg"
        kind, answer = ("CLOSED", "yes") if k % 2 else ("OPEN", f"answer {k}")
        for phrase, text in (("freeform", "Is there a mass?"), ("frame", "Is/Are there mass?"),
                             ("para", "Can a mass be seen?"), ("frame", "Is/Are there mass?"),
                             ("freeform", "What organ is shown?")):
            out.append(Question(text, image, answer, kind, "PRES", "CHEST", qid, phrase))
            qid += 1
    return out


def test_testlike_holds_out_free_form_and_paraphrase_pairs_only():
    qs = _set()
    groups = paraphrase_groups(qs)
    assert len(groups) == 40 and sum(len(g) == 2 for g in groups) == 20
    for g in groups:
        if len(g) == 2:
            assert {qs[i].phrase_type for i in g} == {"freeform", "para"} and len({qs[i].image for i in g}) == 1
    twins = templated_twins(qs)
    assert twins.sum() == 40 and not twins[[4 + 5 * k for k in range(20)]].any()
    for seed in range(3):
        train, held = make_split("testlike", qs, 0.2, seed)
        assert 18 <= len(held) <= 20 and len(set(train) | set(held)) == len(qs) and not set(train) & set(held)
        assert {qs[i].phrase_type for i in held} <= {"freeform", "para"}
        assert all(qs[i].phrase_type != "frame" for i in held)
        held_set = set(held.tolist())
        for g in groups:  # a pair is never split
            assert len({i in held_set for i in g}) == 1
        train_images = {qs[i].image for i in train}
        assert all(qs[i].image in train_images for i in held)
    assert not np.array_equal(make_split("testlike", qs, 0.2, 0)[1], make_split("testlike", qs, 0.2, 1)[1])


def test_testlike_without_phrase_types_is_the_questions_split():
    qs = [Question(q.question, q.image, q.answer, q.answer_type, q.question_type, q.organ, q.qid, "") for q in _set()]
    a, b = make_split("testlike", qs, 0.2, 3), make_split("questions", qs, 0.2, 3)
    assert np.array_equal(a[1], b[1]) and len(a[1]) == 20


def test_images_and_questions_splits_and_a_bad_name():
    qs = _set()
    train, held = make_split("images", qs, 0.2)
    assert not {qs[i].image for i in held} & {qs[i].image for i in train} and len({qs[i].image for i in held}) == 4
    train, held = make_split("questions", qs, 0.2)
    assert {qs[i].image for i in held} <= {qs[i].image for i in train}
    with pytest.raises(ValueError, match="allowed values: testlike, images, questions"):
        make_split("patients", qs)


@pytest.mark.parametrize("kind", ["testlike", "images"])
def test_inner_split_never_holds_an_outer_held_out_question(kind):
    qs = _set(40)
    for seed in range(3):
        outer_train_ref, outer_held = make_split(kind, qs, 0.15, seed)
        outer_train, itr, ihe = inner_split(qs, seed, 0.15, kind)
        assert np.array_equal(outer_train, outer_train_ref)
        outer = set(outer_held.tolist())
        assert outer and len(ihe) and len(itr)
        assert not outer & set(itr.tolist()) and not outer & set(ihe.tolist())
        assert not set(itr.tolist()) & set(ihe.tolist())
        assert sorted(itr.tolist() + ihe.tolist()) == sorted(outer_train.tolist())
        if kind == "testlike":  # the inner split keeps the kind's rules: templated ones stay in training
            assert {qs[i].phrase_type for i in ihe} <= {"freeform", "para"}
        else:  # and here no inner held-out picture is in the inner training part
            assert not {qs[i].image for i in ihe} & {qs[i].image for i in itr}
        # the inner held-out part is the kind's split of the training side, in the same order
        side = [qs[i] for i in outer_train]
        assert np.array_equal(ihe, outer_train[make_split(kind, side, 0.15, seed)[1]])


def test_testlike_on_vqa_rad_mirrors_the_official_test(shared_data):
    vqa = load_vqa(shared_data / "vqa-rad")
    qs = vqa.questions
    twins = templated_twins(qs)
    for seed in (0, 1):
        train, held = make_split("testlike", qs, 0.15, seed)
        closed = sum(qs[i].closed for i in held)
        # size, closed share and templated-twin share within a few questions of the official test's
        assert abs(len(held) - OFFICIAL_TEST["questions"]) <= 15
        assert abs(closed / len(held) - OFFICIAL_TEST["closed"] / OFFICIAL_TEST["questions"]) < 0.02
        assert abs(twins[held].mean() - OFFICIAL_TEST["twin"] / OFFICIAL_TEST["questions"]) < 0.02
        assert {qs[i].phrase_type for i in held} == {"freeform", "para"}
        assert {qs[i].image for i in held} <= {qs[i].image for i in train}
