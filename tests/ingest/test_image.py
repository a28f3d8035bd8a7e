"""Pictures (PNG, JPEG, TIFF) and class folders with a metadata CSV, ingested into a real store."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from medweave.ingest import ingest
from medweave.ingest.adapters.image import ImageFolderAdapter
from medweave.store.catalog import Store

SECRET_NAME = "Jonathan Doeberg"


def _pixels(seed: int, size=(12, 9), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode)


def _png(path: Path, seed: int = 0, text: str | None = None) -> Path:
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("Author", text)
        info.add_itxt("Comment", text)
    _pixels(seed).save(path, "PNG", pnginfo=info)
    return path


def _jpeg(path: Path, seed: int = 1) -> Path:
    exif = Image.Exif()
    exif[0x013B] = SECRET_NAME  # Artist
    _pixels(seed, mode="L").save(path, "JPEG", exif=exif, comment=SECRET_NAME.encode(), quality=90)
    return path


def _tiff(path: Path) -> Path:
    pages = [_pixels(2, mode="L"), _pixels(3, mode="L")]
    pages[0].save(path, "TIFF", save_all=True, append_images=pages[1:],
                  tiffinfo={270: f"Patient {SECRET_NAME}", 315: SECRET_NAME})
    return path


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store", write=True) as s:
        yield s


def _decoded_pages(data: bytes) -> list[np.ndarray]:
    with Image.open(io.BytesIO(data)) as img:
        pages = []
        for i in range(getattr(img, "n_frames", 1)):
            img.seek(i)
            pages.append(np.asarray(img.convert(img.mode)))
        return pages


def test_pictures_are_stored_with_identifying_metadata_removed(tmp_path, store, by_file):
    src = tmp_path / "pics"
    src.mkdir()
    files = [_png(src / "a.png", text=SECRET_NAME), _png(src / "clean.png", seed=5), _jpeg(src / "b.jpg"),
             _tiff(src / "c.tif")]
    report = ingest([src], store, progress=False)
    assert report.errors == [] and report.n_items_added == 4
    items = by_file(store, src)
    for f in files:
        row = items[f.name]
        blob = store.read_blob(row.blob)
        assert SECRET_NAME.encode() not in blob, f.name
        original = _decoded_pages(f.read_bytes())
        stored = _decoded_pages(blob)
        assert len(stored) == row.frames == len(original)
        assert all(np.array_equal(a, b) for a, b in zip(original, stored)), f"{f.name}: pixels changed"
        assert (row.rows, row.cols) == (9, 12)
    assert items["c.tif"].format == "tiff" and items["c.tif"].frames == 2
    assert items["b.jpg"].format == "jpeg" and json.loads(items["b.jpg"].meta)["bit_depth"] == 8
    # a picture without metadata is kept byte for byte
    assert store.read_blob(items["clean.png"].blob) == (src / "clean.png").read_bytes()
    assert json.loads(items["clean.png"].meta)["metadata_removed"] is False
    assert json.loads(items["a.png"].meta)["metadata_removed"] is True


def test_undecodable_picture_is_one_error_and_the_batch_goes_on(tmp_path, store):
    src = tmp_path / "pics"
    src.mkdir()
    good = _png(src / "good.png")
    broken = src / "broken.png"
    broken.write_bytes(_png(tmp_path / "whole.png", seed=9).read_bytes()[:100])
    report = ingest([src], store, progress=False)
    assert report.n_items_added == 1 and report.n_failed == 1
    (path, reason), = report.errors
    assert path == str(broken) and "broken.png" in reason and "does not decode" in reason
    assert store.items()["unit_id"].tolist() == [store.unit_id(good)]
    (unit, logged), = store.con.execute("SELECT unit_id, reason FROM errors").fetchall()
    # the file name is its patient key (prefix rule): stored de-identified, shown as it is on disk
    assert unit == store.unit_id(broken) and logged.endswith(reason.removeprefix("broken.png"))
    assert "broken" not in logged


def test_ingesting_twice_adds_nothing_and_bytes_are_deterministic(tmp_path):
    src = tmp_path / "pics"
    src.mkdir()
    _png(src / "a.png", text=SECRET_NAME), _jpeg(src / "b.jpg"), _tiff(src / "c.tif")
    hashes = []
    for name in ("one", "two"):
        with Store(tmp_path / name, write=True) as s:
            assert ingest([src], s, progress=False).n_items_added == 3
            again = ingest([src], s, progress=False)
            assert again.n_items_added == 0 and again.n_skipped == 3
            hashes.append(sorted(s.items()["content_hash"]))
    assert hashes[0] == hashes[1]


# --- class folders ------------------------------------------------------------------------------

CSV_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def _class_folder(root: Path) -> dict[str, str]:
    """train/{0_normal,1_abnormal}, valid/{0_normal,1_abnormal}; a NIH-style CSV for all but one."""
    layout = {"train/0_normal/n1.png": "No Finding", "train/1_abnormal/a1.png": "Cardiomegaly|Effusion",
              "valid/0_normal/n2.png": "No Finding", "valid/1_abnormal/a2.png": "Mass"}
    for i, rel in enumerate([*layout, "valid/1_abnormal/orphan.png"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _png(root / rel, seed=i)
    lines = [CSV_HEADER]
    for i, (rel, findings) in enumerate(layout.items()):
        pid = "MRN448812" if i < 2 else f"MRN77{i}"
        lines.append(f"{Path(rel).name},{findings},{i},{pid},{40 + i},{'M' if i < 2 else 'F'},PA,1200,960,0.2,0.25")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    return layout


def test_class_folders_with_csv_give_labels_split_and_patient_facts(tmp_path, store, by_file):
    root = tmp_path / "cxr"
    layout = _class_folder(root)
    report = ingest([root], store, progress=False)
    assert report.errors == [] and report.items_per_adapter == {"image-folder": 5}
    items = by_file(store, root)
    a1 = items["a1.png"]
    labels = json.loads(a1.labels)
    assert (a1.split, a1.label, labels["class"], labels["abnormal"]) == ("train", "1_abnormal", "1_abnormal", 1)
    assert labels["findings"] == ["Cardiomegaly", "Effusion"]
    assert labels["Cardiomegaly"] == labels["Effusion"] == 1 and labels["Mass"] == 0 and labels["No Finding"] == 0
    assert json.loads(items["n2.png"].labels)["abnormal"] == 0
    assert (a1.age, a1.view_position) == (41.0, "PA")
    # spacing of the stored 12x9 picture: the original 1200x960 spacing scaled by the shrink factor
    assert a1.pixel_spacing_x == pytest.approx(0.2 * 1200 / 12) and a1.pixel_spacing_y == pytest.approx(0.25 * 960 / 9)
    # the first two images share a patient id (pseudonymised), each follow-up is its own study
    assert items["n1.png"].patient_id == a1.patient_id != items["n2.png"].patient_id
    assert items["n1.png"].study_id != a1.study_id
    sex = dict(store.con.execute("SELECT patient_id, sex FROM patients").fetchall())
    assert sex[a1.patient_id] == "M" and sex[items["n2.png"].patient_id] == "F"
    orphan = items["orphan.png"]
    assert json.loads(orphan.meta)["metadata_row"] is False and orphan.split == "valid"
    dump = " ".join(map(str, store.con.execute("SELECT * FROM items").fetchall()))
    dump += " ".join(map(str, store.con.execute("SELECT * FROM patients").fetchall()))
    assert "MRN448812" not in dump and "448812" not in dump
    assert len(layout) + 1 == len(items)


def _reingest_with_changed_row(root: Path, store: Store):
    """Ingest a class folder, change the findings of a2.png in its CSV, and ingest it again."""
    _class_folder(root)
    ingest([root], store, progress=False)
    csv_path = root / "meta.csv"
    csv_path.write_text(csv_path.read_text().replace("a2.png,Mass,", "a2.png,Nodule,"))
    return ingest([root], store, progress=False)


def test_a_changed_csv_row_rereads_only_its_picture(tmp_path, store):
    report = _reingest_with_changed_row(tmp_path / "cxr", store)
    assert (report.n_ok, report.n_skipped, report.n_failed) == (1, 4, 0)


def test_a_changed_csv_row_updates_the_labels(tmp_path, store):
    report = _reingest_with_changed_row(tmp_path / "cxr", store)
    assert report.n_items_replaced == 1 and report.n_items_added == 0
    rows = store.items("source_path LIKE '%a2.png'")  # a name without identifiers is stored as it is
    assert [json.loads(labels)["findings"] for labels in rows["labels"]] == [["Nodule"]]


def test_an_unreadable_csv_fails_every_picture_rather_than_dropping_metadata(tmp_path, store):
    root = tmp_path / "cxr"
    _class_folder(root)
    (root / "meta.csv").write_bytes(b"Image Index,Patient ID\n\xff\xfe.png,1\n")
    report = ingest([root], store, progress=False)
    assert report.n_failed == 5 and store.items().empty
    assert all("meta.csv: metadata CSV cannot be read" in reason for _, reason in report.errors)


def test_folders_that_are_not_class_layouts_are_not_claimed(tmp_path):
    adapter = ImageFolderAdapter()
    (tmp_path / "vqa" / "images").mkdir(parents=True)
    _png(tmp_path / "vqa" / "images" / "x.png")
    (tmp_path / "vqa" / "trainset.json").write_text("[]")
    (tmp_path / "one" / "only").mkdir(parents=True)
    _png(tmp_path / "one" / "only" / "x.png")
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "x.png")
    for name in ("vqa", "one", "flat"):
        assert not adapter.claims_dir(tmp_path / name), name
    (tmp_path / "two" / "cats").mkdir(parents=True)
    (tmp_path / "two" / "dogs").mkdir(parents=True)
    _png(tmp_path / "two" / "cats" / "x.png"), _png(tmp_path / "two" / "dogs" / "y.png")
    assert adapter.claims_dir(tmp_path / "two")


def test_nih_subset_has_every_picture_with_its_csv_facts(shared_data, store):
    root = shared_data / "nih-cxr14-800"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    with open(root / "Data_Entry_2017_v2020_subset.csv", newline="") as fh:
        expected = {r["Image Index"]: r for r in csv.DictReader(fh)}
    report = ingest([root], store, progress=False)
    assert report.errors == [] and report.n_items_added == 800 == len(expected)
    df = store.con.execute(
        "SELECT i.*, p.sex FROM items i JOIN patients p USING (patient_id)").df()
    assert len(df) == 800 and set(df["modality"]) == {"image"}
    files = {store.unit_id(p): p for p in root.rglob("*.png")}  # stored paths are de-identified
    for row in df.itertuples():
        name = files[row.unit_id].name
        want = expected[name]
        split, cls = files[row.unit_id].parts[-3:-1]
        labels = json.loads(row.labels)
        assert (row.split, row.label, labels["class"]) == (split, cls, cls)
        assert labels["abnormal"] == int(cls == "1_abnormal")
        assert row.age == float(want["Patient Age"]) and row.sex == want["Patient Gender"]
        assert row.view_position == want["View Position"]
        findings = [f for f in want["Finding Labels"].split("|") if f != "No Finding"]
        assert labels["findings"] == findings
        assert (row.rows, row.cols) == (64, 64)
    # the Image Index (00000001_000: NIH's patient number and follow-up) is pseudonymised in the paths
    stems = {name.rsplit(".", 1)[0] for name in expected}
    stored = " ".join(list(df["source_path"]) + list(df["meta"]) + list(df["labels"]))
    assert all(p.rsplit("/", 1)[-1].startswith("[ID-") for p in df["source_path"])
    assert not [s for s in stems if s in stored or re.search(rf"(?<![0-9.]){s.split('_')[0]}(?![0-9])", stored)]
    # images of one NIH patient share one pseudonymised patient id
    per_patient = {}
    for row in df.itertuples():
        per_patient.setdefault(expected[files[row.unit_id].name]["Patient ID"], set()).add(row.patient_id)
    assert all(len(ids) == 1 for ids in per_patient.values())
    assert len(set(df["patient_id"])) == len(per_patient)
