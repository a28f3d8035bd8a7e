"""EDF+ / BDF files written by EDFlib's generator (shipped in pyedflib's wheel: third-party files),
WAV signals written by SciPy, and `medweave store stats` counting signals, channels, hours and events."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from medweave.ingest import ingest
from medweave.store.catalog import Store

pyedflib = pytest.importorskip("pyedflib")
EDF_DATA = Path(pyedflib.__file__).parent / "tests" / "data"
# What test_generator.edf's header says about its patient and recording.
EDF_PHI = ["Hans", "Muller", "abcxyz99", "Spotty", "30-JUN-1969", "30 jun 1969", "Dr. X", "Dr._X"]


def _one(store: Store) -> tuple[dict, dict]:
    (row,) = store.items().to_dict("records")
    return row, dict(np.load(io.BytesIO(store.read_blob(row["blob"]))))


def test_an_edf_plus_file_ingests_without_its_patient_fields(tmp_path):
    src = EDF_DATA / "test_generator.edf"
    with Store(tmp_path / "store", write=True) as store:
        report = ingest([src], store, progress=False)
        assert report.errors == [] and report.n_ok == 1
        row, arrays = _one(store)
        reader = pyedflib.EdfReader(str(src))
        try:
            expected = reader.readSignal(0)
            n_ann = len(reader.readAnnotations()[0])
            rates = reader.getSampleFrequencies()
        finally:
            reader.close()
        assert row["format"] == "edf" and row["n_channels"] == len(rates)
        assert np.allclose(arrays["signal"][0], expected, atol=1e-3)
        meta = json.loads(row["meta"])
        assert meta["annotations"]["count"] == n_ann == len(arrays["ann_onset"])
        assert row["age"] == pytest.approx(41.76, abs=0.02)  # born 30 Jun 1969, recorded 4 Apr 2011
        assert row["time"].year != 2011 or row["time"].month != 4 or row["time"].day != 4
        sex = store.con.execute("SELECT sex FROM patients").fetchone()[0]
        assert sex == "M"
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file() and p.name != "secret.key")
    for secret in EDF_PHI:
        assert secret.encode() not in stored, secret


def test_bdf_and_mixed_rates(tmp_path):
    with Store(tmp_path / "store", write=True) as store:
        report = ingest([EDF_DATA], store, progress=False)
        assert report.errors == [], report.errors
        assert report.n_ok == len(list(EDF_DATA.glob("*.[eb]df")))
        rows = store.items().to_dict("records")
        for row in rows:
            arrays = np.load(io.BytesIO(store.read_blob(row["blob"])))
            groups = json.loads(row["meta"])["groups"]
            assert sum(len(g["channels"]) for g in groups) == row["n_channels"]
            assert all(arrays[g["key"]].shape == (len(g["channels"]), g["n_samples"]) for g in groups)
        assert {r["meta"] and json.loads(r["meta"])["file_type"][:3] for r in rows} >= {"EDF", "BDF"}


def test_wav_signals_and_store_stats(tmp_path):
    from scipy.io import wavfile

    from medweave.cli import app
    from typer.testing import CliRunner

    folder = tmp_path / "sounds"
    folder.mkdir()
    t = np.arange(4000 * 30) / 4000.0
    wavfile.write(folder / "h1_heart.wav", 4000, (np.sin(2 * np.pi * 40 * t) * 3000).astype(np.int16))
    stereo = np.stack([np.sin(t), np.cos(t)], axis=1).astype(np.float32)
    wavfile.write(folder / "h2_lung.wav", 4000, stereo)
    with Store(tmp_path / "store", write=True) as store:
        report = ingest([folder, EDF_DATA / "test_generator.edf"], store, progress=False)
        assert report.errors == [] and report.n_ok == 3
        rows = {r["format"]: r for r in store.items().to_dict("records") if r["format"] == "wav"}
        stats = store.stats()["signals"]
    assert stats["items"] == 3 and stats["channels"] == 1 + 2 + 11
    assert stats["hours"] == pytest.approx((30 + 30 + 600) / 3600, abs=0.002)
    assert stats["annotation_events"] > 0
    res = CliRunner().invoke(app, ["store", "stats", "--store", str(tmp_path / "store")])
    assert res.exit_code == 0 and "hours of recording" in res.stdout and "annotation events" in res.stdout
