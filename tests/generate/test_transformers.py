"""The transformers backend with tiny randomly initialised models written by save_pretrained (no
weights can be had here): text and image-text, greedy determinism, seeded sampling, errors."""

import io

import pytest
from PIL import Image

pytest.importorskip("transformers", reason="transformers not installed (pip install 'medweave[hf]')")

from medweave.generate import BackendError, GenParams, ImageData, load_backend, user  # noqa: E402
from medweave.generate.testing import write_tiny_text_model, write_tiny_vision_model  # noqa: E402


@pytest.fixture(scope="module")
def text_backend(tmp_path_factory):
    folder = write_tiny_text_model(tmp_path_factory.mktemp("hf") / "tiny-llama")
    with load_backend("transformers", model=str(folder)) as b:
        yield b


@pytest.fixture(scope="module")
def vision_backend(tmp_path_factory):
    folder = write_tiny_vision_model(tmp_path_factory.mktemp("hf") / "tiny-llava")
    with load_backend("transformers", model=str(folder)) as b:
        yield b


def picture() -> ImageData:
    from medweave.vqa.testing import picture as pic

    buf = io.BytesIO()
    Image.fromarray(pic("left", "CHEST", 1)).save(buf, format="PNG")
    return ImageData(buf.getvalue(), "image/png")


def test_text_model_is_greedy_at_temperature_0_and_reports_tokens(text_backend):
    msgs = [user("Is there a fracture ?")]
    a = text_backend.generate(msgs, GenParams(max_tokens=12))
    b = text_backend.generate(msgs, GenParams(max_tokens=12))
    assert a.text == b.text and a.text.strip()
    assert a.completion_tokens == 12 and a.finish_reason == "length" and a.prompt_tokens > 3
    assert len(a.logprobs) == 12 and all(t["logprob"] <= 0 for t in a.logprobs)
    s1 = text_backend.generate(msgs, GenParams(max_tokens=12, temperature=1.0, seed=3))
    s2 = text_backend.generate(msgs, GenParams(max_tokens=12, temperature=1.0, seed=3))
    assert s1.text == s2.text
    with pytest.raises(BackendError, match="text only"):
        text_backend.generate([user(picture(), "which side ?")])


def test_stop_strings_cut_the_text(text_backend):
    full = text_backend.generate([user("Is there a fracture ?")], GenParams(max_tokens=12)).text
    word = full.split()[1]
    cut = text_backend.generate([user("Is there a fracture ?")], GenParams(max_tokens=12, stop=(word,))).text
    assert word not in cut and full.startswith(cut.rstrip())


def test_image_text_model_reads_the_picture(vision_backend):
    msgs = [user(picture(), "which side ?")]
    a = vision_backend.generate(msgs, GenParams(max_tokens=6))
    assert a.text == vision_backend.generate(msgs, GenParams(max_tokens=6)).text
    assert a.prompt_tokens > 16  # the picture's 16 patch tokens + the text
    blank = ImageData(__import__("medweave.evaluate.probes", fromlist=["png"]).png(
        __import__("numpy").zeros((64, 64), dtype="uint8")).data)
    other = vision_backend.generate([user(blank, "which side ?")], GenParams(max_tokens=6))
    assert other.logprobs != a.logprobs  # the answer depends on the picture


def test_never_downloads(tmp_path):
    with pytest.raises(BackendError, match="not a local model folder"):
        load_backend("transformers", model="gpt2")
    with pytest.raises(BackendError, match="not a local model folder"):
        load_backend("transformers", model=str(tmp_path))


def test_harness_runs_a_text_task_with_it(text_backend, tmp_path):
    from medweave.evaluate.harness import run_task
    from medweave.evaluate.tasks import load_task

    res = run_task(load_task("anatomy-mcq"), text_backend, tmp_path / "run", limit=4, n_boot=50, progress=False)
    assert res["samples"] == 4 and res["failed"] == 0 and 0 <= res["metrics"]["accuracy"]["value"] <= 1
