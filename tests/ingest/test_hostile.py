"""Hostile inputs, on purpose: XML entity expansion and external entities (the Open-i adapter parses
with defusedxml), deeply nested JSON, symlink loops, file names with control characters, a CSV line
of many megabytes. Each ends as a reported file (or an ingested one), never a crash, a hang or a
memory blow-up."""

from __future__ import annotations

import os
from pathlib import Path
import resource
import time

import pytest

from medweave.ingest import ingest
from medweave.store import Store

OPENI = """<?xml version="1.0" encoding="utf-8"?>
{doctype}<eCitation><uId id="CXR9"/><MedlineCitation><Article><Abstract>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">No acute disease.</AbstractText>
</Abstract></Article></MedlineCitation></eCitation>
"""
LAUGHS = ('<!DOCTYPE eCitation [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
          '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
          '<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">'
          '<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;"><!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">'
          '<!ENTITY i "&h;&h;&h;&h;&h;&h;&h;&h;&h;&h;">]>\n')


def _ingest(folder, tmp_path, **kw):
    with Store(tmp_path / "store", write=True) as st:
        t0 = time.monotonic()
        rep = ingest([folder], st, progress=False, **kw)
        return rep, time.monotonic() - t0, st.items()


def test_xml_entity_expansion_and_external_entities_are_refused(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "laughs.xml").write_text(OPENI.format(doctype=LAUGHS, findings="&i;"))
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    (d / "xxe.xml").write_text(OPENI.format(
        doctype=f'<!DOCTYPE eCitation [<!ENTITY x SYSTEM "file://{secret}">]>\n', findings="&x;"))
    (d / "good.xml").write_text(OPENI.format(doctype="", findings="Clear lungs."))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rep, seconds, items = _ingest(d, tmp_path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert rep.n_ok == 1 and rep.n_failed == 2 and not rep.unexpected, rep.errors
    reasons = dict((os.path.basename(p), r) for p, r in rep.errors)
    assert "entit" in reasons["laughs.xml"].lower() and "entit" in reasons["xxe.xml"].lower(), reasons
    # refused by defusedxml before anything is expanded, with the tool's own words
    assert "entity declarations are refused" in reasons["laughs.xml"] and "'a'" in reasons["laughs.xml"], reasons
    assert "entity declarations are refused" in reasons["xxe.xml"] and "'x'" in reasons["xxe.xml"], reasons
    assert seconds < 60 and grown_mb < 200, (seconds, grown_mb)
    assert not any("TOP-SECRET" in str(t) for t in items["text"]) and not any("lol" in str(t) for t in items["text"])


def test_deeply_nested_json_is_reported_not_a_crash(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    depth = 200_000
    (d / "deep.json").write_text('{"resourceType": "Bundle", "entry": ' + "[" * depth + "]" * depth + "}")
    (d / "deep-vqa.json").write_text("[" * depth + "]" * depth)
    rep, seconds, _ = _ingest(d, tmp_path)
    assert rep.n_ok == 0 and not rep.unexpected and seconds < 60, (rep.errors, rep.skipped, rep.unexpected)
    assert rep.n_failed + rep.n_not_data == 2


def test_symlink_loops_end(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "r.txt").write_text("Findings: clear lungs.\n")
    (d / "sub" / "up").symlink_to(d)  # a folder link back up
    (d / "self").symlink_to(d / "self")  # a link to itself
    (d / "a").symlink_to(d / "b")
    (d / "b").symlink_to(d / "a")  # two links to each other
    rep, seconds, items = _ingest(d, tmp_path)
    assert rep.n_ok == 1 and len(items) == 1 and not rep.unexpected and seconds < 60, (rep.errors, rep.skipped)


def test_file_names_with_control_characters(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    names = ["rep\x01ort.txt", "line\nbreak.txt", "tab\there.txt", "esc\x1b[31mred.txt", "bell\x07.txt"]
    for i, n in enumerate(names):
        (d / n).write_text(f"Findings {i}: clear lungs.\n")
    rep, _, items = _ingest(d, tmp_path)
    assert rep.n_ok == len(names) and not rep.unexpected, rep.errors
    for p in items["source_path"]:
        assert not any(ord(c) < 32 or ord(c) == 127 for c in p), repr(p)


@pytest.mark.slow
def test_a_csv_with_a_100_mb_line(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    with open(d / "wide.csv", "w") as fh:
        fh.write("patient_id,note\n")
        fh.write("p1," + "x" * (100 * 2**20) + "\n")
        fh.write("p2,short\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rep, seconds, _ = _ingest(d, tmp_path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert not rep.unexpected and rep.n_failed == 1 and "field limit" in rep.errors[0][1], (rep.errors, rep.skipped)
    assert grown_mb < 100 * 12, grown_mb  # a bounded multiple of the input


def _dicom_lengths_past_the_end(tmp_path):
    """Real files of pydicom-data made to lie about their lengths: truncated inside the pixel data, a pixel
    data length patched past the end, an encapsulated fragment length patched past the end, and an
    encapsulated file cut before its delimiter."""
    import struct

    import pydicom.data

    emri = Path(pydicom.data.get_testdata_file("emri_small.dcm")).read_bytes()  # native, explicit VR LE
    at = emri.rindex(b"\xe0\x7f\x10\x00OW")
    declared = struct.unpack_from("<I", emri, at + 8)[0]
    d = tmp_path / "in"
    d.mkdir()
    (d / "cut.dcm").write_bytes(emri[:at + 12 + 1000])  # 1000 bytes of pixel data left
    (d / "patched.dcm").write_bytes(emri[:at + 8] + struct.pack("<I", declared + 4096) + emri[at + 12:])
    jpeg = Path(pydicom.data.get_testdata_file("MR2_J2KI.dcm")).read_bytes()  # encapsulated JPEG 2000
    item = jpeg.index(b"\xfe\xff\x00\xe0", jpeg.rindex(b"\xe0\x7f\x10\x00"))  # the offset table
    first = item + 8 + struct.unpack_from("<I", jpeg, item + 4)[0]  # the first fragment
    (d / "fragment.dcm").write_bytes(jpeg[:first + 4] + struct.pack("<I", 10**6) + jpeg[first + 8:])
    (d / "no-delimiter.dcm").write_bytes(jpeg[:-200])
    (d / "good.dcm").write_bytes(emri)
    return d, declared


def test_dicom_lengths_past_the_end_of_the_file_are_reported(tmp_path):
    d, declared = _dicom_lengths_past_the_end(tmp_path)
    rep, seconds, items = _ingest(d, tmp_path)
    reasons = {Path(p).name: r for p, r in rep.errors}
    assert rep.n_ok == 1 and rep.n_failed == 4 and not rep.unexpected, (rep.errors, rep.unexpected)
    assert set(reasons) == {"cut.dcm", "patched.dcm", "fragment.dcm", "no-delimiter.dcm"}, reasons
    assert reasons["cut.dcm"] == (f"element (7FE0,0010) PixelData declares {declared} bytes but only 1000 are "
                                  "left in the file (truncated, or a wrong length)"), reasons
    assert f"declares {declared + 4096} bytes but only {declared} are left" in reasons["patched.dcm"], reasons
    assert "pixel data item 1 declares 1000000 bytes but only" in reasons["fragment.dcm"], reasons
    assert "before its delimiter (FFFE,E0DD): truncated" in reasons["no-delimiter.dcm"], reasons
    assert list(items["source_path"].map(lambda p: Path(p).name)) == ["good.dcm"]
