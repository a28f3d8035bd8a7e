"""An on-disk embedding cache keyed by (item content hash, encoder name, encoder version).

One DuckDB file; vectors are stored as float32 bytes. Encoding a cohort twice encodes nothing the
second time; a new encoder version misses the cache and re-encodes.

Memory does not follow the cache's size. A cache holds one vector per item ever encoded (56,000 vectors,
80 MB, at 30,000 phantom patients), and every lookup reads the whole key column: with DuckDB's default buffer
pool the blocks read stayed in memory, up to the whole file. The connection's ``memory_limit`` is
``CACHE_MEMORY_LIMIT``, so blocks past it are evicted (re-read from the file). The table has no
primary key: DuckDB keeps a key's index (ART) whole in memory, and it would have to fit under that
limit; a vector already there is skipped by the insert itself (an anti-join on the key). A cache
file written before this change keeps its primary key, and its connection keeps the catalog's limit
(``DUCKDB_MEMORY_LIMIT``), which its index needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..store.catalog import DUCKDB_MEMORY_LIMIT, close_duckdb, connect_duckdb, release_buffers

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    content_hash VARCHAR, encoder VARCHAR, version VARCHAR, dim INTEGER, vec BLOB
)
"""

# DuckDB's memory for one cache connection: its buffer pool (blocks read, the table's blocks while
# written) and a lookup's hash join. Encoding 30,000 phantom patients from a full cache: DuckDB held
# 78 MB under the catalog's 1 GB limit, 22 MB under this one; the process's peak 655 -> 591 MB, in
# the same time (12 s).
CACHE_MEMORY_LIMIT = "32MiB"


class EmbeddingCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._limit = CACHE_MEMORY_LIMIT
        self.con = connect_duckdb(self.path, memory_limit=self._limit)
        self.con.execute(_SCHEMA)
        keyed = self.con.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'embeddings' "
            "AND constraint_type = 'PRIMARY KEY'").fetchall()[0][0]
        if keyed:  # a cache written before: its key index must fit in DuckDB's memory
            self._limit = DUCKDB_MEMORY_LIMIT
            self.con.execute(f"SET memory_limit = '{self._limit}'").fetchall()

    def close(self) -> None:
        close_duckdb(self.con)

    def get(self, hashes: Iterable[str], encoder: str, version: str) -> dict[str, np.ndarray]:
        hashes = list(dict.fromkeys(hashes))
        if not hashes:
            return {}
        rows = self.con.execute(
            "SELECT content_hash, vec FROM embeddings WHERE encoder = ? AND version = ? "
            "AND content_hash IN (SELECT unnest(?))",
            [encoder, version, hashes],
        ).fetchall()
        release_buffers(self.con, self._limit)  # the scan read every row group of the key column
        return {h: np.frombuffer(v, dtype=np.float32) for h, v in rows}

    def put(self, vectors: dict[str, np.ndarray], encoder: str, version: str) -> None:
        """Add vectors not in the cache yet (one already there, under this encoder and version, is kept)."""
        if not vectors:
            return
        df = pd.DataFrame({
            "content_hash": list(vectors),
            "encoder": encoder,
            "version": version,
            "dim": [int(v.shape[-1]) for v in vectors.values()],
            "vec": [np.ascontiguousarray(v, dtype=np.float32).tobytes() for v in vectors.values()],
        })
        self.con.register("_new_emb", df)
        self.con.execute(
            "INSERT INTO embeddings SELECT n.* FROM _new_emb n WHERE NOT EXISTS (SELECT 1 FROM embeddings e "
            "WHERE e.content_hash = n.content_hash AND e.encoder = n.encoder AND e.version = n.version)")
        self.con.unregister("_new_emb")

    def count(self, encoder: str | None = None) -> int:
        if encoder is None:
            return self.con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
        return self.con.execute("SELECT count(*) FROM embeddings WHERE encoder = ?", [encoder]).fetchone()[0]
