"""The response cache: one SQLite file, keyed by sha256 over (backend fingerprint, messages with images
by hash, generation parameters), each completion committed as it arrives.

A run killed at any point loses at most the requests in flight; started again it sends only the
requests not yet answered. Every request sent to a backend is also logged (``sent``), so a re-run
can show that nothing completed was asked twice. Failed requests are logged but never cached: a
re-run tries them again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, backend TEXT NOT NULL, request TEXT NOT NULL, generation TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sent (
    key TEXT NOT NULL, run TEXT NOT NULL, ok INTEGER NOT NULL, error TEXT, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sent_key ON sent(key);
"""


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for b in range(0, len(keys), 500):
                chunk = keys[b:b + 500]
                rows = self._con.execute(f"SELECT key, generation FROM responses WHERE key IN "
                                         f"({','.join('?' * len(chunk))})", chunk).fetchall()
                out.update({k: json.loads(g) for k, g in rows})
        return out

    def put(self, key: str, backend: str, request: Any, generation: dict[str, Any], run: str) -> None:
        """Store one completion and log that it was sent, in one transaction."""
        now = time.time()
        with self._lock:
            self._con.execute("BEGIN")
            self._con.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                              (key, backend, json.dumps(request, ensure_ascii=False), json.dumps(generation), now))
            self._con.execute("INSERT INTO sent VALUES (?, ?, 1, NULL, ?)", (key, run, now))
            self._con.execute("COMMIT")

    def log_failure(self, key: str, run: str, error: str) -> None:
        with self._lock:
            self._con.execute("INSERT INTO sent VALUES (?, ?, 0, ?, ?)", (key, run, error, time.time()))

    def stats(self) -> dict[str, int]:
        """Responses stored; requests sent (all, completed); completed requests sent more than once."""
        with self._lock:
            stored = self._con.execute("SELECT count(*) FROM responses").fetchone()[0]
            sent, ok = self._con.execute("SELECT count(*), coalesce(sum(ok), 0) FROM sent").fetchone()
            repeated = self._con.execute(
                "SELECT count(*) FROM (SELECT key FROM sent WHERE ok = 1 GROUP BY key HAVING count(*) > 1)").fetchone()[0]
        return {"responses": stored, "sent": sent, "sent_ok": int(ok), "repeated": repeated}

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
