"""Embeddings for VQA: pictures through the frozen EfficientNet-Lite0 at 224 and at 320 pixels
(``efficientnet-lite0``, ``efficientnet-lite0-320``: two 1280-d views side by side, 2560-d), questions
through e5-small with the query prefix (``e5-small-query``), all cached on disk by content hash."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..encode.text import torch_threads  # noqa: F401  (re-exported for the VQA model)
from ..encode import EmbeddingCache, get_encoder
from ..encode.base import array_hash  # noqa: F401  (re-exported: the builtin backend keys arrays by it)
from .data import file_hash, read_image

IMAGE_ENCODERS = ("efficientnet-lite0", "efficientnet-lite0-320")  # the picture views, in this order
QUESTION_ENCODER = "e5-small-query"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.strip().encode()).hexdigest()


@contextmanager
def open_cache(path: str | Path | None) -> Iterator[EmbeddingCache | None]:
    """The embedding cache at ``path`` (None: no cache), closed on exit."""
    cache = EmbeddingCache(path) if path else None
    try:
        yield cache
    finally:
        if cache is not None:
            cache.close()


def _encode_cached(keys: list[str], load, encoder_names: Sequence, cache: EmbeddingCache | None) -> np.ndarray:
    """Vectors for ``keys``, each encoder's side by side: looked up in the cache; a miss is loaded once
    with ``load(i)`` and encoded by every encoder that lacks it (a picture is decoded once for both views).
    ``encoder_names``: registered names or ``Encoder`` objects (a fine-tuned one, versioned by its weights)."""
    encs = [get_encoder(e) if isinstance(e, str) else e for e in encoder_names]
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    found = [cache.get(list(first), e.name, e.version) if cache is not None else {} for e in encs]
    missing = [k for k in first if any(k not in f for f in found)]
    step = min(e.batch_size for e in encs)
    for b in range(0, len(missing), step):
        loaded = {k: load(first[k]) for k in missing[b:b + step]}
        for enc, have in zip(encs, found):
            todo = [k for k in loaded if k not in have]
            if todo:
                new = dict(zip(todo, enc.encode([loaded[k] for k in todo])))
                if cache is not None:
                    cache.put(new, enc.name, enc.version)
                have.update(new)
    if not keys:
        return np.zeros((0, sum(e.dim for e in encs)), np.float32)
    return np.concatenate([np.stack([have[k] for k in keys]) for have in found], axis=1).astype(np.float32)


def _with_stats(keys: list[str], load, encoders: Sequence, cache, with_stats: bool):
    """Embeddings, and with ``with_stats`` also the pixel statistics (``gate.pixel_stats``, cached beside
    them: a picture is decoded once for both): (n, width) or ((n, width), (n, 2))."""
    if not with_stats:
        return _encode_cached(keys, load, encoders, cache)
    from .gate import pixel_encoder

    out = _encode_cached(keys, load, [*encoders, pixel_encoder()], cache)
    return out[:, :-2], out[:, -2:]


def embed_image_files(paths: Sequence[str | Path], cache: EmbeddingCache | None = None,
                      encoders: Sequence | None = None, with_stats: bool = False):
    """(n, 2560) picture embeddings (two views) for image files, cached by file hash. ``encoders``: the
    views a model reads (``Answerer.image_encoders()``; default ``IMAGE_ENCODERS``; ``[]``: none, with
    ``with_stats`` the pixel statistics alone). ``with_stats``: (embeddings, pixel statistics)."""
    paths = [Path(p) for p in paths]
    return _with_stats([file_hash(p) for p in paths], lambda i: read_image(paths[i]),
                       IMAGE_ENCODERS if encoders is None else encoders, cache, with_stats)


def embed_image_arrays(arrays: Sequence[np.ndarray], cache: EmbeddingCache | None = None,
                       encoders: Sequence | None = None, with_stats: bool = False):
    """(n, 2560) picture embeddings for in-memory arrays (probes: blank, noise), cached by array hash
    (``encoders``, ``with_stats``: as in ``embed_image_files``)."""
    return _with_stats([array_hash(a) for a in arrays], lambda i: arrays[i],
                       IMAGE_ENCODERS if encoders is None else encoders, cache, with_stats)


def embed_questions(texts: Sequence[str], cache: EmbeddingCache | None = None) -> np.ndarray:
    """(n, 384) question embeddings (e5-small, query prefix, L2-normalised), cached by text hash."""
    texts = [str(t).strip() for t in texts]
    with torch_threads(1):
        return _encode_cached([text_hash(t) for t in texts], lambda i: texts[i], (QUESTION_ENCODER,), cache)
