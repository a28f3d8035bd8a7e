"""An on-disk embedding cache keyed by (item content hash, encoder name, encoder version).

One DuckDB file; vectors are stored as float32 bytes. Encoding a cohort twice encodes nothing the
second time; a new encoder version misses the cache and re-encodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..store.catalog import connect_duckdb

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    content_hash VARCHAR, encoder VARCHAR, version VARCHAR, dim INTEGER, vec BLOB,
    PRIMARY KEY (content_hash, encoder, version)
)
"""


class EmbeddingCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = connect_duckdb(self.path)
        self.con.execute(_SCHEMA)

    def close(self) -> None:
        self.con.close()

    def get(self, hashes: Iterable[str], encoder: str, version: str) -> dict[str, np.ndarray]:
        hashes = list(dict.fromkeys(hashes))
        if not hashes:
            return {}
        rows = self.con.execute(
            "SELECT content_hash, vec FROM embeddings WHERE encoder = ? AND version = ? "
            "AND content_hash IN (SELECT unnest(?))",
            [encoder, version, hashes],
        ).fetchall()
        return {h: np.frombuffer(v, dtype=np.float32) for h, v in rows}

    def put(self, vectors: dict[str, np.ndarray], encoder: str, version: str) -> None:
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
        self.con.execute("INSERT OR IGNORE INTO embeddings SELECT * FROM _new_emb")
        self.con.unregister("_new_emb")

    def count(self, encoder: str | None = None) -> int:
        if encoder is None:
            return self.con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
        return self.con.execute("SELECT count(*) FROM embeddings WHERE encoder = ?", [encoder]).fetchone()[0]
