"""The ingest runner on hostile inputs: a folder-link loop, files that are not data, counts that add up,
reasons that keep their words and file names, identifiers in paths, deduplicated store errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medweave.ingest import ingest
from medweave.store.catalog import Store

CLI = [sys.executable, "-m", "medweave.cli"]
REPORT = "FINDINGS: The lungs are clear. IMPRESSION: No acute disease.\n"


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The real command in a subprocess (slow to start: it imports everything)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


class _Result:
    def __init__(self, code: int, stdout: str):
        self.returncode, self.stdout = code, stdout


def cli(*args: str) -> _Result:
    """The real command in this process (same code path, without the start-up of a new interpreter)."""
    from typer.testing import CliRunner

    from medweave.cli import app

    res = CliRunner().invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return _Result(res.exit_code, res.stdout)


def _counts_add_up(report: dict) -> None:
    assert report["units"] == report["ingested"] + report["already_stored"] + report["skipped"] + report["failed"]
    for key in ("ingested", "already_stored", "skipped", "failed"):
        assert sum(c[key] for c in report["per_adapter"].values()) == report[key], key


def test_a_folder_link_loop_finishes(tmp_path):
    """``loop/up -> ..`` and ``loop/self -> ../loop`` once made the walk run forever."""
    import threading

    loop = tmp_path / "data" / "loop"
    loop.mkdir(parents=True)
    (loop / "up").symlink_to("..")
    (loop / "self").symlink_to("../loop")
    (tmp_path / "data" / "r1_note.txt").write_text(REPORT)
    reports = []

    def work():
        with Store(tmp_path / "s", write=True) as st:
            reports.append(ingest([tmp_path / "data"], st, progress=False))
            reports.append(ingest([loop], st, progress=False))

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the walk must end"
    whole, inner = reports
    assert (whole.n_ok, whole.n_units) == (1, 1) and whole.ok
    assert any("loop" in w for w in whole.warnings)
    assert inner.n_units == 0 and inner.ok, "a folder holding only looping links holds nothing"


def _mixed_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "p1_report.txt").write_text(REPORT)
    (root / "README.txt").write_text("This folder holds test files for a DICOM toolkit.\nSee the docs.\n")
    (root / "notes.txt").write_text("Remember to buy milk and call the plumber about the sink.\n")
    icc = bytearray(128)
    icc[36:40] = b"acsp"
    (root / "sRGB.icc").write_bytes(bytes(icc))
    (root / "SHA256SUMS").write_text("abc  p1_report.txt\n")
    return root


def test_not_data_files_are_skipped_with_a_reason_and_do_not_fail_the_run(tmp_path):
    folder = _mixed_folder(tmp_path / "in")
    res = cli("ingest", str(folder), "--store", str(tmp_path / "s"), "--json")
    assert res.returncode == 0, res.stdout
    report = json.loads(res.stdout)
    _counts_add_up(report)
    assert (report["ingested"], report["skipped"], report["failed"]) == (1, 4, 0)
    reasons = {Path(s["source"]).name: s["reason"] for s in report["skipped_files"]}
    assert "documentation" in reasons["README.txt"] and "ICC colour profile" in reasons["sRGB.icc"]
    assert "medical words" in reasons["notes.txt"]
    assert "text" in report["patients"] and "file name" in report["patients"]["text"]["rule"]
    # a file that should ingest and does not makes the exit code 1, and the counts still add up
    (folder / "broken.json").write_text('{"resourceType": "Observation", "status": 12}')
    res = cli("ingest", str(folder), "--store", str(tmp_path / "s"), "--json")
    assert res.returncode == 1
    report = json.loads(res.stdout)
    _counts_add_up(report)
    assert (report["already_stored"], report["skipped"], report["failed"]) == (1, 4, 1)
    # a report forced with --format text is ingested whatever its words
    forced = cli("ingest", str(folder / "notes.txt"), "--store", str(tmp_path / "s"), "--format", "text", "--json")
    assert forced.returncode == 0 and json.loads(forced.stdout)["ingested"] == 1


def test_store_stats_lists_each_failed_file_once(tmp_path):
    folder = _mixed_folder(tmp_path / "in")
    (folder / "broken.json").write_text('{"resourceType": "Observation", "status": 12}')
    for _ in range(3):
        assert cli("ingest", str(folder), "--store", str(tmp_path / "s"), "--quiet").returncode == 1
    stats = json.loads(cli("store", "stats", "--store", str(tmp_path / "s"), "--json").stdout)
    assert len(stats["errors"]) == 1 and stats["errors"][0]["runs"] == 3
    assert sum(s["files"] for s in stats["skipped"]) == 4
    (folder / "broken.json").unlink()  # removed: it failed before and never ingested, so it is still listed
    (folder / "broken.json").write_text('{"resourceType": "Observation", "status": "final", '
                                        '"code": {"text": "x"}, "subject": {"reference": "Patient/1"}, '
                                        '"valueQuantity": {"value": 1}}')
    assert cli("ingest", str(folder), "--store", str(tmp_path / "s"), "--quiet").returncode == 0
    stats = json.loads(cli("store", "stats", "--store", str(tmp_path / "s"), "--json").stdout)
    assert stats["errors"] == [], "a file that ingested since is no longer listed as failed"


def _wfdb_record(folder: Path, name: str, truncate: bool) -> Path:
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    sig = np.sin(np.linspace(0, 20, 500))[:, None].repeat(2, axis=1)
    wfdb.wrsamp(name, fs=100, units=["mV", "mV"], sig_name=["I", "II"], p_signal=sig, fmt=["16", "16"],
                write_dir=str(folder))
    if truncate:
        dat = folder / f"{name}.dat"
        dat.write_bytes(dat.read_bytes()[:100])
    return folder / f"{name}.hea"


def test_failed_lines_keep_file_names_and_words_and_are_never_wrapped(tmp_path):
    """The scrubber once turned 's00001-2896-10-09-01-56.hea' into 's00001-[DATE]-01-56.hea' in a reason,
    and Rich wrapped FAILED lines in the middle of paths."""
    name = "s00001-2896-10-09-01-56"
    deep = tmp_path / "a_rather_long_folder_name_for_wrapping" / "another_long_folder_name_here"
    _wfdb_record(deep, name, truncate=True)
    res = run("ingest", str(tmp_path), "--store", str(tmp_path / "s"), COLUMNS="40")
    assert res.returncode == 1
    failed = [ln for ln in res.stdout.splitlines() if "FAILED" in ln]
    assert len(failed) == 1
    assert str(deep / f"{name}.hea") in failed[0], "the whole path on one line"
    assert f"{name}.dat" in failed[0] and "[DATE]" not in failed[0]
    assert "Error" not in failed[0], "no Python exception class names in reasons"
    with Store(tmp_path / "s") as st:
        (reason,), = st.con.execute("SELECT reason FROM errors").fetchall()
        (stored_path,), = st.con.execute("SELECT source_path FROM errors").fetchall()
    assert "2896" not in reason and "2896" not in stored_path, "what is stored is de-identified"


def test_scrubber_keeps_the_tools_own_messages():
    from medweave.ingest.base import IngestContext, IngestError, Unit, quoted
    from medweave.ingest.runner import _describe, _render
    from medweave.store.deid import Deidentifier

    ctx = IngestContext(store=None, deid=Deidentifier(b"k" * 32))
    unit = Unit(Path("/data/x.json"), root=Path("/data"))
    exc = IngestError("column 'when', row 3: not a date; expected ISO 8601, like 2020-01-31 "
                      f"(name: Input should be a valid string; {quoted('seen 1950-03-04 for John Smith, MRN 1234567')})")
    shown, stored = _render(_describe(exc), unit, ctx)
    assert "like 2020-01-31" in shown and "Input should be a valid string" in shown
    assert "1950-03-04" not in shown and "1234567" not in shown


def test_identifiers_in_paths_are_not_stored_and_reingest_is_idempotent(tmp_path):
    root = tmp_path / "export"
    folder = root / "SMITH_JOHN_MRN12345678"
    folder.mkdir(parents=True)
    (folder / "SMITH^JOHN_19500304_report.txt").write_text(REPORT)
    (folder / "p77_cxr.txt").write_text(REPORT)
    with Store(tmp_path / "s", write=True) as st:
        first = ingest([root], st, progress=False, args=f"ingest {root}")
        rows = st.items()
        runs = st.con.execute("SELECT args FROM runs").fetchall()
    assert first.n_ok == 2
    for value in list(rows["source_path"]) + list(rows["unit_id"]) + [r[0] for r in runs]:
        for secret in ("SMITH", "12345678", "19500304", "p77", str(tmp_path)):
            assert secret not in value, (secret, value)
    assert all(p.startswith("export/") for p in rows["source_path"])
    catalog = (tmp_path / "s" / "catalog.duckdb").read_bytes()
    for secret in (b"SMITH", b"12345678", b"19500304"):
        assert secret not in catalog
    with Store(tmp_path / "s", write=True) as st:
        again = ingest([root], st, progress=False)
        assert (again.n_ok, again.n_already) == (0, 2)
        one = st.items("unit_id = ?", [st.unit_id(folder / "p77_cxr.txt")])
        assert len(one) == 1
    (folder / "p77_cxr.txt").write_text(REPORT + "Addendum: no change.\n")
    with Store(tmp_path / "s", write=True) as st:
        changed = ingest([root], st, progress=False)
        assert (changed.n_ok, changed.n_already, changed.n_items_replaced) == (1, 1, 1)
        assert len(st.items()) == 2, "a changed file replaces its items"


def test_a_latin1_report_is_read_with_a_warning(tmp_path):
    path = tmp_path / "r9_note.txt"
    path.write_bytes("FINDINGS: Epanchement pleural gauche, opacité basale.\n".encode("latin-1"))
    with Store(tmp_path / "s", write=True) as st:
        report = ingest([path], st, progress=False)
        (text,), = st.con.execute("SELECT text FROM items").fetchone(),
    assert report.n_ok == 1 and "opacité" in text
    assert any("not UTF-8" in w and "r9_note.txt" in w for w in report.warnings)


@pytest.mark.parametrize("content", [b"\x00\x01\x02binary", b""])
def test_binary_or_empty_txt_files(tmp_path, content):
    path = tmp_path / "odd.txt"
    path.write_bytes(content)
    with Store(tmp_path / "s", write=True) as st:
        report = ingest([tmp_path], st, progress=False)
    assert (report.n_ok, report.n_not_data, report.n_units) == (0, 1, 1)


def test_options_and_namespace_that_change_a_read_are_part_of_the_fingerprint(tmp_path):
    """Ingesting again with another value of an option the adapter reads (or another patient
    namespace) reads again and replaces the items; an option the adapter ignores changes nothing."""
    for ward in range(3):
        (tmp_path / "in" / f"ward{ward}").mkdir(parents=True)
        for pt in range(2):
            (tmp_path / "in" / f"ward{ward}" / f"pt{pt}_r{ward}.txt").write_text(f"Ward {ward}, patient {pt}. {REPORT}")

    def patients(st):
        return st.items()["patient_id"].nunique()

    with Store(tmp_path / "s", write=True) as st:
        first = ingest([tmp_path / "in"], st, progress=False, workers=1)
        assert first.n_ok == 6 and patients(st) == 2  # pt0, pt1 by file-name prefix
        again = ingest([tmp_path / "in"], st, progress=False, workers=1, options={"burned_in": "allow"})
        assert again.n_already == 6 and again.n_ok == 0, "an option the text adapter does not read"
        by_folder = ingest([tmp_path / "in"], st, progress=False, workers=1, options={"patient_from": "parent"})
        assert by_folder.n_ok == 6 and by_folder.n_already == 0 and by_folder.n_items_replaced == 6
        assert st.items().shape[0] == 6 and patients(st) == 3  # one patient per folder now
        same = ingest([tmp_path / "in"], st, progress=False, workers=1, options={"patient_from": "parent"})
        assert same.n_already == 6
        before = set(st.items()["patient_id"])
        other_ns = ingest([tmp_path / "in"], st, progress=False, workers=1, namespace="site-b",
                          options={"patient_from": "parent"})
        assert other_ns.n_ok == 6 and patients(st) == 3 and not before & set(st.items()["patient_id"])


def test_a_fingerprinted_file_is_parsed_from_the_bytes_that_were_hashed(tmp_path):
    """The runner hashes a file while reading it and holds the bytes for its adapter, once: a file
    changed on disk between the two is still parsed as the bytes its fingerprint names, and the next
    read (nothing held any more) goes to the disk."""
    import hashlib

    from medweave.ingest.base import source_bytes
    from medweave.ingest.runner import _file_sha256

    path = tmp_path / "a.dcm"
    path.write_bytes(b"first version " * 100)
    digest = _file_sha256(path)
    path.write_bytes(b"second version, longer " * 100)
    held = source_bytes(path)
    assert hashlib.sha256(held).hexdigest() == digest and held.startswith(b"first")
    assert source_bytes(path).startswith(b"second")  # handed over once: memory holds one file at most


def test_units_are_planned_and_checked_in_chunks_with_the_store_of_one_plan(tmp_path, monkeypatch):
    """Ingest walks the folders a chunk at a time and asks the catalog which of a chunk's units are
    stored in one query of that chunk's unit ids: no list of every unit, no set of every fingerprint.
    Chunks of 4 give the store (items, ids, hashes, units, sources, errors) and the report that one
    chunk gives; a second run finds every unit stored, again a chunk at a time."""
    from medweave.ingest import runner

    data = tmp_path / "data"
    for sub in ("a", "b"):
        (data / sub).mkdir(parents=True)
        for k in range(9):
            (data / sub / f"note{k}.txt").write_text(f"FINDINGS: finding {sub}{k}. IMPRESSION: none.\n")
    (data / "a" / "README.md").write_text("# not data\n")
    (data / "b" / "empty.bin").write_bytes(b"")

    def contents(root: Path):
        with Store(root) as st:
            return [st.con.execute(sql).fetchall() for sql in (
                "SELECT item_id, patient_id, content_hash, unit_id, source_path, source_key, text FROM items "
                "ORDER BY item_id",
                "SELECT source_id, unit_id, source_path, n_items FROM sources ORDER BY source_id",
                "SELECT source_path, unit_id, reason, kind FROM errors ORDER BY source_path")]

    reports, asked = [], []
    for name, chunk in (("one", 10_000), ("chunks", 4)):
        monkeypatch.setattr(runner, "PLAN_CHUNK", chunk)
        (tmp_path / name).mkdir()
        (tmp_path / name / "secret.key").write_text("ab" * 32)
        with Store(tmp_path / name, write=True) as st:
            real = st.stored_sources
            monkeypatch.setattr(st, "stored_sources", lambda ids, real=real: asked.append((name, len(ids))) or real(ids))
            reports.append(ingest([data], st, progress=False, workers=1).to_dict())
            again = ingest([data], st, progress=False, workers=1)
        assert (again.n_ok, again.n_already, again.n_items_added) == (0, 18, 0)
    one, chunks = reports
    assert contents(tmp_path / "one") == contents(tmp_path / "chunks")
    assert {k: v for k, v in one.items() if k != "run_id"} == {k: v for k, v in chunks.items() if k != "run_id"}
    assert (one["ingested"], one["skipped"], one["items_added"], one["patients"]["text"]["patients"]) == (18, 2, 18, 9)
    # 20 files in walk order (a/README.md, a/note0-8, b/empty.bin, b/note0-8): one query for the one
    # chunk; five for chunks of 4 entries, of 3, 4, 3, 4, 4 units (the skipped files are no units)
    assert [n for who, n in asked if who == "one"] == [18, 18]
    assert [n for who, n in asked if who == "chunks"] == [3, 4, 3, 4, 4] * 2


def test_read_whole_returns_every_byte_whatever_the_size_it_was_told(tmp_path):
    """``_read_whole`` is given the size of a stat taken before: the file may have grown or shrunk
    since, and the bytes returned are the file's, all of them."""
    from medweave.ingest.runner import _read_whole

    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB read past the stated size
    path.write_bytes(data)
    assert _read_whole(path, len(data)) == data  # the usual case: one read
    assert _read_whole(path, 10) == data  # grew since the stat
    assert _read_whole(path, len(data) + 999) == data  # shrank since the stat
    path.write_bytes(b"")
    assert _read_whole(path, 0) == b""
