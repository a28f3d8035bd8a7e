"""The picture prior (``VqaConfig.picture_prior``): answers that training questions about the asked
picture itself had are boosted, by how close those questions are to the asked one; a picture that is
not a training picture (blank, noise, a new one) gets no boost at all, so the probes' blank-picture
check still sees the answerer without it."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from medweave.vqa.data import load_vqa
from medweave.vqa.features import open_cache
from medweave.vqa.model import Answerer, VqaConfig
from medweave.vqa.normalize import normalize_answer
from medweave.vqa.pipeline import CACHE_NAME, embed_set, fit_set

N_TRAIN_PICTURES = 10  # of the tiny set's 12; the last two are never trained on


@pytest.fixture(scope="module")
def fitted(tiny_set, tmp_path_factory):
    """(model trained one epoch on the first 10 pictures, the set, picture embeddings, question embeddings,
    training row indices, held-out row indices)."""
    root = tmp_path_factory.mktemp("prior")
    vqa = load_vqa(tiny_set)
    names = vqa.image_names()
    train = [i for i, q in enumerate(vqa.questions) if names.index(q.image) < N_TRAIN_PICTURES]
    held = [i for i in range(len(vqa.questions)) if i not in train]
    with open_cache(root / CACHE_NAME) as cache:
        img, qe = embed_set(vqa, cache, ("efficientnet-lite0",))
        # one epoch: the networks alone answer poorly, so what the prior decides is visible
        model = fit_set(vqa.subset(train), img[train], qe[train],
                        VqaConfig(seeds=1, epochs=1, views=1, fact_questions=0, picture_prior=0.0), cache)
    model.save(root / "model")
    return root / "model", model, vqa, img, qe, train, held


def _with(model: Answerer, **kw) -> Answerer:
    return replace(model, cfg=replace(model.cfg, **kw), _nets=model._nets)


def test_the_default_prior_is_the_one_chosen_on_inner_splits_and_its_settings_are_checked():
    # benchmarks/vqa_prior.py: beta 2, T 0.1 on inner test-like splits of the training side, seeds 0-2
    assert (VqaConfig().picture_prior, VqaConfig().picture_prior_temperature) == (2.0, 0.1)
    with pytest.raises(ValueError, match="picture_prior is -1.0"):
        VqaConfig(picture_prior=-1.0)
    with pytest.raises(ValueError, match="picture_prior_temperature 0"):
        VqaConfig(picture_prior=1.0, picture_prior_temperature=0)


def test_scores_name_the_answers_given_about_the_asked_picture(fitted):
    _, model, vqa, img, qe, train, _ = fitted
    i = train[0]  # a training row: its own question about its own picture scores its answer 1
    s = model.picture_prior_scores(img[i:i + 1], qe[i:i + 1])[0]
    own = {normalize_answer(q.answer) for q in vqa.questions if q.image == vqa.questions[i].image}
    assert s.max() == pytest.approx(1.0)
    assert s[model.vocab.index(normalize_answer(vqa.questions[i].answer))] == pytest.approx(1.0)
    # only answers given about that picture score at all
    assert {model.vocab[j] for j in np.flatnonzero(s > 0)} <= own
    # the other question about the same picture scores lower the colder the temperature
    other = [j for j in np.flatnonzero(s > 0) if model.vocab[j] != normalize_answer(vqa.questions[i].answer)]
    assert other and 0 < s[other[0]] < 1.0
    cold = _with(model, picture_prior_temperature=0.01).picture_prior_scores(img[i:i + 1], qe[i:i + 1])[0]
    assert cold[other[0]] < s[other[0]]


def test_a_strong_prior_answers_from_what_training_said_about_the_asked_picture(fitted):
    _, model, vqa, img, qe, train, _ = fitted
    # the memory off (it would answer these from the same question about the same picture on its own)
    model = _with(model, memory_weight=0.0)
    texts = [vqa.questions[i].question for i in train]
    base = [normalize_answer(p.answer) for p in model.predict(img[train], qe[train], questions=texts)]
    # what training said about each picture's side, swapped (left <-> right) in the rows the prior reads
    swap = {"left": "right", "right": "left"}
    relabelled = np.array([model.vocab.index(swap.get(model.vocab[a], model.vocab[a])) for a in model.mem_answer])
    strong = replace(_with(model, picture_prior=1000.0, picture_prior_temperature=0.01), mem_answer=relabelled)
    preds = [normalize_answer(p.answer) for p in strong.predict(img[train], qe[train], questions=texts)]
    for i, b, p in zip(train, base, preds):
        want = normalize_answer(vqa.questions[i].answer)
        assert p == swap.get(want, want), (vqa.questions[i].question, b, p)
    assert sum(b != p for b, p in zip(base, preds)) >= len(train) // 2 - 2  # the side answers did flip


def test_a_picture_never_trained_on_gets_no_prior(fitted):
    _, model, vqa, img, qe, _, held = fitted
    strong = _with(model, picture_prior=1000.0)
    blank = np.zeros_like(img[held])
    # (the tiny set's held-out pictures are near copies of training ones, cosine >= 0.99: the memory and
    # the prior take them for the same picture, so a blank and a noise picture stand for a new one)
    for pictures in (blank, np.random.default_rng(0).normal(size=img[held].shape).astype(np.float32)):
        assert strong.picture_prior_scores(pictures, qe[held]).max() == 0.0
        a = strong.predict(pictures, qe[held], decoder=False)
        b = model.predict(pictures, qe[held], decoder=False)
        assert [p.answer for p in a] == [p.answer for p in b]
        np.testing.assert_allclose([p.prob for p in a], [p.prob for p in b], rtol=1e-6)


def test_the_prior_round_trips_and_an_older_model_loads_without_it(fitted, tmp_path):
    folder, model, _, img, qe, train, _ = fitted
    on = tmp_path / "on"
    _with(model, picture_prior=5.0, picture_prior_temperature=0.3).save(on)
    loaded = Answerer.load(on)
    assert (loaded.cfg.picture_prior, loaded.cfg.picture_prior_temperature) == (5.0, 0.3)
    old = tmp_path / "old"
    shutil.copytree(on, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["config"]["picture_prior"]  # every model trained before the prior existed
    (old / "config.json").write_text(json.dumps(cfg))
    assert Answerer.load(old).cfg.picture_prior == 0.0
    a = Answerer.load(old).predict(img[train], qe[train], decoder=False)
    b = model.predict(img[train], qe[train], decoder=False)
    assert [p.answer for p in a] == [p.answer for p in b]


def test_the_answer_time_screen_reads_its_grid_strictly():
    # benchmarks/vqa_prior.py --grid: only settings read at answer time (one fit scores the whole grid),
    # every one a VqaConfig field; the prior's beta x temperature without --grid
    import importlib.util
    from dataclasses import fields
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "vqa_prior.py"
    spec = importlib.util.spec_from_file_location("vqa_prior", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from medweave.vqa.model import ANSWER_TIME_FIELDS

    assert mod.ANSWER_TIME == ANSWER_TIME_FIELDS and set(ANSWER_TIME_FIELDS) <= {f.name for f in fields(VqaConfig)}
    assert mod.parse_grid(None) == {"picture_prior": mod.BETAS, "picture_prior_temperature": mod.TEMPERATURES}
    assert mod.parse_grid("memory_weight=0.5, 1; memory_temperature=0.02") == {
        "memory_weight": (0.5, 1.0), "memory_temperature": (0.02,)}
    with pytest.raises(SystemExit, match="'epochs' is not a setting read at answer time"):
        mod.parse_grid("epochs=10,20")
    with pytest.raises(SystemExit, match="memory_weight's values 'a' are not numbers"):
        mod.parse_grid("memory_weight=a")
    with pytest.raises(SystemExit, match="question_cos has no values"):
        mod.parse_grid("question_cos=")
