"""Encode a cohort: every present item through its modality's encoder, cached, batched, with a progress
bar; then one vector per case and modality (the mean over the case's items).

Absent stays absent: the rows of absent cases are NaN (never zeros), and the presence mask travels
with the arrays. An item that cannot be loaded is reported and its case counts as absent for that
modality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..cohort.cohort import item_id_lists
from ..engine import LOCAL, Engine
from ..progress import progress_bar
from .arrays import DiskArrayWriter, take_rows
from .base import DEFAULT_ENCODERS, Encoder, get_encoder
from .cache import EmbeddingCache
from .loaders import LOAD_COLUMNS, load_item


@dataclass
class CaseEmbeddings:
    case_ids: list[str]
    arrays: dict[str, np.ndarray]  # modality -> (cases, dim), NaN rows where absent (or a DiskArray)
    mask: dict[str, np.ndarray]  # modality -> (cases,) bool
    encoders: dict[str, dict] = field(default_factory=dict)  # modality -> encoder description
    failures: list[tuple[str, str]] = field(default_factory=list)  # (item_id, reason)

    def subset(self, index: np.ndarray) -> "CaseEmbeddings":
        return CaseEmbeddings([self.case_ids[i] for i in index], {m: take_rows(a, index) for m, a in self.arrays.items()},
                              {m: k[index] for m, k in self.mask.items()}, dict(self.encoders), list(self.failures))


@dataclass
class EncodeStats:
    encoded: int = 0
    cached: int = 0
    failed: int = 0
    seconds: float = 0.0


class _ChunkEncoder:
    """Loads one encoder once and encodes chunks of item rows read from the store's blobs: in this
    process, or inside a Ray actor (the store folder must then be readable at the same path)."""

    def __init__(self, encoder_name: "str | Encoder"):
        self.encoder = get_encoder(encoder_name)

    def run(self, store_root: Path, rows: list[dict]) -> tuple[list[str], np.ndarray | None, list[tuple[str, str]]]:
        """(content hashes encoded, their vectors, (item_id, reason) of rows that could not be loaded)."""
        inputs, ok, failed = [], [], []
        for r in rows:
            try:
                inputs.append(load_item(store_root, r))
                ok.append(r["content_hash"])
            except Exception as exc:  # a bad item never stops the batch
                failed.append((r["item_id"], f"{type(exc).__name__}: {exc}"))
        return ok, (self.encoder.encode(inputs) if inputs else None), failed


def encode_items(rows: list[dict], encoder_name: "str | Encoder", store_root: Path, cache: EmbeddingCache | None,
                 progress: bool = True, stats: EncodeStats | None = None,
                 failures: list | None = None, engine: Engine = LOCAL) -> dict[str, np.ndarray]:
    """Vectors for items (rows of the items table), keyed by content hash, using and filling the cache.

    ``encoder_name``: a registered name, or an ``Encoder`` built from saved weights (its name and
    version key the cache). Items are encoded in chunks of the encoder's batch size, here or (``engine`` Ray) by a pool of Ray
    actors, each loading the encoder once; the chunks are the same either way, so are the vectors."""
    import time

    encoder = get_encoder(encoder_name)
    stats = stats if stats is not None else EncodeStats()
    failures = failures if failures is not None else []
    by_hash: dict[str, dict] = {}
    for r in rows:
        by_hash.setdefault(r["content_hash"], r)
    found = cache.get(by_hash, encoder.name, encoder.version) if cache else {}
    stats.cached += len(found)
    todo = [h for h in by_hash if h not in found]
    t0 = time.perf_counter()
    chunks = [todo[s:s + encoder.batch_size] for s in range(0, len(todo), encoder.batch_size)]
    jobs = ((Path(store_root), [by_hash[h] for h in chunk]) for chunk in chunks)
    n_actors = min(engine.cpus(), len(chunks)) if engine.is_ray and chunks else None
    with progress_bar(f"encode {encoder.name}", total=len(todo), unit="items", enabled=progress and bool(todo)) as advance:
        for chunk, (ok, vecs, failed) in zip(chunks, engine.map_actors(_ChunkEncoder, (encoder_name,), "run", jobs,
                                                                      n_actors)):
            failures.extend(failed)
            stats.failed += len(failed)
            if ok:
                new = {h: v for h, v in zip(ok, vecs)}
                found.update(new)
                if cache:
                    cache.put(new, encoder.name, encoder.version)
                stats.encoded += len(new)
            advance(len(chunk))
    stats.seconds += time.perf_counter() - t0
    return found


CASE_CHUNK = 2048  # cases encoded together: memory holds one chunk's item rows and vectors


def encode_cohort(cohort, store, encoders: "Mapping[str, str | Encoder] | None" = None, cache: EmbeddingCache | None = None,
                  modalities: Iterable[str] | None = None, progress: bool = True,
                  stats: EncodeStats | None = None, engine: Engine = LOCAL,
                  chunk_cases: int = CASE_CHUNK, out_dir: str | Path | None = None) -> CaseEmbeddings:
    """Case-level embeddings for the item modalities of a cohort (``table`` is featurised separately).

    Cases are taken ``chunk_cases`` at a time: their items' rows are read from the catalog, encoded
    (or found in the cache, which is where every vector goes), averaged into the cases' rows, and let
    go, so memory holds the case-level arrays and one chunk, not every item vector of a modality.
    With ``out_dir`` the case-level arrays are not held either: each chunk's rows are appended to
    ``out_dir/MODALITY.npy`` and the arrays returned are ``DiskArray`` s over those files (read by
    rows; the same floats as in memory)."""
    encoders = {**DEFAULT_ENCODERS, **(encoders or {})}
    mods = [m for m in (modalities or cohort.modalities) if m != "table"]
    arrays, masks, described, failures = {}, {}, {}, []
    n = len(cohort.table)
    step = max(1, chunk_cases)
    for m in mods:
        if m not in encoders:
            raise KeyError(f"no encoder for modality {m!r}; set one of: {', '.join(sorted(encoders))}")
        enc = get_encoder(encoders[m])
        described[m] = enc.describe()
        writer = DiskArrayWriter(Path(out_dir) / f"{m}.npy", n, enc.dim) if out_dir is not None else None
        arr = None if writer else np.full((n, enc.dim), np.nan, dtype=np.float32)
        present = np.zeros(n, dtype=bool)
        ids_per_case = cohort.table[f"{m}_items"]
        for first in range(0, n, step):
            chunk_ids = item_id_lists(ids_per_case, first, first + step)
            block = arr[first:first + step] if writer is None else np.full((len(chunk_ids), enc.dim), np.nan,
                                                                            dtype=np.float32)
            all_ids = sorted({i for ids in chunk_ids for i in ids})
            if all_ids:
                # only the columns loading reads; the lookup reads their blocks in every row group,
                # which DuckDB keeps only up to a small limit while it runs, and hands back after
                rows = store.lookup(lambda con: con.execute(
                    f"SELECT {', '.join(LOAD_COLUMNS)} FROM items WHERE item_id IN (SELECT unnest(?)) ORDER BY item_id",
                    [all_ids]).df().to_dict("records"))
                hash_of = {r["item_id"]: r["content_hash"] for r in rows}
                vecs = encode_items(rows, encoders[m], store.root, cache, progress, stats, failures, engine)
                for i, ids in enumerate(chunk_ids):
                    got = [vecs[hash_of[x]] for x in ids if x in hash_of and hash_of[x] in vecs]
                    if got:
                        block[i] = np.mean(got, axis=0)
                        present[first + i] = True
                del rows, hash_of, vecs
            if writer is not None:
                writer.append(block)
        arrays[m], masks[m] = (arr if writer is None else writer.close()), present
    return CaseEmbeddings(list(cohort.table["case_id"]), arrays, masks, described, failures)
