"""The FHIR R4 adapter on hand-written resources modelled on the specification's examples
(Peter James Chalmers, MRN 12345, born 1974-12-25), ingested into a real store."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from medweave.ingest import IngestContext, IngestError, Unit, ingest
from medweave.ingest.adapters.fhir import FhirAdapter
from medweave.store.catalog import Store

DATA = Path(__file__).resolve().parents[1] / "data" / "fhir"

# Identifying strings present in the test files; none may be stored or reported.
PHI = [
    "Chalmers", "Peter", "James", "Jim", "Windsor", "Marie", "Bénédicte", "Marché",
    "Erewhon", "PleasantVille", "1974-12-25", "25/12/1974", "1981-06-14", "14/06/1981",
    "5555 6473", "3410 5613", "998327", "867-5309", "pat-67890",
]
PHI_NUMBERS = ["12345", "67890", "3999"]  # matched as whole numbers


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store", write=True)
    yield s
    s.close()


def _ingest(store: Store, *names: str, **options) -> object:
    paths = [DATA / n for n in names] if names else [DATA]
    return ingest(paths, store, progress=False, options=options)


def _items(store: Store, source: str | None = None):
    df = store.items("source_path LIKE ?", [f"%{source}"]) if source else store.items()
    for col in ("meta", "labels"):
        df[col] = df[col].map(lambda m: json.loads(m) if isinstance(m, str) else {})
    return df


def _one(df, **where):
    rows = df
    for col, value in where.items():
        rows = rows[rows[col] == value]
    assert len(rows) == 1, f"expected one item with {where}, found {len(rows)}"
    return rows.iloc[0]


def _leaks(data: str | bytes) -> list[str]:
    """The identifying strings found in ``data``."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    found = [s for s in PHI if s.lower() in text.lower()]
    return found + [n for n in PHI_NUMBERS if re.search(rf"(?<![\da-fA-F]){n}(?![\da-fA-F])", text)]  # not inside hex hashes


# --- sniffing ------------------------------------------------------------------------------------

def test_sniff_claims_fhir_objects_but_not_other_json():
    a = FhirAdapter()
    bundle = (DATA / "bundle-example.json").read_bytes()[:4096]
    ndjson = (DATA / "export-observations.ndjson").read_bytes()[:4096]
    assert a.sniff(Path("b.json"), bundle) >= 0.9
    assert a.sniff(Path("Observation.ndjson"), ndjson) >= 0.9
    assert a.sniff(Path("b.json"), b"\xef\xbb\xbf\n  " + bundle) >= 0.9
    vqa = b'[{"qid": 1, "image_name": "synpic1.jpg", "question": "Is there a resourceType?"}]'
    assert a.sniff(Path("trainset.json"), vqa) == 0.0
    assert a.sniff(Path("config.json"), b'{"name": "x", "values": [1, 2]}') == 0.0
    assert a.sniff(Path("notes.txt"), bundle) == 0.0


# --- what each resource becomes ------------------------------------------------------------------

def test_every_supported_resource_type_becomes_items(store):
    report = _ingest(store, "bundle-example.json")
    assert report.ok, report.errors
    df = _items(store)
    # Patient 1, weight 1, glucose 2, blood pressure 2 components, Condition, ImagingStudy,
    # DiagnosticReport, Encounter 1 each; the Organization is ignored.
    assert len(df) == 10
    assert df["patient_id"].nunique() == 1
    assert set(df["format"]) == {"fhir"}

    patient = _one(df, code="demographics")
    assert patient["modality"] == "table" and patient["meta"]["gender"] == "male"
    p = store.patients().iloc[0]
    assert p["sex"] == "M" and json.loads(p["attrs"]) == {"deceased": False}

    weight = _one(df, code="http://loinc.org|29463-7")
    assert (weight["modality"], weight["value_num"], weight["unit"]) == ("table", 185.0, "lbs")
    assert weight["meta"]["category"] == ["http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"]
    assert weight["meta"]["display"] == "Body Weight" and weight["meta"]["status"] == "final"

    glucose = _one(df, code="http://loinc.org|15074-8", value_num=6.3)
    assert glucose["unit"] == "mmol/l"
    assert glucose["meta"]["interpretation"] == ["http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation|H"]
    assert glucose["meta"]["reference_range"] == [{"low": 3.1, "high": 6.2, "unit": "mmol/l"}]
    assert glucose["age"] == pytest.approx((dt.date(2013, 4, 2) - dt.date(1974, 12, 25)).days / 365.25, abs=0.01)

    systolic = _one(df, code="http://loinc.org|8480-6")
    diastolic = _one(df, code="http://loinc.org|8462-4")
    assert (systolic["value_num"], diastolic["value_num"]) == (107.0, 60.0)
    assert systolic["meta"]["panel"] == diastolic["meta"]["panel"] == "http://loinc.org|85354-9"
    assert systolic["time"] == diastolic["time"]
    assert not (df["code"] == "http://loinc.org|85354-9").any()  # the panel has no value of its own

    condition = _one(df, code="http://snomed.info/sct|39065001")
    assert (condition["modality"], condition["value_text"]) == ("table", "active")
    assert condition["labels"] == {"condition:http://snomed.info/sct|39065001": 1}
    assert condition["meta"]["severity"] == "http://snomed.info/sct|24484000"

    encounter = _one(df, code="http://terminology.hl7.org/CodeSystem/v3-ActCode|IMP")
    assert encounter["value_text"] == "finished"
    assert encounter["meta"]["duration_hours"] == 209.0  # 17 Jan 16:00 -> 26 Jan 09:00
    assert dt.datetime.fromisoformat(encounter["meta"]["period_end"]) - encounter["time"] == dt.timedelta(hours=209)


