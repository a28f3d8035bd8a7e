"""DICOM de-identification on data sets built here: what is removed, emptied, shifted, remapped, kept."""

from __future__ import annotations

import datetime as dt

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from medweave.store.deid import Deidentifier
from medweave.store.deid_dicom import deidentify_dataset, parse_age

DEID = Deidentifier(b"\x07" * 32)


def sample() -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Quill^Henrietta", "MRN4471", "19300301"
    ds.PatientSex, ds.PatientAge, ds.OtherPatientIDs = "F", "095Y", ["ALT-99812"]
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.3.4.5.6.7"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4.5", "1.2.3.4.5.6"
    ds.StudyDate, ds.AcquisitionDateTime = "20200115", "20200115101500.25"
    ds.StudyDescription = "CT chest for Henrietta Quill"
    ds.Manufacturer, ds.BodyPartExamined = "Quill Imaging Ltd", "QUILL"
    ds.InstitutionName, ds.AccessionNumber = "St Elsewhere", "ACC77123"
    ds.ImageComments = "call 555-123-4567"
    ds.add_new(0x00091010, "LO", "private")
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, "1.2.3.4.5.6.7"
    ref.PerformingPhysicianName = "Kildare^James"
    ref.add_new(0x00191001, "LO", "private in a sequence")
    ref.ContentDate = ["20200116", "not-a-date"]
    ds.ReferencedImageSequence = Sequence([ref])
    return ds


def test_identifiers_go_dates_shift_uids_remap_and_links_survive():
    ds, pid, facts = deidentify_dataset(sample(), DEID, "default")
    ref = ds.ReferencedImageSequence[0]
    assert pid == DEID.patient_id("default", "MRN4471") and str(ds.PatientName) == ds.PatientID == pid
    assert ds.PatientBirthDate == "" and ds.AccessionNumber == ""
    assert "OtherPatientIDs" not in ds and "InstitutionName" not in ds and "ImageComments" not in ds
    assert "PerformingPhysicianName" not in ref and not any(e.tag.is_private for e in ds.iterall())  # X in PS3.15
    offset = DEID.date_offset_days(pid)
    shifted = dt.date(2020, 1, 15) + dt.timedelta(days=offset)
    assert ds.StudyDate == shifted.strftime("%Y%m%d") == facts.study_date.strftime("%Y%m%d")
    assert ds.AcquisitionDateTime == shifted.strftime("%Y%m%d") + "101500.25"
    assert list(ref.ContentDate) == [(shifted + dt.timedelta(days=1)).strftime("%Y%m%d"), ""]
    assert ds.SOPClassUID == CTImageStorage == ref.ReferencedSOPClassUID  # well-known: kept
    assert ds.SOPInstanceUID == ref.ReferencedSOPInstanceUID == DEID.uid("1.2.3.4.5.6.7") != "1.2.3.4.5.6.7"
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientAge == "090Y" and facts.age == 90
    assert (facts.sex, facts.study_key) == ("F", "1.2.3.4.5")


def test_final_sweep_and_scrubbed_descriptions():
    ds, _, facts = deidentify_dataset(sample(), DEID, "default")
    assert ds.Manufacturer == "[ID] Imaging Ltd" and ds.BodyPartExamined == ""
    assert "Quill" not in ds.StudyDescription and "Henrietta" not in facts.study_description
    assert {"Quill", "Henrietta", "MRN4471", "ALT-99812"} <= set(facts.known)


def test_missing_id_uses_the_name_and_keep_phi_changes_nothing():
    ds = sample()
    ds.PatientID = ""
    _, pid, _ = deidentify_dataset(ds, DEID, "site-a")
    assert pid == DEID.patient_id("site-a", "Quill^Henrietta")
    keep = Deidentifier(b"\x07" * 32, keep_phi=True)
    kept, pid, facts = deidentify_dataset(sample(), keep, "default")
    assert pid == "MRN4471" and str(kept.PatientName) == "Quill^Henrietta" and kept.StudyDate == "20200115"
    assert "InstitutionName" in kept and facts.study_date == dt.date(2020, 1, 15)


def test_file_meta_instance_uid_is_remapped_and_age_strings_parse():
    ds = sample()
    ds.file_meta = Dataset()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "WARD7_CT"
    ds, _, _ = deidentify_dataset(ds, DEID, "default")
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert parse_age("006M") == 0.5 and parse_age("045Y") == 45 and parse_age("bad") is None


