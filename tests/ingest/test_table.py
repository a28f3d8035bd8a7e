"""The CSV table adapter: wide and long tables, mappings (option, sidecar, folder, guessed),
validation errors, de-identification, and the real MIMIC-III and eICU demo tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from medweave.ingest import ingest
from medweave.ingest.adapters.table import builtin_mapping
from medweave.store.catalog import Store

TABLES = Path(__file__).resolve().parents[1] / "data" / "tables"


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store", write=True) as s:
        yield s


def copy_tables(tmp_path: Path, *names: str) -> Path:
    """Copy test tables (files or folders) into a fresh folder, so tests may change them."""
    dest = tmp_path / "tables"
    dest.mkdir(exist_ok=True)
    for name in names:
        src = TABLES / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy(src, dest / name)
    return dest


def rows(store: Store, where: str = "", params=()) -> list[dict]:
    """Items as dicts, ordered by source row, with labels and meta decoded."""
    df = store.items(where, params)
    out = df.astype(object).where(df.notna(), None).to_dict("records")
    for r in out:
        r["labels"] = json.loads(r["labels"]) if r["labels"] else {}
        r["meta"] = json.loads(r["meta"]) if r["meta"] else {}
    return sorted(out, key=lambda r: (r["source_path"], int(r["source_key"].split()[1])))


def test_wide_table_with_sidecar_mapping(tmp_path, store):
    folder = copy_tables(tmp_path, "visits.csv", "visits.mapping.toml")
    report = ingest([folder], store, progress=False)
    assert report.errors == [] and report.n_items_added == 3  # the sidecar is not reported as unknown
    first, second, third = rows(store)
    assert first["modality"] == "table" and first["format"] == "csv"
    assert (first["label"], first["split"], first["age"]) == ("1", "train", 54.0)
    assert first["labels"] == {"outcome": 1}
    values = first["meta"]["values"]
    assert values["bmi"] == 27.5 and values["age"] == 54 and values["smoker"] == "yes"
    assert not {"patient_id", "patient_name", "mrn", "outcome", "fold", "visit_date"} & set(values)
    assert "[NAME]" in values["note"] and "[DATE]" in values["note"] and "Brown" not in values["note"]
    assert "A002" not in second["meta"]["values"]["note"]  # the patient's raw id is scrubbed from text
    assert "note" not in third["meta"]["values"]  # empty cells are left out
    # one patient per raw id, pseudonymised; its dates shifted by one per-patient offset
    assert first["patient_id"] == third["patient_id"] != second["patient_id"]
    assert first["patient_id"].startswith("P") and first["patient_id"] != "A001"
    shift = store.deid.date_offset_days(first["patient_id"])
    assert first["time"] == pd.Timestamp("2020-01-31") + pd.Timedelta(days=shift)
    assert third["time"] - first["time"] == pd.Timedelta(days=44)
    sexes = dict(store.con.execute("SELECT patient_id, sex FROM patients").fetchall())
    assert sexes == {first["patient_id"]: "F", second["patient_id"]: "M"}


def test_long_tables_with_folder_mapping(tmp_path, store):
    folder = copy_tables(tmp_path, "labs")
    report = ingest([folder], store, progress=False)
    assert report.errors == [] and report.n_items_added == 5
    items = rows(store)
    labs = [r for r in items if r["meta"]["table"] == "labs"]
    stays = [r for r in items if r["meta"]["table"] == "stays"]
    assert [(r["code"], r["value_num"], r["value_text"], r["unit"]) for r in labs] == [
        ("glucose", 5.4, None, "mmol/L"), ("culture", None, "negative", None), ("glucose", 7.1, None, "mmol/L")]
    assert all(r["time"] is not None for r in labs)
    # offsets are not dates: time stays NULL and the offset is stored in minutes
    assert [(r["code"], r["value_num"], r["time"], r["meta"]["time_offset_min"]) for r in stays] == [
        ("sodium", 140.0, None, -1800.0), ("sodium", 133.0, None, 900.0)]
    assert len({r["patient_id"] for r in items}) == 4


def test_explicit_mapping_option_wins_over_the_sidecar(tmp_path, store):
    folder = copy_tables(tmp_path, "visits.csv", "visits.mapping.toml")
    mapping = tmp_path / "other.toml"
    mapping.write_text('[files.visits]\npatient = "mrn"\nidentifiers = ["patient_name", "patient_id"]\n')
    report = ingest([folder / "visits.csv"], store, options={"mapping": str(mapping)}, progress=False)
    assert report.errors == []
    items = rows(store)
    assert len({r["patient_id"] for r in items}) == 2
    assert items[0]["label"] is None and "outcome" in items[0]["meta"]["values"]  # no label role here


def test_patient_column_is_guessed_without_a_mapping(tmp_path, store):
    folder = copy_tables(tmp_path, "guessed.csv", "no_patient.csv")
    report = ingest([folder], store, progress=False)
    assert report.n_items_added == 3
    assert store.con.execute("SELECT count(*) FROM patients").fetchone()[0] == 2
    [(path, reason)] = report.errors
    assert path.endswith("no_patient.csv")
    assert "no patient column" in reason and "specimen, weight, height" in reason


def test_missing_mapping_column_is_one_error_and_the_batch_goes_on(tmp_path, store):
    folder = copy_tables(tmp_path, "visits.csv", "visits.mapping.toml", "guessed.csv")
    df = pd.read_csv(folder / "visits.csv")
    df.drop(columns=["fold"]).to_csv(folder / "visits.csv", index=False)
    report = ingest([folder], store, progress=False)
    [(path, reason)] = report.errors
    assert path.endswith("visits.csv")
    assert "'fold'" in reason and "visits.csv" in reason and "columns present: patient_id," in reason
    assert report.n_items_added == 3  # guessed.csv went in; nothing of visits.csv did
    assert store.items("source_path LIKE '%visits.csv'").empty
    errors = store.con.execute("SELECT source_path, reason FROM errors").fetchall()
    assert len(errors) == 1 and errors[0][1] == reason


def test_unparseable_date_names_column_and_row_but_not_the_value(tmp_path, store):
    folder = copy_tables(tmp_path, "visits.csv", "visits.mapping.toml")
    text = (folder / "visits.csv").read_text().replace("2020-03-15", "15th of Marsch 2020")
    (folder / "visits.csv").write_text(text)
    [(_, reason)] = ingest([folder], store, progress=False).errors
    assert "'visit_date'" in reason and "row 3" in reason and "ISO 8601" in reason
    assert "Marsch" not in reason
    assert store.items().empty


def test_bad_mapping_keys_and_forms_are_reported(tmp_path, store):
    folder = copy_tables(tmp_path, "visits.csv")
    (folder / "visits.mapping.toml").write_text('form = "tall"\npatient = "patient_id"\n')
    [(_, reason)] = ingest([folder], store, progress=False).errors
    assert "'form'" in reason and "wide, long" in reason
    (folder / "visits.mapping.toml").write_text('patient = "patient_id"\nlabel_col = "outcome"\n')
    [(_, reason)] = ingest([folder], store, progress=False).errors
    assert "label_col" in reason and "allowed:" in reason
    (folder / "visits.mapping.toml").write_text('patient = "patient_id"\nform = [\n')
    [(_, reason)] = ingest([folder], store, progress=False).errors
    assert "not valid TOML" in reason


def test_identifier_columns_never_reach_the_catalog(tmp_path):
    folder = copy_tables(tmp_path, "visits.csv", "visits.mapping.toml")
    with Store(tmp_path / "store", write=True) as store:
        assert ingest([folder], store, progress=False).errors == []
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file()
                      and p.name != "secret.key")
    for secret in ("Alice", "Smith", "Bob Jones", "MRN-8881", "A001", "A002", "Brown", "2020-01-31"):
        assert secret.encode() not in stored, secret


def test_changed_mapping_reingests_and_same_input_adds_nothing(tmp_path, store):
    folder = copy_tables(tmp_path, "visits.csv", "visits.mapping.toml")
    assert ingest([folder], store, progress=False).n_items_added == 3
    again = ingest([folder], store, progress=False)
    assert (again.n_items_added, again.n_skipped) == (0, 1)
    sidecar = folder / "visits.mapping.toml"
    sidecar.write_text(sidecar.read_text().replace('label = "outcome"', 'label = "smoker"'))
    assert ingest([folder], store, progress=False).n_items_added == 3


def test_a_moved_mapping_file_with_the_same_content_is_not_read_again(tmp_path, store):
    """A table's fingerprint holds its mapping's content, not the mapping file's path: the same
    mapping given from another place (a moved file, a fresh work folder) finds the table stored.
    A change of that content still reads it again."""
    folder = copy_tables(tmp_path, "visits.csv")
    first = tmp_path / "a" / "tables.toml"
    first.parent.mkdir()
    shutil.copy(TABLES / "visits.mapping.toml", first)
    assert ingest([folder], store, options={"mapping": str(first)}, progress=False).n_items_added == 3
    moved = tmp_path / "b" / "elsewhere" / "mapping.toml"
    moved.parent.mkdir(parents=True)
    first.rename(moved)
    again = ingest([folder], store, options={"mapping": str(moved)}, progress=False)
    assert (again.n_ok, again.n_already, again.n_items_replaced) == (0, 1, 0)
    moved.write_text(moved.read_text().replace('label = "outcome"', 'label = "smoker"'))
    changed = ingest([folder], store, options={"mapping": str(moved)}, progress=False)
    assert (changed.n_ok, changed.n_already, changed.n_items_replaced) == (1, 0, 3)


def test_builtin_mappings_exist():
    assert builtin_mapping("mimic-iii-demo").is_file() and builtin_mapping("eicu-demo").is_file()
    with pytest.raises(Exception, match="eicu-demo"):
        builtin_mapping("nope")


# --- real data -----------------------------------------------------------------------------------


def table_counts(store: Store) -> dict[str, int]:
    df = store.con.execute("SELECT json_extract_string(meta, '$.table') AS t, count(*) FROM items "
                           "GROUP BY 1").fetchall()
    return dict(df)


@pytest.mark.slow
def test_mimic_iii_demo_tables(shared_data, store):
    folder = shared_data / "ehr-demo" / "mimic-iii-demo"
    report = ingest([folder], store, options={"mapping": str(builtin_mapping("mimic-iii-demo"))}, progress=False)
    assert report.errors == []
    tables = {p.name.split(".")[0]: pd.read_csv(p, dtype=str) for p in sorted(folder.glob("*.csv.gz"))}
    expected = {name: len(df) for name, df in tables.items() if len(df)}
    assert table_counts(store) == expected
    n_patients = tables["PATIENTS"]["subject_id"].nunique()
    assert n_patients == 100
    assert store.con.execute("SELECT count(*) FROM patients").fetchone()[0] == n_patients
    assert store.con.execute("SELECT count(*) FROM studies").fetchone()[0] == tables["ADMISSIONS"]["hadm_id"].nunique()
    deaths = store.con.execute("SELECT count(*) FROM items WHERE json_extract_string(meta, '$.table') = "
                               "'ADMISSIONS' AND label = '1'").fetchone()[0]
    assert deaths == (tables["ADMISSIONS"]["hospital_expire_flag"] == "1").sum()
    ages = store.con.execute("SELECT age FROM items WHERE json_extract_string(meta, '$.table') = 'ADMISSIONS'"
                             ).fetchall()
    assert all(a is None or 15 <= a <= 90 for (a,) in ages) and sum(a is not None for (a,) in ages) > 90
    ndc = store.con.execute("SELECT json_extract_string(meta, '$.values.ndc') FROM items WHERE "
                            "json_extract_string(meta, '$.values.ndc') LIKE '0_%' LIMIT 1").fetchone()
    # codes with leading zeros stay text ("0" alone is MIMIC's placeholder, 1,477 rows: not a code)
    assert ndc is not None and len(ndc[0]) == 11
    again = ingest([folder], store, options={"mapping": str(builtin_mapping("mimic-iii-demo"))}, progress=False)
    assert again.n_items_added == 0 and again.errors == []


@pytest.mark.slow
def test_eicu_demo_tables(shared_data, store):
    folder = shared_data / "ehr-demo" / "eicu-demo"
    mapping = str(builtin_mapping("eicu-demo"))
    report = ingest([folder], store, options={"mapping": mapping}, progress=False)
    assert report.errors == []
    patient = pd.read_csv(folder / "patient.csv", dtype=str)
    lab = pd.read_csv(folder / "lab.csv", dtype=str)
    counts = table_counts(store)
    assert counts["patient"] == len(patient) and counts["lab"] == len(lab)
    assert "hospital" not in counts
    assert store.con.execute("SELECT count(*) FROM patients").fetchone()[0] == patient["uniquepid"].nunique()
    assert store.con.execute("SELECT count(*) FROM studies").fetchone()[0] == patient["patientunitstayid"].nunique()
    n_numeric = pd.to_numeric(lab["labresult"], errors="coerce").notna().sum()
    assert store.con.execute("SELECT count(*) FROM items WHERE json_extract_string(meta, '$.table') = 'lab' "
                             "AND value_num IS NOT NULL AND time IS NULL").fetchone()[0] == n_numeric
    again = ingest([folder], store, options={"mapping": "eicu-demo"}, progress=False)  # a built-in name
    assert again.n_items_added == 0 and again.errors == []


# --- de-identification by column meaning and content (issue 16) ------------------------------------

FAKE_COLUMNS = ["Number", "Gender", "NameSet", "Title", "GivenName", "MiddleInitial", "Surname", "StreetAddress",
                "City", "State", "ZipCode", "EmailAddress", "Username", "Password", "TelephoneNumber",
                "MothersMaiden", "Birthday", "Age", "CCType", "CCNumber", "CVV2", "NationalID", "Occupation",
                "BloodType", "Kilograms", "Contact", "Reached", "Seen"]


def _fake_people(path: Path, n: int = 30) -> list[dict]:
    """A table in the layout of a common fake-identity generator, plus columns named innocently
    ("Contact", "Reached") whose values are identifiers, and dd-mm-yyyy dates ("Seen")."""
    import csv
    import random

    rng = random.Random(4)
    people = []
    for i in range(n):
        given, family = rng.choice(["Alice", "Bruno", "Chiara", "Dmitri"]), f"Family{chr(65 + i % 26)}son"
        card = "4" + "".join(str(rng.randrange(10)) for _ in range(14))
        check = next(d for d in range(10) if _luhn_ok(card + str(d)))
        people.append({
            "Number": i + 1, "Gender": rng.choice(["male", "female"]), "NameSet": "English", "Title": "Mx.",
            "GivenName": given, "MiddleInitial": "Q", "Surname": family,
            "StreetAddress": f"{100 + i} Elm Street", "City": "Springfield", "State": "IL", "ZipCode": f"627{i:02d}",
            "EmailAddress": f"{given.lower()}.{family.lower()}@example.org", "Username": f"user{i:03d}x",
            "Password": f"pw{i}secret", "TelephoneNumber": f"217-555-{1000 + i}", "MothersMaiden": f"Maiden{i}",
            "Birthday": f"{1 + i % 28}/{1 + i % 12}/19{50 + i}", "Age": 30 + i, "CCType": "Visa",
            "CCNumber": card + str(check), "CVV2": f"{100 + i}", "NationalID": f"{100 + i:03d}-{10 + i:02d}-{1000 + i}",
            "Occupation": "Nurse", "BloodType": "A+", "Kilograms": 60 + i / 2,
            "Contact": f"{given.lower()}{i}@mail.example.com", "Reached": f"+1 (217) 555-{2000 + i}",
            "Seen": f"{13 + i % 15:02d}-{1 + i % 12:02d}-2019",
        })
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FAKE_COLUMNS)
        w.writeheader()
        w.writerows(people)
    return people


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def test_identifier_columns_are_found_by_meaning_and_content(tmp_path):
    folder = tmp_path / "people"
    folder.mkdir()
    people = _fake_people(folder / "people.csv")
    (folder / "people.mapping.toml").write_text('patient = "Number"\n')
    with Store(tmp_path / "store", write=True) as store:
        report = ingest([folder], store, progress=False)
        assert report.errors == [] and report.n_ok == 1
        items = rows(store)
    values = [r["meta"]["values"] for r in items]
    kept = set().union(*values)
    assert kept == {"Gender", "NameSet", "Title", "State", "Age", "CCType", "Occupation", "BloodType", "Kilograms",
                    "Seen"}, kept
    warning = next(w for w in report.warnings if "not stored, as identifiers" in w)
    assert "Contact (its values look like e-mail addresses)" in warning
    assert "Reached (its values look like phone numbers)" in warning and "CCNumber (its name says" in warning
    # dd-mm-yyyy dates are shifted per patient, and stored as ISO dates
    shift = pd.Timedelta(days=store.deid.date_offset_days(items[0]["patient_id"]))
    assert values[0]["Seen"] == (pd.Timestamp(2019, 1, 13) + shift).isoformat()
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file() and p.name != "secret.key")
    for p in people[:10]:
        for col in ("Surname", "EmailAddress", "Username", "TelephoneNumber", "MothersMaiden", "CCNumber",
                    "NationalID", "Contact", "Reached", "StreetAddress"):
            assert str(p[col]).encode() not in stored, (col, p[col])
        assert p["Seen"].encode() not in stored


def test_columns_can_be_declared_keep_drop_shift_pseudonymise(tmp_path):
    folder = tmp_path / "people"
    folder.mkdir()
    people = _fake_people(folder / "people.csv")
    (folder / "people.mapping.toml").write_text(
        'patient = "Number"\n'
        'columns = { Username = "pseudonymise", City = "keep", Occupation = "drop", Birthday = "shift", '
        'Kilograms = "keep" }\ndate_format = "%d/%m/%Y"\n')
    with Store(tmp_path / "store", write=True) as store:
        report = ingest([folder], store, progress=False)
        assert report.errors == [], report.errors
        items = rows(store)
    values = [r["meta"]["values"] for r in items]
    assert values[0]["City"] == "Springfield" and "Occupation" not in values[0]
    tokens = [v["Username"] for v in values]
    assert all(t.startswith("H") for t in tokens) and len(set(tokens)) == len(people)
    assert people[0]["Username"] not in tokens
    born = pd.Timestamp(values[0]["Birthday"])
    shift = pd.Timedelta(days=store.deid.date_offset_days(items[0]["patient_id"]))
    assert born == pd.Timestamp(1950, 1, 1) + shift
    bad = tmp_path / "bad"
    bad.mkdir()
    _fake_people(bad / "people.csv", 3)
    (bad / "people.mapping.toml").write_text('patient = "Number"\ncolumns = { City = "blur" }\n')
    with Store(tmp_path / "store2", write=True) as store:
        [(_, reason)] = ingest([bad], store, progress=False).errors
    assert "'blur'" in reason and "keep, drop, shift, pseudonymise, text" in reason


def test_a_table_of_100000_columns_is_read(tmp_path):
    """2 rows x 100,000 columns once took 180 s, all in a per-column date check (pandas per column)."""
    n = 100_000
    header = ["patient_id"] + [f"f{i}" for i in range(n)] + ["visit"]
    path = tmp_path / "wide.csv"
    with open(path, "w") as fh:
        fh.write(",".join(header) + "\n")
        for p in ("a1", "a2"):
            fh.write(",".join([p] + [str(i % 97) for i in range(n)] + ["03-04-2020"]) + "\n")
    with Store(tmp_path / "store", write=True) as store:
        report = ingest([path], store, progress=False)
        assert report.errors == [] and report.n_items_added == 2
        values = json.loads(store.items()["meta"][0])["values"]
    assert len(values) == n + 1 and values["f96"] == 96 and values["visit"] != "03-04-2020"
