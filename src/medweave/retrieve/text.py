"""Text retrieval: lexical indexes (TF-IDF cosine, BM25 from ``bm25s``), dense indexes (any text
encoder through the vector ``Index``), and their fusion. Every search takes an ``allow`` mask, so a
caller's filter is applied *inside* the ranking (a filtered-out row can never be returned, and k hits
are returned whenever k rows are allowed).

All indexes answer ``scores(queries) -> (n_queries, n_rows)`` similarity matrices (a few thousand
rows: exact) and ``search(queries, k, allow)`` -> per query a list of ``(row, score)``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

LEXICAL_KINDS = ("tfidf", "bm25")
KINDS = ("tfidf", "tfidf-plain", "bm25", "dense", "hybrid")


def _topk(scores: np.ndarray, k: int, allow: np.ndarray | None) -> list[list[tuple[int, float]]]:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    s = np.array(scores, dtype=np.float64, copy=True)
    if allow is not None:
        allow = np.asarray(allow, dtype=bool)
        if allow.ndim == 1:
            allow = np.broadcast_to(allow, s.shape)
        s[~allow] = -np.inf
    out = []
    kk = min(k, s.shape[1])
    for row in s:
        idx = np.argpartition(-row, kk - 1)[:kk] if kk < len(row) else np.arange(len(row))
        idx = idx[np.lexsort((idx, -row[idx]))]  # by score, ties by row (deterministic)
        out.append([(int(i), float(row[i])) for i in idx if np.isfinite(row[i])])
    return out


class TextIndex:
    """Base: ``fit(texts)`` then ``scores``/``search``."""

    kind = ""

    def fit(self, texts: Sequence[str]) -> "TextIndex":
        raise NotImplementedError

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def search(self, queries: Sequence[str], k: int = 10, allow: np.ndarray | None = None):
        return _topk(self.scores(queries), k, allow)

    def __len__(self) -> int:
        return self.n


class TfidfIndex(TextIndex):
    """TF-IDF cosine over word 1-3-grams. Tokens are whitespace-separated and keep their case and
    punctuation (a radiologist's wording and punctuation are part of a report's style), with
    sublinear term frequency."""

    kind = "tfidf"

    def __init__(self, ngram_range: tuple[int, int] = (1, 3), lowercase: bool = False,
                 token_pattern: str = r"\S+", sublinear_tf: bool = True):
        self.params = dict(ngram_range=tuple(ngram_range), lowercase=lowercase, token_pattern=token_pattern,
                           sublinear_tf=sublinear_tf)

    def fit(self, texts: Sequence[str]) -> "TfidfIndex":
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(**self.params)
        self.matrix = self.vectorizer.fit_transform(list(texts))
        self.n = self.matrix.shape[0]
        return self

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        return np.asarray((self.vectorizer.transform(list(queries)) @ self.matrix.T).todense())


class BM25Index(TextIndex):
    """Okapi BM25 (``bm25s``, Lucene variant, k1 = 1.5, b = 0.75), lower-cased words, no stop words removed."""

    kind = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b

    def fit(self, texts: Sequence[str]) -> "BM25Index":
        import bm25s

        self.n = len(texts)
        self.retriever = bm25s.BM25(k1=self.k1, b=self.b)
        self.retriever.index(bm25s.tokenize(list(texts), stopwords=None, show_progress=False),
                             show_progress=False)
        return self

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        import bm25s

        tokens = bm25s.tokenize(list(queries), stopwords=None, show_progress=False, return_ids=False)
        out = np.zeros((len(queries), self.n), dtype=np.float64)
        for i, q in enumerate(tokens):
            q = [t for t in q if t in self.retriever.vocab_dict]
            if q:
                out[i] = self.retriever.get_scores(q)
        return out


class DenseIndex(TextIndex):
    """Cosine similarity of text embeddings, through the vector ``Index`` (FAISS); ``encode`` turns a
    list of texts into an (n, dim) array (e.g. e5-small passages)."""

    kind = "dense"

    def __init__(self, encode: Callable[[Sequence[str]], np.ndarray] | None = None, encoder: str = "e5-small"):
        self.encoder = encoder
        self._encode = encode

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._encode is None:
            from ..encode import get_encoder

            self._encode = get_encoder(self.encoder).encode
        return np.asarray(self._encode(list(texts)), dtype=np.float32)

    def fit(self, texts: Sequence[str], vectors: np.ndarray | None = None) -> "DenseIndex":
        from .index import Index

        vecs = self.encode(texts) if vectors is None else np.asarray(vectors, dtype=np.float32)
        self.index = Index(vecs, [{"row": i} for i in range(len(vecs))])
        self.n = len(vecs)
        return self

    def scores(self, queries: Sequence[str] | np.ndarray) -> np.ndarray:
        q = queries if isinstance(queries, np.ndarray) else self.encode(queries)
        return self.index.similarities(q)


class HybridIndex(TextIndex):
    """Fusion of several indexes by reciprocal rank (RRF: sum over indexes of 1 / (60 + rank))."""

    kind = "hybrid"

    def __init__(self, parts: Sequence[TextIndex], weights: Sequence[float] | None = None, c: float = 60.0):
        self.parts = list(parts)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.parts)
        self.c = c

    def fit(self, texts: Sequence[str]) -> "HybridIndex":
        for p in self.parts:
            p.fit(texts)
        self.n = len(texts)
        return self

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        total = 0.0
        for p, w in zip(self.parts, self.weights):
            s = p.scores(queries)
            ranks = np.argsort(np.argsort(-s, axis=1, kind="stable"), axis=1)
            total = total + w / (self.c + 1 + ranks)
        return np.asarray(total)


def make_index(kind: str, encode: Callable | None = None) -> TextIndex:
    """A text index by name: ``tfidf`` (word 1-3-grams, case and punctuation kept), ``tfidf-plain``
    (scikit-learn's default TF-IDF: lower-cased words of 2+ characters, the reference-point baseline),
    ``bm25``, ``dense`` (e5-small) or ``hybrid`` (TF-IDF + BM25 + dense, RRF)."""
    if kind == "tfidf":
        return TfidfIndex()
    if kind == "tfidf-plain":
        return TfidfIndex(ngram_range=(1, 1), lowercase=True, token_pattern=r"(?u)\b\w\w+\b", sublinear_tf=False)
    if kind == "bm25":
        return BM25Index()
    if kind == "dense":
        return DenseIndex(encode)
    if kind == "hybrid":
        return HybridIndex([TfidfIndex(), BM25Index(), DenseIndex(encode)])
    raise ValueError(f"unknown text index {kind!r}; allowed values: {', '.join(KINDS)}")
