"""The phantom cohort: real files in real formats, deterministic per seed, with the effects and the
missingness its manifest promises actually present in the files."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medweave.demo import PhantomManifest, generate_phantom
from medweave.demo.phantom import ECG_FS, ECG_LEADS, ECG_SECONDS, IMAGE_SIZE, MISSINGNESS


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> PhantomManifest:
    """The demo-sized cohort (300 patients), generated once for the statistical checks."""
    return generate_phantom(tmp_path_factory.mktemp("phantom") / "out", n_patients=300, seed=0)


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    a = generate_phantom(tmp_path / "a", n_patients=20, seed=7)
    b = generate_phantom(tmp_path / "b", n_patients=20, seed=7)
    c = generate_phantom(tmp_path / "c", n_patients=20, seed=8)
    ha, hb, hc = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b"), file_hashes(tmp_path / "c")
    assert len(ha) > 40
    assert ha == hb
    assert a.to_dict() == b.to_dict()
    shared = set(ha) & set(hc)
    assert ha["data/tables/demographics.csv"] != hc["data/tables/demographics.csv"]
    changed = [k for k in shared if k.startswith("data/") and ha[k] != hc[k]]
    assert len(changed) == len([k for k in shared if k.startswith("data/")])
    assert a.to_dict() != c.to_dict()


def test_rejects_an_empty_cohort(tmp_path):
    with pytest.raises(ValueError, match="n_patients"):
        generate_phantom(tmp_path, n_patients=0)


# --- the manifest matches the folder -------------------------------------------------------------


def test_manifest_round_trips_and_lists_exactly_the_files_written(cohort):
    loaded = PhantomManifest.load(cohort.root)
    assert loaded.to_dict() == cohort.to_dict()
    assert loaded.root == cohort.root
    images = {p.name for p in cohort.path("images").glob("*.dcm")}
    reports = {p.name for p in cohort.path("reports").glob("*.txt")}
    ecgs = {p.name for p in cohort.path("signals").glob("*.hea")}
    assert images == {f"{p.patient_id}_{s.study}.dcm" for p in cohort.patients for s in p.studies if s.image}
    assert reports == {f"{p.patient_id}_{s.study}.txt" for p in cohort.patients for s in p.studies if s.report}
    assert ecgs == {f"{p.patient_id}.hea" for p in cohort.patients if p.ecg is not None}
    assert len(list(cohort.path("signals").glob("*.dat"))) == len(ecgs)
    for kind in ("labs", "vitals"):
        rows = Counter((r["patient_id"], r["code"]) for r in read_csv(cohort.path(kind)))
        assert rows == Counter({(p.patient_id, code): n for p in cohort.patients
                                for code, n in getattr(p, kind).items()})
    demo = read_csv(cohort.path("demographics"))
    assert [(r["patient_id"], int(r["disease"]), int(r["age"]), r["sex"]) for r in demo] == [
        (p.patient_id, p.disease, p.age, p.sex) for p in cohort.patients]
    assert cohort.observed["files"] == {"image": len(images), "text": len(reports), "signal": len(ecgs)}
    assert cohort.mapping.is_file() and cohort.mapping.suffix == ".toml"
    readme = (cohort.root / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "not real patients".lower() in readme.lower()


def test_ground_truth_and_effects_are_recorded(cohort):
    prevalence = np.mean([p.disease for p in cohort.patients])
    assert 0.27 < prevalence < 0.45
    assert 0.1 < np.mean([p.cardiomegaly for p in cohort.patients]) < 0.35
    assert {p.sex for p in cohort.patients} == {"F", "M"}
    assert all(18 <= p.age <= 95 for p in cohort.patients)
    assert any(len(p.studies) == 2 for p in cohort.patients)
    assert set(cohort.effects) == {"image", "text", "table", "signal"}
    assert cohort.effects["table"]["labs"]["WBC"]["delta"] > 0
    for p in cohort.patients:
        # a finding is drawn where the disease is, except for the radiographically occult share
        assert all((s.finding is not None) == bool(p.disease and not p.occult) for s in p.studies)
        assert not p.occult or p.disease
    sick = [p for p in cohort.patients if p.disease]
    rate = cohort.effects["image"]["occult_rate_if_disease"]
    assert abs(np.mean([p.occult for p in sick]) - rate) < 0.12


# --- the effects are in the files -----------------------------------------------------------------


def _disk(center_xy: list[float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    return (xx - center_xy[0]) ** 2 + (yy - center_xy[1]) ** 2 <= radius**2


def test_images_are_brighter_where_the_finding_is_drawn(cohort):
    import pydicom

    def pixels(pid: str, study: str) -> np.ndarray:
        return pydicom.dcmread(cohort.path("images") / f"{pid}_{study}.dcm").pixel_array.astype(float)

    healthy = [pixels(p.patient_id, s.study) for p in cohort.patients if not p.disease
               for s in p.studies if s.image][:60]
    diffs = []
    for p in cohort.patients:
        for s in p.studies:
            if s.image and s.finding is not None:
                region = _disk(s.finding["center_xy_px"], s.finding["radius_px"])
                reference = np.mean([h[region].mean() for h in healthy])
                diffs.append(pixels(p.patient_id, s.study)[region].mean() - reference)
    diffs = np.array(diffs)
    assert len(diffs) > 80
    assert np.mean(diffs > 0) > 0.95
    assert diffs.mean() > 50


def test_cardiomegaly_widens_the_heart_shadow(cohort):
    import pydicom

    band = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    band[72:92, 84:92] = True  # just beyond a normal heart's left border, inside a large one
    means = {0: [], 1: []}
    for p in cohort.patients:
        s = p.studies[0]
        if s.image and s.view == "PA" and not p.disease:
            img = pydicom.dcmread(cohort.path("images") / f"{p.patient_id}_s1.dcm").pixel_array
            means[p.cardiomegaly].append(img[band].mean())
    assert len(means[1]) > 10
    assert np.mean(means[1]) > np.mean(means[0]) + 150


def test_labs_and_vitals_shift_with_the_label_as_configured(cohort):
    disease = {p.patient_id: p.disease for p in cohort.patients}
    values: dict[tuple[str, int], list[float]] = {}
    for kind in ("labs", "vitals"):
        for r in read_csv(cohort.path(kind)):
            values.setdefault((r["code"], disease[r["patient_id"]]), []).append(float(r["value"]))
    diff = {code: np.mean(values[(code, 1)]) - np.mean(values[(code, 0)]) for code, _ in values}
    for kind in ("labs", "vitals"):
        for code, effect in cohort.effects["table"][kind].items():
            if effect["delta"] > 0:
                assert diff[code] > 0.5 * effect["delta"], code
            elif effect["delta"] < 0:
                assert diff[code] < 0.5 * effect["delta"], code
            else:
                assert abs(diff[code]) < effect["sd"] / 2, code


def _rates(present: dict[str, bool], disease: dict[str, int]) -> dict[str, float]:
    return {str(c): np.mean([v for k, v in present.items() if disease[k] == c]) for c in (0, 1)}


def test_missingness_is_not_at_random_as_configured(cohort):
    disease = {p.patient_id: p.disease for p in cohort.patients}
    ecg_files = {p.stem for p in cohort.path("signals").glob("*.hea")}
    ecg = _rates({pid: pid in ecg_files for pid in disease}, disease)
    lab_rows = {(r["patient_id"], r["code"]) for r in read_csv(cohort.path("labs"))}
    lactate = _rates({pid: (pid, "LACTATE") in lab_rows for pid in disease}, disease)
    wbc = _rates({pid: (pid, "WBC") in lab_rows for pid in disease}, disease)
    study_disease = {f"{p.patient_id}_{s.study}": p.disease for p in cohort.patients for s in p.studies}
    report_files = {p.stem for p in cohort.path("reports").glob("*.txt")}
    image_files = {p.stem for p in cohort.path("images").glob("*.dcm")}
    reports = _rates({k: k in report_files for k in study_disease}, study_disease)
    images = _rates({k: k in image_files for k in study_disease}, study_disease)

    for observed, configured in ((ecg, MISSINGNESS["signal"]), (reports, MISSINGNESS["text"]),
                                 (lactate, MISSINGNESS["labs"]["LACTATE"]), (wbc, MISSINGNESS["labs"]["WBC"])):
        assert configured["mechanism"] == "MNAR"
        for c in ("0", "1"):
            assert abs(observed[c] - configured["p_present"][c]) < 0.12
    assert ecg["1"] - ecg["0"] > 0.25  # sicker: more ECGs
    assert reports["1"] - reports["0"] > 0.2  # healthy: fewer reports
    assert wbc["0"] - wbc["1"] > 0.1  # sicker: fewer routine labs
    assert abs(images["1"] - images["0"]) < 0.08  # images: MCAR
    assert cohort.observed["p_present"]["signal"] == pytest.approx(ecg, abs=1e-3)


def test_reports_say_what_the_image_shows(cohort):
    for p in cohort.patients:
        for s in p.studies:
            if not s.report:
                continue
            text = (cohort.path("reports") / f"{p.patient_id}_{s.study}.txt").read_text()
            assert p.name in text.splitlines()[0] and p.birth_date in text  # something to scrub
            body = text.split("FINDINGS:", 1)[1].lower()
            if s.report_wording == "positive":
                assert "opacity" in body or "consolidation" in body
                assert s.finding["side"] in body
                assert "no evidence of pneumonia" not in body
            elif s.report_wording == "hedged":
                assert "cannot exclude" in body
            else:
                assert "opacity" not in body and "pneumonia" not in body.replace("no evidence of pneumonia", "")
            assert ("enlarged" in body or "cardiomegaly" in body) == bool(p.cardiomegaly)


# --- every file reads back with the standard libraries ---------------------------------------------


def test_every_dicom_reads_back_as_a_chest_radiograph(cohort):
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    truth = {f"{p.patient_id}_{s.study}": (p, s) for p in cohort.patients for s in p.studies}
    uids = set()
    for path in sorted(cohort.path("images").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        p, s = truth[path.stem]
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1" and ds.Modality == "CR"
        assert ds.PatientID == p.patient_id
        assert str(ds.PatientName) == "^".join(reversed(p.name.split(" ")))
        assert ds.PatientSex == p.sex and ds.StudyDate == s.date.replace("-", "")
        assert ds.ViewPosition == s.view and ds.BodyPartExamined == "CHEST"
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert [float(v) for v in ds.PixelSpacing] == [2.8, 2.8]
        arr = ds.pixel_array
        assert arr.shape == (IMAGE_SIZE, IMAGE_SIZE) and arr.dtype == np.uint16 and arr.max() < 4096
        uids |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
    assert len(uids) == 3 * len(truth.keys() & {p.stem for p in cohort.path("images").glob("*.dcm")})


def _heart_rate(lead: np.ndarray) -> float:
    """Beats per minute from R peaks: local maxima above half the tallest deflection."""
    threshold = 0.5 * lead.max()
    peaks = [i for i in range(1, len(lead) - 1)
             if lead[i] > threshold and lead[i] >= lead[i - 1] and lead[i] > lead[i + 1]]
    beats = [peaks[0]] + [b for a, b in zip(peaks, peaks[1:]) if b - a > 0.25 * ECG_FS]
    return 60.0 * (len(beats) - 1) / ((beats[-1] - beats[0]) / ECG_FS)


def test_every_wfdb_record_reads_back_with_the_true_heart_rate(cohort):
    import wfdb

    by_id = {p.patient_id: p for p in cohort.patients}
    rates = {0: [], 1: []}
    for hea in sorted(cohort.path("signals").glob("*.hea")):
        record = wfdb.rdrecord(str(hea.with_suffix("")))
        p = by_id[hea.stem]
        assert record.fs == ECG_FS and record.sig_len == ECG_FS * ECG_SECONDS
        assert record.sig_name == list(ECG_LEADS) and record.units == ["mV"] * len(ECG_LEADS)
        assert f"age: {p.age}" in record.comments and f"sex: {p.sex}" in record.comments
        hr = _heart_rate(record.p_signal[:, ECG_LEADS.index("II")])
        assert hr == pytest.approx(p.ecg["heart_rate_bpm"], rel=0.12)
        rates[p.disease].append(hr)
    assert np.mean(rates[1]) > np.mean(rates[0]) + 3


# --- the phantom ingests cleanly -------------------------------------------------------------------


def test_phantom_ingests_into_a_store_with_the_counts_of_the_manifest(tmp_path):
    for module in ("dicom", "table", "wfdb", "report"):
        pytest.importorskip(f"medweave.ingest.adapters.{module}")
    from medweave.ingest import ingest
    from medweave.store.catalog import Store

    m = generate_phantom(tmp_path / "phantom", n_patients=30, seed=1)
    with Store(tmp_path / "s", write=True) as store:
        report = ingest([m.path("data")], store, options={"mapping": str(m.mapping)}, progress=False)
        assert report.errors == [] and report.ok
        stats = store.stats()
    expected = {"image": m.observed["files"]["image"], "text": m.observed["files"]["text"],
                "signal": m.observed["files"]["signal"], "table": sum(m.observed["table_rows"].values())}
    assert stats["items_per_modality"] == expected
    assert stats["patients"] == m.n_patients  # every adapter maps a file to the same patient


def test_a_smaller_picture_size_keeps_patients_findings_and_reports(tmp_path):
    import pydicom

    from medweave.demo.phantom import pixel_spacing_mm

    a = generate_phantom(tmp_path / "a", n_patients=12, seed=5)
    b = generate_phantom(tmp_path / "b", n_patients=12, seed=5, image_size=48)
    ha, hb = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    assert set(ha) == set(hb)
    assert all(ha[k] == hb[k] for k in ha if not k.endswith(".dcm") and k != "manifest.json")  # reports, tables, ECGs
    assert all(ha[k] != hb[k] for k in ha if k.endswith(".dcm"))
    assert "image_size" not in a.to_dict() and b.to_dict()["image_size"] == 48
    assert PhantomManifest.load(tmp_path / "b").image_size == 48
    for pa, pb in zip(a.patients, b.patients):
        for sa, sb in zip(pa.studies, pb.studies):
            if sa.finding:  # the same finding in cm, its pixel geometry at the new size
                assert sa.finding["diameter_cm"] == sb.finding["diameter_cm"]
                assert sb.finding["radius_px"] == pytest.approx(sa.finding["radius_px"] * 48 / IMAGE_SIZE, abs=0.01)
    dcm = next((tmp_path / "b" / "data" / "images").glob("*.dcm"))
    ds = pydicom.dcmread(dcm)
    assert ds.pixel_array.shape == (48, 48)
    assert float(ds.PixelSpacing[0]) == pytest.approx(pixel_spacing_mm(48)) and pixel_spacing_mm(48) > 7
    with pytest.raises(ValueError, match="image_size"):
        generate_phantom(tmp_path / "c", n_patients=2, image_size=8)