def test_remembered_outcomes_give_the_bytes_a_fresh_deidentifier_gives():
    """Element outcomes are shared between files of one context (patient, identifiers, options): a
    shared Deidentifier over interleaved files of several patients, twice, writes exactly what a
    fresh one writes for each file alone, and a patient's identifiers never reach another's file."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from medweave.ingest.adapters.dicom import read_dataset
    from medweave.store.deid_dicom import deidentify, write_patched

    def as_file(ds: Dataset) -> bytes:
        import io

        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    template = dcmread(get_testdata_file("CT_small.dcm"))
    files = []
    for patient, (name, mrn) in enumerate([("Quill^Henrietta", "MRN4471"), ("Okafor^Ada", "MRN1000"),
                                          ("Quill^Henrietta", "MRN4472")]):
        for z in range(3):
            ds = template.copy()
            ds.PatientName, ds.PatientID = name, mrn
            ds.StudyDescription = f"CT chest {name.split('^')[0]}"  # a text the sweep edits per patient
            ds.InstitutionName = "Riverside"
            ds.SOPInstanceUID = f"1.2.3.{patient}.{z}"
            ds.InstanceNumber = z + 1
            files.append((mrn, name, as_file(ds)))

    def deid_bytes(deid: Deidentifier, data: bytes) -> bytes:
        ds, spans = read_dataset(data)
        return write_patched(deidentify(ds, deid, "default"), data, spans)

    expected = [deid_bytes(Deidentifier(b"\x07" * 32), data) for _, _, data in files]
    shared = Deidentifier(b"\x07" * 32)
    order = [0, 3, 6, 1, 4, 7, 2, 5, 8]
    for _ in range(2):
        for i in order:
            got = deid_bytes(shared, files[i][2])
            assert got == expected[i], f"file {i} differs when outcomes are remembered"
            for mrn, name, _ in files:
                assert mrn.encode() not in got and name.split("^")[0].encode() not in got
    assert shared.__dict__.get("_dicom_memos"), "nothing was remembered: the test tests nothing"


def test_new_dataset_is_the_data_set_pydicom_builds():
    """``new_dataset`` copies a fresh data set's state instead of running pydicom's constructor: the
    fast path is taken with this pydicom, and what it builds equals pydicom's own, container by
    container, none shared between two data sets."""
    from pydicom.dataset import FileMetaDataset

    from medweave.store.deid_dicom import _FRESH_STATE, new_dataset

    assert all(state is not None for state in _FRESH_STATE.values())  # pydicom's state is as expected
    for cls in (Dataset, FileMetaDataset):
        ours, theirs = new_dataset(cls, {}), cls({})
        assert type(ours) is cls and ours.__dict__ == theirs.__dict__
        other = new_dataset(cls)
        for name in ("_dict", "_private_blocks", "_pixel_id", "_pixel_array_opts"):
            assert getattr(ours, name) is not getattr(other, name)
    ds = new_dataset(Dataset, {})
    ds.PatientName = "Doe^Jane"
    assert ds.PatientName == "Doe^Jane" and "PatientName" not in new_dataset(Dataset)


def test_fast_get_memo_hands_out_fresh_lists_and_follows_the_bytes():
    """Decoded values are memoised by tag, VR and bytes: a changed value reads as changed, and a
    multi-valued one comes back as a new list each time (changing it changes nothing remembered)."""
    from pydicom.dataelem import RawDataElement

    from medweave.store.deid_dicom import _tag, fast_get

    def raw(keyword, vr, value):
        tag = _tag(keyword)
        return tag, RawDataElement(tag, vr, len(value), value, 0, False, True)

    ds = Dataset()
    tag, elem = raw("ImageType", "CS", b"ORIGINAL\\PRIMARY\\AXIAL ")
    ds._dict[tag] = elem
    first = fast_get(ds, "ImageType")
    assert first == ["ORIGINAL", "PRIMARY", "AXIAL"]
    first.append("CHANGED")
    assert fast_get(ds, "ImageType") == ["ORIGINAL", "PRIMARY", "AXIAL"]
    tag, elem = raw("ImageType", "CS", b"DERIVED\\SECONDARY")
    ds._dict[tag] = elem
    assert fast_get(ds, "ImageType") == ["DERIVED", "SECONDARY"]
    tag, elem = raw("Rows", "US", b"\x80\x00")
    ds._dict[tag] = elem
    assert fast_get(ds, "Rows") == 128 == fast_get(ds, "Rows")
