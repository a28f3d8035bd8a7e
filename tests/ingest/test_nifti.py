"""NIfTI and MGH volumes (nibabel's own test files and small written ones) in a real store."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medweave.encode.loaders import load_array
from medweave.ingest import ingest
from medweave.store.catalog import Store

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
FILES = ("anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "test.mgz")


@pytest.fixture
def volumes(tmp_path) -> Path:
    """A folder with copies of nibabel's test volumes."""
    missing = [f for f in FILES if not (NIB_DATA / f).is_file()]
    if missing:
        pytest.skip(f"nibabel test data not installed: {missing}")
    folder = tmp_path / "vols"
    folder.mkdir()
    for f in FILES:
        shutil.copy(NIB_DATA / f, folder / f)
    return folder


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store", write=True) as s:
        yield s


def _stored(store: Store, rel: str):
    """A stored volume loaded by nibabel from the blob's bytes (a packed blob has no file of its own)."""
    data = store.read_blob(rel)
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    if rel.endswith((".mgh", ".mgz")):
        return nib.MGHImage.from_bytes(raw)
    return (nib.Nifti2Image if int.from_bytes(raw[:4], "little") == 540 else nib.Nifti1Image).from_bytes(raw)


def _by_name(store: Store, folder: Path) -> dict:
    """{file name: row}, through the keyed unit ids (stored paths are de-identified)."""
    ids = {store.unit_id(p): p.name for p in folder.iterdir()}
    return {ids[r.unit_id]: r for r in store.items().itertuples()}


def test_volumes_keep_voxels_and_affine_and_lose_header_text(volumes, store):
    report = ingest([volumes], store, progress=False)
    assert report.errors == [] and report.items_per_adapter == {"nifti": len(FILES)}
    rows = _by_name(store, volumes)
    for name in FILES:
        row, original = rows[name], nib.load(volumes / name)
        stored = _stored(store, row.blob)
        meta = json.loads(row.meta)
        assert row.modality == "volume" and stored.shape == original.shape
        assert np.array_equal(np.asanyarray(stored.dataobj), np.asanyarray(original.dataobj)), name
        # the encoders' loader reads the same voxels from the blob's bytes (NIfTI-1, NIfTI-2, MGH)
        loaded = load_array(Path(row.blob), store.read_blob(row.blob))
        assert np.array_equal(loaded, np.asarray(original.get_fdata(), dtype=np.float32)), name
        assert np.allclose(stored.affine, original.affine) and np.allclose(meta["affine"], original.affine)
        assert meta["shape"] == list(original.shape) and meta["dtype"] == str(original.get_data_dtype())
        assert (row.cols, row.rows, row.frames) == original.shape[:3]
        assert (row.pixel_spacing_x, row.pixel_spacing_y, row.slice_thickness) == pytest.approx(
            original.header.get_zooms()[:3])
    anat = rows["anatomical.nii"]
    assert anat.format == "nifti" and anat.blob.endswith(".nii")
    assert json.loads(anat.meta)["units"] == {"space": "mm", "time": "sec"}
    assert rows["test.mgz"].format == "mgh" and rows["test.mgz"].blob.endswith(".mgz")
    # the original headers carry text ("spm - 3D normalized", "FSL3.3", extension comments)
    anat_bytes = store.read_blob(anat.blob)
    assert b"spm - 3D" in (volumes / "anatomical.nii").read_bytes() and b"spm - 3D" not in anat_bytes
    ex4d = gzip.decompress(store.read_blob(rows["example4d.nii.gz"].blob))
    assert b"FSL3.3" not in ex4d and b"extcomment" not in ex4d
    assert len(_stored(store, rows["example4d.nii.gz"].blob).header.extensions) == 0


def test_a_clean_volume_is_stored_byte_for_byte(tmp_path, store):
    path = tmp_path / "clean.nii"
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.diag([1.5, 2, 3, 1])), path)
    ingest([path], store, progress=False)
    (row,) = store.items().itertuples()
    assert store.read_blob(row.blob) == path.read_bytes() and json.loads(row.meta)["rewritten"] is False
    assert (row.cols, row.rows, row.frames, row.pixel_spacing_x) == (2, 3, 4, 1.5)


def test_a_truncated_volume_is_one_error_and_the_rest_goes_on(volumes, store):
    data = (volumes / "anatomical.nii").read_bytes()
    (volumes / "cut.nii").write_bytes(data[:2000])
    report = ingest([volumes], store, progress=False)
    (path, reason), = report.errors
    assert path == str(volumes / "cut.nii") and "cut.nii: truncated" in reason
    assert report.n_items_added == len(FILES)


def test_ingesting_twice_adds_nothing_and_blobs_are_deterministic(volumes, tmp_path):
    hashes = []
    for name in ("one", "two"):
        with Store(tmp_path / name, write=True) as s:
            assert ingest([volumes], s, progress=False).n_items_added == len(FILES)
            again = ingest([volumes], s, progress=False)
            assert (again.n_items_added, again.n_skipped) == (0, len(FILES))
            hashes.append(sorted(s.items()["content_hash"]))
    assert hashes[0] == hashes[1]


def test_nifti1_pairs_and_analyze_volumes_written_by_nibabel(tmp_path, store):
    """Two-file NIfTI-1 (.hdr/.img, magic 'ni1') and Analyze 7.5 pairs were rejected; nibabel reads both."""
    import numpy as np

    folder = tmp_path / "pairs"
    folder.mkdir()
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    pair = nib.Nifti1Pair(data, affine)
    pair.header["descrip"] = b"SMITH^JOHN 1950-03-04"
    nib.save(pair, folder / "sub1_t1.hdr")
    nib.save(nib.AnalyzeImage(data[::-1], affine), folder / "sub2_t1.hdr")
    nib.save(nib.Nifti1Pair(data, affine), folder / "orphan.hdr")
    (folder / "orphan.img").unlink()
    report = ingest([folder], store, progress=False)
    assert report.n_ok == 2 and report.n_failed == 1
    (path, reason), = report.errors
    assert path.endswith("orphan.hdr") and "orphan.img" in reason and "missing" in reason
    rows = _by_name(store, folder)
    assert set(rows) == {"sub1_t1.hdr", "sub2_t1.hdr"}, "the .img files are read with their headers"
    for name, expect in (("sub1_t1.hdr", data), ("sub2_t1.hdr", data[::-1])):
        stored = _stored(store, rows[name].blob)
        original = nib.load(folder / name)
        assert np.array_equal(np.asanyarray(stored.dataobj), expect)
        assert np.allclose(stored.affine, original.affine)
        assert json.loads(rows[name].meta)["converted_from"] in ("nifti1-pair", "analyze")
    assert b"SMITH" not in gzip.decompress(store.read_blob(rows["sub1_t1.hdr"].blob))
