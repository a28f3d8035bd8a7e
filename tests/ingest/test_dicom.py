"""The DICOM adapter on real files: pydicom's own test files, pydicom-data, and small series written
here with pydicom. Each test ingests into a real store in a temporary folder."""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import random
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medweave.ingest import ingest
from medweave.store.catalog import Store, read_verified

FIXED_KEY = "5e" * 32  # a fixed store key makes pseudonyms, date shifts and UIDs reproducible


def open_store(root: Path, keep_phi: bool = False) -> Store:
    root.mkdir(parents=True, exist_ok=True)
    (root / "secret.key").write_text(FIXED_KEY)
    return Store(root, write=True, keep_phi=keep_phi)


def corpus_files() -> list[Path]:
    """Every .dcm file shipped with pydicom (test_files) and with the pydicom-data package."""
    import pydicom.data

    spec = importlib.util.find_spec("data_store")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    folders = [Path(pydicom.data.__file__).parent / "test_files",
               Path(list(spec.submodule_search_locations)[0]) / "data"]
    return sorted(f for folder in folders for f in folder.rglob("*.dcm"))


ID_KEYWORDS = ("PatientID", "OtherPatientIDs")


class FileIds(NamedTuple):
    parts: set[str]  # patient name components and patient id (length >= 4)
    words: set[str]  # the same plus the words of multi-word components
    plain: str  # the file's other text and the names of its UIDs, to tell chance matches apart


def identifiers(path: Path) -> FileIds:
    """What pydicom finds of the patient's identity in one file, and the file's other text."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        except Exception:
            return FileIds(set(), set(), "")
        parts = [p.strip() for p in re.split(r"[\^=]", str(ds.get("PatientName", "") or ""))]
        parts.append(str(ds.get("PatientID", "") or "").strip())
        texts = [str(e.value) for e in ds.iterall()
                 if e.VR in ("LO", "SH", "ST", "LT", "UT", "CS") and e.keyword not in ID_KEYWORDS]
        uids = [e.value for e in ds.iterall() if e.VR == "UI"]
        uids.append(getattr(ds, "file_meta", {}).get("TransferSyntaxUID"))
        plain = "\n".join(texts + [UID(str(u)).name for u in uids if u and not isinstance(u, list)])
    words = [w for p in parts for w in p.split()]
    return FileIds({t for t in parts if len(t) >= 4}, {t for t in parts + words if len(t) >= 4}, plain)


def distinctive(found: dict[str, FileIds]) -> set[str]:
    """The name components and ids that no file uses as ordinary text: 'PATIENT' (a name part in one
    file, a code meaning in another) or '0010' (an id here, part of a version string there) match by
    chance, and so do short all-digit ids inside remapped UIDs; those are checked only against the
    items of their own file."""
    every = {t for ids in found.values() for t in ids.parts if not (t.isdigit() and len(t) < 6)}
    return {t for t in every if not any(t in ids.plain for ids in found.values())}


def leaks(data: bytes, tokens: set[str]) -> list[str]:
    return sorted(t for t in tokens if t.encode("utf-8") in data)


def stored_bytes(root: Path) -> list[tuple[str, bytes]]:
    """Every blob and the catalog's database files of a closed store."""
    files = [p for p in (root / "blobs").rglob("*") if p.is_file()]
    files += [p for p in root.glob("catalog.duckdb*") if p.is_file()]
    return [(p.name, p.read_bytes()) for p in files]


