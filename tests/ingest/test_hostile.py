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

from .test_report import _tgz

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


# A child process: ingest a small report first (imports, DuckDB), then the file; prints the peak RSS
# growth of the second ingest (resource.getrusage, the process's high-water mark) and the report.
_MEASURE = r"""
import json, resource, sys, tempfile
from pathlib import Path
from medweave.ingest import ingest
from medweave.store import Store
def run(p):
    with Store(Path(tempfile.mkdtemp()) / "s", write=True) as st:
        return ingest([Path(p)], st, progress=False, workers=1)
run(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rep = run(sys.argv[1])
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({"grown_mb": grown, "ok": rep.n_ok, "failed": rep.n_failed, "errors": rep.errors,
                  "unexpected": [str(u) for u in rep.unexpected]}))
"""


def _openi_xml(findings: bytes) -> bytes:
    return OPENI.format(doctype="", findings="@@").encode().replace(b"@@", findings)


def _measure(path: Path, tmp_path: Path) -> dict:
    import json
    import subprocess
    import sys

    small = tmp_path / "small.xml"
    small.write_bytes(_openi_xml(b"Clear lungs."))
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(small)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_thousandfold_tar_bomb_is_refused_from_its_headers(tmp_path):
    """A 50 MB Open-i report gzipped into ~50 KB (1,000x; it took 1.2 GB and minutes before): refused
    from the member headers before anything is expanded, naming the archive, the member and the limit;
    the peak RSS of the run grows by under 64 MB. A member over OPENI_MAX_REPORT_BYTES in an archive of
    ordinary ratio, and a loose .xml file over it, are refused by size without being parsed."""
    from medweave.ingest.adapters.report import (OPENI_MAX_EXPANSION_RATIO, OPENI_MAX_REPORT_BYTES)

    bomb = _tgz(tmp_path / "bomb.tgz", {"ecgen-radiology/1.xml": _openi_xml(b"Clear lungs."),
                                        "ecgen-radiology/9.xml": _openi_xml(b"a" * (50 * 2**20))})
    ratio = 50 * 2**20 / bomb.stat().st_size
    assert ratio > 900, ratio
    got = _measure(bomb, tmp_path)
    assert got["ok"] == 1 and got["failed"] == 1 and not got["unexpected"], got
    reason = got["errors"][0][1]
    assert reason.startswith("archive bomb.tgz, member ecgen-radiology/9.xml: the archive expands to "), reason
    assert f"over {OPENI_MAX_EXPANSION_RATIO} times the archive's {bomb.stat().st_size:,} bytes" in reason, reason
    assert got["grown_mb"] < 64, got

    d = tmp_path / "big"
    d.mkdir()
    over = _openi_xml(os.urandom(OPENI_MAX_REPORT_BYTES // 2 + 1024).hex().encode())  # gzip: about 2x
    _tgz(d / "over.tgz", {"ecgen-radiology/2.xml": over, "ecgen-radiology/3.xml": _openi_xml(b"Clear lungs.")})
    (d / "over.xml").write_bytes(over)
    rep, _, items = _ingest(d, tmp_path)
    reasons = sorted(r for _, r in rep.errors)
    assert rep.n_ok == 1 and rep.n_failed == 2 and not rep.unexpected, rep.errors
    assert reasons == [f"archive over.tgz, member ecgen-radiology/2.xml: expands to {len(over):,} bytes, over the limit "
                       f"of {OPENI_MAX_REPORT_BYTES:,} bytes for one report (OPENI_MAX_REPORT_BYTES)",
                       f"over.xml: {len(over):,} bytes, over the limit of {OPENI_MAX_REPORT_BYTES:,} bytes for "
                       "one report (OPENI_MAX_REPORT_BYTES)"], reasons


@pytest.mark.slow
def test_a_large_openi_report_takes_a_bounded_multiple_of_its_size(tmp_path):
    """A 5 MB report of varied words (an archive of ordinary ratio, about 7x) is ingested; the run's peak
    RSS grows by at most 25 times the report's expanded size (measured 18.2x here and 17.5x at 10 MB:
    the parse streams, each element dropped once read; most of it is the store's commit of the text)."""
    import random

    rng = random.Random(0)
    words = "the lungs are clear no acute disease heart size normal pleural effusion opacity right left".split()
    text = " ".join(rng.choice(words) for _ in range(900_000)).encode()[: 5 * 2**20]
    data = _openi_xml(text)
    archive = _tgz(tmp_path / "large.tgz", {"ecgen-radiology/7.xml": data})
    assert len(data) / archive.stat().st_size < 10
    got = _measure(archive, tmp_path)
    assert got["ok"] == 1 and got["failed"] == 0 and not got["unexpected"], got
    assert got["grown_mb"] <= 25 * len(data) / 2**20, got


def test_a_gzipped_nifti_that_expands_past_its_header_is_refused(tmp_path):
    """nibabel's example volume gzipped with 100 MB of zeros after its voxels (about 1,000x): expanded
    only as far as its header declares plus GZIP_SLACK_BYTES, then refused, naming the sizes; the same
    volume gzipped as it is ingests."""
    import gzip

    import nibabel as nib
    import numpy as np

    from medweave.ingest.adapters.nifti import GZIP_SLACK_BYTES

    volume = nib.Nifti1Image(np.arange(64 * 64 * 64, dtype=np.int16).reshape(64, 64, 64), np.eye(4)).to_bytes()
    d = tmp_path / "in"
    d.mkdir()
    (d / "P1_bomb.nii.gz").write_bytes(gzip.compress(volume + bytes(100 * 2**20), compresslevel=9, mtime=0))
    (d / "P2_good.nii.gz").write_bytes(gzip.compress(volume, mtime=0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rep, _, items = _ingest(d, tmp_path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert rep.n_ok == 1 and rep.n_failed == 1 and not rep.unexpected, rep.errors
    reason = rep.errors[0][1]
    assert reason.startswith(f"P1_bomb.nii.gz: the gzip stream expands past {len(volume) + GZIP_SLACK_BYTES:,} "
                             f"bytes, the {len(volume):,} its header declares"), reason
    assert "not expanded further" in reason and grown_mb < 50, (reason, grown_mb)
