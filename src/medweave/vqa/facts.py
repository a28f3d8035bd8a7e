"""What is known of each picture — its organ, and its modality and plane where a question states them —
and yes/no questions generated from it.

Facts come from the set itself: the organ from ``image_organ``; the modality and plane from the answers
of MODALITY and PLANE questions ("t2 weighted" is MRI, "pa xray" is x-ray, "axial" is the axial plane).

Two users:
- Training (``fact_questions``): every known fact asked as true questions (answer yes) and as
  hallucinated ones naming another organ/modality/plane (answer no). Without them the answerer learns
  that "Is this the <organ>?" is answered by the picture's usual answer whatever organ is named
  (measured: 5% pair accuracy, below the 25% of guessing). Their wording (``TRAIN_TEMPLATES``) is
  disjoint from the probes' (``PROBE_TEMPLATES``), so a probe tests the fact, not a memorised sentence.
- Paired probes (``probes.py``): one true and one hallucinated question per fact, in the probe wording.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable

import numpy as np

from .data import Question
from .normalize import normalize_answer, tokens

KINDS = ("organ", "modality", "plane")
# canonical value -> the word used in probe questions
ORGANS = {"CHEST": "chest", "HEAD": "head", "ABD": "abdomen"}
MODALITIES = {"ct": "CT", "mri": "MRI", "x ray": "x-ray"}
PLANES = {"axial": "axial", "coronal": "coronal", "sagittal": "sagittal"}
WORDS = {"organ": ORGANS, "modality": MODALITIES, "plane": PLANES}
# canonical value -> words used in training questions (more than the probe's word)
SYNONYMS = {
    "organ": {"CHEST": ("chest", "lungs", "thorax"), "HEAD": ("head", "brain", "skull"),
              "ABD": ("abdomen", "abdominal cavity", "belly")},
    "modality": {"ct": ("CT", "CT scan", "computed tomography"), "mri": ("MRI", "MR", "magnetic resonance"),
                 "x ray": ("x-ray", "radiograph", "plain film")},
    "plane": {"axial": ("axial", "transverse"), "coronal": ("coronal",), "sagittal": ("sagittal",)},
}
# {w}: the word; {a_w}: the word after "a"/"an" (``with_article``)
PROBE_TEMPLATES = {"organ": "Is this an image of the {w}?", "modality": "Is this {a_w} image?",
                   "plane": "Is this image in the {w} plane?"}
TRAIN_TEMPLATES = {
    "organ": ("Does this image show the {w}?", "Is the {w} shown here?", "Is this a scan of the {w}?",
              "Was this picture taken of the {w}?", "Is the {w} the body part pictured?"),
    "modality": ("Was this image taken with {a_w}?", "Is the modality {a_w}?", "Is this picture {a_w} study?",
                 "Was {a_w} used to make this image?", "Is this study done by {a_w}?"),
    "plane": ("Was this image taken in the {w} plane?", "Is this {a_w} section?", "Is this {a_w} slice?",
              "Is the plane of this image {w}?"),
}

# answer keywords that name a modality or plane ("mr - t2 weighted" -> mri, "pa xray" -> x ray)
_MODALITY_WORDS = (("mri", re.compile(r"\b(mri?|flair|t1|t2|dwi|adc|diffusion)\b")),
                   ("ct", re.compile(r"\bct\b")),
                   ("x ray", re.compile(r"\b(x ray|xray|cxr|radiograph|plain film)\b")))
_PLANE_WORDS = (("axial", re.compile(r"\b(axial|transverse)\b")), ("coronal", re.compile(r"\bcoronal\b")),
                ("sagittal", re.compile(r"\bsagittal\b")))


def with_article(word: str) -> str:
    """``word`` after "a" or "an" as it is said ("an MRI", "an x-ray", "a CT")."""
    vowel_sound = word[0].lower() in "aeio" or word.split()[0] in ("MRI", "MR", "x-ray")
    return ("an " if vowel_sound else "a ") + word


def _named(patterns, answer: str) -> str | None:
    hits = {value for value, pattern in patterns if pattern.search(answer)}
    return hits.pop() if len(hits) == 1 else None


def picture_facts(records: Iterable[tuple[str, str, str, str, str]]) -> dict[str, dict[str, str]]:
    """Per picture {kind: canonical value} from (picture, question, question_type, answer, organ) records.

    A MODALITY/PLANE answer naming one modality/plane states it ("mr - flair"); so does a "yes" to a
    question naming exactly one ("Is this a noncontrast CT?" - yes).
    """
    facts: dict[str, dict[str, str]] = defaultdict(dict)
    for image, question, qtype, answer, organ in records:
        if organ in ORGANS:
            facts[image].setdefault("organ", organ)
        norm = normalize_answer(answer)
        stated = " ".join(tokens(question)) if norm == "yes" else norm
        if qtype == "MODALITY" and (value := _named(_MODALITY_WORDS, stated)):
            facts[image].setdefault("modality", value)
        if qtype == "PLANE" and (value := _named(_PLANE_WORDS, stated)):
            facts[image].setdefault("plane", value)
    return dict(facts)


_ORGAN_WORDS = (("CHEST", re.compile(r"\b(chest|lungs?|thorax|thoracic)\b")),
                ("HEAD", re.compile(r"\b(head|brain|skull|cranial|intracranial)\b")),
                ("ABD", re.compile(r"\b(abdomen|abdominal|belly)\b")))
_NAMING = {"organ": _ORGAN_WORDS, "modality": _MODALITY_WORDS, "plane": _PLANE_WORDS}


def named_facts(question: str) -> dict[str, list[str]]:
    """The organs, modalities and planes a question names, by kind ("Is this an axial CT?" ->
    modality [ct], plane [axial]); several values of a kind mean a choice ("CT or MRI?")."""
    text = " ".join(tokens(question))
    return {kind: [value for value, pattern in patterns if pattern.search(text)] for kind, patterns in _NAMING.items()}


def question_records(questions: Iterable[Question]) -> list[tuple[str, str, str, str, str]]:
    return [(q.image, q.question, q.question_type, q.answer, q.organ) for q in questions]


def hallucinated(kind: str, value: str, image: str) -> str:
    """A value of the same kind that the picture does not have, chosen by the picture's name."""
    others = sorted(v for v in WORDS[kind] if v != value)
    return others[sum(map(ord, image)) % len(others)]


