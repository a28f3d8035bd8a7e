"""Where a phantom's table ingest holds memory: its three CSV tables ingested one after another into
a fresh store, the process's RSS sampled every 0.2 s (peak per table) and DuckDB's own memory
(``duckdb_memory()``, read through a second cursor of the same instance) sampled with it, the
largest value per tag while each table went in.

    python benchmarks/ingest_tables_memory.py WORK/n30000 /tmp/tables-store [--slice-rows 3000]

WORK/nN is a ``benchmarks/scale.py pipeline --work WORK`` folder holding ``phantom``; the store folder
given is deleted first. ``--slice-rows`` sets the table adapter's slice (default its ``SLICE_ROWS``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("store", type=Path)
    ap.add_argument("--slice-rows", type=int, default=None)
    args = ap.parse_args()
    import psutil

    import medweave.ingest.adapters.table as table
    import medweave.train.pipeline  # noqa: F401  (the imports of the scale benchmark's ingest stage)
    from medweave.ingest import ingest
    from medweave.store import Store

    if args.slice_rows:
        table.SLICE_ROWS = args.slice_rows
    tables = args.root / "phantom" / "data" / "tables"
    mapping = args.root / "phantom" / "mappings" / "tables.toml"
    shutil.rmtree(args.store, ignore_errors=True)
    proc, peak, stop, duck = psutil.Process(), [0], [False], {}

    def mb(b: float) -> float:
        return round(b / 2**20, 1)

    with Store(args.store, write=True) as st:
        cur = st.con.cursor()

        def sample() -> None:
            while not stop[0]:
                peak[0] = max(peak[0], proc.memory_info().rss)
                for tag, used in cur.execute("SELECT tag, memory_usage_bytes FROM duckdb_memory()").fetchall():
                    duck[tag] = max(duck.get(tag, 0), used)
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        print(json.dumps({"slice_rows": table.SLICE_ROWS, "rss_store_open_mb": mb(proc.memory_info().rss)}))
        for name in ("demographics.csv", "labs.csv", "vitals.csv"):
            peak[0] = 0
            duck.clear()
            t = time.perf_counter()
            r = ingest([tables / name], st, options={"mapping": str(mapping)}, progress=False)
            print(json.dumps({"table": name, "items": r.n_items_added, "s": round(time.perf_counter() - t, 1),
                              "peak_mb": mb(peak[0]), "rss_after_mb": mb(proc.memory_info().rss),
                              "duckdb_max_mb": {k: mb(v) for k, v in sorted(duck.items()) if v}}), flush=True)
        stop[0] = True
        sampler.join()


if __name__ == "__main__":
    main()
