"""Retrieved context for the answerer (``VqaConfig.context``): leakage impossible by construction
(the asked question and anything outside the training side are never retrieved, in training no row
sees itself or its paraphrase group), the context reaches the answer, plain models keep working."""

import json
import shutil

import numpy as np
import pytest

from medweave.vqa.data import load_vqa
from medweave.vqa.features import open_cache
from medweave.vqa.model import Answerer, VqaConfig
from medweave.vqa.pipeline import CACHE_NAME, answer_set, ask, embed_set, train_vqa
from medweave.vqa.splits import make_split
from medweave.vqa.testing import tiny_vqa_model  # noqa: F401  (a real plain model)


@pytest.fixture(scope="module")
def context_model(tiny_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("ctx") / "model"
    train_vqa(tiny_set, out, VqaConfig(seeds=2, epochs=40, context=3), split="questions", split_frac=0.25)
    return out


def test_context_never_holds_the_asked_question_nor_held_out_items(tiny_set, context_model):
    model = Answerer.load(context_model)
    assert model.cfg.context == 3 and json.loads((context_model / "config.json").read_text())["config"]["context"] == 3
    vqa = load_vqa(tiny_set)
    train, held = make_split("questions", vqa.questions, 0.25, 0)
    train_keys = {(vqa.questions[i].image, vqa.questions[i].qid) for i in train}
    held_keys = {(vqa.questions[i].image, vqa.questions[i].qid) for i in held}
    assert {(c["image"], c["qid"]) for c in model.cases} == train_keys  # the memory is the training side
    with open_cache(context_model / CACHE_NAME) as cache:
        img, qe = embed_set(vqa, cache, model.image_encoders())
    _, rows, scores = model.context_features(img, qe)
    for i, q in enumerate(vqa.questions):
        got = [model.cases[r] for r in rows[i] if r >= 0]
        assert len(got) == 3
        keys = {(c["image"], c["qid"]) for c in got}
        assert not keys & held_keys
        assert (q.image, q.qid) not in keys                      # never the question being answered ...
        assert not any(c["image"] == q.image and c["question"] == q.question for c in got)  # ... nor its copy
    # the asked training question would be its own best match (score 1.0) if it were a candidate
    own = [i for i, q in enumerate(vqa.questions) if (q.image, q.qid) in train_keys][0]
    full = model.similar_cases(img[own], qe[own], k=1)[0]
    assert full["qid"] == vqa.questions[own].qid and full["score"] > 0.999
    # vqa ask names the cases it drew on, and they are training cases other than the asked one
    q = vqa.questions[own]
    res = ask(model, vqa.image_path(q.image), q.question, None)
    assert len(res["context"]) == 3 and all((c["image"], c["qid"]) in train_keys - {(q.image, q.qid)}
                                            for c in res["context"])


def test_training_rows_never_see_themselves_or_their_group(context_model):
    model = Answerer.load(context_model)
    n = len(model.cases)
    groups = [i // 2 for i in range(n)]  # pairs of rows as paraphrase groups
    own = model.training_exclusion(groups)
    _, rows, _ = model.context_features(model.mem_img, model.mem_q, own)
    for i in range(n):
        assert not {i, i ^ 1} & set(rows[i].tolist())
        same = [j for j in range(n) if model.cases[j]["image"] == model.cases[i]["image"]
                and model.cases[j]["question"] == model.cases[i]["question"]]
        assert not set(same) & set(rows[i].tolist())


def test_context_reaches_the_answer(tiny_set, context_model):
    model = Answerer.load(context_model)
    vqa = load_vqa(tiny_set)
    with open_cache(context_model / CACHE_NAME) as cache:
        img, qe = embed_set(vqa, cache, model.image_encoders())
    i = next(j for j, q in enumerate(vqa.questions) if q.answer in ("left", "right"))
    probs = {side: model.classifier_probs(img[i:i + 1], qe[i:i + 1],
                                          model.context_from_answers([[side] * 3], [[0.99] * 3]))[0][0]
             for side in ("left", "right")}
    own = model.classifier_probs(img[i:i + 1], qe[i:i + 1])[0][0]  # its own retrieval
    assert not np.allclose(probs["left"], probs["right"], atol=1e-4)  # the answerer reads its context
    assert all(np.isclose(p.sum(), 1.0) for p in (*probs.values(), own))
    # an answer outside the vocabulary carries no mass: the same input as no neighbour at all
    assert np.array_equal(model.context_from_answers([["no such answer"]], [[0.9]]),
                          model.context_from_answers([[]], [[]]))


def test_a_model_without_context_keys_keeps_working(tiny_set, tiny_vqa_model, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_vqa_model, old)
    cfg = json.loads((old / "config.json").read_text())
    for key in ("context", "context_temperature"):
        cfg["config"].pop(key, None)
    (old / "config.json").write_text(json.dumps(cfg))
    a, b = Answerer.load(old), Answerer.load(tiny_vqa_model)
    assert a.cfg.context == 0
    vqa = load_vqa(tiny_set)
    with open_cache(old / CACHE_NAME) as cache:
        assert [p.answer for p in answer_set(a, vqa, cache)] == [p.answer for p in answer_set(b, vqa, cache)]


def test_bad_context_value_is_named():
    with pytest.raises(ValueError, match="context is -1"):
        VqaConfig(context=-1)
