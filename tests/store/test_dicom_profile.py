"""The PS3.15 Basic Application Level Confidentiality Profile, scored attribute by attribute.

The attribute table is the standard's (Table E.1-1, basic profile column, DICOM 2026c) as shipped by
the ``dicom-anonymizer`` package. One object is built holding *every* attribute of the table (each
with a value of its VR that names the patient), written as a real file, read, de-identified and
written by medweave's ingest path (byte patching), read back with pydicom, and each attribute is
checked against what the profile's action code says — with the options medweave applies (modified
dates, patient characteristics, clean descriptors / structured content / graphics), spelled out
here from the README's description, independently of the implementation's tables."""

from __future__ import annotations

import datetime as dt
import io

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from medweave.ingest.adapters.dicom import read_dataset
from medweave.store.deid import Deidentifier
from medweave.store.deid_dicom import deidentify, parse_keep_private, write_patched
from medweave.store.dicom_profile import basic_profile

DEID = Deidentifier(b"\x2a" * 32)
SURNAME, MRN = "Smithfield", "MRN-778812"
KEEP = {"PatientSex", "PatientAge", "PatientSize", "PatientWeight"}  # retain patient characteristics (part)
CLEANED = {"StudyDescription", "SeriesDescription", "ProtocolName", "PerformedProcedureStepDescription",
           "RequestedProcedureDescription"}  # clean descriptors (part)
BINARY = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}


def _vr(tag: int) -> str | None:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None  # retired attributes pydicom's dictionary no longer lists
    return vr.split(" or ")[0]


def _value(tag: int, vr: str, n: int):
    uid = f"1.2.826.0.1.3680043.10.999.{n}"
    return {
        "AE": f"AE{n}", "AS": "045Y", "AT": 0x00100010, "CS": f"CODE{n}", "DA": "20200115", "DS": "1.5",
        "DT": "20200115101500", "FD": 1.5, "FL": 1.5, "IS": "7", "LO": f"lo {SURNAME} {n}",
        "LT": f"text about {SURNAME}", "ST": f"text about {SURNAME}", "UT": f"text about {SURNAME}",
        "UC": f"uc {SURNAME}", "PN": f"{SURNAME}^Ida^{n}", "SH": f"SH{n}", "SL": 1, "SS": 1, "UL": 1,
        "US": 1, "SV": 1, "UV": 1, "TM": "101500", "UI": uid, "UR": f"http://example.org/{SURNAME}",
    }.get(vr, b"\x01\x02")


def _item(n: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.998.{n}"
    item.CodeMeaning = f"inner {SURNAME}"
    return item


def every_attribute_file() -> tuple[bytes, dict[int, object]]:
    """A CT object holding every attribute of the profile table; (file bytes, original values)."""
    by_tag, _ = basic_profile()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "WARD7_CT"
    originals = {}
    for n, tag in enumerate(sorted(by_tag)):
        vr = _vr(tag)
        if vr is None or tag >> 16 in (0x0000, 0x0002):  # command and file meta elements: not in a data set
            continue
        value = Sequence([_item(n)]) if vr == "SQ" else _value(tag, vr, n)
        ds.add_new(tag, vr, value)
        originals[tag] = value
    ds.PatientName, ds.PatientID = f"{SURNAME}^Ida", MRN
    originals[0x00100010], originals[0x00100020] = ds.PatientName, MRN
    ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)  # overlay data (a masked 60xx entry): X
    ds.add_new(0x60004000, "LT", f"overlay about {SURNAME}")  # overlay comments: X
    ds.add_new(0x50000005, "US", 2)  # curve dimensions (50xx): X
    ds.add_new(0x00091010, "LO", f"private note on {MRN}")
    ds.add_new(0x00190010, "LO", "ACME_SAFE")  # a private creator ...
    ds.add_new(0x00191020, "DS", "3.5")  # ... and its element 20, allow-listed below
    ds.add_new(0x00191021, "LO", f"private {SURNAME}")  # not allow-listed
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = b"\x01\x00\x02\x00\x03\x00\x04\x00"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), originals


@pytest.fixture(scope="module")
def scored():
    data, originals = every_attribute_file()
    ds, spans = read_dataset(data)
    assert spans is not None  # read by the fast reader: the byte-patching path is what is scored
    result = deidentify(ds, DEID, "default", parse_keep_private("ACME_SAFE:0019,xx20"))
    blob = write_patched(result, data, spans)
    return originals, pydicom.dcmread(io.BytesIO(blob)), blob, result


def _shifted(text: str) -> str:
    pid = DEID.patient_id("default", MRN)
    day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])) + dt.timedelta(days=DEID.date_offset_days(pid))
    return day.strftime("%Y%m%d") + text[8:]