def test_imaging_study_and_its_report_share_a_study(store):
    _ingest(store, "bundle-example.json")
    df = _items(store)
    imaging = _one(df, code="imaging-study")
    report = _one(df, modality="text")
    assert imaging["study_id"] and report["study_id"] == imaging["study_id"]
    assert imaging["dicom_modality"] == "CT" and imaging["body_part"] == "Upper Trunk Structure"
    (series,) = imaging["meta"]["series"]
    assert series["modality"] == "CT" and series["n_instances"] == 1
    assert series["uid"].startswith("2.25.") and "2588828330" not in series["uid"]
    study = store.studies().set_index("study_id").loc[imaging["study_id"]]
    assert study["study_date"].date() == imaging["time"].date()
    assert study["description"].startswith("CT Chest for ")

    text = store.read_blob(report["blob"]).decode("utf-8")
    assert text == report["text"]
    assert "Small left pleural effusion" in text and "mild dyspnoea" in text  # conclusion + decoded form
    assert report["meta"]["attachments_skipped"] == ["application/pdf"]
    assert report["code"] == "http://loinc.org|24627-2"


# --- de-identification ---------------------------------------------------------------------------

def test_no_identifier_is_stored_or_reported(store):
    report = _ingest(store)
    assert report.n_items_added > 0 and report.n_failed == 2 and report.n_not_data == 1
    df = _items(store)
    for rel in df["blob"].dropna():
        assert _leaks(store.read_blob(rel)) == [], rel
    tables = {name: store.con.execute(f"SELECT * FROM {name}").df().to_csv()
              for name in ("items", "patients", "studies", "errors")}
    for name, dump in tables.items():
        assert _leaks(dump) == [], name
    assert _leaks(" ".join(reason for _, reason in report.errors)) == []
    store.close()
    catalog = b"".join(f.read_bytes() for f in store.root.glob("catalog.duckdb*"))
    assert b"Burn of ear" in catalog  # stored text is greppable in the file, so the next check means something
    assert _leaks(catalog) == []


def test_dates_are_shifted_and_intervals_kept(store):
    _ingest(store, "bundle-example.json")
    glucose = _items(store).query("code == 'http://loinc.org|15074-8'").sort_values("time")
    first, second = glucose["time"].tolist()
    assert second - first == dt.timedelta(days=3)
    raw_first = dt.datetime(2013, 4, 2, 8, 30, 10)  # 09:30:10+01:00 in UTC
    offset = first - raw_first
    assert offset != dt.timedelta(0) and offset.total_seconds() % 86400 == 0
    weight = _one(_items(store), code="http://loinc.org|29463-7")
    assert weight["time"] - dt.datetime(2016, 3, 28) == offset  # one offset for the whole patient


def test_same_patient_gets_the_same_pseudonym_across_files(store):
    _ingest(store, "patient-example.json", "bundle-example.json", "observation-bp-reference.json")
    df = _items(store)
    assert df["patient_id"].nunique() == 1
    later = _one(df, source_key="resource:Observation")
    assert later["meta"]["time_precision"] == "month"  # "2013-04"
    assert len(store.patients()) == 1


