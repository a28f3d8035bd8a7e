"""Answer normalisation shared by training (the answer vocabulary) and scoring (exact match).

``normalize_answer``: lower case; punctuation replaced by spaces (a decimal point between digits
is kept, so "2.5" stays "2.5"); the articles "a", "an", "the" dropped; whitespace collapsed; and a
whole answer that is a yes/no synonym mapped to "yes" or "no" (``YES_WORDS`` / ``NO_WORDS``).
"""

from __future__ import annotations

import re
from functools import lru_cache

YES_WORDS = frozenset({"yes", "y", "yeah", "yep", "true", "correct", "affirmative"})
NO_WORDS = frozenset({"no", "n", "nope", "false", "incorrect", "negative"})
ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = re.compile(r"(?<!\d)\.|\.(?!\d)|[^\w\s.]")


def tokens(text: object) -> list[str]:
    """The normalised tokens of a text (lower case, no punctuation, no articles)."""
    cleaned = _PUNCT.sub(" ", str(text).lower().replace("_", " "))
    return [t for t in cleaned.split() if t not in ARTICLES]


def normalize_answer(text: object) -> str:
    """The canonical form of an answer, compared by exact match (see the module docstring)."""
    return _normalized(str(text))


@lru_cache(maxsize=1 << 16)
def _normalized(text: str) -> str:  # every metric of every sample normalises the same few answers again
    joined = " ".join(tokens(text))
    if joined in YES_WORDS:
        return "yes"
    if joined in NO_WORDS:
        return "no"
    return joined


def is_yesno(answer: object) -> bool:
    """Whether an answer normalises to "yes" or "no"."""
    return normalize_answer(answer) in ("yes", "no")
