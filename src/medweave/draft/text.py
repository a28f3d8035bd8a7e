"""Small text tools the drafters share: ROUGE's tokenisation, a fast LCS F-measure, sentence splitting,
and the compression of a findings sentence into impression wording."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=200_000)
def rouge_tokens(text: str) -> tuple[str, ...]:
    """Tokens exactly as ``rouge-score`` makes them without stemming (lower case, non-alphanumerics split)."""
    return tuple(t for t in _NON_ALNUM.sub(" ", text.lower()).split() if t)


@lru_cache(maxsize=50_000)
def _match_masks(a: tuple[str, ...]) -> dict[str, int]:
    """Token -> bit mask of its positions in ``a`` (cached: a neighbour's impression is compared with
    every candidate of its report)."""
    masks: dict[str, int] = {}
    for i, x in enumerate(a):
        masks[x] = masks.get(x, 0) | (1 << i)
    return masks


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence: the bit-parallel algorithm (Allison and Dix; Hyyro),
    one big-integer step per token of ``b`` instead of a row of the dynamic programme: same result,
    about ten times faster on report-length texts in Python."""
    if not a or not b:
        return 0
    a = a if isinstance(a, tuple) else tuple(a)
    masks = _match_masks(a)
    full = (1 << len(a)) - 1
    v = full
    for y in b:
        u = v & masks.get(y, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def lcs_f(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-L F-measure (beta 1) of two token sequences, as rouge-score computes it."""
    n = lcs_length(a, b)
    if not n:
        return 0.0
    p, r = n / len(b), n / len(a)
    return 2 * p * r / (p + r)


_SENT_END = re.compile(r"(?<=[.!?])\s+(?=\S)|\n+")


def split_sentences(text: str) -> list[str]:
    """Sentences of a findings or impression text (at ., !, ? followed by space, and line breaks)."""
    return [s.strip() for s in _SENT_END.split(text or "") if s and s.strip()]


_LEAD = re.compile(r"^(?:there (?:is|are|has been|have been) (?:again |also |now )?(?:an? |the )?|"
                   r"again (?:seen |noted )?(?:is|are) |(?:also |again )?(?:noted|seen) (?:is|are) (?:an? )?)", re.I)
_TRAIL = re.compile(r"\s+(?:is|are) (?:again |also |now )?(?:present|seen|noted|identified|demonstrated|"
                    r"visualized|evident|redemonstrated)(?= *[,.;]|$)", re.I)


def compress(sentence: str) -> str:
    """A findings sentence in impression wording: "There is a small left effusion." -> "Small left
    effusion."; "Calcified granulomas are present." -> "Calcified granulomas."."""
    s = sentence.strip()
    s = _LEAD.sub("", s)
    s = _TRAIL.sub("", s)
    s = s.strip(" ,;")
    if not s:
        return sentence.strip()
    s = s[0].upper() + s[1:]
    return s if s.endswith((".", "!", "?")) else s + "."


def numbered(parts: Sequence[str]) -> str:
    """"1. A. 2. B." from sentences A, B (the numbered style many radiologists use)."""
    return " ".join(f"{i + 1}. {p.strip()}" for i, p in enumerate(parts))


_NUM_PREFIX = re.compile(r"^\s*\d+\.\s*")


def strip_number(text: str) -> str:
    return _NUM_PREFIX.sub("", text)


def is_numbered(text: str) -> bool:
    return bool(_NUM_PREFIX.match(text or ""))