def ct_slice(path: Path, *, name: str, pid: str, study_uid: str, series_uid: str, z: float,
             pixels: np.ndarray, instance: int, study_date: str = "20200115") -> None:
    """Write one CT slice (axial, 0.5 mm pixels, HU = stored - 1024) with identifying headers."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(z)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, pid, "19700301", "F"
    ds.PatientAddress, ds.InstitutionName = "12 Harbour Lane, Portsmouth", "St Elsewhere Hospital"
    ds.ReferringPhysicianName, ds.AccessionNumber = "Kildare^James", "ACC77123"
    ds.ImageComments = f"scan of {name.replace('^', ' ')} for {pid}"
    ds.StudyDate, ds.StudyTime, ds.StudyDescription = study_date, "101500", "CT CHEST"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, series_uid, "CT"
    ds.InstanceNumber, ds.SeriesNumber = instance, 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-16.0, -16.0, z]
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.add_new(0x00091001, "LO", f"private note on {pid}")  # a private creator-less tag
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(folder: Path, n: int = 5, *, name: str = "Quill^Henrietta", pid: str = "MRN4471",
                 study_uid: str | None = None, study_date: str = "20200115", seed: int = 0) -> list[float]:
    """``n`` slices of one series written in shuffled order; returns their z positions."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid(entropy_srcs=[pid, study_date])
    series_uid = generate_uid(entropy_srcs=[study_uid, "series"])
    zs = [10.0 + 2.5 * i for i in range(n)]
    order = list(range(n))
    random.Random(seed).shuffle(order)
    for rank, i in enumerate(order):
        pixels = np.full((16, 16), 1000 + 10 * i, dtype=np.int16)
        pixels[0, 0] = i
        ct_slice(folder / f"file{rank:02d}.dcm", name=name, pid=pid, study_uid=study_uid,
                 series_uid=series_uid, z=zs[i], pixels=pixels, instance=rank + 1, study_date=study_date)
    return zs


def test_every_corpus_file_is_ingested_or_reported_and_no_identifier_survives(tmp_path):
    files = corpus_files()
    assert len(files) >= 140, f"expected pydicom's and pydicom-data's ~147 .dcm files, found {len(files)}"
    found = {str(f): identifiers(f) for f in files}
    own = {path: ids.words for path, ids in found.items()}
    everywhere = distinctive(found)
    assert {"CompressedSamples", "Lestrade", "CQ500-CT-310", "Last Name"} <= everywhere
    root = tmp_path / "store"
    with open_store(root) as store:
        report = ingest(files, store, progress=False)  # found by sniffing: preamble or .dcm
        own = {store.unit_id(f): own[str(f)] for f in files}  # items name their file by a keyed unit id
        errors = store.con.execute("SELECT source_path, reason FROM errors").fetchall()
        items = store.con.execute("SELECT unit_id, blob, CAST(items AS VARCHAR) FROM items").fetchall()
        adapters = store.con.execute("SELECT DISTINCT adapter FROM errors UNION SELECT DISTINCT adapter "
                                     "FROM items").fetchall()
        tables = "\n".join(str(store.con.execute(f"SELECT * FROM {t}").fetchall())
                           for t in ("patients", "studies", "items", "sources", "errors", "runs"))
    assert report.n_ok + report.n_failed + report.n_not_data == len(files) == report.n_units
    assert [Path(p).name for p, _ in report.skipped] == ["DICOMDIR-empty.dcm"]  # an index, not data
    assert {adapter for (adapter,) in adapters} == {"dicom"}
    assert report.n_ok >= 120 and len(items) >= 120
    assert len(errors) == report.n_failed + report.n_not_data  # the skipped DICOMDIR is listed with its reason
    for path, reason in errors:
        assert Path(path).name.endswith(".dcm") and len(reason) > 15, (path, reason)
    for source, blob, row in items:  # each item against its own file's identifiers, short ids too
        mine = own[source]
        data = read_verified(root, blob) if blob else b""
        assert not leaks(data + row.encode(), mine), (Path(source).name, leaks(data + row.encode(), mine))
    assert not leaks(tables.encode("utf-8"), everywhere)
    for name, data in stored_bytes(root):  # every stored byte against every distinctive identifier
        assert not leaks(data, everywhere), (name, leaks(data, everywhere))