def test_bulk_export_links_patients_by_logical_id_when_asked(store, tmp_path):
    report = _ingest(store, "patient-example.json", "export-observations.ndjson", fhir_patient_key="id")
    assert report.ok, report.errors
    df = _items(store)
    exported = _items(store, "export-observations.ndjson")
    # entered-in-error and the Group-subject observation are skipped
    assert sorted(exported["code"]) == ["http://loinc.org|72166-2", "http://loinc.org|8867-4"]
    assert _one(exported, code="http://loinc.org|72166-2")["value_text"] == "Ex-smoker"
    assert df["patient_id"].nunique() == 1
    with Store(tmp_path / "by-mrn", write=True) as other:  # default: the Patient is keyed by its MRN
        _ingest(other, "patient-example.json", "export-observations.ndjson")
        assert other.items()["patient_id"].nunique() == 2


# --- errors and idempotence ----------------------------------------------------------------------

def test_invalid_resources_are_reported_and_the_batch_goes_on(store):
    report = _ingest(store)
    reasons = {Path(p).name: r for p, r in report.errors + report.skipped}
    assert set(reasons) == {"invalid-observation.json", "invalid-patient.json", "no-supported.json"}
    assert [Path(p).name for p, _ in report.skipped] == ["no-supported.json"], "no patient data: skipped, not failed"
    assert reasons["invalid-observation.json"].startswith("entry 1 (Observation 'bad-glucose'): invalid FHIR R4:")
    assert "valueQuantity.value" in reasons["invalid-observation.json"]
    assert reasons["invalid-patient.json"].startswith("resource (Patient): invalid FHIR R4: birthDate:")
    assert "found: Organization, Practitioner" in reasons["no-supported.json"]
    logged = store.con.execute("SELECT source_path, adapter, reason FROM errors").fetchall()
    assert {(Path(p).name, a) for p, a, _ in logged} == {(n, "fhir") for n in reasons}
    df = _items(store)
    stored_from = {Path(p).name for p in df["source_path"]}  # names without identifiers are stored as they are
    assert stored_from == {"bundle-example.json", "patient-example.json", "observation-bp-reference.json",
                           "export-observations.ndjson"}  # nothing of a rejected file, not even its Patient


def test_ingesting_twice_adds_nothing(store):
    first = _ingest(store)
    n = len(store.items())
    second = _ingest(store)
    assert second.n_items_added == 0 and second.n_skipped == first.n_ok == 4
    assert len(store.items()) == n


def test_reading_is_deterministic(store):
    ctx = IngestContext(store=store, deid=store.deid)
    unit = Unit(DATA / "bundle-example.json")
    once = [(i.content_hash(), i.source_key, i.study_id) for i in FhirAdapter().read(unit, ctx)]
    twice = [(i.content_hash(), i.source_key, i.study_id) for i in FhirAdapter().read(unit, ctx)]
    assert once == twice and len(once) == 10


