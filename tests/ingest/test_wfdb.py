"""The WFDB adapter on the three shared PhysioNet records: MIT-BIH 100 (.dat + .atr), PTB s0010_re
(15 leads, header comments) and the 2015 alarm challenge's a103l (.mat)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from medweave.ingest import ingest
from medweave.ingest.adapters.wfdb import deterministic_npz
from medweave.store.catalog import Store


@pytest.fixture
def wfdb_dir(shared_data) -> Path:
    d = shared_data / "wfdb"
    if not (d / "100.hea").is_file():
        pytest.skip(f"WFDB records not found in {d}")
    return d


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store", write=True) as s:
        yield s


def records(store: Store) -> dict[str, dict]:
    """Stored items by record name, with labels and meta decoded. Stored paths are de-identified, so
    records are found through their keyed unit ids, among the headers of the shared folder and of
    the test's own folder."""
    from medweave.settings import shared_data_dir

    headers = [*Path(shared_data_dir(), "wfdb").glob("*.hea"), *store.root.parent.rglob("*.hea")]
    names = {store.unit_id(h): h.stem for h in headers}
    out = {}
    for row in store.items().to_dict("records"):
        row["labels"] = json.loads(row["labels"]) if isinstance(row["labels"], str) else {}
        row["meta"] = json.loads(row["meta"])
        out[names[row["unit_id"]]] = row
    return out


def blob_arrays(store: Store, row: dict) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(store.read_blob(row["blob"])), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_three_records_ingest_with_their_shapes(wfdb_dir, store):
    report = ingest([wfdb_dir], store, progress=False)
    assert report.errors == []  # .dat, .atr, .mat, .xyz are companions, not unknown files
    assert report.n_items_added == 3
    recs = records(store)
    shapes = {k: (r["sampling_rate"], r["n_channels"], r["n_samples"]) for k, r in recs.items()}
    assert shapes == {"100": (360.0, 2, 650000), "s0010_re": (1000.0, 15, 38400), "a103l": (250.0, 3, 82500)}
    assert recs["100"]["channel_names"] == "MLII,V5" and recs["a103l"]["channel_names"] == "II,V,PLETH"
    assert recs["a103l"]["meta"]["units"] == ["mV", "mV", "NU"]
    assert all(r["modality"] == "signal" and r["format"] == "wfdb" for r in recs.values())


def test_signal_blob_matches_wfdb_physical_values(wfdb_dir, store):
    ingest([wfdb_dir / "a103l.hea"], store, progress=False)
    arrays = blob_arrays(store, records(store)["a103l"])
    expected = wfdb.rdrecord(str(wfdb_dir / "a103l")).p_signal.T.astype(np.float32)
    assert arrays["signal"].dtype == np.float32 and arrays["signal"].shape == (3, 82500)
    np.testing.assert_array_equal(arrays["signal"], expected)


def test_annotations_are_counted_and_stored(wfdb_dir, store):
    ingest([wfdb_dir / "100.hea"], store, progress=False)
    row = records(store)["100"]
    ann = wfdb.rdann(str(wfdb_dir / "100"), "atr")
    summary = row["meta"]["annotations"]
    assert summary["count"] == len(ann.sample) == 2274 and summary["files"] == ["atr"]
    assert summary["symbols"]["N"] == ann.symbol.count("N") and sum(summary["symbols"].values()) == 2274
    arrays = blob_arrays(store, row)
    np.testing.assert_array_equal(arrays["ann_sample"], ann.sample)
    assert arrays["ann_symbol"].tolist() == ann.symbol


def test_header_comments_give_age_sex_and_labels(wfdb_dir, store):
    ingest([wfdb_dir], store, progress=False)
    recs = records(store)
    sexes = dict(store.con.execute("SELECT patient_id, sex FROM patients").fetchall())
    ptb, mit, alarm = recs["s0010_re"], recs["100"], recs["a103l"]
    assert (ptb["age"], sexes[ptb["patient_id"]]) == (81.0, "F")
    assert ptb["labels"] == {"diagnosis": "Myocardial infarction"} and ptb["label"] == "Myocardial infarction"
    assert ptb["meta"]["comments"]["fields"]["Lytic agent"] == "Gamma-TPA"
    assert (mit["age"], sexes[mit["patient_id"]]) == (69.0, "M")
    assert alarm["labels"] == {"alarm": "Asystole", "alarm_true": False} and alarm["label"] == "False alarm"


