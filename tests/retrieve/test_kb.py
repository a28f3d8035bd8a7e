"""The knowledge base: lexical, dense and fused search; filters; leakage impossible by construction."""

from __future__ import annotations

import numpy as np
import pytest

from medweave.retrieve.index import Index
from medweave.retrieve.kb import Entry, KnowledgeBase, KnowledgeBaseError, Scope
from medweave.retrieve.text import BM25Index, HybridIndex, TfidfIndex, make_index

TEXTS = {
    # patient, split, findings
    "a1": ("pa", "train", "Small left pleural effusion. Heart size normal."),
    "a2": ("pa", "train", "Small left pleural effusion, unchanged. Heart size normal."),
    "b1": ("pb", "train", "Left pleural effusion, small. Normal heart."),
    "c1": ("pc", "test", "Small left pleural effusion. Heart size normal."),
    "d1": ("pd", "train", "Cardiomegaly. Clear lungs."),
    "e1": ("pe", "valid", "Small left pleural effusion. Heart size normal."),
}


def _kb(kind="tfidf") -> KnowledgeBase:
    entries = [Entry(id=i, kind="findings", text=t, split=s, patient_id=p, item_id=f"item-{i}", organ="CHEST",
                     namespace="ns", modality="text") for i, (p, s, t) in TEXTS.items()]
    return KnowledgeBase(entries, text_index=kind)


def test_own_items_patient_and_other_splits_are_never_returned():
    kb = _kb()
    query = TEXTS["a1"][2]  # a1's own words: its own entry would score 1.0
    scope = Scope.for_case(["train"], patient_id="pa", item_ids=["item-a1"])
    hits = kb.search_text([query], k=10, scope=scope)[0]
    ids = [h["entry"].id for h in hits]
    assert ids and "a1" not in ids and "a2" not in ids, "the case and its patient's other items must not come back"
    assert "c1" not in ids and "e1" not in ids, "entries outside the allowed split must not come back"
    assert ids[0] == "b1" and set(ids) == {"b1", "d1"}
    # without the case exclusion its own entry is first: the exclusion is what keeps it out
    assert kb.search_text([query], k=1, scope=Scope(("train",)))[0][0]["entry"].id in ("a1",)
    # widening the scope to the test split brings c1 back, exactly as asked
    both = [h["entry"].id for h in kb.search_text([query], k=10, scope=Scope.for_case(["train", "test"], "pa"))[0]]
    assert "c1" in both and "e1" not in both


def test_search_without_splits_is_refused_and_filters_name_allowed_keys():
    kb = _kb()
    with pytest.raises(KnowledgeBaseError, match="needs a Scope naming the splits"):
        kb.search_text(["effusion"], 3, Scope(()))
    with pytest.raises(KnowledgeBaseError, match="unknown filter 'colour'; allowed values: kind, modality"):
        kb.search_text(["effusion"], 3, Scope(("train",)), filters={"colour": "red"})
    assert kb.search_text(["effusion"], 3, Scope(("train",)), filters={"organ": "HEAD"})[0] == []
    with pytest.raises(KnowledgeBaseError, match="appears more than once"):
        KnowledgeBase([Entry("x", "report", "a"), Entry("x", "report", "b")])


@pytest.mark.parametrize("index", [TfidfIndex(), BM25Index(), make_index("tfidf-plain")])
def test_lexical_indexes_rank_the_matching_text_first(index):
    docs = ["no acute cardiopulmonary abnormality", "small right pneumothorax", "left lower lobe pneumonia"]
    index.fit(docs)
    assert index.search(["pneumothorax on the right"], k=1)[0][0][0] == 1
    allow = np.array([True, False, True])
    assert all(r != 1 for r, _ in index.search(["pneumothorax on the right"], k=3, allow=allow)[0])


def test_hybrid_fuses_ranks_and_dense_index_uses_the_vector_index():
    docs = ["alpha beta", "gamma delta", "beta gamma"]
    vecs = {"alpha beta": [1, 0, 0], "gamma delta": [0, 1, 0], "beta gamma": [0.7, 0.7, 0], "beta": [1, 0.1, 0]}
    encode = lambda texts: np.array([vecs.get(t, [0, 0, 1]) for t in texts], dtype=np.float32)  # noqa: E731
    hyb = HybridIndex([TfidfIndex(), make_index("dense", encode)]).fit(docs)
    s = hyb.scores(["beta"])
    assert s.shape == (1, 3) and np.argmax(s[0]) == 0


def test_vector_index_allow_mask_is_applied_inside_faiss():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(50, 8)).astype(np.float32)
    idx = Index(vecs, [{"i": i} for i in range(50)])
    allow = np.zeros(50, dtype=bool)
    allow[[3, 7, 11, 40]] = True
    hits = idx.search(vecs[7], k=10, allow=allow)[0]
    assert [h["i"] for h in hits][0] == 7 and {h["i"] for h in hits} == {3, 7, 11, 40}
    assert idx.search(vecs[0], k=3, allow=np.zeros(50, dtype=bool))[0] == []


def test_vector_space_search_scope_and_round_trip(tmp_path):
    kb = _kb()
    rng = np.random.default_rng(1)
    ids = list(TEXTS)
    arr = rng.normal(size=(len(ids), 4)).astype(np.float32)
    kb.add_vectors("image", ids, arr)
    hits = kb.search_vector("image", arr[0], 5, Scope.for_case(["train"], "pa"))[0]
    assert {h["entry"].id for h in hits} == {"b1", "d1"}
    kb.save(tmp_path / "kb")
    back = KnowledgeBase.load(tmp_path / "kb")
    assert [e.id for e in back.entries] == ids
    again = back.search_vector("image", arr[0], 5, Scope.for_case(["train"], "pa"))[0]
    assert [h["entry"].id for h in again] == [h["entry"].id for h in hits]
    with pytest.raises(KnowledgeBaseError, match="no vector space 'text'"):
        back.search_vector("text", arr[0], 1, Scope(("train",)))
