"""How much of one transaction's inserted rows DuckDB holds in memory before it commits: a table with
a primary key in a fresh database file, 50,000 rows at a time in one transaction (an md5 id, a
patient name, a number, 200 characters), DuckDB's own memory (``duckdb_memory()``) printed after each.

    python benchmarks/duckdb_local_storage.py [--rows 500000] [--file /tmp/duckdb-local.duckdb]
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    import duckdb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--file", default="/tmp/duckdb-local.duckdb")
    args = ap.parse_args()
    for f in (args.file, args.file + ".wal"):
        if os.path.exists(f):
            os.remove(f)
    con = duckdb.connect(args.file, config={"memory_limit": "1GB"})
    print(f"duckdb {duckdb.__version__}")
    con.execute("CREATE TABLE t (id VARCHAR PRIMARY KEY, a VARCHAR, b DOUBLE, c VARCHAR)")
    con.execute("BEGIN TRANSACTION")
    step = 50_000
    for start in range(0, args.rows, step):
        con.execute(f"INSERT INTO t SELECT md5(i::VARCHAR || 'x'), 'patient ' || (i % 30000), i * 0.5, "
                    f"repeat('v', 200) FROM range({start}, {start + step}) r(i)")
        mem = {t: round(v / 2**20, 1) for t, v in con.execute(
            "SELECT tag, memory_usage_bytes FROM duckdb_memory()").fetchall() if v}
        print(f"{start + step:>9,} rows inserted, not committed: {mem} MB")
    con.execute("COMMIT")
    con.close()
    for f in (args.file, args.file + ".wal"):
        if os.path.exists(f):
            os.remove(f)


if __name__ == "__main__":
    main()
