"""Facts known of each picture, the yes/no training questions made from them, and the paired probes."""

from __future__ import annotations

from medweave.vqa.data import Question, VqaSet
from medweave.vqa.facts import (PROBE_TEMPLATES, SYNONYMS, TRAIN_TEMPLATES, fact_questions, hallucinated,
                                picture_facts, probe_question, question_records, with_article)
from medweave.vqa.features import open_cache
from medweave.vqa.model import VqaConfig
from medweave.vqa.pipeline import train_vqa
from medweave.evaluate.vqa import paired_probes, probe_pairs


def _q(image, question, qtype, answer, organ="HEAD"):
    return Question(question, image, answer, "OPEN", qtype, organ)


def test_facts_from_answers_and_from_yes_to_a_named_modality():
    facts = picture_facts(question_records([
        _q("a", "What kind of image is this?", "MODALITY", "MR - FLAIR"),
        _q("a", "In what plane is this image?", "PLANE", "Axial"),
        _q("b", "Is this a noncontrast CT?", "MODALITY", "Yes", "ABD"),
        _q("c", "Is this a CT?", "MODALITY", "No", "CHEST"),            # a "no" states nothing
        _q("d", "Is this a CT or an MRI?", "MODALITY", "yes", "CHEST"),  # names two: ambiguous
        _q("e", "Which modality?", "MODALITY", "x-ray plain film", "CHEST"),
        _q("f", "What is abnormal?", "ABN", "CT", "NECK"),              # not a modality question; no organ
    ]))
    assert facts["a"] == {"organ": "HEAD", "modality": "mri", "plane": "axial"}
    assert facts["b"] == {"organ": "ABD", "modality": "ct"}
    assert facts["c"] == {"organ": "CHEST"} and facts["d"] == {"organ": "CHEST"}
    assert facts["e"] == {"organ": "CHEST", "modality": "x ray"}
    assert "f" not in facts


def test_fact_questions_are_balanced_name_the_right_value_and_never_use_probe_wording():
    facts = {"p1": {"organ": "CHEST", "modality": "x ray"}, "p2": {"organ": "HEAD", "plane": "axial"}}
    qs = fact_questions(facts, per_fact=3, seed=1)
    assert len(qs) == 4 * 3 * 2
    assert sum(q.answer == "yes" for q in qs) == sum(q.answer == "no" for q in qs)
    probe_forms = {t.split("{")[0] for t in PROBE_TEMPLATES.values()}
    for q in qs:
        kind = q.question_type.lower()
        value = facts[q.image][kind]
        named = [v for v, words in SYNONYMS[kind].items() if any(w.lower() in q.question.lower() for w in words)]
        assert (q.answer == "yes") == (value in named), q.question
        assert not any(q.question.startswith(f) and f.strip() for f in probe_forms if len(f) > 12), q.question
        assert any(q.question.startswith(t.split("{")[0]) for t in TRAIN_TEMPLATES[kind])


def test_probe_wording_and_hallucinated_value():
    assert probe_question("modality", "mri", "x", "yes").question == "Is this an MRI image?"
    assert probe_question("modality", "ct", "x", "no").question == "Is this a CT image?"
    assert probe_question("organ", "ABD", "x", "yes").question == "Is this an image of the abdomen?"
    assert with_article("x-ray") == "an x-ray"
    for image in ("a.jpg", "bb.jpg", "ccc.jpg"):
        assert hallucinated("organ", "CHEST", image) in ("HEAD", "ABD")


def test_tiny_model_tells_organs_apart_in_paired_probes(tiny_set, tmp_path):
    """The tiny set's head pictures carry a ring; trained with fact questions, the answerer says yes to
    the true organ and no to the other one (random guessing gets 25% of the pairs)."""
    model, _ = train_vqa(tiny_set, tmp_path / "model", VqaConfig(seeds=1, epochs=150, fact_questions=4,
                                                                   fact_weight=1.0))
    assert model.meta["n_fact_questions"] > 0
    vqa = VqaSet([Question(c["question"], c["image"], c["answer"], c["answer_type"], c["question_type"], c["organ"])
                  for c in model.cases], tiny_set / "images")
    pairs = probe_pairs(model, vqa)
    assert {p[1] for p in pairs} == {"organ"} and len(pairs) == len(vqa.image_names())
    with open_cache(None) as cache:
        res = paired_probes(model, vqa, cache)
    assert res["by_kind"]["organ"]["pair_acc"] >= 0.75, res
