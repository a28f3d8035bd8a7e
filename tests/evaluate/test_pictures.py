"""Picture references of a task's samples: a folder is listed once and plain names found in the
listing skip Path.resolve; everything else (subfolders, links, '..', absent names) is still resolved
and checked, so the fast path gives the same answers as resolving every name."""

import json
import os
from pathlib import Path

from medweave.evaluate.samples import read_jsonl, read_vqa_json
from medweave.evaluate.tasks import Task


def task(layout: str) -> Task:
    return Task(name="t", layout=layout, data="x", metrics=["overall_acc"])


def test_each_kind_of_reference_resolves_or_fails_with_its_reason(tmp_path):
    (tmp_path / "sub").mkdir()
    for p in ("a.png", "sub/b.png"):
        (tmp_path / p).write_bytes(b"\x89PNG\r\n\x1a\n")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(b"x")
    os.symlink(outside, tmp_path / "link-out.png")
    os.symlink(tmp_path / "a.png", tmp_path / "link-in.png")
    names = ["a.png", "sub/b.png", "../" + outside.name, "link-out.png", "link-in.png", "absent.png", "sub"]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "image": n, "question": "q?", "answer": "yes"}) + "\n"
                            for i, n in enumerate(names)))
    got = {s.image_name: (s.image, s.error) for s in read_jsonl(task("jsonl"), data, None)}
    root = tmp_path.resolve()
    assert got["a.png"] == (root / "a.png", None)
    assert got["sub/b.png"] == (root / "sub" / "b.png", None)
    assert got["link-in.png"] == (root / "a.png", None)  # a link inside the folder: its target
    for bad in ("../" + outside.name, "link-out.png"):
        assert got[bad][0] is None and "points outside" in got[bad][1] and bad in got[bad][1]
    for bad in ("absent.png", "sub"):
        assert got[bad][0] is None and "not found in" in got[bad][1] and bad in got[bad][1]


def test_vqa_layout_resolves_each_picture_once_and_names_missing_ones(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "p1.jpg").write_bytes(b"\xff\xd8\xff")
    recs = [{"qid": i, "image_name": n, "question": "Is it?", "answer": "yes", "answer_type": "CLOSED"}
            for i, n in enumerate(["p1.jpg", "p1.jpg", "gone.jpg"])]
    (tmp_path / "set.json").write_text(json.dumps(recs))
    samples = read_vqa_json(task("vqa-rad"), tmp_path / "set.json", None)
    assert [s.image for s in samples[:2]] == [(tmp_path / "images" / "p1.jpg").resolve()] * 2
    assert samples[2].image is None and "'gone.jpg' not found in" in samples[2].error
    assert samples[2].error.startswith("sample set:2:")
