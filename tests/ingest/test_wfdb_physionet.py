"""WFDB records as PhysioNet holds them (issue 15), written by wfdb-python's own writers (its
``sample-data`` folder is not on PyPI, so the layouts it tests are rebuilt here with wfdb itself):
multi-segment records (fixed and variable layout), annotation files of any extension, a header
without the signal length, every storage format wfdb writes (FLAC included)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from medweave.ingest import ingest
from medweave.store.catalog import Store


def _record(folder: Path, name: str, n: int, sig=("I", "II"), fmt="16", fs=100) -> np.ndarray:
    x = np.stack([np.sin(np.linspace(0, 10 + k, n)) for k in range(len(sig))], axis=1)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(sig), sig_name=list(sig), p_signal=x, fmt=[fmt] * len(sig),
                write_dir=str(folder))
    return x


def _items(store: Store, folder: Path) -> dict[str, dict]:
    """Items by record name (found through the keyed unit ids: stored names are de-identified)."""
    names = {store.unit_id(h): h.stem for h in folder.glob("*.hea")}
    out = {}
    for row in store.items().to_dict("records"):
        row["meta"] = json.loads(row["meta"])
        out[names[row["unit_id"]]] = row
    return out


@pytest.fixture
def physionet(tmp_path) -> Path:
    d = tmp_path / "sample-data"
    d.mkdir()
    # multi-segment, fixed layout: a master header and two segments
    _record(d, "msf_1", 300)
    _record(d, "msf_2", 200)
    (d / "msf.hea").write_text("msf/2 2 100 500\nmsf_1 300\nmsf_2 200\n")
    # multi-segment, variable layout (MIMIC waveform database): a _layout header of zero samples,
    # segments with different channels and a gap
    _record(d, "msv_1", 300, ("II",))
    _record(d, "msv_2", 200, ("I", "II"))
    (d / "msv_layout.hea").write_text("msv_layout 2 100 0\n~ 0 200/mV 16 0 0 0 0 I\n~ 0 200/mV 16 0 0 0 0 II\n")
    (d / "msv.hea").write_text("msv/4 2 100 600\nmsv_layout 0\nmsv_1 300\n~ 100\nmsv_2 200\n")
    # a record with annotation files of extensions the adapter never listed
    _record(d, "rec", 1000)
    for ext, samples in (("qrs", [100, 400, 700]), ("gqrsh", [101, 401]), ("anI", [50]), ("wabp", [120, 420, 720, 900])):
        wfdb.wrann("rec", ext, np.array(samples), symbol=["N"] * len(samples), write_dir=str(d),
                   aux_note=["note"] * len(samples) if ext == "anI" else None)
    # a header without the signal length (wfdb infers it from the signal file)
    _record(d, "nolen", 250)
    lines = (d / "nolen.hea").read_text().splitlines()
    first = lines[0].split()
    (d / "nolen.hea").write_text("\n".join([" ".join(first[:3])] + lines[1:]) + "\n")
    return d


def test_physionet_layouts_ingest_with_nothing_failed(physionet, tmp_path):
    with Store(tmp_path / "store", write=True) as store:
        report = ingest([physionet], store, progress=False)
        items = _items(store, physionet)
    assert report.errors == [], report.errors
    # segments and the layout header are read with their master header, annotation files with their record
    assert set(items) == {"msf", "msv", "rec", "nolen"} and report.n_units == 4, report.to_dict()
    fixed, variable = items["msf"], items["msv"]
    assert (fixed["n_samples"], fixed["n_channels"]) == (500, 2)
    assert fixed["meta"]["multi_segment"]["layout"] == "fixed"
    assert fixed["meta"]["multi_segment"]["n_segments"] == 2
    assert (variable["n_samples"], variable["n_channels"]) == (600, 2)
    assert variable["meta"]["multi_segment"]["layout"] == "variable"
    annotations = items["rec"]["meta"]["annotations"]
    assert annotations["count"] == 10 and sorted(annotations["files"]) == ["anI", "gqrsh", "qrs", "wabp"]
    assert items["nolen"]["n_samples"] == 250


def test_a_variable_layout_gap_is_nan_not_zero(physionet, tmp_path):
    with Store(tmp_path / "store", write=True) as store:
        ingest([physionet / "msv.hea"], store, progress=False)
        row = _items(store, physionet)["msv"]
        signal = np.load(io.BytesIO(store.read_blob(row["blob"])))["signal"]
    assert signal.shape == (2, 600)
    assert np.isnan(signal[:, 300:400]).all(), "the gap segment is absent, not zero"
    assert np.isnan(signal[0, :300]).all() and not np.isnan(signal[1, :300]).any()


def test_annotation_events_are_stored(physionet, tmp_path):
    with Store(tmp_path / "store", write=True) as store:
        ingest([physionet / "rec.hea"], store, progress=False)
        arrays = np.load(io.BytesIO(store.read_blob(_items(store, physionet)["rec"]["blob"])))
    assert sorted(arrays["ann_sample"].tolist()) == sorted([100, 400, 700, 101, 401, 50, 120, 420, 720, 900])
    assert set(arrays["ann_extension"].tolist()) == {"qrs", "gqrsh", "anI", "wabp"}
    assert "note" in arrays["ann_aux_note"].tolist()


# The formats wfdb-python 4.3 writes (16, 24, 32, 80, 212 and the FLAC formats 508/516/524); it reads
# 8, 61, 160, 310 and 311 too but cannot write them (MIT-BIH 100 in the shared data is format 212).
FORMATS = ["16", "24", "32", "80", "212", "508", "516", "524"]


def test_every_storage_format_wfdb_writes(tmp_path):
    folder = tmp_path / "formats"
    folder.mkdir()
    written = {}
    for fmt in FORMATS:
        try:
            written[fmt] = _record(folder, f"f{fmt}", 400, fmt=fmt)
        except Exception as exc:  # a format this wfdb cannot write is named, not silently dropped
            pytest.fail(f"wfdb could not write format {fmt}: {exc}")
    with Store(tmp_path / "store", write=True) as store:
        report = ingest([folder], store, progress=False)
        items = _items(store, folder)
        assert report.errors == [] and report.n_ok == len(FORMATS), report.errors
        for fmt in FORMATS:
            row = items[f"f{fmt}"]
            assert row["meta"]["formats"] == [fmt]
            stored = np.load(io.BytesIO(store.read_blob(row["blob"])))["signal"]
            expected = wfdb.rdrecord(str(folder / f"f{fmt}"), physical=True).p_signal.T
            assert np.allclose(stored, expected, atol=1e-6, equal_nan=True), fmt


def test_the_shared_mit_bih_header_without_its_length(shared_data, tmp_path):
    """wfdb-python's ``100-no-len.hea``: MIT-BIH 100's header with the signal length left out."""
    src = shared_data / "wfdb"
    if not (src / "100.hea").is_file():
        pytest.skip(f"WFDB records not found in {src}")
    d = tmp_path / "nolen"
    d.mkdir()
    shutil.copy(src / "100.dat", d / "100.dat")
    lines = (src / "100.hea").read_text().splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#"))
    record_line = " ".join(lines[at].split()[:3])  # name, signals, rate: no length
    (d / "100-no-len.hea").write_text("\n".join(lines[:at] + [record_line] + lines[at + 1:]) + "\n")
    with Store(tmp_path / "store", write=True) as store:
        report = ingest([d], store, progress=False)
        assert report.errors == [], report.errors
        row = _items(store, d)["100-no-len"]
    assert row["n_samples"] == 650000 and row["n_channels"] == 2
