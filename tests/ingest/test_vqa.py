"""VQA-RAD / SLAKE question sets: pictures and linked questions, ingested into a real store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medweave.ingest import ingest
from medweave.store.catalog import Store


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 20), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path, "JPEG", quality=90)


def _vqa_rad(root: Path) -> list[dict]:
    """A VQA-RAD-style set: 5 questions on 2 of the 3 pictures in images/."""
    for i, name in enumerate(["synpic1.jpg", "synpic2.jpg", "synpic3.jpg"]):
        _jpeg(root / "images" / name, i)
    records = [
        {"qid": q, "image_name": img, "image_organ": organ, "question": text, "answer": answer,
         "answer_type": "CLOSED" if answer in ("Yes", "No") else "OPEN", "question_type": "PRES",
         "phrase_type": "freeform"}
        for q, img, organ, text, answer in [
            (1, "synpic1.jpg", "CHEST", "Is there a pneumothorax?", "No"),
            (2, "synpic1.jpg", "CHEST", "Which lung is abnormal?", "Left"),
            (3, "synpic2.jpg", "HEAD", "Is this an MRI?", "Yes"),
            (4, "synpic2.jpg", "HEAD", "How many lesions are there?", 2),
            (5, "synpic1.jpg", "CHEST", "Is the heart enlarged?", "Yes"),
        ]
    ]
    (root / "trainset.json").write_text(json.dumps(records, indent=2))
    return records


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store", write=True) as s:
        yield s


def test_a_vqa_folder_gives_linked_pictures_and_questions(tmp_path, store):
    root = tmp_path / "vqa"
    records = _vqa_rad(root)
    report = ingest([root], store, progress=False)
    assert report.errors == [] and report.items_per_adapter == {"vqa": 7}
    images = store.items("modality = 'image'")
    questions = store.items("modality = 'qa'")
    assert len(images) == 2 and len(questions) == 5  # synpic3.jpg is referenced by no question
    image_of = {r.source_key: r for r in images.itertuples()}  # the image name
    assert set(image_of) == {"synpic1.jpg", "synpic2.jpg"}
    assert image_of["synpic1.jpg"].organ == "CHEST" and image_of["synpic1.jpg"].format == "jpeg"
    by_qid = {json.loads(r.meta)["qid"]: r for r in questions.itertuples()}
    for rec in records:
        q = by_qid[rec["qid"]]
        img = image_of[rec["image_name"]]
        assert (q.text, q.answer, q.answer_type, q.question_type) == (
            rec["question"], str(rec["answer"]), rec["answer_type"], rec["question_type"])
        assert q.linked_item == img.item_id and q.patient_id == img.patient_id and q.study_id == img.study_id
        assert q.organ == rec["image_organ"] and q.blob is None
        assert json.loads(q.meta)["phrase_type"] == "freeform"
    assert image_of["synpic1.jpg"].patient_id != image_of["synpic2.jpg"].patient_id
    again = ingest([root], store, progress=False)
    assert again.n_items_added == 0 and again.n_skipped == 1


def test_a_changed_picture_reingests_its_question_file(tmp_path, store):
    root = tmp_path / "vqa"
    _vqa_rad(root)
    ingest([root], store, progress=False)
    _jpeg(root / "images" / "synpic2.jpg", seed=42)
    report = ingest([root], store, progress=False)
    assert report.n_ok == 1 and report.n_items_added == 1  # the new picture; questions are unchanged
    _jpeg(root / "images" / "synpic3.jpg", seed=43)  # not referenced: nothing to re-read
    assert ingest([root], store, progress=False).n_skipped == 1


def test_slake_spelling_and_a_json_given_directly(tmp_path, store):
    root = tmp_path / "slake"
    _jpeg(root / "imgs" / "xmlab7" / "source.jpg", 7)
    records = [{"img_id": 7, "img_name": "xmlab7/source.jpg", "question": "Which organ is shown?",
                "answer": "Lung", "q_lang": "en", "location": "Lung", "modality": "CT",
                "answer_type": "OPEN", "content_type": "Organ", "qid": 11}]
    (root / "test.json").write_text(json.dumps(records))
    report = ingest([root / "test.json"], store, progress=False)
    assert report.errors == [] and report.items_per_adapter == {"vqa": 2}
    (q,) = store.items("modality = 'qa'").itertuples()
    (img,) = store.items("modality = 'image'").itertuples()
    assert (q.organ, q.question_type, q.linked_item) == ("Lung", "Organ", img.item_id)
    assert json.loads(q.meta)["language"] == "en" and img.organ == "Lung"


def test_missing_pictures_fail_the_file_naming_them(tmp_path, store):
    root = tmp_path / "vqa"
    _vqa_rad(root)
    (root / "images" / "synpic2.jpg").unlink()
    report = ingest([root], store, progress=False)
    (path, reason), = report.errors
    assert path == str(root / "trainset.json")
    assert "1 referenced image(s) missing from images/" in reason and "synpic2.jpg (qid 3)" in reason
    assert store.items().empty


def test_a_record_without_a_question_is_named(tmp_path, store):
    root = tmp_path / "vqa"
    records = _vqa_rad(root)
    del records[3]["question"]
    (root / "trainset.json").write_text(json.dumps(records))
    (_, reason), = ingest([root], store, progress=False).errors
    assert reason == "record 3 (qid 4) lacks question"


def test_vqa_rad_has_3064_questions_on_314_pictures(shared_data, store):
    root = shared_data / "vqa-rad"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    records = json.loads((root / "trainset.json").read_text())
    referenced = {r["image_name"] for r in records}
    assert (len(records), len(referenced)) == (3064, 314)
    on_disk = {p.name for p in (root / "images").iterdir()}
    assert len(on_disk - referenced) == 1  # one picture no question asks about: not ingested
    report = ingest([root], store, progress=False)
    assert report.errors == [] and report.items_per_adapter == {"vqa": 3064 + 314}
    counts = dict(store.con.execute("SELECT modality, count(*) FROM items GROUP BY 1").fetchall())
    assert counts == {"qa": 3064, "image": 314}
    images = store.items("modality = 'image'")
    assert set(images["source_key"]) == referenced
    linked = store.con.execute(
        "SELECT count(*) FROM items q JOIN items i ON q.linked_item = i.item_id "
        "WHERE q.modality = 'qa' AND i.modality = 'image' AND q.patient_id = i.patient_id").fetchone()[0]
    assert linked == 3064
