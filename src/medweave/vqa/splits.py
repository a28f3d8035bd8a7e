"""Validation splits of a VQA training file.

- ``testlike`` (the default for choices and benchmarks): mirrors the official VQA-RAD test. That test
  holds only free-form and paraphrased questions (``phrase_type`` ``freeform`` / ``para``), no
  templated (``frame``) ones, all about pictures that also appear in training. So: held-out questions
  are drawn from the free-form and paraphrased questions only, templated ones always stay in training,
  every held-out question's picture keeps training questions, and a paraphrase stays on the same side
  as the free-form question it rephrases. That last rule is measured, not assumed: in the training
  file 581 of 591 paraphrases have their free-form original in training too (the original is the
  free-form question of the same picture two qids away; the test's qids are the gaps in the training
  file's 1..3515), and the test's questions whose neighbours are known have a test question, not a
  training one, beside them (225 of 228): the official test holds pairs out together. The templated
  twin of a question (qid + 1, same picture) stays in training, as it does for 284 of the 451 official
  test questions. The held-out side has ``frac`` of all questions with the official test's closed share
  (272 of 451) and share of questions whose templated twin is in training (284 of 451; the eligible
  pool has 55%, the test 63%, too far apart for chance): VQA-RAD at frac 0.15 holds out 460 questions,
  277 closed, 290 with a twin.
  A set without phrase types (PathVQA, a user's file) has nothing templated to keep in training: there
  ``testlike`` is the ``questions`` split.
- ``images``: harder; hold out whole pictures with all their questions, so no held-out picture was seen
  in training (the PathVQA test's situation).
- ``questions``: the old reference (``frac`` of the questions held out, stratified by answer type ×
  question type, every picture keeps a training question). It mixes templated questions into the
  held-out side, which the official test never has; choices are not made on it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Sequence

import numpy as np

SPLITS = ("testlike", "images", "questions")
# the official VQA-RAD test (MEVF split): 451 questions, 272 closed, 284 with their templated twin in training
OFFICIAL_TEST = {"questions": 451, "closed": 272, "twin": 284}
DEFAULT_SPLIT = "testlike"
HELD_PHRASES = ("freeform", "para")  # the phrase types the official test holds (also as test_freeform, test_para)
_WORD = re.compile(r"[a-z0-9]+")


def phrase(q) -> str:
    """A question's phrase type, lower case, ``test_`` prefix dropped ('' when the set has none)."""
    p = str(getattr(q, "phrase_type", "") or "").strip().lower()
    return p[5:] if p.startswith("test_") else p


