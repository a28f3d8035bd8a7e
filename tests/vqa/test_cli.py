"""Train, evaluate, ask, probe and retrieve through the real ``medweave`` command on a tiny set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medweave.vqa.data import VqaDataError, load_vqa
from medweave.vqa.features import embed_image_files, embed_questions
from medweave.vqa.model import Answerer

from .conftest import N_IMAGES, medweave


def test_evaluate_json_scores_the_training_set(tiny_model, tiny_set):
    res = json.loads(medweave("vqa", "evaluate", "--model", str(tiny_model), "--questions",
                              str(tiny_set / "train.json"), "--images", str(tiny_set / "images"),
                              "--bootstrap", "50", "--json").stdout)
    assert res["questions"] == 2 * N_IMAGES
    assert res["overall_acc"]["value"] >= 0.9
    for name in ("closed_acc", "open_acc", "closed_acc_yesno", "open_recall"):
        assert res[name]["lo"] <= res[name]["value"] <= res[name]["hi"]
    assert set(res["by_organ"]) == {"CHEST", "HEAD"}


def test_ask_prints_answer_type_and_similar_cases(tiny_model, tiny_set):
    res = json.loads(medweave("vqa", "ask", "--model", str(tiny_model), "--image", str(tiny_set / "images/img01.png"),
                              "--question", "Which side is the opacity on?", "-k", "2", "--json").stdout)
    assert res["answer"] == "right" and res["type"] == "open" and 0 < res["probability"] <= 1
    assert len(res["similar_cases"]) == 2 and res["similar_cases"][0]["image"] == "img01.png"


def test_probe_blank_image_is_worse(tiny_model, tiny_set):
    res = json.loads(medweave("vqa", "probe", "--model", str(tiny_model), "--questions", str(tiny_set / "train.json"),
                              "--bootstrap", "20", "--json").stdout)
    abl = res["ablation"]
    assert set(abl) == {"real", "blank", "noise", "other_same_organ", "question_only", "blank_beyond_question_only"}
    assert abl["blank"]["overall_acc"]["value"] < abl["real"]["overall_acc"]["value"]
    # beside the blank picture, the question-only guess on the same questions: the baseline itself,
    # computed here from the training file, and below the real picture (each text is asked of every picture)
    from medweave.evaluate.answers import exact_match
    from medweave.vqa.baselines import question_only

    vqa = load_vqa(tiny_set / "train.json")
    qe = embed_questions([q.question for q in vqa.questions])
    guess = question_only(qe, [q.answer for q in vqa.questions], qe)
    assert abl["question_only"]["overall_acc"]["value"] == pytest.approx(
        np.mean([exact_match(g, q.answer) for g, q in zip(guess, vqa.questions)]))
    assert abl["question_only"]["overall_acc"]["value"] < abl["real"]["overall_acc"]["value"] - 0.3
    gain = abl["blank_beyond_question_only"]
    assert gain["overall_acc"]["n"] == len(vqa.questions) and gain["open_acc"]["n"] == N_IMAGES
    assert gain["overall_acc"]["value"] <= abl["blank"]["overall_acc"]["value"]
    paired = res["paired"]
    assert paired["random_pair_acc"] == 0.25 and paired["by_kind"]["organ"]["pairs"] == N_IMAGES
    assert 0.0 <= paired["by_kind"]["all"]["pair_acc"] <= 1.0


def test_retrieve_returns_k_cases_with_organ(tiny_model, tiny_set):
    res = json.loads(medweave("retrieve", "--model", str(tiny_model), "--image", str(tiny_set / "images/img02.png"),
                              "-k", "3", "--json").stdout)
    assert len(res["hits"]) == 3 and all(h["organ"] in ("CHEST", "HEAD") for h in res["hits"])
    assert res["hits"][0]["image"] == "img02.png" and res["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert 0.0 <= res["precision_at_k_same_organ"] <= 1.0


def test_bad_inputs_name_the_culprit(tiny_model, tiny_set, tmp_path):
    proc = medweave("vqa", "ask", "--model", str(tiny_model), "--image", str(tmp_path / "nope.png"),
                    "--question", "x?", check=False)
    assert proc.returncode == 2 and "nope.png" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_name": "missing.png", "question": "q?", "answer": "yes"}]))
    proc = medweave("vqa", "evaluate", "--model", str(tiny_model), "--questions", str(bad),
                    "--images", str(tiny_set / "images"), check=False)
    assert proc.returncode == 2 and "missing.png" in proc.stderr
    with pytest.raises(VqaDataError, match="answer_type is 'MAYBE'"):
        bad.write_text(json.dumps([{"image_name": "img00.png", "question": "q?", "answer": "y",
                                    "answer_type": "maybe"}]))
        load_vqa(bad, tiny_set / "images")


def test_help_has_examples():
    for cmd in (["vqa", "train"], ["vqa", "evaluate"], ["vqa", "ask"], ["vqa", "probe"], ["retrieve"]):
        assert "Example: medweave " + cmd[0] in medweave(*cmd, "--help").stdout


def test_checkpoint_round_trip(tiny_model, tiny_set):
    vqa = load_vqa(tiny_set)
    img = embed_image_files([vqa.image_path(q.image) for q in vqa.questions])
    qe = embed_questions([q.question for q in vqa.questions])
    a, b = Answerer.load(tiny_model), Answerer.load(tiny_model)
    pa, pb = a.predict(img, qe), b.predict(img, qe)
    assert [p.answer for p in pa] == [p.answer for p in pb]
    assert np.allclose([p.prob for p in pa], [p.prob for p in pb])
    a.save(tiny_model.parent / "copy")
    pc = Answerer.load(tiny_model.parent / "copy").predict(img, qe)
    assert np.allclose([p.prob for p in pa], [p.prob for p in pc]) and a.vocab == ["left", "no", "right", "yes"]


def test_memory_needs_the_same_picture(tiny_model, tiny_set):
    """Same-picture memory answers only for a training picture, never for a blank or another picture."""
    from medweave.vqa.features import embed_image_arrays
    from medweave.evaluate.vqa import blank_image

    model = Answerer.load(tiny_model)
    qe = embed_questions(["Which side is the opacity on?"])
    real = embed_image_files([tiny_set / "images/img00.png"])
    blank = embed_image_arrays([blank_image()])
    assert model.predict(real, qe)[0].from_memory > 0.3
    assert model.predict(blank, qe)[0].from_memory == 0.0
    assert not model.same_image(blank).any() and model.same_image(real).sum() == 2


def test_train_defaults_are_the_model_defaults():
    """`medweave vqa train` without options trains the default configuration (VqaConfig), not another one."""
    import inspect

    from medweave.vqa.cli import train
    from medweave.vqa.model import VqaConfig

    defaults = {name: p.default.default for name, p in inspect.signature(train).parameters.items()}
    cfg = VqaConfig()
    for name in ("seeds", "epochs", "views", "finetune_blocks", "finetune_epochs", "context", "decoder",
                 "decoder_epochs"):
        assert defaults[name] == getattr(cfg, name), name


def test_answer_path_shortcuts_change_nothing(tiny_model, tiny_set):
    """Picture cosines taken once per distinct training picture equal the direct product, the similar
    cases are the plain search's, and answering one question leaves torch's and BLAS's threads as found."""
    import torch
    from threadpoolctl import threadpool_info

    from medweave.vqa.model import _l2, neighbours
    from medweave.vqa.pipeline import ask

    model = Answerer.load(tiny_model)
    img = embed_image_files([tiny_set / f"images/img{i:02d}.png" for i in range(N_IMAGES)])
    qe = embed_questions(["Which side is the opacity on?"] * N_IMAGES)
    assert len(model._pictures) == 0
    assert np.allclose(model.picture_cos(img), _l2(img) @ model.mem_img.T, atol=1e-6)
    assert model._pictures[0].shape[1] == N_IMAGES  # 24 memory rows, 12 distinct pictures
    idx, score = neighbours(img, qe, model.mem_img, model.mem_q, 3)
    for i in range(N_IMAGES):
        hits = model.similar_cases(img[i:i + 1], qe[i:i + 1], 3)
        assert [h["score"] for h in hits] == pytest.approx(list(score[i]), abs=1e-6)
        assert [h["image"] for h in hits] == [model.cases[j]["image"] for j in idx[i]]
    blas = lambda: [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]  # noqa: E731
    before = (torch.get_num_threads(), blas())
    res = ask(model, tiny_set / "images/img01.png", "Which side is the opacity on?")
    assert res["answer"] == "right" and (torch.get_num_threads(), blas()) == before