@pytest.mark.parametrize("content, expected", [
    (b'{"resourceType": "Patient", "gender": ', "file: not valid JSON"),
    (b'{"resourceType": "Chalmers"}', "not a FHIR R4 resource type"),
    (b'{"resourceType": "HumanName", "family": "x"}', "not a FHIR R4 resource type"),
])
def test_bad_files_name_the_problem(store, tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    report = ingest([path], store, fmt="fhir", progress=False)
    ((_, reason),) = report.errors
    assert expected in reason and "Chalmers" not in reason
    assert len(store.items()) == 0


def test_ndjson_line_errors_and_unknown_option(store, tmp_path):
    path = tmp_path / "Observation.ndjson"
    good = (DATA / "export-observations.ndjson").read_text().splitlines()[0]
    path.write_text(good + "\n[1, 2]\n")
    report = ingest([path], store, progress=False)
    assert report.errors[0][1] == 'line 2: expected a JSON object with a "resourceType" (a FHIR resource)'
    with pytest.raises(IngestError, match="fhir_patient_key='mrn': expected one of identifier, id"):
        list(FhirAdapter().read(Unit(path), IngestContext(store, store.deid, options={"fhir_patient_key": "mrn"})))


# --- more resource types (issue 16): HL7's own R4 examples and a Synthea-like note ----------------

HL7 = Path(__file__).resolve().parents[1] / "data" / "fhir-hl7"


def test_hl7_examples_of_more_resource_types_ingest(store):
    """DocumentReference, MedicationRequest, Procedure, Immunization and AllergyIntolerance were refused
    as unsupported; each of HL7's R4 examples now ingests (the DocumentReference's document is an
    external XML file: its description is the text stored)."""
    report = ingest([HL7], store, progress=False)
    assert report.errors == [] and report.n_ok == 5, report.errors
    df = _items(store)
    by_type = {m["resource"]: r for m, r in zip(df["meta"], df.itertuples())}
    assert set(by_type) == {"MedicationRequest", "Procedure", "Immunization", "AllergyIntolerance", "DocumentReference"}
    assert by_type["DocumentReference"].modality == "text"
    assert by_type["Immunization"].code == "urn:oid:1.2.36.1.2001.1005.17|FLUVAX"
    assert by_type["Procedure"].code == "http://snomed.info/sct|80146002"
    assert by_type["MedicationRequest"].value_text == "active"


def test_a_synthea_like_clinical_note_becomes_text(store, tmp_path):
    import base64

    note = "Patient Peter Chalmers is a 45 year-old male. Chief complaint: cough.\nPlan: chest radiograph."
    doc = {"resourceType": "DocumentReference", "id": "d1", "status": "current",
           "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2"}]},
           "subject": {"reference": "urn:uuid:p1"}, "date": "2019-03-04T10:00:00Z",
           "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                                       "data": base64.b64encode(note.encode()).decode()}}]}
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Chalmers", "given": ["Peter"]}],
               "gender": "male", "birthDate": "1974-12-25"}
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": "urn:uuid:p1", "resource": patient}, {"fullUrl": "urn:uuid:d1", "resource": doc}]}
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    (tmp_path / "Organization.ndjson").write_text('{"resourceType": "Organization", "id": "o1", "name": "X"}\n')
    report = ingest([tmp_path], store, progress=False)
    assert report.errors == [] and report.n_ok == 1 and report.n_not_data == 1
    text = _one(_items(store), modality="text")
    assert "Chief complaint: cough" in text.text and "Chalmers" not in text.text and "Peter" not in text.text


SUBJECTS = Path(__file__).resolve().parents[1] / "data" / "fhir-hl7-subjects"


def test_hl7_examples_whose_subject_is_not_a_patient_reference(store):
    """HL7's examples that medweave could not place (issue 16's 18): a contained Patient keys its
    resource like any Patient; results without a subject take their report's; a display name alone keys
    the patient (with a warning, as a DICOM name without an id does); a file naming no patient at all
    (a population Group, a Device, an Observation without subject) is skipped with the reason, not failed."""
    report = ingest([SUBJECTS], store, progress=False)
    assert report.errors == [], report.errors
    skipped = {Path(p).name: r for p, r in report.skipped}
    assert set(skipped) == {"RiskAssessment-population.json", "Device-example.json", "Observation-decimal.json",
                            "LICENSE.md"}
    assert "FHIR resources that name no patient (resource (RiskAssessment 'population'))" in \
        skipped["RiskAssessment-population.json"]
    assert report.n_ok == 4 and report.n_units == report.n_ok + report.n_not_data
    df = _items(store)
    apgar = df[df["meta"].map(lambda m: m.get("resource") == "Observation" and "apgar" in str(m).lower())]
    assert len(apgar) >= 2 and apgar["patient_id"].nunique() == 1, "both Apgar scores: one contained newborn"
    assert store.con.execute("SELECT sex FROM patients WHERE patient_id = ?",
                             [apgar["patient_id"].iloc[0]]).fetchone()[0] == "M"
    results = df[df["source_path"].str.endswith("Bundle-report.json")]
    assert len(results) >= 13 and results["patient_id"].nunique() == 1, "results carry their report's subject"
    (procedure,) = df[df["source_path"].str.endswith("Procedure-ob.json")].itertuples()
    assert any("display name" in w and "Procedure 'ob'" in w for w in report.warnings)
    stored = " ".join(map(str, store.con.execute("SELECT * FROM items").fetchall()))
    stored += " ".join(map(str, store.con.execute("SELECT * FROM patients").fetchall()))
    for secret in ("Jane Doe", "Chalmers", "2016-05-18", "12345"):
        assert secret not in stored, secret


def test_a_resource_without_subject_beside_a_placed_one_is_left_out_with_a_warning(store, tmp_path):
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": "y"}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {**obs, "id": "placed", "subject": {"reference": "Patient/p1"}}},
        {"resource": {**obs, "id": "loose"}}]}
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    report = ingest([path], store, fmt="fhir", progress=False)
    assert report.errors == [] and report.n_ok == 1 and len(store.items()) == 1
    assert any("1 resource(s) that name no patient not stored: entry 1 (Observation 'loose')" in w
               for w in report.warnings)