def test_image_fields_pixels_and_deidentified_blob(tmp_path):
    import pydicom.data

    src = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    with open_store(tmp_path / "store") as store:
        report = ingest([src], store, progress=False)
        row = store.items().iloc[0]
        ds = pydicom.dcmread(io.BytesIO(store.read_blob(row["blob"])))
        patient = store.patients().iloc[0]
    original = pydicom.dcmread(src)
    assert report.n_ok == 1 and row["modality"] == "image" and row["format"] == "dicom"
    assert (row["rows"], row["cols"], row["frames"], row["dicom_modality"]) == (128, 128, 1, "CT")
    assert row["pixel_spacing_x"] == pytest.approx(float(original.PixelSpacing[1]))
    assert row["position"] == pytest.approx(float(original.ImagePositionPatient[2]))
    stats = __import__("json").loads(row["meta"])["pixel_stats"]
    assert stats["max"] == float(original.pixel_array.max()) and stats["mean"] == pytest.approx(
        float(original.pixel_array.mean()))
    assert str(ds.PatientName) == ds.PatientID == row["patient_id"] == patient["patient_id"] != original.PatientID
    assert ds.PatientIdentityRemoved == "YES" and "PatientBirthDate" not in ds or ds.PatientBirthDate == ""
    assert ds.SeriesInstanceUID == row["series_id"] != original.SeriesInstanceUID
    assert ds.SOPClassUID == original.SOPClassUID  # well-known UIDs are kept
    assert not any(elem.tag.is_private for elem in ds.iterall())
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_series_volumes_from_slices_in_memory_equal_those_read_back(tmp_path, monkeypatch):
    """Slices of a series just written are stacked from memory (no read back): the volumes are
    byte-equal to those stacked from the store (memory for none), with the same item ids."""
    import medweave.store.catalog as catalog

    for k, pid in enumerate(("MRN1", "MRN2", "MRN3")):
        write_series(tmp_path / "in" / pid, n=4 + k, name=f"Doe^P{k}", pid=pid, seed=k)
    reads = []
    real = catalog.read_verified
    monkeypatch.setattr(catalog, "read_verified", lambda root, rel, *a, **k: reads.append(rel) or real(root, rel, *a, **k))
    volumes = {}
    for cap in (Store.FRESH_MAX_BYTES, 0):
        reads.clear()
        with open_store(tmp_path / f"store-{cap}") as store:
            store.FRESH_MAX_BYTES = cap
            report = ingest([tmp_path / "in"], store, progress=False)
            rows = store.items("modality = 'volume'")
            volumes[cap] = sorted(zip(rows["item_id"], rows["content_hash"]))
            slices = set(store.items("modality = 'image'")["blob"])
            assert report.ok and report.n_derived == 3 and not store._fresh  # each kept slice taken once
        assert (len(slices & set(reads)) == 0) == bool(cap), (cap, len(reads))
    assert volumes[Store.FRESH_MAX_BYTES] == volumes[0] and len(volumes[0]) == 3


def test_series_becomes_one_volume_ordered_by_position_and_reingest_adds_nothing(tmp_path):
    zs = write_series(tmp_path / "series", n=5)
    with open_store(tmp_path / "store") as store:
        first = ingest([tmp_path / "series"], store, progress=False)
        volumes = store.items("modality = 'volume'")
        slices = store.items("modality = 'image'")
        vol = volumes.iloc[0]
        array = np.load(io.BytesIO(store.read_blob(vol["blob"])))
        again = ingest([tmp_path / "series"], store, progress=False)
        total = store.con.execute("SELECT count(*) FROM items").fetchone()[0]
    meta = __import__("json").loads(vol["meta"])
    assert first.n_ok == 5 and len(slices) == 5 and len(volumes) == 1
    assert (vol["format"], vol["frames"], vol["rows"], vol["cols"]) == ("dicom-series", 5, 16, 16)
    assert meta["positions"] == sorted(zs) and meta["slice_spacing"] == pytest.approx(2.5)
    by_id = dict(zip(slices["item_id"], slices["position"]))
    assert [by_id[i] for i in meta["members"]] == sorted(zs)
    assert array.shape == (5, 16, 16) and array.dtype == np.int16
    assert [int(array[k, 0, 0]) for k in range(5)] == [k - 1024 for k in range(5)]  # rescaled, in order
    assert int(array[4, 1, 1]) == 1040 - 1024
    assert vol["series_id"] == slices["series_id"].iloc[0]
    assert again.n_skipped == 5 and again.n_items_added == 0 and total == 6