def _say(template: str, word: str) -> str:
    return template.format(w=word, a_w=with_article(word))


def probe_question(kind: str, value: str, image: str, answer: str) -> Question:
    """The probe wording of "does ``image`` have ``value``?" with its reference answer."""
    return Question(_say(PROBE_TEMPLATES[kind], WORDS[kind][value]), image, answer, "CLOSED", "PROBE")


def fact_questions(facts: dict[str, dict[str, str]], per_fact: int = 2, seed: int = 0) -> list[Question]:
    """Training questions from known facts: ``per_fact`` true and ``per_fact`` hallucinated questions
    per fact, wording and synonym drawn at random from ``TRAIN_TEMPLATES`` / ``SYNONYMS``."""
    rng = np.random.default_rng(seed)
    out = []
    for image in sorted(facts):
        for kind, value in sorted(facts[image].items()):
            others = [v for v in WORDS[kind] if v != value]
            for j in range(per_fact):
                for target, answer in ((value, "yes"), (others[(j + rng.integers(len(others))) % len(others)], "no")):
                    words = SYNONYMS[kind][target]
                    template = TRAIN_TEMPLATES[kind][rng.integers(len(TRAIN_TEMPLATES[kind]))]
                    text = _say(template, words[rng.integers(len(words))])
                    out.append(Question(text, image, answer, "CLOSED", kind.upper()))
    return out
