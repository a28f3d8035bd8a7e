"""Tables ingested in row slices (``CsvAdapter.read_slices``): a first pass checks the file and
decides each column from the whole table, then items are built and inserted a slice at a time in one
transaction. The store must be the one reading the table whole gives, and a bad table must still
store nothing."""

from __future__ import annotations

import json

import duckdb
import pytest

from medweave.ingest import ingest
from medweave.ingest import runner as runner_mod
from medweave.ingest.adapters import table as table_mod
from medweave.store.catalog import Store

SECRET = "ab" * 32

MAPPING = """
[files.visits]
patient = "patient_id"
time = "visit_date"
label = "outcome"
join = [{file = "people.csv", on = "patient_id", columns = ["sex"]}]
sex = "sex"
"""


def write_tables(folder, n=50, value_last="2.5", code_last="A1", extra_rows=""):
    """visits.csv: ``value`` integral except its last row (``value_last``), ``code`` numeric except
    its last row (``code_last``): only the whole table decides their type. Dates in dd/mm/yyyy."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["patient_id,visit_date,value,code,note,outcome,big"]
    for i in range(n):
        value = value_last if i == n - 1 else str(i)
        code = code_last if i == n - 1 else str(100 + i)
        big = "1e999" if i == n - 1 else "3"
        lines.append(f"P{i % 9},{1 + i % 27:02d}/0{1 + i % 9}/2019,{value},{code},"
                     f"seen by Dr Smith on day {i},{i % 2},{big}")
    (folder / "visits.csv").write_text("\n".join(lines) + "\n" + extra_rows, encoding="utf-8")
    (folder / "people.csv").write_text("patient_id,sex\n" + "".join(f"P{i},{'FM'[i % 2]}\n" for i in range(9)))
    (folder / "medweave-mapping.toml").write_text(MAPPING + '\n[files.people]\nskip = true\n')
    return folder


def ingest_into(root, folder, slice_rows, monkeypatch, stream_min_bytes=0):
    monkeypatch.setattr(table_mod, "SLICE_ROWS", slice_rows)
    monkeypatch.setattr(runner_mod, "STREAM_MIN_BYTES", stream_min_bytes)  # 0: every table streams
    root.mkdir(parents=True, exist_ok=True)
    (root / "secret.key").write_text(SECRET)
    with Store(root, write=True) as st:
        return ingest([folder], st, progress=False)


def catalog(root) -> dict[str, list]:
    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    try:
        return {
            "items": con.execute("SELECT * EXCLUDE (ingested_at, run_id) FROM items ORDER BY item_id").fetchall(),
            "patients": con.execute("SELECT patient_id, namespace, sex, attrs FROM patients ORDER BY 1").fetchall(),
            "studies": con.execute("SELECT * FROM studies ORDER BY 1").fetchall(),
            "sources": con.execute("SELECT * EXCLUDE (run_id, done_at) FROM sources ORDER BY 1").fetchall(),
        }
    finally:
        con.close()


def test_a_table_in_slices_gives_the_store_reading_it_whole_gives(tmp_path, monkeypatch):
    folder = write_tables(tmp_path / "data")
    whole = ingest_into(tmp_path / "whole", folder, 10**9, monkeypatch)
    sliced = ingest_into(tmp_path / "sliced", folder, 7, monkeypatch)  # 8 slices, the last one short
    assert whole.errors == sliced.errors == [] and whole.n_items_added == sliced.n_items_added == 50
    assert whole.warnings == sliced.warnings
    a, b = catalog(tmp_path / "whole"), catalog(tmp_path / "sliced")
    assert a == b and len(a["items"]) == 50 and len(a["sources"]) == 1
    with Store(tmp_path / "sliced") as st:
        items = st.items()
    first = items.loc[items["source_key"] == "row 1", "meta"].iloc[0]
    # decided by the last row, in the last slice: floats throughout, codes as text, 1e999 not a number
    assert '"value":0.0' in first and '"code":"100"' in first and '"big":"3"' in first
    assert set(items["source_key"]) == {f"row {i}" for i in range(1, 51)}
    assert items["time"].notna().all()  # dd/mm/yyyy found from the first rows, applied to every slice


def test_a_small_table_is_read_like_any_unit_and_gives_the_same_store(tmp_path, monkeypatch):
    """Below STREAM_MIN_BYTES a table is read by the readers (processes, Ray tasks) like any unit, so
    many small tables parse in parallel; above it the writer streams it. The store is the same."""
    folder = write_tables(tmp_path / "data")
    adapter = table_mod.CsvAdapter()
    unit = table_mod.Unit(folder / "visits.csv")
    monkeypatch.setattr(runner_mod, "STREAM_MIN_BYTES", 1 << 18)
    assert not runner_mod._streams(adapter, unit)  # a few kB
    monkeypatch.setattr(runner_mod, "STREAM_MIN_BYTES", unit.path.stat().st_size)
    assert runner_mod._streams(adapter, unit)
    streamed = ingest_into(tmp_path / "streamed", folder, 7, monkeypatch, stream_min_bytes=0)
    read = ingest_into(tmp_path / "read", folder, 7, monkeypatch, stream_min_bytes=1 << 30)
    assert streamed.errors == read.errors == [] and streamed.n_items_added == read.n_items_added == 50
    assert catalog(tmp_path / "streamed") == catalog(tmp_path / "read")


def test_a_bad_row_in_a_later_slice_stores_nothing_of_the_table(tmp_path, monkeypatch):
    folder = write_tables(tmp_path / "data", extra_rows=",01/01/2019,1,1,x,0,3\n")  # row 51: no patient
    report = ingest_into(tmp_path / "s", folder, 7, monkeypatch)
    assert len(report.errors) == 1 and "row 51 has no patient id" in report.errors[0][1]
    with Store(tmp_path / "s") as st:
        assert st.con.execute("SELECT count(*) FROM items").fetchone()[0] == 0
        assert st.con.execute("SELECT count(*) FROM sources").fetchone()[0] == 0


def test_a_changed_table_replaces_its_rows_and_a_bad_new_version_keeps_the_old(tmp_path, monkeypatch):
    folder = write_tables(tmp_path / "data")
    first = ingest_into(tmp_path / "s", folder, 7, monkeypatch)
    assert first.n_items_added == 50
    write_tables(folder, n=60)  # new bytes: its 50 earlier rows are replaced by 60
    second = ingest_into(tmp_path / "s", folder, 7, monkeypatch)
    assert second.errors == [] and second.n_items_replaced == 50
    with Store(tmp_path / "s") as st:
        assert st.con.execute("SELECT count(*) FROM items").fetchone()[0] == 60
    kept = catalog(tmp_path / "s")
    # past the 200 rows a date layout is read from, so in slice 36: 35 slices are inserted, then rolled back
    write_tables(folder, n=250, extra_rows="P1,not a date,1,1,x,0,3\n")
    third = ingest_into(tmp_path / "s", folder, 7, monkeypatch)
    assert len(third.errors) == 1 and "row 251: not a date" in third.errors[0][1]
    after = catalog(tmp_path / "s")
    assert after["items"] == kept["items"] and after["sources"] == kept["sources"]


def test_latin1_found_late_is_named_by_the_byte_reading_whole_names(tmp_path, monkeypatch):
    folder = write_tables(tmp_path / "data", n=200)
    path = folder / "visits.csv"
    data = path.read_bytes() + b"P1,01/01/2019,1,1,caf\xe9,0,3\n"  # a Latin-1 byte, 13 kB in
    monkeypatch.setattr(table_mod.TableFile, "PROBE_CHUNK", 1000)  # many chunks before it
    for head in (b"\xef\xbb\xbf", b""):  # with a BOM and without: the position decoding whole gives
        path.write_bytes(head + data)
        with pytest.raises(UnicodeDecodeError) as whole:
            (head + data).decode("utf-8-sig")
        assert table_mod.TableFile(path).probe() == whole.value.start
    report = ingest_into(tmp_path / "s", folder, 7, monkeypatch)
    assert report.errors == [] and report.n_items_added == 201
    assert any(f"not UTF-8 (byte {whole.value.start}): read as Latin-1" in w for w in report.warnings)
    with Store(tmp_path / "s") as st:
        last = st.items().query("source_key == 'row 201'")["meta"].iloc[0]
    assert json.loads(last)["values"]["note"] == "caf\u00e9"


KILL_MID_TABLE = """
import os, signal, sys
from medweave.ingest import ingest
from medweave.ingest import runner as runner_mod
from medweave.ingest.adapters import table as table_mod
from medweave.store import catalog
root, folder, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
table_mod.SLICE_ROWS = 500
runner_mod.STREAM_MIN_BYTES = 0
catalog.CATALOG_ROW_GROUP_SIZE = 2048  # row groups of the open transaction written to the file early
add, slices = catalog.UnitWriter.add, [0]


