"""The store: idempotent ingestion, atomic blobs (files and packs), sweeping, crash safety with a real
killed process."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

from medweave.ingest import ingest
from medweave.store import Item, Modality, Store
from medweave.store.catalog import PACK_MAX_BLOB, blob_location, sha256_bytes


def catalog_fingerprint(store_dir: Path) -> tuple:
    """Counts and hashes that must agree between two stores holding the same data (a blob by its
    name, the hash of its bytes: where in which pack it lies depends on how the writes were split)."""
    con = duckdb.connect(str(store_dir / "catalog.duckdb"), read_only=True)
    try:
        items = [(i, h, Path(b).name if b else None) for i, h, b in
                 con.execute("SELECT item_id, content_hash, blob FROM items ORDER BY item_id").fetchall()]
        n_pat = con.execute("SELECT count(*) FROM patients").fetchone()[0]
        n_std = con.execute("SELECT count(*) FROM studies").fetchone()[0]
        n_src = con.execute("SELECT count(*) FROM sources").fetchone()[0]
    finally:
        con.close()
    return items, n_pat, n_std, n_src


def blob_files(store_dir: Path) -> set[str]:
    """What holds blobs on disk: each blob file, and each pack with its size."""
    files = {p.relative_to(store_dir).as_posix() for p in (store_dir / "blobs").glob("??/*")}
    packs = {f"{p.relative_to(store_dir).as_posix()}:{p.stat().st_size}"
             for p in (store_dir / "blobs" / "packs").glob("*.pack")}
    return files | packs


def unreferenced_bytes(store_dir: Path) -> int:
    """Bytes of blob files and packs on disk that no row's blob covers (0 after a sweep, unless rows
    were replaced: their ranges stay in their pack)."""
    on_disk = sum(p.stat().st_size for p in (store_dir / "blobs").rglob("*") if p.is_file())
    with Store(store_dir) as st:
        rels = [r[0] for r in st.con.execute("SELECT DISTINCT blob FROM items WHERE blob IS NOT NULL").fetchall()]
    named = 0
    for rel in rels:
        path, _offset, length = blob_location(store_dir, rel)
        named += path.stat().st_size if length is None else length
    return on_disk - named


def test_ingest_twice_adds_nothing(tmp_path, text_files):
    text_files(tmp_path / "in", 30)
    with Store(tmp_path / "s", write=True) as st:
        first = ingest([tmp_path / "in"], st, progress=False)
        second = ingest([tmp_path / "in"], st, progress=False)
        assert first.n_items_added == 30 and first.ok
        assert second.n_items_added == 0 and second.n_skipped == 30
        assert st.stats()["items"] == 30
        assert st.items()["blob"].nunique() == 30
    assert len(blob_files(tmp_path / "s")) == 1  # small blobs: one pack
    assert unreferenced_bytes(tmp_path / "s") == 0


def test_a_changed_source_replaces_its_items_and_their_blobs(tmp_path, text_files):
    paths = text_files(tmp_path / "in", 4)
    with Store(tmp_path / "s", write=True) as st:
        ingest([tmp_path / "in"], st, progress=False)
        old = set(st.items()["blob"])
        replaced = st.read_blob(st.items("unit_id = ?", [st.unit_id(paths[0])])["blob"].iloc[0])
        paths[0].write_text("An amended report: small effusion.\n")
        report = ingest([tmp_path / "in"], st, progress=False)
        assert (report.n_ok, report.n_skipped, report.n_items_replaced, report.n_items_added) == (1, 3, 1, 1)
        items = st.items()
        assert len(items) == 4 and items["text"].str.contains("amended").sum() == 1
        assert st.con.execute("SELECT count(*) FROM sources").fetchone()[0] == 4
        assert len(old - set(items["blob"])) == 1 and all(st.read_blob(b) for b in items["blob"])
        # the replaced blob's range stays in its pack (the pack is still referenced), counted as dead
        assert st.verify().dead_bytes == len(replaced)
    assert unreferenced_bytes(tmp_path / "s") == len(replaced)


def test_a_store_inside_the_ingested_folder_is_not_ingested(tmp_path, text_files):
    text_files(tmp_path, 3)
    with Store(tmp_path / "store", write=True) as st:
        first = ingest([tmp_path], st, progress=False)
        again = ingest([tmp_path], st, progress=False)
    assert first.ok and again.ok and first.n_items_added == 3 and again.n_skipped == 3


def test_reader_processes_give_the_same_catalog_as_one_process(tmp_path, text_files):
    text_files(tmp_path / "in", 150, patients=30)
    (tmp_path / "in" / "broken.txt").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "one").mkdir()
    with Store(tmp_path / "one", write=True) as st:
        one = ingest([tmp_path / "in"], st, progress=False, workers=1)
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "secret.key").write_bytes((tmp_path / "one" / "secret.key").read_bytes())
    with Store(tmp_path / "pool", write=True) as st:
        pool = ingest([tmp_path / "in"], st, progress=False, workers=2)
    assert (one.n_ok, one.n_failed) == (pool.n_ok, pool.n_failed) == (150, 1)
    assert one.errors == pool.errors and "does not decode" in pool.errors[0][1]
    assert catalog_fingerprint(tmp_path / "one") == catalog_fingerprint(tmp_path / "pool")


def test_every_row_points_at_its_blob_and_content_hash(tmp_path, text_files):
    text_files(tmp_path / "in", 12)
    with Store(tmp_path / "s", write=True) as st:
        ingest([tmp_path / "in"], st, progress=False)
        import hashlib

        for blob, chash in st.con.execute("SELECT blob, content_hash FROM items").fetchall():
            assert hashlib.sha256(st.read_blob(blob)).hexdigest() == chash


def test_sweep_removes_blobs_without_rows_and_partial_files(tmp_path, text_files):
    text_files(tmp_path / "in", 5)
    with Store(tmp_path / "s", write=True) as st:
        ingest([tmp_path / "in"], st, progress=False)
        kept = blob_files(tmp_path / "s")
        orphan = st.put_blob(b"written but never committed", "ab" * 32, ".bin")  # the end of the pack
        big = b"a large blob, a file of its own" * (PACK_MAX_BLOB // 16)
        big_rel = st.put_blob(big, sha256_bytes(big), ".bin")
        (st.blob_dir / ".tmp" / "half-written.bin").write_bytes(b"x")
        grown = blob_files(tmp_path / "s")
        assert grown != kept and big_rel in grown and st.read_blob(big_rel) == big
        assert st.sweep() == 3 and blob_files(tmp_path / "s") == kept  # the pack cut back, two files gone
        # the pack being written was closed: the next blob starts a pack of its own
        lone = st.put_blob(b"the only blob of a pack", "cd" * 32, ".bin")
        assert blob_location(st.root, lone)[0] != blob_location(st.root, orphan)[0]
        assert blob_files(tmp_path / "s") != kept
    with Store(tmp_path / "s", write=True):  # opening for writing sweeps
        pass
    assert blob_files(tmp_path / "s") == kept
    assert not list((tmp_path / "s" / "blobs" / ".tmp").iterdir())
    assert unreferenced_bytes(tmp_path / "s") == 0


def test_the_sweep_looks_files_up_a_chunk_at_a_time_and_adds_up_packs_in_the_catalog(tmp_path, text_files,
                                                                                      monkeypatch):
    """The sweep holds no set of every address: files on disk are looked up SWEEP_CHUNK at a time,
    and the packs' ends and used bytes come from DuckDB. Files of a store whose every blob is a file
    are kept or deleted the same across chunks; a range named by two rows counts once."""
    import medweave.store.catalog as catalog

    monkeypatch.setattr(catalog, "SWEEP_CHUNK", 3)
    monkeypatch.setattr(catalog, "PACK_MAX_BLOB", 0)  # every blob a file of its own
    text_files(tmp_path / "in", 8)
    with Store(tmp_path / "s", write=True) as st:
        assert ingest([tmp_path / "in"], st, progress=False).ok
        kept = blob_files(tmp_path / "s")
        assert len(kept) == 8 and not list(st.pack_files())
        for i in range(5):  # orphans in several folders, spread over the chunks
            data = f"a blob without a row {i}".encode()
            st.put_blob(data, sha256_bytes(data), ".bin")
        assert len(blob_files(tmp_path / "s")) == 13
        assert st.sweep() == 5 and blob_files(tmp_path / "s") == kept
        monkeypatch.setattr(catalog, "PACK_MAX_BLOB", 1 << 20)
        a, b = b"first packed blob", b"second packed blob, longer"
        rel_a, rel_b = st.put_blob(a, sha256_bytes(a), ".bin"), st.put_blob(b, sha256_bytes(b), ".bin")
        tail = st.put_blob(b"never named", "ef" * 32, ".bin")
        st.sync_blobs()
        item_ids = st.con.execute("SELECT item_id FROM items ORDER BY item_id LIMIT 3").fetchall()
        for (iid,), rel in zip(item_ids, [rel_a, rel_b, rel_b]):  # rel_b named by two rows
            st.con.execute("UPDATE items SET blob = ? WHERE item_id = ?", [rel, iid])
        pack = blob_location(st.root, rel_a)[0].relative_to(st.root).as_posix()
        assert blob_location(st.root, tail)[0] == st.root / pack
        ends, used = st._pack_use()
        assert ends == {pack: len(a) + len(b)} and used == {pack: len(a) + len(b)}
        assert st._pack_use(used=False) == (ends, {})
        assert st.sweep() == 4  # the three files no row names now, and the pack's never-named tail
        assert (st.root / pack).stat().st_size == len(a) + len(b)
        assert st.read_blob(rel_a) == a and st.read_blob(rel_b) == b
        assert not st.verify().orphans  # (the rows repointed here fail its hash check, rightly)


def test_a_full_pack_is_closed_and_the_next_blob_starts_a_new_one(tmp_path, text_files, monkeypatch):
    """Packs of at most PACK_MAX_BYTES: a run writing more spreads its blobs over several packs, each
    read back whole, and a second run never appends to the packs of the first."""
    import medweave.store.catalog as catalog

    monkeypatch.setattr(catalog, "PACK_MAX_BYTES", 64)
    text_files(tmp_path / "in", 12)
    with Store(tmp_path / "s", write=True) as st:
        assert ingest([tmp_path / "in"], st, progress=False).ok
        rels = list(st.items()["blob"])
        packs = {blob_location(st.root, r)[0] for r in rels}
        per_pack = {p: sum(blob_location(st.root, r)[0] == p for r in rels) for p in packs}
        assert len(packs) >= 3 and all(p.stat().st_size <= 64 or n == 1 for p, n in per_pack.items())
        assert st.verify().ok and not st.verify().orphans
    sizes = {p: p.stat().st_size for p in packs}
    (tmp_path / "in2").mkdir()
    for i in range(3):
        (tmp_path / "in2" / f"pt9{i}_new.txt").write_text(f"A new report {i}: no effusion.\n")
    with Store(tmp_path / "s", write=True) as st:
        assert ingest([tmp_path / "in2"], st, progress=False).ok
        assert all(st.read_blob(r) for r in st.items()["blob"]) and len(st.items()) == 15
    assert {p: p.stat().st_size for p in packs} == sizes
    assert unreferenced_bytes(tmp_path / "s") == 0
    # The same content again from another file, giving the same item: its row is there already, so
    # the copy appended in this session is named by no row (here the only blob of its pack: an
    # orphan, deleted by the next sweep).
    (tmp_path / "in3").mkdir()
    copy = tmp_path / "in3" / "pt0000_r00000.txt"
    copy.write_bytes((tmp_path / "in" / "pt0000_r00000.txt").read_bytes())
    with Store(tmp_path / "s", write=True) as st:
        report = ingest([tmp_path / "in3"], st, progress=False)
        assert report.ok and report.n_items_added == 0 and len(st.items()) == 15
        assert len(st.verify().orphans) == 1
    assert unreferenced_bytes(tmp_path / "s") == copy.stat().st_size
    Store(tmp_path / "s", write=True).close()
    assert unreferenced_bytes(tmp_path / "s") == 0


def test_blobs_of_the_older_two_level_layout_are_read_verified_and_swept(tmp_path, text_files):
    """Stores written before blobs/ab/<hash> held blobs/ab/cd/<hash>: their rows name those paths."""
    text_files(tmp_path / "in", 4)
    with Store(tmp_path / "s", write=True) as st:
        ingest([tmp_path / "in"], st, progress=False)
        item_id, rel = st.con.execute("SELECT item_id, blob FROM items ORDER BY item_id LIMIT 1").fetchone()
        name = Path(rel).name
        old_rel = f"blobs/{name[:2]}/{name[2:4]}/{name}"
        (st.root / old_rel).parent.mkdir(parents=True)
        (st.root / old_rel).write_bytes(st.read_blob(rel))  # the row now names an old-layout file
        st.con.execute("UPDATE items SET blob = ? WHERE item_id = ?", [old_rel, item_id])
        orphan = f"blobs/cd/ef/{'cd' * 32}.bin"
        (st.root / orphan).parent.mkdir(parents=True)
        (st.root / orphan).write_bytes(b"an old-layout blob without a row")
        data = st.read_blob(old_rel)
    assert Path(old_rel).as_posix() in {p.relative_to(tmp_path / "s").as_posix()
                                        for p in Store(tmp_path / "s").blob_files()}
    with Store(tmp_path / "s", write=True) as st:  # the sweep keeps the old blob with a row, drops the orphan
        assert st.read_blob(old_rel) == data
        assert (st.root / old_rel).exists() and not (st.root / orphan).exists()
        report = st.verify()
        assert report.ok and not report.orphans, (report.damaged, report.orphans)
        (st.root / old_rel).write_bytes(b"changed on disk")
        assert [d["item_id"] for d in st.verify().damaged] == [item_id]


def test_unknown_modality_is_rejected_and_nothing_is_written(tmp_path):
    with Store(tmp_path / "s", write=True) as st:
        with pytest.raises(ValueError, match="'sound'"):
            Modality("sound")
        assert Item(patient_id="P1", modality=Modality.TEXT, blob=b"x").item_id("h") != Item(
            patient_id="P2", modality=Modality.TEXT, blob=b"x").item_id("h")
        assert st.stats()["items"] == 0


def test_read_only_open_of_missing_store_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        Store(tmp_path / "nope")


def _ingest_cmd(src: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "medweave.cli", "ingest", str(src), "--store", str(store), "--quiet"]


@pytest.mark.slow
def test_killed_ingest_then_rerun_equals_clean_run(tmp_path, text_files):
    """Kill a real ingest process half-way (SIGKILL), run it again: same catalog as a clean run."""
    text_files(tmp_path / "in", 4000, patients=200)
    t0 = time.monotonic()
    subprocess.run(_ingest_cmd(tmp_path / "in", tmp_path / "clean"), check=True, capture_output=True)
    clean_seconds = time.monotonic() - t0

    # The kill must land after some batches committed and before all. It is timed from the clean
    # run, which a loaded machine makes noisy: try a few points in the run, each in a fresh store.
    import shutil
    landed = None
    for fraction in (0.6, 0.35, 0.8, 0.2, 0.5):
        crashed = tmp_path / "crashed"
        shutil.rmtree(crashed, ignore_errors=True)
        crashed.mkdir()
        # Same pseudonymisation key as the clean store, so that ids and de-identified bytes can agree.
        (crashed / "secret.key").write_bytes((tmp_path / "clean" / "secret.key").read_bytes())
        proc = subprocess.Popen(_ingest_cmd(tmp_path / "in", crashed),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(max(0.5, clean_seconds * fraction))
        if proc.poll() is not None:  # finished before it could be killed
            continue
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = catalog_fingerprint(crashed)
        if 0 < len(partial[0]) < 4000:
            landed = fraction
            break
    assert landed is not None, "no kill landed after some batches committed and before all"

    rerun = subprocess.run(_ingest_cmd(tmp_path / "in", tmp_path / "crashed"), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert catalog_fingerprint(tmp_path / "crashed") == catalog_fingerprint(tmp_path / "clean")
    # what the killed run appended past its last commit was cut: every byte on disk is a row's blob
    assert unreferenced_bytes(tmp_path / "crashed") == 0 == unreferenced_bytes(tmp_path / "clean")
    with Store(tmp_path / "crashed") as st:
        report = st.verify()
        assert report.ok and not report.orphans and report.blobs == 4000, (report.damaged, report.orphans)


def test_batch_columns_keep_nan_as_null_and_mixed_values_as_before(tmp_path):
    """Rows are handed to DuckDB as Arrow columns: a NaN is stored as NULL (as the pandas path did),
    and a column Arrow cannot type (an int and a text in one column) still commits, through pandas."""
    from medweave.store.catalog import _columns

    table, cols = _columns([{"a": 1.5, "b": "x"}, {"a": float("nan"), "b": None}])
    assert cols == ["a", "b"] and table.column("a").to_pylist() == [1.5, None]
    mixed, _ = _columns([{"code": 7}, {"code": "seven"}])
    assert list(mixed["code"]) == [7, "seven"]  # the pandas frame, objects kept as they are
    with Store(tmp_path / "s", write=True) as store:
        row = {"item_id": "i1", "patient_id": "p", "modality": "table", "content_hash": "h", "unit_id": "u1",
               "value_num": float("nan"), "code": "c"}
        src = {"source_id": "f1", "unit_id": "u1", "source_path": "x", "raw_sha256": "f1", "adapter": "t",
               "adapter_version": "1", "n_items": 1, "run_id": "r", "done_at": None}
        assert store.commit_batch([row], {"p": {}}, {}, [src], []) == (1, 0)
        assert store.con.execute("SELECT value_num IS NULL FROM items").fetchone()[0]
        # the same unit again (its bytes changed): its rows are replaced, not added
        assert store.commit_batch([{**row, "item_id": "i2"}], {}, {}, [{**src, "source_id": "f2"}], []) == (1, 1)
        assert store.con.execute("SELECT list(item_id) FROM items").fetchone()[0] == ["i2"]


def test_catalog_and_embedding_cache_connections_have_a_memory_limit(tmp_path):
    """DuckDB's own default (80% of RAM) would let its buffer cache follow the catalog's size."""
    from medweave.encode import EmbeddingCache

    def limit_bytes(con) -> float:
        value, unit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0].split()
        return float(value) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]

    with Store(tmp_path / "s", write=True) as st:
        assert 0.9e9 <= limit_bytes(st.con) <= 1.0e9
    with Store(tmp_path / "s") as st:  # read-only too
        assert 0.9e9 <= limit_bytes(st.con) <= 1.0e9
    cache = EmbeddingCache(tmp_path / "emb.duckdb")  # its own, smaller limit (see the next test)
    try:
        assert limit_bytes(cache.con) == 32 * 2**20
    finally:
        cache.close()
    # a cache written before it lost its primary key keeps the catalog's limit: its key index needs it
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute("CREATE TABLE embeddings (content_hash VARCHAR, encoder VARCHAR, version VARCHAR, dim INTEGER, "
                "vec BLOB, PRIMARY KEY (content_hash, encoder, version))")
    con.close()
    old = EmbeddingCache(tmp_path / "old.duckdb")
    try:
        assert 0.9e9 <= limit_bytes(old.con) <= 1.0e9
        old.put({"h": np.ones(4, np.float32)}, "e", "1")
        old.put({"h": np.zeros(4, np.float32)}, "e", "1")  # already there: kept, as before
        assert old.count() == 1 and old.get(["h"], "e", "1")["h"].tolist() == [1, 1, 1, 1]
    finally:
        old.close()


def test_embedding_cache_memory_stays_under_its_limit_when_the_cache_is_larger(tmp_path):
    """A cache of 60 MB of vectors, written and read back in chunks as encoding does: DuckDB's memory
    (its buffer pool, duckdb_memory()) stays under the cache's 32 MB limit instead of following the
    file, every vector comes back, and a vector put twice is stored once."""
    from medweave.encode import EmbeddingCache

    rng = np.random.default_rng(0)
    cache = EmbeddingCache(tmp_path / "emb.duckdb")
    hashes = [f"{i:064x}" for i in range(12_000)]
    try:
        for s in range(0, len(hashes), 1000):
            assert cache.get(hashes[s:s + 1000], "img", "1") == {}
            cache.put({h: rng.standard_normal(1280).astype(np.float32) for h in hashes[s:s + 1000]}, "img", "1")
        cache.put({hashes[0]: np.zeros(1280, np.float32)}, "img", "1")
        assert cache.count("img") == len(hashes)
        got = {}
        for s in range(0, len(hashes), 1000):
            got.update(cache.get(hashes[s:s + 1000], "img", "1"))
            used = cache.con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]
            assert used <= 32 * 2**20, used
        assert sorted(got) == hashes and not np.all(got[hashes[0]] == 0)
    finally:
        cache.close()


def test_release_buffers_hands_back_a_scan_s_blocks_and_keeps_the_limit(tmp_path):
    """A lookup scans every row group of the columns it reads and DuckDB keeps those blocks; after
    ``release_buffers`` its memory (duckdb_memory()) is back near nothing, the limit is the one the
    connection had, and the next lookup reads the same rows from the file."""
    from medweave.store.catalog import connect_duckdb, release_buffers

    con = duckdb.connect(str(tmp_path / "c.duckdb"))
    con.execute("CREATE TABLE items AS SELECT md5(i::VARCHAR) AS item_id, repeat(md5(i::VARCHAR), 8) AS blob "
                "FROM range(200000) t(i)")
    con.close()
    con = connect_duckdb(tmp_path / "c.duckdb", read_only=True)
    used = lambda: con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]  # noqa: E731
    lookup = "SELECT item_id, blob FROM items WHERE item_id IN (SELECT unnest(?)) ORDER BY item_id"
    ids = [hashlib.md5(str(i).encode()).hexdigest() for i in (5, 77, 199_999)]
    before = con.execute(lookup, [ids]).fetchall()
    assert used() > 4 * 2**20  # the blocks of both columns, all row groups (5.5 MB)
    limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    release_buffers(con)
    assert used() < 2**20 and con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == limit
    assert con.execute(lookup, [ids]).fetchall() == before and len(before) == 3
    con.close()


def test_a_writing_store_checkpoints_every_so_many_rows_and_hands_back_duckdb_s_memory(tmp_path, text_files,
                                                                                      monkeypatch):
    """Every ``CHECKPOINT_ROWS`` committed item rows the catalog is checkpointed (the write-ahead log
    emptied into the file) and DuckDB's blocks handed back: rows committed since then, the index parts
    and scanned blocks are no longer in memory. The catalog is the one a run without it gives."""
    from medweave.store import catalog as catalog_mod

    text_files(tmp_path / "in", 60, patients=12)
    checks = []
    commit = Store.commit_batch

    def commit_and_look(self, *args, **kwargs):
        out = commit(self, *args, **kwargs)
        wal = self.root / "catalog.duckdb.wal"
        used = self.con.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchone()[0]
        checks.append((self._uncheckpointed, wal.exists() and wal.stat().st_size, used))
        return out

    monkeypatch.setattr(Store, "commit_batch", commit_and_look)
    monkeypatch.setattr("medweave.ingest.runner._Batch.due", lambda self: len(self.sources) >= 10)
    stores = {}
    for name, every in (("often", 25), ("never", 10**9)):
        monkeypatch.setattr(catalog_mod, "CHECKPOINT_ROWS", every)
        checks.clear()
        (tmp_path / name).mkdir()
        (tmp_path / name / "secret.key").write_text("ab" * 32)  # the same key: the same ids
        with Store(tmp_path / name, write=True) as st:
            assert ingest([tmp_path / "in"], st, progress=False, workers=1).n_items_added == 60
            stores[name] = (st.items().drop(columns=["ingested_at", "run_id"]), list(checks))
    after = stores["often"][1]
    assert [c[0] for c in after] == [10, 20, 0, 10, 20, 0]  # 10 rows a batch: a checkpoint at 30 and 60
    assert all(wal == 0 or wal is False for n, wal, _used in after if n == 0)  # the log emptied then
    assert all(used < 2**20 for n, _wal, used in after if n == 0)
    assert [c[0] for c in stores["never"][1]] == [10, 20, 30, 40, 50, 60]
    assert stores["often"][0].equals(stores["never"][0])


def test_bounded_lookup_holds_few_blocks_while_it_scans_and_gives_the_same_rows(tmp_path):
    """A chunk's lookup reads its columns' blocks in every row group: unbounded, DuckDB kept them all
    while the query ran (22 MB here, the table's size); under ``bounded_lookup`` it holds about its
    limit, hands them back after, and the connection's limit is restored. A query that does not fit
    a limit runs again under the next, last under the connection's own; beside a second connection
    nothing is lowered."""
    from medweave.store.catalog import bounded_lookup, connect_duckdb, release_buffers

    con = duckdb.connect(str(tmp_path / "c.duckdb"))
    con.execute("CREATE TABLE items AS SELECT md5(i::VARCHAR) AS item_id, repeat(md5(i::VARCHAR), 8) AS blob "
                "FROM range(800000) t(i)")
    con.close()
    con = connect_duckdb(tmp_path / "c.duckdb", read_only=True)
    con.execute("SET threads = 2")  # what a query needs of its own grows with its threads
    used = lambda c: c.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]  # noqa: E731
    limit = lambda c: c.execute("SELECT current_setting('memory_limit')").fetchone()[0]  # noqa: E731
    lookup = "SELECT item_id, blob FROM items WHERE item_id IN (SELECT unnest(?)) ORDER BY item_id"
    ids = [hashlib.md5(str(i).encode()).hexdigest() for i in (5, 77, 799_999)]
    own = limit(con)

    def run(c):
        return c.execute(lookup, [ids]).fetchall(), used(c)  # what DuckDB holds as the query ends

    plain, held_plain = run(con)
    release_buffers(con)
    rows, held = bounded_lookup(con, run, limits=("8MiB",))
    assert rows == plain and len(rows) == 3
    assert held_plain > 16 * 2**20 and held < 8 * 2**20
    assert used(con) < 2**20 and limit(con) == own
    big = "SELECT item_id, blob FROM items ORDER BY blob DESC LIMIT 3"  # the whole table sorted: not in 1 KiB
    assert bounded_lookup(con, lambda c: c.execute(big).fetchall(), limits=("1KiB", "2KiB")) == \
        con.execute(big).fetchall()
    assert limit(con) == own
    other = connect_duckdb(tmp_path / "c.duckdb", read_only=True)
    release_buffers(con)
    assert bounded_lookup(con, lambda c: limit(other)) == own  # the instance's limit: not lowered now
    other.close()
    con.close()


def test_release_buffers_never_starves_another_connection_to_the_same_file(tmp_path):
    """DuckDB gives every connection a process opens on one file one instance, and one memory limit:
    while ``release_buffers`` had it at '0B', a query of another connection to the file failed
    (OutOfMemoryException: a thread counting rows beside one looking vectors up hit it within seconds,
    and once the restore itself failed and left the limit at 0). With a second connection open the
    release is not done (the blocks stay, under the limit); once the file has one connection again
    (the other closed, or garbage), it releases."""
    import gc

    from medweave.encode import EmbeddingCache
    from medweave.store.catalog import release_buffers

    path = tmp_path / "emb.duckdb"
    rng = np.random.default_rng(0)
    vecs = {f"{i:064x}": rng.standard_normal(64).astype(np.float32) for i in range(3000)}
    a = EmbeddingCache(path)
    a.put(vecs, "e", "1")
    a.con.execute("CHECKPOINT")  # the rows in the file: every block can be evicted
    b = EmbeddingCache(path)
    used = lambda: a.con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]  # noqa: E731
    a.con.execute("SELECT content_hash, vec FROM embeddings").fetchall()
    before = used()
    assert before > 2**20 and release_buffers(a.con, a._limit) is False and used() >= before
    assert len(a.get(list(vecs)[:5], "e", "1")) == 5 and b.count() == 3000
    b.close()
    assert release_buffers(a.con, a._limit) is True and used() < 2**20
    c = EmbeddingCache(path)
    assert release_buffers(a.con, a._limit) is False
    del c
    gc.collect()  # a connection never closed stops counting once it is garbage
    assert release_buffers(a.con, a._limit) is True and a.count() == 3000
    a.close()
    Store(tmp_path / "store", write=True).close()  # a catalog's cursors share one instance: the same rule
    one = Store(tmp_path / "store")
    two = Store(tmp_path / "store")
    assert release_buffers(one.con) is False
    two.close()
    assert release_buffers(one.con) is True
    one.close()


def test_release_buffers_counts_every_connection_to_a_file_by_any_path_and_either_kind(tmp_path):
    """One registry counts the connections to a file, keyed by its real path: a file opened through a
    symlink (to the file or to its folder) and by its own path is one file, with ``connect_duckdb``
    and ``connect_catalog`` alike, and a connection of either kind counts against the other's
    release. A catalog cursor dropped without ``close_catalog`` stops counting once it is garbage
    (as a ``connect_duckdb`` connection does), and the catalog's instance closes with its last one."""
    import gc

    from medweave.store import catalog as catalog_mod
    from medweave.store.catalog import (close_catalog, close_duckdb, connect_catalog, connect_duckdb,
                                        release_buffers)

    real = tmp_path / "real"
    real.mkdir()
    con = duckdb.connect(str(real / "c.duckdb"))
    con.execute("CREATE TABLE t AS SELECT range AS i FROM range(1000)")
    con.close()
    (tmp_path / "link.duckdb").symlink_to(real / "c.duckdb")
    (tmp_path / "folder").symlink_to(real, target_is_directory=True)

    a = connect_duckdb(real / "c.duckdb", read_only=True)
    b = connect_duckdb(tmp_path / "link.duckdb", read_only=True)
    assert release_buffers(a) is False and release_buffers(b) is False
    close_duckdb(b)
    assert release_buffers(a) is True
    c = connect_duckdb(tmp_path / "folder" / "c.duckdb", read_only=True)
    assert release_buffers(a) is False
    close_duckdb(c)
    close_duckdb(a)
    assert not catalog_mod._FILES

    one = connect_catalog(tmp_path / "link.duckdb", read_only=True)
    two = connect_catalog(tmp_path / "folder" / "c.duckdb", read_only=True)  # the same instance
    assert release_buffers(one) is False and two.execute("SELECT count(*) FROM t").fetchone()[0] == 1000
    del two
    gc.collect()
    assert release_buffers(one) is True
    other = connect_duckdb(real / "c.duckdb", read_only=True)  # the other kind, to the same file
    assert release_buffers(one) is False and release_buffers(other) is False
    close_duckdb(other)
    assert release_buffers(one) is True
    close_catalog(one)
    assert not catalog_mod._FILES
    writer = connect_catalog(real / "c.duckdb")  # the instance closed with its last cursor: another mode opens
    assert release_buffers(writer) is True
    close_catalog(writer)
