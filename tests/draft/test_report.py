"""Reports from pictures: citations point at the cases used, never at the case itself, its patient or
another split; contradictions with the predicted findings are flagged; the phantom end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from medweave.draft.report import (ReportDrafter, StoreReportDrafter, check_citations, head_map,
                                   report_sections)
from medweave.retrieve.kb import Entry, KnowledgeBase

CLI = [sys.executable, "-m", "medweave.cli"]


def _kb():
    rows = [  # id, patient, split, findings, impression, vector
        ("r1", "p1", "train", "There is a 3 cm opacity in the left lower lobe. Heart size is normal.",
         "Left lower lobe pneumonia.", [1.0, 0.0, 0.0]),
        ("r2", "p2", "train", "Focal opacity in the left lower zone. Heart size is normal.",
         "Findings consistent with pneumonia.", [0.95, 0.1, 0.0]),
        ("r3", "p3", "train", "Lungs are clear. The cardiac silhouette is enlarged.", "Cardiomegaly.",
         [0.0, 1.0, 0.0]),
        ("r4", "p4", "test", "There is a 3 cm opacity in the left lower lobe. Heart size is normal.",
         "Left lower lobe pneumonia.", [1.0, 0.01, 0.0]),
        ("r5", "p1", "train", "There is a 2 cm opacity in the left lower lobe. Heart size is normal.",
         "Left lower lobe pneumonia.", [1.0, 0.0, 0.01]),
    ]
    entries = [Entry(i, "report", f, s, patient_id=p, case_id=p, item_id=i, fields={"impression": imp})
               for i, p, s, f, imp, _ in rows]
    kb = KnowledgeBase(entries)
    kb.add_vectors("image", [r[0] for r in rows], np.array([r[5] for r in rows], dtype=np.float32))
    return kb


def test_sections_and_head_mapping():
    text = "EXAMINATION: Chest.\n\nFINDINGS:\nLungs are clear.\nHeart normal.\n\nIMPRESSION:\nNormal.\n\nSigned"
    assert report_sections(text) == {"EXAMINATION": "Chest.", "FINDINGS": "Lungs are clear. Heart normal.",
                                     "IMPRESSION": "Normal."}
    assert report_sections("x", {"findings": "A."}) == {"FINDINGS": "A."}
    m = head_map(["cardiomegaly", "pleural_effusion", "disease", "age"])
    assert m == {"cardiomegaly": ("Cardiomegaly",), "pleural_effusion": ("Pleural Effusion",),
                 "disease": ("Pneumonia", "Consolidation", "Lung Opacity")}


def test_every_sentence_cites_the_reports_it_came_from_and_never_the_case_itself():
    kb = _kb()
    d = ReportDrafter(kb, heads=["disease", "cardiomegaly"], k=3)
    draft = d.draft(np.array([1.0, 0.0, 0.0]), {"disease": 0.9, "cardiomegaly": 0.1}, case_id="p1",
                    patient_id="p1", item_ids=["r1"])
    cited = {c for s in draft.sentences for c in s.cites}
    assert cited and cited <= {h["id"] for h in draft.sources}
    assert not cited & {"r1", "r5", "r4"}, "own patient (r1, r5) and the test split (r4) must never be cited"
    by_id = {e.id: e for e in kb.entries}
    for s in draft.sentences:  # a cited report really holds the sentence
        base = by_id[s.cites[0]]
        assert s.text in base.text or s.text in base.fields["impression"] or s.added_for
    assert check_citations(draft, kb) == []
    assert draft.text.startswith("FINDINGS: ")


def test_contradictions_with_predictions_are_flagged_and_predicted_findings_added():
    kb = _kb()
    by_id = {e.id: e for e in kb.entries}
    # one similar case only (clear lungs, big heart), but the heads say pneumonia: "Lungs are clear" is flagged
    one = ReportDrafter(kb, heads=["disease", "cardiomegaly"], k=1).draft(
        np.array([0.0, 1.0, 0.0]), {"disease": 0.95, "cardiomegaly": 0.9}, patient_id="q")
    flagged = {s.text: s.flag for s in one.sentences if s.flag}
    assert "Lungs are clear." in flagged and "disease is predicted present" in flagged["Lungs are clear."]
    assert not any(s.flag for s in one.sentences if "enlarged" in s.text)
    # with more neighbours the grounded draft states both predicted findings, the one it lacked added
    # from a neighbour that states it, citing that neighbour
    d = ReportDrafter(kb, heads=["disease", "cardiomegaly"], k=4).draft(
        np.array([0.3, 1.0, 0.0]), {"disease": 0.95, "cardiomegaly": 0.9}, patient_id="q")
    text = d.text.lower()
    assert "opacity" in text and ("enlarged" in text or "cardiomegaly" in text)
    added = [s for s in d.sentences if s.added_for]
    assert added and all(s.text in by_id[s.cites[0]].text for s in added)
    assert check_citations(d, kb) == []
    # without predictions nothing is flagged or added
    plain = ReportDrafter(kb, heads=["disease"], k=4).draft(np.array([0.0, 1.0, 0.0]), {}, method="consensus",
                                                           patient_id="q")
    assert not plain.flagged and not any(s.added_for for s in plain.sentences)


def test_citation_check_catches_a_wrong_split_and_an_unknown_entry():
    kb = _kb()
    d = ReportDrafter(kb, heads=["disease"], k=2)
    draft = d.draft(np.array([1.0, 0.0, 0.0]), {"disease": 0.9}, patient_id="p9")
    draft.sentences[0].cites.append("r4")
    draft.sentences[-1].cites.append("nope")
    problems = check_citations(draft, kb)
    assert any("split 'test'" in p for p in problems) and any("'nope'" in p for p in problems)


@pytest.mark.slow
def test_phantom_drafts_cite_only_training_cases_of_other_patients(phantom_model):
    srd = StoreReportDrafter(phantom_model)
    assert srd.drafter.hmap == {"disease": ("Pneumonia", "Consolidation", "Lung Opacity")}
    cases = [e.case_id for e in srd.kb.entries if e.split in ("test", "valid")][:8]
    assert cases
    train_cases = {e.case_id for e in srd.kb.entries if e.split == "train"}
    for c in cases:
        d = srd.draft_case(c)
        assert check_citations(d, srd.kb) == []
        cited_cases = {x for s in d.sentences for x in s.cite_cases}
        assert cited_cases <= train_cases and c not in cited_cases
        assert 0.0 <= d.predicted["disease"] <= 1.0
    res = subprocess.run([*CLI, "draft", "report", "--model", str(phantom_model), "--case", cases[0], "--json"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["sentences"] and out["citation_problems"] == [] and out["case_id"] == cases[0]
