"""The vector index: exact for small collections, IVF above EXACT_MAX, persisted and memory-mapped,
rebuilt only when its items change."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from medweave.retrieve import vectors as vectors_mod
from medweave.retrieve.index import Index
from medweave.retrieve.vectors import VectorIndex, unit_rows

DIM = 48


def clustered(n: int, seed: int, clusters: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit_rows(np.random.default_rng(99).standard_normal((clusters, DIM)))
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
    return unit_rows(x)


def exact(data: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(unit_rows(q) @ data.T), axis=1, kind="stable")[:, :k]


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(t)) / truth.shape[1] for g, t in zip(got, truth)]))


def test_small_collections_are_searched_exactly():
    data, q = clustered(2000, 0), clustered(50, 1)
    vi = VectorIndex.build(data)
    assert vi.kind == "exact" and len(vi) == 2000
    _, ids = vi.search(q, 10)
    assert recall(ids, exact(data, q, 10)) == 1.0


def test_ivf_recall_against_exact_and_it_grows_with_nprobe():
    data, q = clustered(20_000, 2), clustered(200, 3)
    vi = VectorIndex.build(data, kind="ivf", seed=0)
    assert vi.kind == "ivf" and vi.meta["nlist"] > 50
    truth = exact(data, q, 10)
    low = recall(vi.search(q, 10, nprobe=1)[1], truth)
    default = recall(vi.search(q, 10)[1], truth)
    assert default >= 0.95 and default > low  # the knob does what it says, and the default is good
    with pytest.raises(ValueError, match="unknown index kind 'hnsw'; allowed values: auto, exact, ivf"):
        VectorIndex.build(data[:10], kind="hnsw")


def test_auto_switches_to_ivf_above_exact_max(monkeypatch):
    monkeypatch.setattr(vectors_mod, "EXACT_MAX", 5000)
    data = clustered(8000, 4)
    assert VectorIndex.build(data[:5000]).kind == "exact"
    assert VectorIndex.build(data).kind == "ivf"
    # the case index above the size: approximate, yet a scoped search of few rows is still exact
    idx = Index(data, [{"row": i} for i in range(len(data))])
    assert idx.vector_index.kind == "ivf"
    allow = np.zeros(len(data), dtype=bool)
    allow[[3, 70, 4000, 7999]] = True
    hits = idx.search(data[:2], k=4, allow=allow)
    assert [sorted(h["row"] for h in hs) for hs in hits] == [[3, 70, 4000, 7999]] * 2
    assert hits[1][0]["score"] >= hits[1][-1]["score"]


def test_saved_index_opens_memory_mapped_and_is_rebuilt_only_when_items_change(tmp_path):
    data, q = clustered(6000, 5), clustered(20, 6)
    ids = [f"item{i}" for i in range(len(data))]
    calls = []

    def source(arr):
        def load():
            calls.append(len(arr))
            return arr
        return load

    built, rebuilt = VectorIndex.ensure(tmp_path / "ix", ids, source(data), version="enc-1", kind="ivf")
    assert rebuilt and calls == [6000] and (tmp_path / "ix" / "index.faiss").stat().st_size > data.nbytes
    again, rebuilt = VectorIndex.ensure(tmp_path / "ix", ids, source(data), version="enc-1", kind="ivf")
    assert not rebuilt and calls == [6000]  # same items: opened, vectors never read
    np.testing.assert_array_equal(again.search(q, 5)[1], built.search(q, 5)[1])
    in_memory = VectorIndex.open(tmp_path / "ix", mmap=False)
    np.testing.assert_array_equal(in_memory.search(q, 5)[1], again.search(q, 5)[1])
    # memory-mapped lists are FAISS's on-disk ones, opened without their per-search prefetch threads
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(again.index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.prefetch_nthread == 0
    assert not isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(in_memory.index).invlists),
                          faiss.OnDiskInvertedLists)
    # one item more, or another encoder version: rebuilt
    more = np.concatenate([data, clustered(1, 7)])
    _, rebuilt = VectorIndex.ensure(tmp_path / "ix", ids + ["new"], source(more), version="enc-1", kind="ivf")
    assert rebuilt and calls == [6000, 6001]
    _, rebuilt = VectorIndex.ensure(tmp_path / "ix", ids + ["new"], source(more), version="enc-2", kind="ivf")
    assert rebuilt and len(calls) == 3
    with pytest.raises(ValueError, match="2 ids but 6001 vectors"):
        VectorIndex.ensure(tmp_path / "other", ["a", "b"], source(more))
    with pytest.raises(FileNotFoundError, match="no saved vector index"):
        VectorIndex.open(tmp_path / "nothing")