def expected(tag: int, action: str, vr: str) -> str:
    """What the profile (with medweave's options) says becomes of an attribute."""
    keyword = keyword_for_tag(tag)
    if keyword in ("PatientName", "PatientID"):
        return "pseudonym"
    if keyword in KEEP:
        return "kept"
    if keyword in CLEANED:
        return "cleaned"
    if keyword == "PatientBirthDate":
        return "empty"  # medweave keeps the age instead (stricter than shifting)
    stays = "Z" in action or "D" in action
    if vr in ("DA", "DT") and action != "U":
        return "shifted" if stays else "removed"
    if vr == "TM":
        return "kept" if stays else "removed"
    if action == "U" or (vr == "UI" and action == "D"):
        return "new uid"
    if action == "X/Z/U*":
        return "sequence cleaned"
    if action in ("Z", "Z/D"):
        return "empty"
    if action == "D":
        return "sequence cleaned" if vr == "SQ" else "removed" if vr in BINARY else "dummy"  # binary: no dummy
    return "removed"  # X, X/Z, X/D, X/Z/D: removed (the first choice)


def test_every_attribute_of_the_profile_is_treated_as_the_profile_says(scored):
    originals, out, blob, result = scored
    by_tag, _ = basic_profile()
    pid = result.patient_id
    checked, wrong = 0, []
    for tag, original in originals.items():
        action, vr = by_tag[tag], _vr(tag)
        want = expected(tag, action, vr)
        elem = out.get(tag)
        value = None if elem is None else elem.value
        if want == "removed":
            ok = elem is None
        elif want == "pseudonym":
            ok = str(value) == pid
        elif want == "kept":
            ok = elem is not None and str(value) == str(original)
        elif want == "cleaned":
            ok = elem is not None and SURNAME not in str(value)
        elif want == "empty":
            ok = elem is not None and (value in ("", None, b"") or (vr == "SQ" and len(value) == 0))
        elif want == "shifted":
            ok = elem is not None and str(value) == _shifted(str(original)) != str(original)
        elif want == "new uid":
            ok = elem is not None and str(value).startswith("2.25.") and str(value) != str(original)
        elif want == "dummy":
            ok = elem is not None and str(value) not in ("", str(original)) and SURNAME not in str(value)
        else:  # sequence cleaned: kept, its UIDs replaced, its text swept
            item = value[0] if elem is not None and len(value) else None
            ok = (item is not None and item.ReferencedSOPInstanceUID.startswith("2.25.")
                  and item.ReferencedSOPClassUID == CTImageStorage and SURNAME not in str(item.CodeMeaning))
        checked += 1
        if not ok:
            wrong.append((keyword_for_tag(tag), action, vr, want, str(value)[:40]))
    assert checked >= 600, checked  # the table lists ~650 attributes; the rest are retired ones
    assert not wrong, f"{len(wrong)} attributes not as the profile says: {wrong[:10]}"


def test_nothing_identifying_left_anywhere_in_the_bytes(scored):
    originals, out, blob, _ = scored
    for secret in (SURNAME.encode(), MRN.encode(), b"WARD7_CT", b"20200115", b"1.2.826.0.1.3680043.10.999.",
                   b"1.2.826.0.1.3680043.10.998."):
        assert secret not in blob, secret
    assert not any(e.tag in (0x60003000, 0x60004000, 0x50000005) for e in out)  # overlays, curves: X


def test_private_attributes_go_unless_allow_listed(scored):
    _, out, _, _ = scored
    assert out[0x00191020].value == 3.5 and str(out[0x00190010].value) == "ACME_SAFE"
    assert 0x00091010 not in out and 0x00191021 not in out
    assert [e.tag for e in out.iterall() if e.tag.is_private] == [0x00190010, 0x00191020]


def test_the_object_says_how_it_was_deidentified(scored):
    _, out, _, _ = scored
    codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    assert {"113100", "113107", "113108", "113105"} <= codes
    assert out.PatientIdentityRemoved == "YES" and out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in out.file_meta
    assert out.file_meta.ImplementationVersionName == "MEDWEAVE_1"


def test_uids_are_replaced_consistently_within_a_study():
    """Two instances of one study, the second referring to the first: after de-identification they
    share the new study UID and the reference points at the first one's new instance UID."""
    def instance(n: int, ref: str | None = None) -> bytes:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.10.7.{n}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.7", f"1.2.826.0.1.3680043.10.7.9{n}"
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.7.55"
        ds.PatientName, ds.PatientID = f"{SURNAME}^Ida", MRN
        if ref:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CTImageStorage, ref
            ds.ReferencedImageSequence = Sequence([item])
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    out = []
    for data in (instance(1), instance(2, ref="1.2.826.0.1.3680043.10.7.1")):
        ds, spans = read_dataset(data)
        result = deidentify(ds, DEID, "default")
        out.append(pydicom.dcmread(io.BytesIO(write_patched(result, data, spans))))
    first, second = out
    assert first.StudyInstanceUID == second.StudyInstanceUID != "1.2.826.0.1.3680043.10.7"
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
