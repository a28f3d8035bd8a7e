"""The free-text scrubber scored on the labelled synthetic notes (tests/data/deid/notes.txt), and on
real de-identified reports for over-scrubbing (benchmarks/deid.py prints the full tables)."""

from __future__ import annotations

import json
import re

import pytest

from medweave.store.deid import scrub_text
from medweave.store.deid_score import corpus_path, parse_notes, score
from medweave.store.deid_text import find_phi


@pytest.fixture(scope="module")
def notes():
    return parse_notes(corpus_path())


def test_corpus_covers_the_safe_harbor_categories(notes):
    cats = {c for n in notes for *_, c in n.labels}
    assert {"NAME", "STREET", "CITY", "HOSPITAL", "ZIP", "DATE", "AGE", "PHONE", "FAX", "EMAIL", "SSN", "MRN",
            "ACCOUNT", "LICENSE", "URL", "ID", "KEEP"} <= cats
    assert {n.split for n in notes} == {"dev", "test"} and len(notes) >= 30


@pytest.mark.parametrize("split", ["dev", "test"])
def test_recall_and_precision_hold_on_the_corpus(notes, split):
    s = score([n for n in notes if n.split == split], find_phi)
    assert s.group_recall("structured") >= 0.99, s.missed
    assert s.group_recall("names") >= 0.95, s.missed
    assert s.group_recall("locations") >= 0.95, s.missed
    assert s.overall_precision() >= 0.97, s.wrong
    assert s.keep[1] > 30 and s.keep[0] == 0, s.wrong  # no eponym, drug or device taken away


def test_the_identifiers_a_new_user_saw_leak_are_caught():
    text = ("John Q. Smithfield, a 92-year-old man with Parkinson disease and a Foley catheter, lives with "
            "his daughter Maria Smithfield at 1428 Elm Street, Springfield, IL 62704. Seen at Mercy General "
            "Hospital, then St. Vincent's Hospital. Account number: 7719-44812. License #: MD-448812. "
            "Portal: https://portal.example/patient/88231\nR. Kim")
    out = scrub_text(text)
    for ident in ["John", "Smithfield", "Maria", "92", "1428", "Elm", "Springfield", "62704", "Mercy",
                  "Vincent", "7719", "448812", "portal.example", "Kim"]:
        assert ident not in out, (ident, out)
    assert "Parkinson disease" in out and "Foley catheter" in out and ", IL " in out
    assert "[NAME] Q." not in out and "[AGE]-year-old" in out


def test_corpus_errors_name_the_note_and_the_category(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("=== x1 dev ===\nSeen by {{DOCTOR|Dr. Who}}.\n")
    with pytest.raises(ValueError, match=r"note x1: unknown category 'DOCTOR'"):
        parse_notes(bad)
    bad.write_text("=== x1 validation ===\ntext\n")
    with pytest.raises(ValueError, match="dev\\|test"):
        parse_notes(bad)


def test_real_reports_are_not_over_scrubbed(shared_data):
    """Open-i reports hold no identifiers (XXXX stands for them): nearly none may change."""
    rows = [json.loads(line) for line in (shared_data / "openi-summ" / "validate.jsonl").open(encoding="utf-8")]
    texts = [f"{r['inputs']}\n{r['target']}" for r in rows]
    changed = [t for t in texts if find_phi(t)]
    assert len(texts) > 300 and len(changed) / len(texts) <= 0.005, [re.sub(r"\s+", " ", t)[:200] for t in changed]
    # the old record-number rule took "accentuated" and "accumulation" for accession numbers
    assert scrub_text("Accentuated markings; fluid accumulation; accessory ossicle.") == (
        "Accentuated markings; fluid accumulation; accessory ossicle.")
