"""Scoring a free-text scrubber on a labelled corpus (``tests/data/deid/notes.txt``, format in its README).

Counting is per token (a run of letters or digits): a labelled identifier token is *caught* when a
span the scrubber found covers it whole; a token the scrubber took away is a *false positive* when
no label covers it. Titles and credentials (``Dr``, ``Mrs``, ``MD``, ``RN``...) are not counted
either way: whether "Dr." goes with the name is a matter of taste, not of privacy.

* recall per category = caught identifier tokens / identifier tokens of that category
* precision per tag = tokens inside spans of that tag that are identifiers / tokens inside spans of that tag
* over-scrubbing = ``KEEP`` tokens (clinical words) taken away / ``KEEP`` tokens, and
  non-identifier tokens taken away / non-identifier tokens
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .deid_text import Span

GROUPS = {
    "names": ("NAME",),
    "locations": ("STREET", "CITY", "HOSPITAL"),
    "structured": ("ZIP", "DATE", "AGE", "PHONE", "FAX", "EMAIL", "SSN", "MRN", "ID", "ACCOUNT", "LICENSE",
                   "URL", "IP"),
}
CATEGORIES = tuple(c for cats in GROUPS.values() for c in cats)
_UNCOUNTED = {"dr", "mr", "mrs", "ms", "mx", "miss", "prof", "father", "md", "rn", "np", "pa", "c", "phd",
              "lcsw", "do", "m", "d"}
_MARK_RE = re.compile(r"\{\{([A-Z]+)\|(.*?)\}\}")
_TOKEN_RE = re.compile(r"[A-Za-z]+|[0-9]+")


@dataclass
class Note:
    id: str
    split: str
    text: str
    labels: list[tuple[int, int, str]]  # (start, end, category) incl. KEEP


@dataclass
class Score:
    recall: dict[str, tuple[int, int]] = field(default_factory=dict)  # category -> (caught, total)
    precision: dict[str, tuple[int, int]] = field(default_factory=dict)  # tag -> (identifier, total)
    keep: tuple[int, int] = (0, 0)  # (taken away, total)
    other: tuple[int, int] = (0, 0)  # non-identifier tokens (taken away, total)
    missed: list[tuple[str, str, str]] = field(default_factory=list)  # (note, category, text)
    wrong: list[tuple[str, str, str]] = field(default_factory=list)  # (note, tag, text)

    def group_recall(self, group: str) -> float:
        caught = sum(self.recall.get(c, (0, 0))[0] for c in GROUPS[group])
        total = sum(self.recall.get(c, (0, 0))[1] for c in GROUPS[group])
        return caught / total if total else float("nan")

    def overall_precision(self) -> float:
        good = sum(v[0] for v in self.precision.values())
        total = sum(v[1] for v in self.precision.values())
        return good / total if total else float("nan")


def parse_notes(path: Path) -> list[Note]:
    """Read the corpus: ``=== id split ===`` headers, ``{{CAT|text}}`` marks."""
    notes: list[Note] = []
    raw = Path(path).read_text(encoding="utf-8")
    for block in re.split(r"^=== ", raw, flags=re.MULTILINE):
        if not block.strip():
            continue
        header, _, body = block.partition("\n")
        parts = header.replace("===", "").split()
        if len(parts) != 2 or parts[1] not in ("dev", "test"):
            raise ValueError(f"{path}: note header {header!r} should be '=== <id> dev|test ==='")
        text, labels, pos = [], [], 0
        length = 0
        for m in _MARK_RE.finditer(body):
            text.append(body[pos:m.start()])
            length += m.start() - pos
            cat, value = m.group(1), m.group(2)
            if cat not in CATEGORIES and cat != "KEEP":
                raise ValueError(f"{path}: note {parts[0]}: unknown category {cat!r}; expected one of "
                                 f"{', '.join(CATEGORIES)} or KEEP")
            labels.append((length, length + len(value), cat))
            text.append(value)
            length += len(value)
            pos = m.end()
        text.append(body[pos:])
        notes.append(Note(parts[0], parts[1], "".join(text).rstrip("\n") + "\n", labels))
    return notes


def score(notes: list[Note], find: Callable[[str], list[Span]]) -> Score:
    """Score ``find`` (text -> spans, like ``medweave.store.deid_text.find_phi``) on ``notes``."""
    recall: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    precision: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    keep, other = [0, 0], [0, 0]
    out = Score()
    for note in notes:
        spans = find(note.text)
        missed_cats: Counter = Counter()
        for tok in _TOKEN_RE.finditer(note.text):
            if tok.group(0).lower() in _UNCOUNTED:
                continue
            a, b = tok.start(), tok.end()
            label = next((c for s, e, c in note.labels if s <= a and b <= e), None)
            covered = next((sp for sp in spans if sp.start <= a and b <= sp.end), None)
            touched = covered or next((sp for sp in spans if sp.start < b and a < sp.end), None)
            if label and label != "KEEP":
                recall[label][1] += 1
                if covered:
                    recall[label][0] += 1
                else:
                    missed_cats[label] += 1
            else:
                if label == "KEEP":
                    keep[1] += 1
                    keep[0] += bool(touched)
                other[1] += 1
                other[0] += bool(touched)
            if touched:
                precision[touched.tag][1] += 1
                if label and label != "KEEP":
                    precision[touched.tag][0] += 1
                else:
                    out.wrong.append((note.id, touched.tag, tok.group(0)))
        for s, e, c in note.labels:
            if c != "KEEP" and any(not any(sp.start <= t.start() + s and t.end() + s <= sp.end for sp in spans)
                                   for t in _TOKEN_RE.finditer(note.text[s:e])
                                   if t.group(0).lower() not in _UNCOUNTED):
                out.missed.append((note.id, c, note.text[s:e]))
    out.recall = {k: (v[0], v[1]) for k, v in recall.items()}
    out.precision = {k: (v[0], v[1]) for k, v in precision.items()}
    out.keep, out.other = (keep[0], keep[1]), (other[0], other[1])
    return out


def corpus_path() -> Path:
    """The corpus in a source checkout (it lives with the tests, not in the package)."""
    return Path(__file__).resolve().parents[3] / "tests" / "data" / "deid" / "notes.txt"
