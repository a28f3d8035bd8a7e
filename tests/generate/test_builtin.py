"""The builtin backend: medweave's VQA answerer behind the Backend interface, with real weights."""

import io

import pytest
from PIL import Image

from medweave.generate import BackendError, GenParams, ImageData, OptionsError, load_backend, parse_messages, user
from medweave.generate.builtin import question_from_prompt


def png(arr) -> ImageData:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return ImageData(buf.getvalue(), "image/png")


@pytest.fixture(scope="module")
def backend(tiny_vqa_model):
    with load_backend("builtin", model=str(tiny_vqa_model)) as b:
        yield b


@pytest.mark.parametrize("prompt", [
    "Which side is the opacity on?",
    "Which side is the opacity on?\nAnswer the question using a single word or phrase.",
    "<image>\nQuestion: Which side is the opacity on? Answer:",
    "Please answer the question based on the image. Which side is the opacity on?",
    "Which side is the opacity on? Please answer with a single word.",
    "You are a helpful radiology assistant. Look at the image carefully.\nWhich side is the opacity on?\n"
    "Short answer:",
])
def test_question_is_found_inside_instruction_wording(prompt):
    assert question_from_prompt(prompt) == "Which side is the opacity on?"


def test_context_before_the_question_stays():
    assert question_from_prompt("There is a mass in the liver. Is it malignant?") == \
        "There is a mass in the liver. Is it malignant?"
    assert question_from_prompt("Name the organ shown") == "Name the organ shown"


def test_training_pictures_come_from_the_cache_and_answers_match_the_model(backend, tiny_set, tiny_vqa_model):
    from medweave.vqa import Answerer, load_vqa
    from medweave.vqa.features import open_cache
    from medweave.vqa.pipeline import answer_set

    vqa = load_vqa(tiny_set)
    assert "12 picture" in backend.preload_note
    with open_cache(tiny_vqa_model / "embeddings.duckdb") as cache:
        expected = [p.answer for p in answer_set(Answerer.load(tiny_vqa_model), vqa, cache)]
    got = [backend.generate([user(vqa.image_path(q.image), q.question)]).text for q in vqa.questions]
    assert got == expected


def test_same_answer_whatever_the_wording_order_and_turns(backend):
    left = png(__import__("medweave.vqa.testing", fromlist=["picture"]).picture("left", "CHEST", 101))
    variants = [
        [user(left, "Which side is the opacity on?")],
        [user("Which side is the opacity on?", left)],
        [{"role": "system", "content": "You are a careful radiologist. Answer briefly."},
         user(left, "Which side is the opacity on?\nAnswer the question using a single word or phrase.")],
        [user(left, "Is the opacity on the left?"), {"role": "assistant", "content": "yes"},
         user("Which side is the opacity on?")],
        parse_messages([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": left.data_url()}},
            {"type": "text", "text": "Which side is the opacity on?"}]}]),
    ]
    answers = {backend.generate(v).text for v in variants}
    assert answers == {"left"}
    g = backend.generate(variants[0], GenParams(max_tokens=8))
    assert g.latency_s > 0 and g.logprobs and g.logprobs[0]["logprob"] <= 0 and g.extra["type"] == "open"


def test_bad_requests_name_the_problem(backend, tmp_path):
    with pytest.raises(BackendError, match="picture"):
        backend.generate([user("Which side is the opacity on?")])
    with pytest.raises(BackendError, match="cannot be decoded"):
        backend.generate([user(ImageData(b"\x89PNG\r\n\x1a\nnot really", "image/png"), "Which side?")])
    with pytest.raises(OptionsError, match="unknown option 'modle'.*allowed options: model"):
        load_backend("builtin", modle="x")
    with pytest.raises(BackendError, match="not a VQA model folder"):
        load_backend("builtin", model=str(tmp_path))
    with pytest.raises(KeyError, match="allowed values: builtin"):
        load_backend("no-such-backend")


def test_fingerprint_changes_with_the_weights(backend, tiny_vqa_model, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_vqa_model, copy)
    assert load_backend("builtin", model=str(copy)).fingerprint() == backend.fingerprint()
    (copy / "config.json").write_text((copy / "config.json").read_text().replace('"epochs": 40', '"epochs": 41'))
    assert load_backend("builtin", model=str(copy)).fingerprint() != backend.fingerprint()