def used_blocks(st):
    return st.con.execute("SELECT used_blocks FROM pragma_database_size() WHERE database_name = 'catalog'").fetchone()[0]

def add_then_die(self, *args):
    add(self, *args)
    slices[0] += 1
    if slices[0] == kill_after:
        print(used_blocks(self.store), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

catalog.UnitWriter.add = add_then_die
with catalog.Store(root, write=True) as st:
    print(used_blocks(st), flush=True)
    ingest([folder], st, progress=False)
"""


def test_a_kill_mid_table_shows_nothing_of_it_and_keeps_what_was_stored(tmp_path, monkeypatch):
    """A real SIGKILL while a large changed table goes in, after DuckDB has written row groups of the
    open transaction to the catalog file: the next open shows the table's earlier version and nothing
    of the new one, and ingesting again gives the store a run without the kill gives."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import medweave

    folder = write_tables(tmp_path / "data", n=60)
    assert ingest_into(tmp_path / "s", folder, 7, monkeypatch).n_items_added == 60
    before = catalog(tmp_path / "s")
    write_tables(folder, n=6000)  # changed: 6,000 rows, 12 slices of 500
    src = str(Path(medweave.__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", KILL_MID_TABLE, str(tmp_path / "s"), str(folder), "9"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src}, timeout=300)
    assert proc.returncode == -9, proc.stderr
    opened, killed = map(int, proc.stdout.split())
    assert killed > opened + 2  # 4,500 rows inserted: row groups of them already written to the file
    assert catalog(tmp_path / "s") == before  # read-only: the earlier version, nothing of the new one
    with Store(tmp_path / "s", write=True) as st:  # the open for writing (its sweep) keeps it so
        assert st.verify().ok
    assert catalog(tmp_path / "s") == before
    again = ingest_into(tmp_path / "s", folder, 500, monkeypatch)
    clean = ingest_into(tmp_path / "clean", folder, 500, monkeypatch)
    assert again.errors == [] and again.n_items_replaced == 60 and clean.n_items_added == 6000
    assert catalog(tmp_path / "s") == catalog(tmp_path / "clean")
