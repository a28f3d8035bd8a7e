"""Retrieved context as text: the block the harness puts before a question (``format_context``) and
its reader (``split_context``), so that any backend gets the same examples in its prompt and the
builtin answerer can take them back as its context input.

```
Similar cases from the training set (most similar first; question, then answer):
[trainset:12] (similarity 0.93) Q: Is there a fracture? A: no
[trainset:40] (similarity 0.88) Q: Is the rib fractured? A: no
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HEADER = "Similar cases from the training set (most similar first; question, then answer):"
_ENTRY = re.compile(r"^\[(?P<id>[^\]\n]+)\] \(similarity (?P<score>-?[0-9.]+)\) Q: (?P<question>.*?) A: (?P<answer>.*)$")


@dataclass(frozen=True)
class ContextEntry:
    """One retrieved case: its id (the sample id in the pool it came from), similarity, question, answer."""

    id: str
    score: float
    question: str
    answer: str


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def format_context(entries: list[ContextEntry]) -> str:
    """The text block for ``entries`` (empty string for none)."""
    if not entries:
        return ""
    lines = [HEADER] + [f"[{_one_line(e.id)}] (similarity {e.score:.3f}) Q: {_one_line(e.question)} "
                        f"A: {_one_line(e.answer)}" for e in entries]
    return "\n".join(lines) + "\n"


def split_context(text: str) -> tuple[list[ContextEntry], str]:
    """(the context entries of a block in ``text``, the text without the block). A text without the
    header is returned whole with no entries; the block ends at the first line that is not an entry."""
    lines = str(text).split("\n")
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == HEADER)
    except StopIteration:
        return [], text
    entries, end = [], start + 1
    while end < len(lines):
        m = _ENTRY.match(lines[end].strip())
        if not m:
            break
        entries.append(ContextEntry(m["id"], float(m["score"]), m["question"], m["answer"]))
        end += 1
    return entries, "\n".join(lines[:start] + lines[end:]).strip("\n")
