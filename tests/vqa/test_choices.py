"""Choice questions (``medweave.vqa.choices``): a question naming its possible answers ("on the left or
the right?") is answered with one of them, never with a yes/no it cannot mean; yes and no stay possible
where the question asks whether something is there; other questions are answered as before."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from medweave.vqa.choices import ChoiceIndex, calibrate, restrict_to_choices
from medweave.vqa.data import Question, VqaSet, load_vqa
from medweave.vqa.features import open_cache
from medweave.vqa.model import Answerer, VqaConfig
from medweave.vqa.pipeline import CACHE_NAME, embed_set, fit_set

VOCAB = ["yes", "no", "left", "left side", "right", "right side", "lesion", "ct", "mri", "in bowels",
         "in vasculature", "fracture", "Flair", "t2", "t2 weighted"]


def _names(index: ChoiceIndex, question: str):
    got = index.choices(question)
    return None if got is None else sorted(VOCAB[j] for j in got)


def test_the_choices_a_question_names():
    idx = ChoiceIndex(VOCAB)
    # the subject ("lesion") is a training answer in the question but not one of its choices
    assert _names(idx, "Is the lesion on the patient's right or left side?") == [
        "left", "left side", "right", "right side"]
    assert _names(idx, "Was this image taken with an MRI or CT scanner?") == ["ct", "mri"]
    assert _names(idx, "Is the contrast in the bowels or the vasculature?") == ["in bowels", "in vasculature"]
    # the subject just before the alternatives is no choice ("brain" in "Is the brain atrophied or
    # shrunk?" was one, and as the only training answer named it was forced as the answer)
    assert _names(idx, "Is the lesion left or right?") == ["left", "right"]
    assert idx.choices("Is the lesion enlarged or shrunk?") is None
    # case and punctuation are read as the answers are normalised; a list "A, B, or C" whose
    # alternatives share a head ("weighted"): the word before the head is an alternative too
    assert _names(idx, "Is this a T1 weighted, T2 weighted, or FLAIR image?") == ["Flair", "t2", "t2 weighted"]
    assert _names(idx, "Is this a T2 image or a Flair image?") == ["Flair", "t2"]
    # a question of existence keeps yes and no beside its choices
    assert _names(idx, "Is there a fracture or a lesion?") == ["fracture", "lesion", "no", "yes"]
    # the decoder's question-form words: "vs" offers a choice too, "Any ...?" is asked yes or no, a
    # bare copula ("Is the ...") asks for one of the alternatives
    assert _names(idx, "Is this an MRI vs. a CT?") == ["ct", "mri"]
    assert _names(idx, "Any evidence of a fracture or a lesion?") == ["fracture", "lesion", "no", "yes"]
    assert _names(idx, "Does the lesion lie left or right?") == ["left", "no", "right", "yes"]
    # no "or", or no training answer among the choices: not a choice question
    assert idx.choices("Which side is the lesion on?") is None
    assert idx.choices("Is this a viral or parasitic process?") is None
    # "or" inside a word is no choice
    assert idx.choices("Is the ORgan lesion on the right?") is None
    assert idx.choices("Is the lesion on the right, orthogonal to the spine?") is None


def test_restriction_renormalises_the_choices_and_leaves_other_rows():
    idx = ChoiceIndex(VOCAB)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(VOCAB)), size=3)
    probs[2, [VOCAB.index("ct"), VOCAB.index("mri")]] = 0.0  # its choices have no mass: left alone
    probs[2] /= probs[2].sum()
    questions = ["Is the mass on the left or the right?", "Which side is the mass on?", "Is it an MRI or a CT?"]
    out, chosen = restrict_to_choices(probs, questions, idx)
    lr = [VOCAB.index("left"), VOCAB.index("right")]
    assert sorted(chosen[0]) == lr and chosen[1] is None and chosen[2] is None
    assert out[0].sum() == pytest.approx(1.0) and set(np.flatnonzero(out[0])) == set(lr)
    assert out[0, lr[0]] / out[0, lr[1]] == pytest.approx(probs[0, lr[0]] / probs[0, lr[1]])
    assert np.array_equal(out[1], probs[1]) and np.array_equal(out[2], probs[2])
    with pytest.raises(ValueError, match="2 question texts for 3 rows"):
        restrict_to_choices(probs, questions[:2], idx)


CHOICE = "Is the opacity on the left or the right?"
N_TRAIN = 8  # of the tiny set's 12 pictures


def _fit(tiny_set, root, answer_of):
    """The tiny set with a choice question per picture (answered ``answer_of(side)``), an answerer fitted
    on the first ``N_TRAIN`` pictures, and the other pictures' embeddings with their sides."""
    vqa = load_vqa(tiny_set)
    sides = {q.image: q.answer for q in vqa.questions if q.answer_type == "OPEN"}
    extra = [Question(CHOICE, image, answer_of(side), "CLOSED", "POS", "CHEST", 1000 + k)
             for k, (image, side) in enumerate(sorted(sides.items()))]
    full = VqaSet(vqa.questions + extra, vqa.images_dir, vqa.source)
    names = full.image_names()
    train = [i for i, q in enumerate(full.questions) if names.index(q.image) < N_TRAIN]
    with open_cache(root / CACHE_NAME) as cache:
        img, qe = embed_set(full, cache, ("efficientnet-lite0",))
        model = fit_set(full.subset(train), img[train], qe[train],
                        VqaConfig(seeds=1, epochs=40, views=1, fact_questions=0), cache)
    rows = [next(i for i, q in enumerate(full.questions) if q.image == n) for n in names[N_TRAIN:]]
    return model, img[rows], [sides[n] for n in names[N_TRAIN:]]


