"""Picture augmentation in embedding space (``VqaConfig.picture_augment`` = K > 0; off by default).

The fusion networks see a training picture as one fixed embedding per view, so they can learn the
picture rather than what its modality, organ or plane look like. With K > 0 every training picture is
also encoded K times by the *frozen* views, each time augmented by ``encode.finetune.augment`` (the
fine-tuning's radiology-safe one: crop 85-100%, rotation within 10 degrees, a jittered intensity window
and gamma, never a flip), once, and cached; in each epoch the networks read each training row's picture
as one of {clean, copy 1..K} (``Answerer.fit``). Held-out and asked pictures, the memory, the picture
prior, the gate and retrieval keep the clean embedding.

A copy is an ``Encoder`` (``AugmentedView``) of its own: its cache key is the picture's content hash,
the name ``<view>+augment`` and a version holding the view's version, the copy index, the augmentation's
seed and a hash of its parameters and ``AUGMENT_VERSION``, so a changed augmentation never reads a stale
row. Copy k of a picture draws its augmentation from a generator seeded by (seed, the picture's pixels,
k): the same whatever the order or split, and the same crop and rotation in both views.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from ..encode.base import Encoder, array_hash, get_encoder

AUGMENT_VERSION = "1"  # bump when ``augment`` or how a copy is drawn changes


class AugmentedView(Encoder):
    """Copy ``copy`` (>= 1) of a picture through the frozen view ``view``, augmented (module notes)."""

    modalities = ("image",)

    def __init__(self, view: str, copy: int, seed: int = 0) -> None:
        from ..encode.finetune import FinetuneConfig

        if copy < 1:
            raise ValueError(f"augmented copy index is {copy}; copies are numbered from 1 (0 is the clean picture)")
        base = get_encoder(view)
        self.view, self.copy, self.seed, self.size = base.name, int(copy), int(seed), base.size
        self.cfg = FinetuneConfig(seed=self.seed)
        params = (AUGMENT_VERSION, self.cfg.rotate_degrees, self.cfg.crop_scale, self.cfg.window_jitter, self.cfg.gamma)
        self.name, self.dim, self.batch_size = f"{base.name}+augment", base.dim, base.batch_size
        self.version = (f"{base.version}-copy{self.copy}-seed{self.seed}-"
                        + hashlib.sha256(repr(params).encode()).hexdigest()[:12])

    def encode(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        from ..encode.finetune import augment
        from ..encode.image import features

        return features(np.stack([augment(a, np.random.default_rng([self.seed, int(array_hash(a)[:8], 16), self.copy]),
                                          self.cfg, self.size) for a in inputs]))


def augmented_encoders(views: Sequence[str], k: int, seed: int = 0) -> list[AugmentedView]:
    """Copies 1..k of every view, copy-major: [copy 1 view 1, copy 1 view 2, copy 2 view 1, ...]."""
    return [AugmentedView(v, c, seed) for c in range(1, k + 1) for v in views]


def picture_copies(paths: Sequence, cache, views: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """(pictures, k, width): the k augmented copies of each picture file, views side by side as in the
    clean embedding (cached; ``features.embed_image_files`` decodes each picture once for all copies)."""
    from .features import embed_image_files

    out = embed_image_files(paths, cache, augmented_encoders(views, k, seed))
    return out.reshape(len(paths), k, -1)
