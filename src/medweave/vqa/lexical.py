"""Lexical question features: the question's exact words, beside its e5 sentence embedding.

e5-small reads a question as one 384-d sentence vector, in which "left" and "right", "axial" and
"coronal", "MRI" and "CT" lie close together, while in VQA-RAD exactly such a word decides the answer.
``question_words`` gives the answerer the words themselves: signed feature hashing of the lower-cased
word unigrams and bigrams of the question into a fixed width, L2-normalised. It is stateless (a word's
column and sign come from a fixed hash of its text, never from Python's per-process ``hash``), so a
model saves nothing for it beyond the width (``VqaConfig.question_words``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

import numpy as np

WORD = re.compile(r"[a-z0-9]+")


def question_terms(text: str) -> list[str]:
    """The lower-cased word unigrams of ``text`` (runs of letters and digits) and its bigrams
    ("left lung"), in order: unigrams first, then bigrams."""
    words = WORD.findall(str(text).lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def _slot(term: str, width: int) -> tuple[int, float]:
    """(column, sign) of a term: from the first 8 bytes of its BLAKE2b digest."""
    h = int.from_bytes(hashlib.blake2b(term.encode(), digest_size=8).digest(), "little")
    return (h >> 1) % width, (1.0 if h & 1 else -1.0)


def question_words(texts: Sequence[str], width: int) -> np.ndarray:
    """(n, width) float32: per question, the signed hashed counts of its unigrams and bigrams
    (``question_terms``), L2-normalised (a question without a word: the zero row)."""
    if isinstance(texts, str):
        raise ValueError(f"texts is the string {texts[:40]!r}; expected a sequence of question texts")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"width is {width!r}; expected an integer >= 1")
    out = np.zeros((len(texts), width), np.float32)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"question text {i} is {text!r}; expected a string")
        for term in question_terms(text):
            col, sign = _slot(term, width)
            out[i, col] += sign
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norm, 1e-12)