def test_the_answerer_answers_a_choice_question_with_a_choice(tiny_set, tmp_path):
    from medweave.vqa.features import embed_questions

    model, img, sides = _fit(tiny_set, tmp_path, lambda side: side)
    assert model.cfg.choice_answers and model.meta["choice_training"] == {"acted": N_TRAIN, "named": N_TRAIN,
                                                                          "holds": True}
    qe = np.repeat(embed_questions([CHOICE]), len(img), axis=0)
    preds = model.predict(img, qe, questions=[CHOICE] * len(img))
    assert all(p.answer in ("left", "right") and set(p.choices) == {"left", "right"} for p in preds)
    assert sum(p.answer == s for p, s in zip(preds, sides)) >= len(sides) - 1  # it reads the picture
    # off, or without the texts, nothing is restricted: the same rows answer as the unrestricted model
    off = replace(model, cfg=replace(model.cfg, choice_answers=False), _nets=model._nets)
    plain = off.predict(img, qe, questions=[CHOICE] * len(img))
    assert [p.answer for p in plain] == [p.answer for p in model.predict(img, qe)]
    assert all(p.choices == () for p in plain)
    # a question that is no choice question answers the same either way
    other = "Is the opacity on the left?"
    qo = np.repeat(embed_questions([other]), len(img), axis=0)
    assert [p.answer for p in model.predict(img, qo, questions=[other] * len(img))] == \
        [p.answer for p in off.predict(img, qo, questions=[other] * len(img))]
    # saved and loaded, the calibration comes back; a model saved before the option loads with it off
    model.save(tmp_path / "model")
    assert Answerer.load(tmp_path / "model").choices_hold()
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    del cfg["config"]["choice_answers"]
    (tmp_path / "model" / "config.json").write_text(json.dumps(cfg))
    assert not Answerer.load(tmp_path / "model").choices_hold()
    with pytest.raises(ValueError, match="choice_answers is 'yes'"):
        VqaConfig(choice_answers="yes")


def test_a_set_whose_choice_questions_are_answered_yes_or_no_keeps_them_unrestricted(tiny_set, tmp_path):
    # PathVQA's way: "are these cells basophilic, eosinophilic, or nonstaining?" - "yes"
    from medweave.vqa.features import embed_questions

    model, img, _ = _fit(tiny_set, tmp_path, lambda side: "yes" if side == "left" else "no")
    assert model.meta["choice_training"] == {"acted": N_TRAIN, "named": 0, "holds": False}
    assert not model.choices_hold()
    qe = np.repeat(embed_questions([CHOICE]), len(img), axis=0)
    preds = model.predict(img, qe, questions=[CHOICE] * len(img))
    assert all(p.choices == () for p in preds) and {p.answer for p in preds} <= {"yes", "no"}


def test_calibration_counts_and_thresholds():
    idx = ChoiceIndex(VOCAB)
    qs = ["Is it an MRI or a CT?"] * 4 + ["Which side?"]
    assert calibrate(idx, qs, ["ct", "mri", "CT", "yes", "left"]) == {"acted": 4, "named": 3, "holds": False}
    assert calibrate(idx, qs + qs[:1], ["ct", "mri", "CT", "yes", "left", "no"]) == \
        {"acted": 5, "named": 3, "holds": True}
    assert calibrate(idx, qs + qs[:2], ["ct", "mri", "yes", "yes", "left", "no", "no"])["holds"] is False
    with pytest.raises(ValueError, match="2 question texts for 1 answers"):
        calibrate(idx, qs[:2], ["ct"])
