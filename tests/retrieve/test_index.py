"""The FAISS index: k hits with their records, leave-one-out, precision@k."""

from __future__ import annotations

import numpy as np
import pytest

from medweave.retrieve import Index, precision_at_k
from medweave.retrieve.index import case_indexes


def _clusters():
    rng = np.random.default_rng(0)
    centres = {"CHEST": rng.normal(size=16), "HEAD": rng.normal(size=16)}
    organs = ["CHEST"] * 6 + ["HEAD"] * 6
    vecs = np.stack([centres[o] + 0.1 * rng.normal(size=16) for o in organs]).astype(np.float32)
    return vecs, organs


def test_search_returns_k_records_in_score_order():
    vecs, organs = _clusters()
    idx = Index(vecs, [{"organ": o, "id": i} for i, o in enumerate(organs)])
    hits = idx.search(vecs[3], k=5)[0]
    assert len(hits) == 5 and hits[0]["id"] == 3 and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    assert all(h["id"] != 3 for h in idx.search(vecs[3:4], k=5, exclude=[3])[0])
    with pytest.raises(ValueError, match="k must be at least 1"):
        idx.search(vecs[0], k=0)


def test_precision_at_k_same_organ():
    vecs, organs = _clusters()
    idx = Index(vecs, [{"organ": o} for o in organs])
    assert precision_at_k(idx, vecs, organs, "organ", k=5, exclude=range(len(organs))) == 1.0
    shuffled = Index(vecs, [{"organ": o} for o in organs[::-1][3:] + organs[::-1][:3]])
    assert precision_at_k(shuffled, vecs, organs, "organ", k=5, exclude=range(len(organs))) < 1.0


def test_case_indexes_one_row_per_picture():
    vecs, organs = _clusters()
    cases = [{"image": f"p{i // 2}", "organ": o, "question": f"q{i}", "answer": "yes"} for i, o in enumerate(organs)]
    pictures, joint = case_indexes(vecs, vecs, cases)
    assert len(pictures) == 6 and len(joint) == 12
    assert pictures.records[0] == {"image": "p0", "organ": "CHEST", "questions": 2}
    with pytest.raises(ValueError, match="3 vectors but 2 records"):
        Index(vecs[:3], [{}, {}])
