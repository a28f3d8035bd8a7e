"""Pack compaction (`medweave store compact`): the live blobs of packs with dead bytes are copied into
a new pack, the rows pointed at it in one transaction, the old packs deleted; a compaction killed at
any step leaves a store whose every item reads back with its hash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import medweave
from medweave.ingest import ingest
from medweave.store import Store
from medweave.store.catalog import StoreLockedError, read_verified, sha256_bytes

SRC_PATH = str(Path(medweave.__file__).resolve().parents[1])


def _write_images(src: Path, which: range, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in which:
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(src / f"img{i}.png")


def _store_with_dead_bytes(tmp_path: Path) -> Path:
    """Three ingests of the same folder, the second and third after changing some pictures: the rows
    of the changed pictures are replaced, so the first two packs hold dead ranges."""
    src = tmp_path / "in"
    src.mkdir()
    _write_images(src, range(8), seed=0)
    (src / "note.txt").write_text("Findings: clear lungs.\n")
    store = tmp_path / "s"
    for changed, seed in ((None, None), (range(4), 1), (range(2), 2)):
        if changed is not None:
            _write_images(src, changed, seed=seed)
        with Store(store, write=True) as st:
            assert ingest([src], st, progress=False).ok
    return store


def _contents(store: Path) -> dict[str, str]:
    """item id -> the hash of its blob's bytes as read now (through the verified reader)."""
    with Store(store) as st:
        rows = st.con.execute("SELECT item_id, blob, content_hash FROM items WHERE blob IS NOT NULL").fetchall()
    out = {}
    for item_id, rel, content_hash in rows:
        data = read_verified(store, rel, item_id)
        assert sha256_bytes(data) == content_hash
        out[item_id] = sha256_bytes(data)
    return out


def _verify(store: Path):
    with Store(store) as st:
        return st.verify()


def test_compact_frees_dead_bytes_and_every_blob_reads_back(tmp_path):
    store = _store_with_dead_bytes(tmp_path)
    with Store(store, write=True) as st:  # and two items deleted outright, from a pack that keeps
        # live ones (item ids follow the store's random key: two picked by id alone were sometimes the
        # only rows of the last pack, which the next open then deletes whole, leaving two packs)
        gone = [r[0] for r in st.con.execute(
            "WITH img AS (SELECT item_id, split_part(blob, '@', 1) AS pack FROM items WHERE modality = 'image' "
            "AND blob LIKE 'blobs/packs/%'), big AS (SELECT pack FROM img GROUP BY pack HAVING count(*) > 2 "
            "ORDER BY pack LIMIT 1) SELECT item_id FROM img WHERE pack IN (SELECT pack FROM big) "
            "ORDER BY item_id LIMIT 2").fetchall()]
        assert len(gone) == 2
        st.con.execute("DELETE FROM items WHERE item_id IN (SELECT unnest(?))", [gone])
    before = _contents(store)
    rep0 = _verify(store)
    assert rep0.ok and rep0.dead_bytes > 0
    packs_before = {p.name for p in (store / "blobs" / "packs").glob("*.pack")}
    assert len(packs_before) == 3

    with Store(store, write=True) as st:
        rep = st.compact(min_dead=0.0)
    assert rep.packs == 3 and len(rep.rewritten) >= 2 and not rep.skipped
    assert rep.rows_updated >= rep.blobs_moved > 0
    assert rep.reclaimed > 0 and rep.bytes_after < rep.bytes_before

    assert _contents(store) == before  # the same items, each reading back bytes that hash to its hash
    after = _verify(store)
    assert after.ok and after.dead_bytes == 0 and not after.orphans
    assert after.blobs == rep0.blobs
    packs_after = {p.name for p in (store / "blobs" / "packs").glob("*.pack")}
    assert not (packs_after & {Path(p).name for p in rep.rewritten})
    # the packs now hold the live blobs and nothing else (each live range once)
    assert sum((store / "blobs" / "packs" / n).stat().st_size for n in packs_after) == after.bytes

    with Store(store, write=True) as st:  # nothing left to do
        again = st.compact(min_dead=0.0)
    assert again.rewritten == [] and again.rows_updated == 0


def test_compact_leaves_packs_under_the_threshold_alone(tmp_path):
    store = _store_with_dead_bytes(tmp_path)
    with Store(store, write=True) as st:
        rep = st.compact(min_dead=0.99)
    assert rep.rewritten == [] and rep.rows_updated == 0
    assert _verify(store).dead_bytes > 0


def test_compact_command_and_its_refusal_while_another_process_has_the_store(tmp_path):
    from typer.testing import CliRunner

    from medweave.cli import app

    store = _store_with_dead_bytes(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from medweave.store import Store
            st = Store({str(store)!r}, write=True)
            print("open", flush=True)
            sys.stdin.readline()
            st.close()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": SRC_PATH})
    try:
        assert holder.stdout.readline().strip() == "open"
        res = CliRunner().invoke(app, ["store", "compact", "--store", str(store)])
        assert res.exit_code == 2
        assert "another process has the store open, so it cannot be opened for writing" in " ".join(res.output.split())
        with pytest.raises(StoreLockedError, match="catalog.duckdb"):
            Store(store, write=True)
    finally:
        holder.communicate("\n", timeout=60)
    res = CliRunner().invoke(app, ["store", "compact", "--store", str(store), "--min-dead", "0", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["reclaimed"] > 0 and len(got["rewritten"]) >= 2
    assert _verify(store).dead_bytes == 0


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from medweave.store import Store
    store, at, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seen = {}
    def step(name, pack):
        seen[name] = seen.get(name, 0) + 1
        if name == at and seen[name] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    with Store(store, write=True) as st:
        st.compact(min_dead=0.0, on_step=step)
    print("finished")
""")


@pytest.mark.parametrize("at,nth", [("copied", 1), ("copied", 5), ("synced", 1), ("updated", 1),
                                    ("committed", 1), ("removed", 1)])
def test_a_compaction_killed_at_any_step_leaves_a_readable_verified_store(tmp_path, at, nth):
    store = _store_with_dead_bytes(tmp_path)
    before = _contents(store)
    dead = _verify(store).dead_bytes
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(store), at, str(nth)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": SRC_PATH}, timeout=120)
    assert proc.returncode == -9, proc.stdout + proc.stderr  # killed where asked, not finished
    # read-only, as left by the kill: every item reads back with its hash, no row names a missing range
    assert _contents(store) == before
    rep = _verify(store)
    assert rep.ok and not rep.damaged
    # the next writer cleans up what the killed one left, and a compaction then finishes
    with Store(store, write=True) as st:
        st.compact(min_dead=0.0)
    assert _contents(store) == before
    final = _verify(store)
    assert final.ok and final.dead_bytes == 0 and not final.orphans
    assert dead > 0
    shutil.rmtree(tmp_path / "in")