def test_unit_ids_do_not_depend_on_the_working_folder(tmp_path, monkeypatch):
    """The same folder ingested from two working folders (into two stores of one key) gives the same
    unit ids, the derived series volume's (``dicom-series:<uid>``, a name, not a file) included."""
    write_series(tmp_path / "series", n=3)
    found = []
    for n, cwd in enumerate([tmp_path / "here", tmp_path / "there" / "deeper"]):
        cwd.mkdir(parents=True)
        monkeypatch.chdir(cwd)
        with open_store(tmp_path / f"store{n}") as store:
            report = ingest([tmp_path / "series"], store, progress=False)
            assert (report.n_ok, report.n_derived) == (3, 1)
            found.append(store.con.execute(
                "SELECT modality, unit_id, item_id FROM items ORDER BY modality, unit_id").fetchall())
            found.append(store.con.execute("SELECT unit_id FROM sources ORDER BY unit_id").fetchall())
    assert [m for m, _u, _i in found[0]] == ["image"] * 3 + ["volume"]
    assert found[0] == found[2] and found[1] == found[3]


def test_ecg_waveform_becomes_a_signal(tmp_path):
    import pydicom.data

    src = Path(pydicom.data.get_testdata_file("waveform_ecg.dcm"))
    with open_store(tmp_path / "store") as store:
        ingest([src], store, progress=False)
        signals = store.items("modality = 'signal'").sort_values("n_samples", ascending=False)
        array = np.load(io.BytesIO(store.read_blob(signals.iloc[0]["blob"])))
    original = pydicom.dcmread(src)
    rhythm = original.WaveformSequence[0]
    row = signals.iloc[0]
    assert len(signals) == len(original.WaveformSequence) == 2
    assert row["sampling_rate"] == float(rhythm.SamplingFrequency) == 1000.0
    assert (row["n_channels"], row["n_samples"]) == (12, 10000) and array.shape == (12, 10000)
    assert row["channel_names"].split(",")[:2] == ["Lead I (Einthoven)", "Lead II"]
    assert row["format"] == "dicom-waveform" and row["unit"] == "uV"
    assert np.allclose(array, original.waveform_array(0).T, atol=1e-3)


def test_truncated_file_is_reported_and_the_batch_goes_on(tmp_path):
    write_series(tmp_path / "in", n=3)
    good = sorted((tmp_path / "in").glob("*.dcm"))
    data = good[0].read_bytes()
    bad = tmp_path / "in" / "broken.dcm"
    bad.write_bytes(data[: len(data) - 300])
    with open_store(tmp_path / "store") as store:
        report = ingest([tmp_path / "in"], store, progress=False)
        errors = store.con.execute("SELECT source_path, reason FROM errors").fetchall()
        n_images = store.con.execute("SELECT count(*) FROM items WHERE modality='image'").fetchone()[0]
    assert report.n_failed == 1 and report.n_ok == 3 and n_images == 3
    assert len(errors) == 1 and errors[0][0].endswith("broken.dcm")
    assert "(7FE0,0010) PixelData declares 512 bytes but only 212 are left in the file" in errors[0][1], errors


def test_two_studies_share_a_pseudonym_and_keep_their_interval(tmp_path):
    write_series(tmp_path / "a", n=2, study_date="20200115", seed=1)
    write_series(tmp_path / "b", n=2, study_date="20200312", seed=2)
    with open_store(tmp_path / "store") as store:
        ingest([tmp_path / "a", tmp_path / "b"], store, progress=False)
        patients = store.patients()
        studies = store.studies().sort_values("study_date")
    assert len(patients) == 1 and patients.iloc[0]["patient_id"].startswith("P")
    assert patients.iloc[0]["sex"] == "F"
    assert len(studies) == 2 and set(studies["patient_id"]) == {patients.iloc[0]["patient_id"]}
    d0, d1 = [d.date() if hasattr(d, "date") else d for d in studies["study_date"]]
    assert (d1 - d0).days == (dt.date(2020, 3, 12) - dt.date(2020, 1, 15)).days
    assert d0 != dt.date(2020, 1, 15)


def test_identifying_headers_are_removed_everywhere(tmp_path):
    write_series(tmp_path / "in", n=2)
    with open_store(tmp_path / "store") as store:
        ingest([tmp_path / "in"], store, progress=False)
        blob = store.read_blob(store.items("modality = 'image'").iloc[0]["blob"])
        ages = store.items("modality = 'image'")["age"].tolist()
    ds = pydicom.dcmread(io.BytesIO(blob))
    for secret in (b"Quill", b"Henrietta", b"MRN4471", b"Harbour", b"Elsewhere", b"Kildare", b"ACC77123",
                   b"19700301", b"20200115"):
        assert secret not in blob, secret
    assert "ImageComments" not in ds and "InstitutionName" not in ds and ds.ReferringPhysicianName == ""
    assert ds.DeidentificationMethod and ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert ages[0] == pytest.approx((dt.date(2020, 1, 15) - dt.date(1970, 3, 1)).days / 365.25, abs=1e-3)


