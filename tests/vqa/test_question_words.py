"""Lexical question features (``VqaConfig.question_words``, ``medweave.vqa.lexical``): the answerer reads
the question's hashed unigrams and bigrams beside its e5 embedding, at every entry point that answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from medweave.vqa.data import load_vqa
from medweave.vqa.features import open_cache
from medweave.vqa.lexical import _slot, question_terms, question_words
from medweave.vqa.model import Answerer, VqaConfig
from medweave.vqa.pipeline import CACHE_NAME, answer_set, ask, embed_set, train_vqa

WIDTH = 64


@pytest.fixture(scope="module")
def trained(tiny_set, tmp_path_factory):
    """(model trained with question words, its folder, picture embeddings, question embeddings, texts)."""
    root = tmp_path_factory.mktemp("qwords")
    # lr pinned at 1e-3 (the default, but pinned): 20 epochs on the tiny set at 5e-4 leave the word weights too small to read
    cfg = VqaConfig(seeds=1, epochs=20, views=1, question_words=WIDTH, lr=1e-3)
    model, _ = train_vqa(tiny_set, root / "words", cfg)
    vqa = load_vqa(tiny_set)
    with open_cache(root / "words" / CACHE_NAME) as cache:
        img, qe = embed_set(vqa, cache, model.image_encoders())
    return model, root / "words", img, qe, [q.question for q in vqa.questions]


def test_terms_are_lower_cased_unigrams_then_bigrams():
    assert question_terms("Is the LEFT lung, clear?") == [
        "is", "the", "left", "lung", "clear", "is the", "the left", "left lung", "lung clear"]
    assert question_terms("  ?! ") == []


def test_features_are_the_normalised_signed_hashes_of_the_terms():
    x = question_words(["Is the left lung clear?", "Is the LEFT lung clear", "", "lung left"], 4096)
    assert x.shape == (4, 4096) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x[[0, 1, 3]], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(x[0], x[1])  # case and punctuation do not count
    assert not x[2].any()                       # no word: the zero row
    expected = np.zeros(4096, np.float32)
    for term in question_terms("Is the left lung clear?"):
        col, sign = _slot(term, 4096)
        expected[col] += sign
    np.testing.assert_allclose(x[0], expected / np.linalg.norm(expected), rtol=1e-6)
    # the same words in another order differ by their bigrams alone
    y = question_words(["left lung", "lung left"], 4096)
    assert not np.allclose(y[0], y[1])
    assert np.count_nonzero(y[0]) == 3 and np.count_nonzero(y[1]) == 3


def test_features_are_the_same_in_another_process():
    code = ("import sys, numpy as np; from medweave.vqa.lexical import question_words; "
            "sys.stdout.write(' '.join(map(str, np.flatnonzero(question_words(['Which organ is enlarged?'], 1024)[0]))))")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    here = " ".join(map(str, np.flatnonzero(question_words(["Which organ is enlarged?"], 1024)[0])))
    assert other == here and here


@pytest.mark.parametrize("width", [0.5, -1, True, "1024"])
def test_a_bad_width_names_the_field(width):
    with pytest.raises(ValueError, match="question_words is"):
        VqaConfig(question_words=width)
    if width != 0.5:
        with pytest.raises(ValueError, match="width is"):
            question_words(["a"], width)


def test_bad_texts_are_named():
    with pytest.raises(ValueError, match="texts is the string"):
        question_words("Is it left?", 16)
    with pytest.raises(ValueError, match="question text 1 is None"):
        question_words(["Is it left?", None], 16)


def test_the_networks_read_the_words(trained):
    model, _, img, qe, texts = trained
    x = model._question_input(qe[:2], texts[:2])
    assert x.shape == (2, qe.shape[1] + WIDTH)
    assert model._networks()[0].question[0].in_features == qe.shape[1] + WIDTH
    # the same embedding with other words: other probabilities (the words are an input, not decoration)
    a = model.classifier_probs(img[:1], qe[:1], questions=["Which side is the opacity on?"])[0]
    b = model.classifier_probs(img[:1], qe[:1], questions=["Is the opacity on the left?"])[0]
    assert np.abs(a - b).max() > 1e-3


def test_saved_and_loaded_it_answers_the_same(trained):
    model, folder, img, qe, texts = trained
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["question_words"] == WIDTH
    loaded = Answerer.load(folder)
    assert loaded.cfg.question_words == WIDTH
    np.testing.assert_allclose(loaded.classifier_probs(img, qe, questions=texts)[0],
                               model.classifier_probs(img, qe, questions=texts)[0], atol=1e-6)
    assert [p.answer for p in loaded.predict(img, qe, questions=texts)] == \
        [p.answer for p in model.predict(img, qe, questions=texts)]


def test_a_missing_question_text_is_a_clear_error(trained):
    model, _, img, qe, texts = trained
    with pytest.raises(ValueError, match=r"question_words=64.*question texts"):
        model.predict(img, qe)
    with pytest.raises(ValueError, match=r"question_words=64.*question texts"):
        model.question_type_probs(img, qe)
    with pytest.raises(ValueError, match="questions holds 1 texts for 24"):
        model.predict(img, qe, questions=texts[:1])
    with pytest.raises(ValueError, match="questions holds 1 string for 1"):
        model.predict(img[:1], qe[:1], questions=texts[0])


def test_every_entry_point_answers_with_the_words(trained, tiny_set):
    model, folder, img, qe, texts = trained
    vqa = load_vqa(tiny_set)
    expected = [p.answer for p in model.predict(img, qe, questions=texts)]
    with open_cache(folder / CACHE_NAME) as cache:
        assert [p.answer for p in answer_set(model, vqa, cache)] == expected  # vqa evaluate's path
        q = vqa.questions[1]
        assert ask(model, vqa.image_path(q.image), q.question, cache)["answer"] == expected[1]  # vqa ask, /api/ask
    from medweave.generate import load_backend, user

    with load_backend("builtin", model=str(folder)) as backend:  # the builtin backend (chat, the server)
        assert backend.generate([user(vqa.image_path(q.image), q.question)]).text == expected[1]


def test_a_model_saved_before_the_option_loads_with_it_off(tiny_set, tmp_path):
    model, _ = train_vqa(tiny_set, tmp_path / "old", VqaConfig(seeds=1, epochs=5, views=1))
    cfg_path = tmp_path / "old" / "config.json"
    config = json.loads(cfg_path.read_text())
    del config["config"]["question_words"]  # as written before the field existed
    cfg_path.write_text(json.dumps(config))
    old = Answerer.load(tmp_path / "old")
    assert old.cfg.question_words == 0
    vqa = load_vqa(tiny_set)
    with open_cache(tmp_path / "old" / CACHE_NAME) as cache:
        img, qe = embed_set(vqa, cache, old.image_encoders())
    # it needs no question texts, as before, and answers as the model it was saved from
    assert [p.answer for p in old.predict(img, qe)] == [p.answer for p in model.predict(img, qe)]