def split_by_questions(strata: list[str], images: list[str], frac: float = 0.15,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: ``frac`` of each stratum held out, every image kept in training."""
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        by_stratum[s].append(i)
    left_in_train = defaultdict(int)
    for name in images:
        left_in_train[name] += 1
    held = []
    for s in sorted(by_stratum):
        idx = rng.permutation(by_stratum[s])
        want = int(round(frac * len(idx)))
        for i in idx:
            if want == 0:
                break
            if left_in_train[images[i]] > 1:
                held.append(int(i))
                left_in_train[images[i]] -= 1
                want -= 1
    held_arr = np.array(sorted(held), dtype=int)
    train = np.setdiff1d(np.arange(len(strata)), held_arr)
    return train, held_arr


def split_by_images(images: list[str], frac: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices with ``frac`` of the distinct images (and all their questions) held out."""
    rng = np.random.default_rng(seed)
    names = sorted(set(images))
    held_names = set(rng.permutation(names)[: int(round(frac * len(names)))].tolist())
    held = np.array([i for i, n in enumerate(images) if n in held_names], dtype=int)
    train = np.setdiff1d(np.arange(len(images)), held)
    return train, held


def _qid_number(q) -> int | None:
    try:
        return int(q.qid)
    except (TypeError, ValueError):
        return None


def _words(text: str) -> set[str]:
    return set(_WORD.findall(str(text).lower()))


def paraphrase_groups(questions: Sequence) -> list[list[int]]:
    """The held-out candidates (free-form and paraphrased questions) in groups that go to one side
    together: a paraphrase with the free-form question of the same picture it rephrases — the one with
    the nearest numeric qid within 3 (VQA-RAD's layout: free-form, its template, paraphrase, its
    template), else the one sharing most words — and every other free-form question alone."""
    eligible = [i for i, q in enumerate(questions) if phrase(q) in HELD_PHRASES]
    free_by_image: dict[str, list[int]] = defaultdict(list)
    for i in eligible:
        if phrase(questions[i]) == "freeform":
            free_by_image[questions[i].image].append(i)
    parent = {i: i for i in eligible}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in eligible:
        q = questions[i]
        if phrase(q) != "para" or not free_by_image[q.image]:
            continue
        cands = free_by_image[q.image]
        n = _qid_number(q)
        near = [(abs(_qid_number(questions[j]) - n), j) for j in cands
                if n is not None and _qid_number(questions[j]) is not None
                and abs(_qid_number(questions[j]) - n) <= 3]
        if near:
            j = min(near)[1]
        else:
            w = _words(q.question)
            j = max(cands, key=lambda c: (len(w & _words(questions[c].question)), -c))
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in eligible:
        groups[root(i)].append(i)
    return [sorted(g) for _, g in sorted(groups.items())]


def templated_twins(questions: Sequence) -> np.ndarray:
    """Per question: its templated twin is in the set (VQA-RAD's layout: the ``frame`` question of the
    same picture at qid + 1). All False when qids are not numbers."""
    frames = {(_qid_number(q), q.image) for q in questions if phrase(q) == "frame" and _qid_number(q) is not None}
    return np.array([_qid_number(q) is not None and (_qid_number(q) + 1, q.image) in frames for q in questions])


def split_testlike(questions: Sequence, frac: float = 0.15, seed: int = 0,
                   closed_share: float | None = None, twin_share: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices mirroring the official VQA-RAD test (module docstring): about
    ``frac`` of all questions held out, drawn in paraphrase groups from the free-form and paraphrased
    questions only, every held-out picture keeping at least one training question; ``closed_share``
    of them closed and ``twin_share`` with their templated twin in training (defaults: the official
    test's 272/451 and 284/451; the twin share only where qids are numbers)."""
    n = len(questions)
    if not any(phrase(q) for q in questions):
        strata = [f"{q.answer_type}/{q.question_type}" for q in questions]
        return split_by_questions(strata, [q.image for q in questions], frac, seed)
    groups = paraphrase_groups(questions)
    pool = [i for g in groups for i in g]
    if not pool:
        raise ValueError("split testlike: no free-form or paraphrased questions (field phrase_type) to hold out")
    closed = np.array([bool(q.closed) for q in questions])
    twin = templated_twins(questions)
    want = int(round(frac * n))
    share = OFFICIAL_TEST["closed"] / OFFICIAL_TEST["questions"] if closed_share is None else float(closed_share)
    tshare = OFFICIAL_TEST["twin"] / OFFICIAL_TEST["questions"] if twin_share is None else float(twin_share)
    # at most this many of each kind: closed, open, with a twin, without one (no twin limit without twins)
    caps = {"closed": round(share * want), "open": want - round(share * want),
            "twin": round(tshare * want) if twin.any() else want,
            "single": want - round(tshare * want) if twin.any() else want}
    count = dict.fromkeys(caps, 0)
    left_in_train = defaultdict(int)
    for q in questions:
        left_in_train[q.image] += 1
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for gi in rng.permutation(len(groups)):
        if len(held) >= want:
            break
        g = groups[int(gi)]
        add = {"closed": int(closed[g].sum()), "open": int((~closed[g]).sum()), "twin": int(twin[g].sum()),
               "single": int((~twin[g]).sum())}
        if any(k and count[name] + k > caps[name] for name, k in add.items()):
            continue
        per_image = defaultdict(int)
        for i in g:
            per_image[questions[i].image] += 1
        if any(left_in_train[img] - k < 1 for img, k in per_image.items()):
            continue
        for img, k in per_image.items():
            left_in_train[img] -= k
        held.extend(g)
        count = {name: count[name] + k for name, k in add.items()}
    held_arr = np.array(sorted(held), dtype=int)
    return np.setdiff1d(np.arange(n), held_arr), held_arr


def make_split(kind: str, questions: Sequence, frac: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``kind`` split of a list of ``Question`` (``testlike``, ``images`` or ``questions``) as
    (train, held-out) index arrays; a clear error for any other name."""
    if kind == "testlike":
        return split_testlike(questions, frac, seed)
    if kind == "images":
        return split_by_images([q.image for q in questions], frac, seed)
    if kind == "questions":
        strata = [f"{q.answer_type}/{q.question_type}" for q in questions]
        return split_by_questions(strata, [q.image for q in questions], frac, seed)
    raise ValueError(f"unknown split {kind!r}; allowed values: {', '.join(SPLITS)}")


def inner_split(questions: Sequence, seed: int, frac: float = 0.15,
                kind: str = DEFAULT_SPLIT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(outer training side, inner training part, inner held-out part) as index arrays into
    ``questions``, for choosing a setting without reading the held-out questions: the outer ``kind``
    split of ``seed`` is made first and its held-out side dropped, then the training side is split again
    (the same kind, ``frac``, the same seed). Neither inner part holds an outer held-out question, and
    the two inner parts together are the outer training side."""
    outer_train, _ = make_split(kind, questions, frac, seed)
    side = [questions[i] for i in outer_train]
    itr, ihe = make_split(kind, side, frac, seed)
    return outer_train, outer_train[itr], outer_train[ihe]
