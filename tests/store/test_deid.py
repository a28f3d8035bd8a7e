"""De-identification primitives: keyed pseudonyms, date shifts, UID remapping, free-text scrubbing."""

from __future__ import annotations

import datetime as dt

from medweave.store.deid import Deidentifier, load_or_create_secret, scrub_text


def test_pseudonyms_are_stable_keyed_and_namespaced(tmp_path):
    key = load_or_create_secret(tmp_path / "secret.key")
    assert load_or_create_secret(tmp_path / "secret.key") == key  # created once, then read
    d = Deidentifier(key)
    assert d.patient_id("default", "MRN-12345") == d.patient_id("default", "MRN-12345")
    assert d.patient_id("default", "MRN-12345") != d.patient_id("mimic", "MRN-12345")
    assert "12345" not in d.patient_id("default", "MRN-12345")
    other = Deidentifier(b"another key".ljust(32, b"\0"))
    assert other.patient_id("default", "MRN-12345") != d.patient_id("default", "MRN-12345")


def test_date_shift_keeps_intervals_within_a_patient_and_moves_dates():
    d = Deidentifier(b"k" * 32)
    pid = d.patient_id("default", "A")
    a, b = dt.date(2020, 1, 1), dt.date(2020, 3, 15)
    assert d.shift(pid, b) - d.shift(pid, a) == b - a
    assert d.shift(pid, a) != a
    assert -Deidentifier.MAX_SHIFT_DAYS <= d.date_offset_days(pid) <= -1
    offsets = {d.date_offset_days(d.patient_id("default", str(i))) for i in range(50)}
    assert len(offsets) > 40  # per patient, not one global shift


def test_uid_remap_is_deterministic_and_valid():
    d = Deidentifier(b"k" * 32)
    u = d.uid("1.2.840.113619.2.55.3.604688119.969.1268071029.320")
    assert u == d.uid("1.2.840.113619.2.55.3.604688119.969.1268071029.320")
    assert u.startswith("2.25.") and len(u) <= 64 and u.replace(".", "").isdigit()


def test_keep_phi_is_identity():
    d = Deidentifier(b"k" * 32, keep_phi=True)
    assert d.patient_id("default", "MRN-1") == "MRN-1"
    assert d.shift("MRN-1", dt.date(2020, 1, 1)) == dt.date(2020, 1, 1)
    assert d.scrub("Dr. John Smith on 01/02/2020") == "Dr. John Smith on 01/02/2020"


def test_scrub_text_removes_identifiers_and_keeps_clinical_content():
    text = ("Seen by Dr. John Smith on 03/04/2012 and March 5, 2012. Call (555) 123-4567 or "
            "john.smith@hospital.org. MRN: 7654321. Patient: Jane Roe. 70% stenosis, a 3.5 cm nodule, "
            "ECG date: 01.10.1990, admitted 29-Sep-90, accession 20120304.")
    out = scrub_text(text, known=["Roe"])
    for ident in ["John", "Smith", "03/04/2012", "March 5", "555", "4567", "hospital.org", "7654321",
                  "Jane", "Roe", "01.10.1990", "29-Sep-90", "20120304"]:
        assert ident not in out, (ident, out)
    for keep in ["70% stenosis", "3.5 cm nodule"]:
        assert keep in out
    assert "[NAME]" in out and "[DATE]" in out and "[PHONE]" in out and "[EMAIL]" in out
    signed = scrub_text("Referring: Dr. Ruth Hale. Signed by: Prof. Sam Osei")
    assert "Ruth" not in signed and "Hale" not in signed and "Osei" not in signed, signed


def test_path_part_known_keys_ascii_shortcut_and_unicode():
    """A raw patient key inside a file name is found case-insensitively at word edges; the ASCII
    substring shortcut changes no answer, and non-ASCII names still go through the pattern."""
    from medweave.store.deid import path_part_identifies

    assert path_part_identifies("scan_PH0042_x.dcm", ("ph0042",))
    assert not path_part_identifies("scan_PH0042a.dcm", ("ph0042",))  # not at a word edge
    assert not path_part_identifies("scan.dcm", ("ph0042",))
    assert path_part_identifies("\u017fmith_ct.dcm", ("smith",))  # long s: equal under re.IGNORECASE
    assert path_part_identifies("smith_ct.dcm", ("\u017fmith",))


def test_scrub_memo_is_bounded_by_characters(tmp_path):
    """The scrub memo keeps repeated cells, and is emptied before it holds more than
    ``SCRUB_MEMO_CHARS`` characters (reports never repeat: memoised by count alone they added tens
    of MB); what it returns is the same either way."""
    d = Deidentifier(b"k" * 32)
    d.SCRUB_MEMO_CHARS = 2000
    texts = [f"Seen by Dr John Smith on 2020-01-{1 + i % 28:02d}, report number {i}." * 3 for i in range(60)]
    out = [d.scrub(t) for t in texts]
    assert out == [scrub_text(t, ()) for t in texts]
    assert sum(len(k[0]) + len(v) for k, v in d._scrubbed.items()) <= 2000
    assert d.scrub(texts[-1]) is d.scrub(texts[-1])  # the last one is still kept
