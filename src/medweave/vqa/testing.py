"""A tiny synthetic VQA set (JSON + PNG pictures) and a real model trained on it: test support shared
by the VQA, server and browser tests (imported by their conftests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

N_IMAGES = 12


def picture(side: str, organ: str, seed: int) -> np.ndarray:
    """A gray square with a bright blob on the given side; head pictures carry a ring."""
    rng = np.random.default_rng(seed)
    a = (30 + rng.integers(0, 20, (96, 96))).astype(np.uint8)
    cols = slice(8, 40) if side == "left" else slice(56, 88)
    a[30:62, cols] = 230
    if organ == "HEAD":
        a[4:8, :] = 200
        a[-8:-4, :] = 200
    return a


def write_tiny_set(folder: Path) -> Path:
    """Write ``train.json`` + ``images/`` with a side question (open) and a yes/no question per picture."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(N_IMAGES):
        side, organ = ("left", "right")[i % 2], ("CHEST", "HEAD")[(i // 2) % 2]
        name = f"img{i:02d}.png"
        Image.fromarray(picture(side, organ, i)).save(folder / "images" / name)
        for question, answer, kind in (("Which side is the opacity on?", side, "OPEN"),
                                       ("Is the opacity on the left?", "Yes" if side == "left" else "No", "CLOSED")):
            recs.append({"qid": len(recs), "image_name": name, "question": question, "answer": answer,
                         "answer_type": kind, "question_type": "POS", "image_organ": organ})
    (folder / "train.json").write_text(json.dumps(recs))
    return folder


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> Path:
    return write_tiny_set(tmp_path_factory.mktemp("tiny-vqa"))


@pytest.fixture(scope="session")
def tiny_vqa_model(tiny_set, tmp_path_factory) -> Path:
    """A real VQA model (``medweave.vqa``) trained in-process on the tiny set."""
    from .model import VqaConfig
    from .pipeline import train_vqa

    out = tmp_path_factory.mktemp("tiny-vqa-model") / "model"
    train_vqa(tiny_set, out, VqaConfig(seeds=2, epochs=40))
    return out
