"""The answerer standardises the question embedding on its training rows, as it does the picture
(``VqaConfig.question_scale``): e5 vectors are L2-normalised (per-dimension sd about 0.02), so read raw
beside standardised picture dimensions the question starts drowned (issue 10)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medweave.vqa.data import load_vqa
from medweave.vqa.features import open_cache
from medweave.vqa.model import Answerer, VqaConfig
from medweave.vqa.pipeline import CACHE_NAME, embed_set, train_vqa


@pytest.fixture(scope="module")
def trained(tiny_set, tmp_path_factory):
    """(scaled model folder, raw model folder, picture embeddings, question embeddings) of the tiny set."""
    root = tmp_path_factory.mktemp("qscale")
    train_vqa(tiny_set, root / "scaled", VqaConfig(seeds=1, epochs=5, views=1, question_scale=True))
    train_vqa(tiny_set, root / "raw", VqaConfig(seeds=1, epochs=5, views=1, question_scale=False))
    with open_cache(root / "scaled" / CACHE_NAME) as cache:
        img, qe = embed_set(load_vqa(tiny_set), cache, ("efficientnet-lite0",))
    return root / "scaled", root / "raw", img, qe


def test_question_scale_is_the_default():
    assert VqaConfig().question_scale is True


def test_the_networks_read_the_question_standardised_on_the_training_rows(trained):
    scaled, raw, img, qe = trained
    model = Answerer.load(scaled)
    x = model._question_input(qe)
    assert np.abs(x.mean(0)).max() < 1e-4
    # every dimension that varies over the training questions has sd about 1 (the raw e5 ones about 0.02-0.1)
    varies = qe.std(0) > 0.01
    assert varies.sum() > 100 and np.allclose(x.std(0)[varies], 1.0, atol=0.1)
    assert qe.std(0)[varies].max() < 0.5
    plain = Answerer.load(raw)
    assert plain.q_mean is None and np.array_equal(plain._question_input(qe), qe)


def test_scaled_model_round_trips_and_answers_as_trained(trained, tiny_set, tmp_path):
    scaled, _, img, qe = trained
    vqa = load_vqa(tiny_set)
    model, _ = train_vqa(tiny_set, tmp_path / "again", VqaConfig(seeds=1, epochs=5, views=1, question_scale=True))
    loaded = Answerer.load(tmp_path / "again")
    assert loaded.cfg.question_scale and loaded.q_mean is not None
    np.testing.assert_array_equal(loaded.q_mean, model.q_mean)
    texts = [q.question for q in vqa.questions]
    a = model.classifier_probs(img, qe)[0]
    b = loaded.classifier_probs(img, qe)[0]
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert [p.answer for p in loaded.predict(img, qe, questions=texts)] == \
        [p.answer for p in model.predict(img, qe, questions=texts)]


def test_a_model_saved_before_question_scale_reads_its_questions_raw(trained, tmp_path):
    """config.json without the key (every model trained before it existed) loads as question_scale False."""
    import shutil

    _, raw, img, qe = trained
    old = tmp_path / "old"
    shutil.copytree(raw, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["config"]["question_scale"]
    (old / "config.json").write_text(json.dumps(cfg))
    model = Answerer.load(old)
    assert model.cfg.question_scale is False and model.q_mean is None
    np.testing.assert_allclose(model.classifier_probs(img, qe)[0], Answerer.load(raw).classifier_probs(img, qe)[0],
                               atol=1e-6)


def test_config_and_weights_that_disagree_name_the_field(trained, tmp_path):
    import shutil

    _, raw, _, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(raw, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["config"]["question_scale"] = True
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="question_scale is True but the weights lack q_mean"):
        Answerer.load(bad)
