"""Cosine search that scales: exact for small collections, an approximate FAISS index above a size.

``VectorIndex`` holds L2-normalised float32 vectors (inner product = cosine). Up to
``EXACT_MAX`` vectors (100,000: 150 MB at 384-d, a few ms a query on one core) it searches them all
(``IndexFlatIP``, exact). Above it builds an inverted-file index (``IVF<nlist>,Flat``: k-means cells,
``nlist`` about 4·√n, trained by 10 k-means iterations on a sample of 50 vectors per cell) and visits the ``nprobe``
cells nearest to each query: measured by ``benchmarks/scale.py``, 1M × 384-d at the default
``nprobe`` reaches the recall@10 against exact search printed there.

Persisted in a folder (``index.faiss``, ``meta.json`` with the fingerprint of the items it holds):
``open`` memory-maps the file (the inverted lists stay on disk, paged in as queries touch them) with
FAISS's per-query prefetch threads switched off (``OnDiskInvertedLists.prefetch_nthread`` is 32 by
default: each search starts threads to read its ``nprobe`` lists ahead, which cost about 1 ms a query
once the file is in the page cache, more than the scan itself; measured in ``benchmarks/scale.py``), and
``ensure`` rebuilds only when the fingerprint of the items (ids and the vector source's version)
changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

EXACT_MAX = 100_000  # above this many vectors the index is approximate (IVF)
DEFAULT_NPROBE = 24  # recall@10 0.959 on 1M real-plus-noise e5 rows, p50 1.65 ms (benchmarks/scale.py)
TRAIN_PER_CELL = 50  # k-means sample: this many vectors per cell
FORMAT = 1


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


def fingerprint(ids: Sequence[str], version: str = "") -> str:
    """What an index holds: its item ids in order and the version of what made their vectors."""
    h = hashlib.sha256(f"{version}\x1f{len(ids)}\x1f".encode())
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\x1e")
    return h.hexdigest()


def no_prefetch_threads(index) -> int:
    """Switch off the prefetch threads of a memory-mapped IVF index's inverted lists (FAISS's
    ``OnDiskInvertedLists`` starts ``prefetch_nthread`` threads, 32 by default, on every search to
    read the lists it will scan; once the file is in the page cache that costs about 1 ms a query).
    Returns the count it had (0 when the lists are not on-disk ones)."""
    import faiss

    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        return 0
    had = int(lists.prefetch_nthread)
    lists.prefetch_nthread = 0
    return had


class VectorIndex:
    """Nearest neighbours by cosine over row-aligned vectors; exact or IVF (see the module docstring)."""

    def __init__(self, index, kind: str, meta: dict):
        self.index = index
        self.kind = kind
        self.meta = meta
        self.nprobe = int(meta.get("nprobe", DEFAULT_NPROBE))

    # --- building ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray, kind: str = "auto", nlist: int | None = None,
              nprobe: int = DEFAULT_NPROBE, seed: int = 0, fingerprint: str = "",
              chunk: int = 100_000) -> "VectorIndex":
        """Index ``vectors`` (normalised here). ``kind``: ``auto`` (exact up to EXACT_MAX), ``exact``
        or ``ivf``. Vectors are added in chunks of ``chunk`` rows (a memory-mapped array is never
        copied whole)."""
        import faiss

        n, dim = int(vectors.shape[0]), int(vectors.shape[1])
        if kind not in ("auto", "exact", "ivf"):
            raise ValueError(f"unknown index kind {kind!r}; allowed values: auto, exact, ivf")
        if kind == "auto":
            kind = "exact" if n <= EXACT_MAX else "ivf"
        t0 = time.perf_counter()
        meta = {"format": FORMAT, "kind": kind, "n": n, "dim": dim, "fingerprint": fingerprint}
        if kind == "exact":
            index = faiss.IndexFlatIP(dim)
        else:
            nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(n, size=min(n, TRAIN_PER_CELL * nlist), replace=False))
            index.cp.seed = seed
            index.cp.niter = 10
            index.train(unit_rows(vectors[sample]))
            meta.update(nlist=nlist, nprobe=nprobe, train_size=int(len(sample)),
                        train_seconds=round(time.perf_counter() - t0, 3))
        t_add = time.perf_counter()
        for start in range(0, n, chunk):
            index.add(unit_rows(vectors[start:start + chunk]))
        meta["add_seconds"] = round(time.perf_counter() - t_add, 3)
        meta["build_seconds"] = round(time.perf_counter() - t0, 3)
        return cls(index, kind, meta)

    # --- persistence --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``index.faiss`` and ``meta.json`` into ``folder``, crash-safe (``medweave.atomic``):
        ``meta.json`` (with the items' fingerprint) is the folder's completeness marker, removed first
        and written last, so a process killed in between never leaves a new index under an old
        fingerprint; ``open`` then finds no index and ``ensure`` rebuilds it."""
        import faiss

        from .. import atomic

        folder = atomic.begin_folder(folder, "meta.json")
        atomic.write_with(folder / "index.faiss", lambda tmp: faiss.write_index(self.index, str(tmp)))
        atomic.write_text(folder / "meta.json", json.dumps({**self.meta, "nprobe": self.nprobe}, indent=1))
        return folder

    @classmethod
    def open(cls, folder: str | Path, mmap: bool = True) -> "VectorIndex":
        """Open a saved index; ``mmap``: memory-map it (read-only) instead of reading it into memory."""
        import faiss

        folder = Path(folder)
        meta_path, index_path = folder / "meta.json", folder / "index.faiss"
        if not meta_path.is_file() or not index_path.is_file():
            raise FileNotFoundError(f"{folder}: no saved vector index (index.faiss and meta.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: index format {meta.get('format')!r}, this medweave reads {FORMAT}")
        flags = 0
        if mmap:
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
            if meta["kind"] == "exact" and hasattr(faiss, "IO_FLAG_MMAP_IFC"):
                flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
        index = faiss.read_index(str(index_path), flags)
        if mmap and meta["kind"] == "ivf":
            no_prefetch_threads(index)
        return cls(index, meta["kind"], meta)

    @classmethod
    def ensure(cls, folder: str | Path, ids: Sequence[str], vectors: Callable[[], np.ndarray], version: str = "",
               kind: str = "auto", **build_kw) -> tuple["VectorIndex", bool]:
        """(index, rebuilt): the saved index in ``folder`` when it holds exactly ``ids`` (made by
        ``version``), else one built from ``vectors()`` (called only then) and saved."""
        fp = fingerprint(ids, version)
        try:
            found = cls.open(folder)
            if found.meta.get("fingerprint") == fp and (kind == "auto" or found.kind == kind):
                return found, False
        except (FileNotFoundError, ValueError, RuntimeError):
            pass
        arr = vectors()
        if len(arr) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(arr)} vectors")
        built = cls.build(arr, kind=kind, fingerprint=fp, **build_kw)
        built.save(folder)
        return cls.open(folder), True

    # --- searching --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, allow: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids), each (n_queries, k); id -1 where fewer than k rows qualify. ``allow``
        (row ids, or a boolean mask over the rows) restricts the search to those rows."""
        import faiss

        q = unit_rows(queries)
        k = max(1, min(int(k), len(self)))
        sel = None
        if allow is not None:
            allow = np.asarray(allow)
            ids = np.flatnonzero(allow) if allow.dtype == bool else allow
            if not len(ids):
                return (np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64))
            sel = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype="int64"))
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=int(nprobe or self.nprobe), sel=sel) if sel is not None \
                else faiss.SearchParametersIVF(nprobe=int(nprobe or self.nprobe))
            return self.index.search(q, k, params=params)
        if sel is not None:
            return self.index.search(q, k, params=faiss.SearchParameters(sel=sel))
        return self.index.search(q, k)