def test_comment_dates_are_shifted_never_kept(wfdb_dir, store):
    ingest([wfdb_dir / "s0010_re.hea"], store, progress=False)
    row = records(store)["s0010_re"]
    text = json.dumps(row["meta"])
    for raw in ("01/10/1990", "29-Sep-90", "16-Oct-90"):
        assert raw not in text
    fields = row["meta"]["comments"]["fields"]
    shift = store.deid.date_offset_days(row["patient_id"])
    assert fields["ECG date"] == str(np.datetime64("1990-10-01") + np.timedelta64(shift, "D"))
    assert fields["Catheterization date"] == str(np.datetime64("1990-10-16") + np.timedelta64(shift, "D"))
    study_date = store.con.execute("SELECT study_date FROM studies").fetchone()[0]
    assert str(study_date) == fields["ECG date"]


def test_truncated_signal_file_is_reported_and_the_rest_goes_on(wfdb_dir, tmp_path, store):
    folder = tmp_path / "records"
    shutil.copytree(wfdb_dir, folder)
    for p in folder.iterdir():
        p.chmod(0o644)
    with open(folder / "100.dat", "r+b") as fh:
        fh.truncate(1_000_000)
    report = ingest([folder], store, progress=False)
    [(path, reason)] = report.errors
    assert path.endswith("100.hea")
    assert "100.dat" in reason and "1,000,000 bytes" in reason and "truncated" in reason
    assert sorted(records(store)) == ["a103l", "s0010_re"]


def test_reingest_adds_nothing_and_a_changed_dat_reingests(wfdb_dir, tmp_path, store):
    folder = tmp_path / "records"
    folder.mkdir()
    for p in wfdb_dir.glob("a103l.*"):
        shutil.copy(p, folder / p.name)
        (folder / p.name).chmod(0o644)
    assert ingest([folder], store, progress=False).n_items_added == 1
    again = ingest([folder], store, progress=False)
    assert (again.n_items_added, again.n_skipped, again.errors) == (0, 1, [])
    data = bytearray((folder / "a103l.mat").read_bytes())
    data[1000] ^= 0xFF  # same size, different content
    (folder / "a103l.mat").write_bytes(bytes(data))
    changed = ingest([folder], store, progress=False)
    assert changed.n_items_added == 1 and changed.errors == []


def test_patient_from_parent_folder(wfdb_dir, tmp_path, store):
    for name in ("patient001", "patient002"):
        (tmp_path / name).mkdir()
    for p in wfdb_dir.glob("s0010_re.*"):
        shutil.copy(p, tmp_path / "patient001" / p.name)
    for p in wfdb_dir.glob("a103l.*"):
        shutil.copy(p, tmp_path / "patient002" / p.name)
    ingest([tmp_path / "patient001", tmp_path / "patient002"], store, options={"patient_from": "parent"},
           progress=False)
    recs = records(store)
    assert recs["s0010_re"]["patient_id"] == store.deid.patient_id("default", "patient001")


def test_deterministic_npz_is_stable_and_loadable():
    arrays = {"signal": np.arange(6, dtype=np.float32).reshape(2, 3), "ann_symbol": np.array(["N", "V"])}
    first = deterministic_npz(arrays)
    assert first == deterministic_npz(dict(reversed(arrays.items())))
    with np.load(io.BytesIO(first), allow_pickle=False) as z:
        np.testing.assert_array_equal(z["signal"], arrays["signal"])
        assert z["ann_symbol"].tolist() == ["N", "V"]


def test_record_files_listing_matches_glob_and_sees_new_files(tmp_path):
    """``record_files`` finds a record's annotation files from one sorted listing of the folder
    (not a scan per record): the same names a glob gives, names with glob characters included, and
    a file added later is seen (the listing follows the folder's mtime)."""
    import os
    import time

    from medweave.ingest.adapters import wfdb as w

    folder = tmp_path / "recs"
    folder.mkdir()
    names = ["r1.hea", "r1.dat", "r1.atr", "r1.qrs", "r1x.atr", "r10.atr", "r1", "a[1].hea", "a[1].atr",
             "a[1]x.atr", "b*.hea", "b*.atr", "bb.atr"]
    for n in names:
        (folder / n).write_text("x")
    (folder / "r1.sub").mkdir()  # a folder is no annotation file
    old = time.time() - 60
    os.utime(folder, (old, old))  # settled: the listing is kept
    for hea, want in (("r1.hea", ["r1.atr", "r1.qrs"]), ("a[1].hea", ["a[1].atr"]), ("b*.hea", ["b*.atr"])):
        got = [p.name for p in w.record_files(folder / hea)[1]]
        assert got == want, (hea, got)
        assert w.names_starting(folder, hea.rsplit(".", 1)[0] + ".") == sorted(
            n for n in os.listdir(folder) if n.startswith(hea.rsplit(".", 1)[0] + "."))
    assert str(folder) in w._LISTINGS
    (folder / "r1.ecg").write_text("x")  # the folder's mtime moves: listed again
    assert [p.name for p in w.record_files(folder / "r1.hea")[1]] == ["r1.atr", "r1.ecg", "r1.qrs"]
