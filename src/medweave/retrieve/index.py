"""A FAISS inner-product index over L2-normalised vectors (cosine similarity), each row carrying its
case record (a dict), and same-label precision@k. Exact for small collections, approximate (IVF)
above ``vectors.EXACT_MAX`` rows (``medweave.retrieve.vectors``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


class Index:
    """Cosine-similarity search over vectors with one record per row.

    Several embeddings of a case (picture and question) are joined by ``Index.joint``: each part is
    normalised and weighted, so neither dominates through its size.
    """

    def __init__(self, vectors: np.ndarray, records: Sequence[dict], kind: str = "auto"):
        from .vectors import VectorIndex

        vectors = _unit(vectors)
        if len(vectors) != len(records):
            raise ValueError(f"{len(vectors)} vectors but {len(records)} records")
        self.records = list(records)
        self.vectors = vectors
        # exact up to vectors.EXACT_MAX rows, an IVF index above (see medweave.retrieve.vectors)
        self.vector_index = VectorIndex.build(vectors, kind=kind)
        self.index = self.vector_index.index

    @staticmethod
    def joint(parts: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
        """Concatenate normalised embedding blocks (rows aligned), each scaled by sqrt(weight)."""
        weights = weights or [1.0] * len(parts)
        return np.concatenate([_unit(p) * np.sqrt(w) for p, w in zip(parts, weights)], axis=1)

    def __len__(self) -> int:
        return len(self.records)

    def search(self, query: np.ndarray, k: int = 5, exclude: Sequence[int] | None = None,
               allow: np.ndarray | None = None) -> list[list[dict]]:
        """For each query row the k most similar records, each with its ``score`` (cosine) and ``rank``.

        ``exclude`` gives, per query, an indexed row to leave out (leave-one-out over indexed rows).
        ``allow`` (a boolean mask over the rows) restricts the search to those rows inside the index
        (FAISS ID selector): a row outside it is never returned, and k hits come back whenever k rows
        are allowed.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = _unit(query)
        drop = list(exclude) if exclude is not None else [-1] * len(q)
        scores, ids = self._search(q, min(len(self), k + int(exclude is not None)), allow)
        out = []
        for srow, irow, own in zip(scores, ids, drop):
            hits = [(float(s), int(i)) for s, i in zip(srow, irow) if i >= 0 and i != own]
            out.append([{**self.records[i], "score": s, "rank": r + 1} for r, (s, i) in enumerate(hits[:k])])
        return out

    def _search(self, q: np.ndarray, k: int, allow: np.ndarray | None):
        from .vectors import EXACT_MAX

        if allow is None:
            return self.vector_index.search(q, k)
        allow = np.asarray(allow, dtype=bool)
        if allow.shape != (len(self),):
            raise ValueError(f"allow mask has shape {allow.shape}; expected ({len(self)},)")
        ids = np.flatnonzero(allow).astype("int64")
        if not len(ids):
            return np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64)
        if self.vector_index.kind != "exact" and len(ids) <= EXACT_MAX:
            # an approximate index may miss allowed rows outside the cells it visits: few allowed rows
            # are searched exactly, so k hits still come back whenever k rows are allowed
            sims = q @ self.vectors[ids].T
            top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            scores = np.take_along_axis(sims, top, axis=1).astype(np.float32)
            out_ids = ids[top]
            if top.shape[1] < k:
                pad = k - top.shape[1]
                scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
                out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
            return scores, out_ids
        return self.vector_index.search(q, k, allow=ids)

    def similarities(self, query: np.ndarray) -> np.ndarray:
        """Cosine similarity of each query row to every indexed row, (n_queries, n_rows)."""
        return _unit(query) @ self.vectors.T


def precision_at_k(index: Index, queries: np.ndarray, labels: Sequence[str], key: str, k: int = 5,
                   exclude: Sequence[int] | None = None) -> float:
    """Mean share of the top-k hits whose record ``key`` equals the query's label (``exclude``: see search)."""
    hits = index.search(queries, k, exclude=exclude)
    shares = [np.mean([h.get(key) == lab for h in hs]) for hs, lab in zip(hits, labels) if hs]
    return float(np.mean(shares)) if shares else float("nan")


def case_indexes(img_emb: np.ndarray, q_emb: np.ndarray, cases: Sequence[dict]) -> tuple[Index, Index]:
    """(picture index with one row per distinct picture, joint picture+question index per case).

    Cases are dicts with at least ``image``; picture rows carry the first case's fields plus its
    ``questions`` count.
    """
    first: dict[str, int] = {}
    for i, c in enumerate(cases):
        first.setdefault(c["image"], i)
    counts: dict[str, int] = {}
    for c in cases:
        counts[c["image"]] = counts.get(c["image"], 0) + 1
    rows = list(first.values())
    pictures = Index(img_emb[rows], [{"image": cases[i]["image"], "organ": cases[i].get("organ", ""),
                                      "questions": counts[cases[i]["image"]]} for i in rows])
    return pictures, Index(Index.joint([img_emb, q_emb]), cases)
