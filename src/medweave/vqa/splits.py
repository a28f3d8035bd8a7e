"""Validation splits of a VQA training file.

- ``questions``: mirrors the official VQA-RAD protocol (test questions ask about images that are also
  in training): hold out a share of the questions, stratified by (answer type, question type), keeping
  at least one question of every image in training.
- ``images``: harder; hold out whole images, so no held-out picture was seen in training.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

SPLITS = ("questions", "images")


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


def make_split(kind: str, strata: list[str], images: list[str], frac: float = 0.15,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``kind`` split ("questions" or "images"); a clear error for any other name."""
    if kind == "questions":
        return split_by_questions(strata, images, frac, seed)
    if kind == "images":
        return split_by_images(images, frac, seed)
    raise ValueError(f"unknown split {kind!r}; allowed values: {', '.join(SPLITS)}")