def test_keep_phi_keeps_the_name(tmp_path):
    write_series(tmp_path / "in", n=2)
    with open_store(tmp_path / "store", keep_phi=True) as store:
        ingest([tmp_path / "in"], store, progress=False)
        row = store.items("modality = 'image'").iloc[0]
        ds = pydicom.dcmread(io.BytesIO(store.read_blob(row["blob"])))
    assert str(ds.PatientName) == "Quill^Henrietta" and row["patient_id"] == "MRN4471"
    assert ds.StudyDate == "20200115"


def test_structured_report_becomes_scrubbed_text(tmp_path):
    import pydicom.data

    src = Path(pydicom.data.get_testdata_file("test-SR.dcm"))
    with open_store(tmp_path / "store") as store:
        report = ingest([src], store, progress=False)
        texts = store.items("modality = 'text'")
    assert report.n_ok == 1 and len(texts) == 1
    text = texts.iloc[0]["text"]
    assert texts.iloc[0]["format"] == "dicom-sr" and len(text.splitlines()) > 3 and ":" in text


def test_object_without_pixels_is_reported_with_its_class(tmp_path):
    import pydicom.data

    src = Path(pydicom.data.get_testdata_file("rtplan.dcm"))
    with open_store(tmp_path / "store") as store:
        report = ingest([src], store, progress=False)
    assert report.n_failed == 1
    assert report.errors[0][1] == "DICOM RT Plan Storage: no pixel data, waveform or report text to ingest"


def test_pixel_statistics_skip_no_work_that_changes_them():
    """Pixel statistics read the stored values without the unused-bit shifts when the pixels are in
    the stored range, and sum integers in integers: every case gives what the plain computation
    (shift, then a float64 sum) gives, including pixels with high bits set past Bits Stored."""
    import numpy as np

    from medweave.ingest.adapters.dicom import _exact_sum, _unused_bits

    rng = np.random.default_rng(0)
    cases = [
        (rng.integers(0, 4096, 4096).astype("<u2"), 16, 12),
        (rng.integers(-2048, 2048, 4096).astype("<i2"), 16, 12),
        (rng.integers(0, 65536, 4096).astype("<u2"), 16, 12),  # high bits set: masked
        (rng.integers(-32768, 32768, 4096).astype("<i2"), 16, 12),  # sign bits wrong: extended
        (rng.integers(0, 256, 4096).astype("u1"), 8, 8),
        (rng.integers(-2**31, 2**31 - 1, 4096).astype("<i4"), 32, 32),
        (rng.integers(0, 2**31, 4096).astype(">u4"), 32, 24),
    ]
    for array, allocated, stored in cases:
        shift = allocated - stored
        plain = (array << shift) >> shift if shift else array
        ours = _unused_bits(array, allocated, stored)
        assert np.array_equal(ours, plain) and ours.dtype == plain.dtype
        lo, hi = float(plain.min()), float(plain.max())
        assert _exact_sum(ours, lo, hi) == float(plain.sum(dtype=np.float64))


def test_npy_bytes_are_what_np_save_writes():
    """Volumes and waveforms are written as header and data joined in one copy: byte for byte what
    ``np.save`` writes, for every kind of array a blob may hold (and its own path where 1.0 does
    not fit)."""
    import io

    import numpy as np

    from medweave.ingest.adapters.dicom import npy_bytes

    rng = np.random.default_rng(0)
    arrays = [rng.integers(-1000, 1000, (20, 16, 16)).astype(np.int16), rng.random((3, 5)).astype(np.float32),
              np.zeros((0,), np.uint8), rng.random((4, 4))[:, ::2], np.array(5, dtype=np.int32),
              np.ones((2, 3), bool), rng.integers(0, 9, (2, 2)).astype(">i4"), np.zeros((1,) * 30, np.int8),
              np.zeros((2, 2), np.complex64)]
    for array in arrays:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        assert npy_bytes(array) == buf.getvalue(), (array.dtype, array.shape)
