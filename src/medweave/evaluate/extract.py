"""How an answer is taken from a model's free text, registered by name (``EXTRACTORS``).

- ``raw``: the text as it is (whitespace trimmed).
- ``exact``: the first non-empty line, with a leading "Answer:" / "The answer is" and wrapping quotes
  or a final period removed; compared after ``normalize_answer`` by the metrics.
- ``yesno``: "yes" or "no" when the text's first yes/no word decides it ("Yes, there is ..." -> yes,
  "There is no fracture" -> no); otherwise as ``exact``.
- ``auto`` (the VQA default): ``yesno`` when the reference answer is yes/no, else ``exact``.
- ``option``: the letter of a multiple-choice option: a standalone letter ("B", "(B)", "B.", "answer is
  B"), else the option whose text the answer names; "" when none.
- ``number``: the first number in the text ("about 3 cm" -> "3"); "" when none.

A reply that opens with ``ABSTAINED`` ("[abstained] the picture holds no readable content: ...", the
VQA answerer's picture gate: ``medweave.vqa.gate``) is no answer: the harness extracts "" from it
(``is_abstention``) before any extractor could read the "no" of its reason as an answer.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from ..registry import Registry
from ..vqa.normalize import NO_WORDS, YES_WORDS, is_yesno, normalize_answer, tokens

_PREFIX = re.compile(r"^\s*(?:(?:the\s+)?(?:final\s+|short\s+)?answer(?:\s+is)?\s*[:\-]?|a\s*:|assistant\s*:)\s*",
                     re.IGNORECASE)
_LETTER = re.compile(r"(?:^|[\s(\[])([A-J])(?:$|[\s).\]:,])")
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")


def is_abstention(text: str) -> bool:
    from ..vqa.gate import ABSTAINED

    return str(text).lstrip().startswith(ABSTAINED)


def extract_raw(text: str, sample: Any = None) -> str:
    return str(text).strip()


def extract_exact(text: str, sample: Any = None) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    first = _PREFIX.sub("", lines[0]) if lines else ""
    if not first and len(lines) > 1:  # "Answer:" alone on its line
        first = lines[1]
    first = first.strip().strip("\"'`*").strip()
    return first[:-1].strip() if first.endswith(".") else first


def extract_yesno(text: str, sample: Any = None) -> str:
    for t in tokens(text):
        if t in YES_WORDS:
            return "yes"
        if t in NO_WORDS or t in ("not", "none", "absent", "without"):
            return "no"
    return extract_exact(text, sample)


def extract_auto(text: str, sample: Any = None) -> str:
    ref = getattr(sample, "reference", "") if sample is not None else ""
    return extract_yesno(text, sample) if is_yesno(ref) else extract_exact(text, sample)


def extract_option(text: str, sample: Any = None) -> str:
    options = dict(getattr(sample, "options", None) or {})
    letters = "".join(options) or "ABCDE"
    body = _PREFIX.sub("", str(text).strip())
    for m in _LETTER.finditer(" " + body + " "):
        if m.group(1) in letters:
            return m.group(1)
    norm = normalize_answer(body)
    named = [k for k, v in options.items() if normalize_answer(v) and normalize_answer(v) in norm]
    return named[0] if len(named) == 1 else ""


def extract_number(text: str, sample: Any = None) -> str:
    m = _NUMBER.search(str(text))
    return m.group(0).replace(",", ".") if m else ""


EXTRACTORS: Registry[Callable[[str, Any], str]] = Registry("answer extractor", "medweave.extractors")
for _name, _fn in {"raw": extract_raw, "exact": extract_exact, "yesno": extract_yesno, "auto": extract_auto,
                   "option": extract_option, "number": extract_number}.items():
    EXTRACTORS.register(_name, _fn)
