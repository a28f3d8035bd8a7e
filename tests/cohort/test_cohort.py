"""Cohorts built from a real store: presence mask, targets, patient-grouped splits, Parquet round trip,
and missingness simulation (MCAR, MAR, MNAR)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medweave.cohort import Cohort, CohortError, build_cohort, simulate_missing
from medweave.ingest import ADAPTERS, Adapter, ingest
from medweave.store import Item, Modality, Store


class CaseLinesAdapter(Adapter):
    """A plug-in adapter (registered like a third-party one): each line of a .cases file is an item."""

    name = "test-cases"
    extensions = (".cases",)

    def read(self, unit, ctx):
        for n, line in enumerate(unit.path.read_text().splitlines()):
            rec = json.loads(line)
            pid = ctx.patient(rec["patient"])
            yield Item(patient_id=pid, study_id=ctx.study(pid, rec["study"]), modality=rec["modality"],
                       blob=None if rec["modality"] == "table" else rec["payload"].encode(),
                       fields={k: rec[k] for k in ("age", "split", "instance_number") if k in rec},
                       labels=rec.get("labels", {}), source_key=f"line:{n}",
                       patient_attrs={"sex": rec.get("sex")}, meta={"payload": rec["payload"]})


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    ADAPTERS.register("test-cases", CaseLinesAdapter)
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    lines = []
    for p in range(120):
        y = int(rng.random() < 0.4)
        for s in range(1 + p % 3):  # 1-3 studies per patient
            study = f"st{s}"
            lines.append({"patient": f"pat{p}", "study": study, "modality": "image", "payload": f"img{p}{s}",
                          "labels": {"disease": y}, "age": 40 + p % 30, "sex": "F" if p % 2 else "M",
                          "split": "train" if p < 90 else "valid"})
            if p % 4 != 0:  # a quarter of the patients have no report
                lines.append({"patient": f"pat{p}", "study": study, "modality": "text", "payload": f"rep{p}{s}"})
            lines.append({"patient": f"pat{p}", "study": study, "modality": "table", "payload": f"lab{p}{s}"})
    (root / "data.cases").write_text("\n".join(json.dumps(x) for x in lines))
    st = Store(root / "store", write=True)
    report = ingest([root / "data.cases"], st, progress=False)
    assert report.ok, report.errors
    yield st
    st.close()


def test_presence_mask_targets_and_covariates(store):
    c = build_cohort(store, targets=["disease"], covariates=["age", "sex"])
    assert len(c) == 120 and c.modalities == ["image", "text", "table"]
    mask = c.mask()
    assert mask.shape == (120, 3)
    assert mask[:, 0].all() and mask[:, 2].all()
    assert (~mask[:, 1]).sum() == 30  # patients 0, 4, 8, ... have no report
    absent = c.table[~c.table["text_present"]]
    assert all(len(v) == 0 for v in absent["text_items"])
    assert set(c.table["disease"].unique()) <= {0, 1}
    assert set(c.table["sex"]) == {"F", "M"}
    # an item column as covariate: the chunks read it (they read only the columns a case row needs)
    assert sorted(c.table["age"]) == sorted(40 + p % 30 for p in range(120))  # patient ids are pseudonyms


def test_study_cases_and_splits_grouped_by_patient(store):
    c = build_cohort(store, case_level="study", targets=["disease"], fractions=(0.6, 0.2, 0.2), seed=3)
    assert len(c) == sum(1 + p % 3 for p in range(120))
    per_patient = c.table.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all(), "a patient must never be in two splits"
    again = build_cohort(store, case_level="study", targets=["disease"], fractions=(0.6, 0.2, 0.2), seed=3)
    assert list(again.table["split"]) == list(c.table["split"])
    other = build_cohort(store, case_level="study", targets=["disease"], fractions=(0.6, 0.2, 0.2), seed=4)
    assert list(other.table["split"]) != list(c.table["split"])
    counts = c.table.drop_duplicates("patient_id")["split"].value_counts()
    assert 50 <= counts["train"] <= 95


def test_source_splits_are_kept(store):
    c = build_cohort(store, targets=["disease"], split_from="source")
    assert c.table["split"].value_counts().to_dict() == {"train": 90, "valid": 30}


def test_parquet_round_trip(store, tmp_path):
    c = build_cohort(store, targets=["disease"], covariates=["age"])
    path = c.save(tmp_path / "c.parquet")
    back = Cohort.load(path)
    assert back.modalities == c.modalities and back.targets == ["disease"]
    assert back.table["text_items"].tolist() == c.table["text_items"].tolist()
    np.testing.assert_array_equal(back.mask(), c.mask())
    assert back.meta["seed"] == 0
    # every column back in its place, id lists as plain lists (an absent modality's list empty)
    assert list(back.table.columns) == list(c.table.columns)
    for m in c.modalities:
        col = back.table[f"{m}_items"]
        assert all(type(v) is list for v in col) and col.tolist() == [list(v) for v in c.table[f"{m}_items"]]
    assert any(not v for m in c.modalities for v in back.table[f"{m}_items"])


def test_item_ids_are_one_arrow_list_column_built_loaded_and_after_missingness(store, tmp_path):
    """The item-id columns are Arrow list arrays (offsets and one buffer of characters), not a Python
    list of str per case, when built, loaded and after simulated missingness; a case still reads as a
    plain list, and ``item_id_lists`` gives a slice's lists as a table of Python lists does."""
    import pandas as pd

    from medweave.cohort import item_id_column, item_id_lists

    c = build_cohort(store, targets=["disease"], covariates=["age"])
    back = Cohort.load(c.save(tmp_path / "c.parquet"))
    dropped = simulate_missing(c, "image", "mcar", rate=0.5, seed=0)
    for cohort in (c, back, dropped):
        for m in cohort.modalities:
            col = cohort.table[f"{m}_items"]
            assert isinstance(col.dtype, pd.ArrowDtype) and col.array.nbytes < 40 * max(1, sum(map(len, col)))
            assert item_id_lists(col, 3, 9) == [list(v) for v in col.iloc[3:9]]
            assert type(col.iloc[0]) is list
    pd.testing.assert_frame_equal(back.table, c.table)
    plain = pd.Series([list(v) for v in c.table["image_items"]], dtype=object)
    assert item_id_lists(plain, 3, 9) == item_id_lists(c.table["image_items"], 3, 9)
    assert list(item_id_column(plain)) == list(c.table["image_items"])
    assert list(item_id_column([["a"], None, []])) == [["a"], [], []]


def test_unknown_names_are_errors_that_list_the_allowed(store, tmp_path):
    with pytest.raises(CohortError, match=r"'diseasee'.*disease"):
        build_cohort(store, targets=["diseasee"])
    with pytest.raises(CohortError, match="allowed values: image, volume"):
        build_cohort(store, modalities=["imaging"])
    with pytest.raises(CohortError, match="patient, study"):
        build_cohort(store, case_level="visit")
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(Exception):
        Cohort.load(tmp_path / "x.parquet")


def test_mcar_removes_about_rate_and_only_present(store):
    c = build_cohort(store, targets=["disease"])
    m = simulate_missing(c, "image", "mcar", rate=0.3, seed=1)
    removed = (~m.table["image_present"]).sum()
    assert 20 <= removed <= 55
    assert m.meta["missingness"][0]["removed"] == removed
    assert c.table["image_present"].all(), "the input cohort is not modified"
    assert (m.table.loc[~m.table["image_present"], "image_items"].map(len) == 0).all()


def test_mnar_depends_on_target_and_respects_splits(store):
    c = build_cohort(store, targets=["disease"], split_from="source")
    m = simulate_missing(c, "image", "mnar", class_rates={1: 0.9, 0: 0.0}, seed=2, splits=["train"])
    t = m.table
    pos_train = t[(t.disease == 1) & (t.split == "train")]
    assert (~pos_train["image_present"]).mean() > 0.7
    assert t.loc[t.disease == 0, "image_present"].all()
    assert t.loc[t.split == "valid", "image_present"].all()
    only_rate = simulate_missing(c, "image", "mnar", rate=0.2, seed=2)
    t2 = only_rate.table
    assert t2.loc[t2.disease == 0, "image_present"].all()  # all missingness lands on positives


def test_mar_depends_on_the_other_column(store):
    c = build_cohort(store, targets=["disease"], covariates=["age"])
    m = simulate_missing(c, "image", "mar", rate=0.4, column="age", seed=0)
    t = m.table
    assert t.loc[~t.image_present, "age"].mean() > t.loc[t.image_present, "age"].mean()
    with pytest.raises(CohortError, match="column="):
        simulate_missing(c, "image", "mar", rate=0.4, column="nope")
    with pytest.raises(CohortError, match="mcar, mar, mnar"):
        simulate_missing(c, "image", "random", rate=0.4)


@pytest.mark.parametrize("case_level", ["patient", "study"])
def test_patient_chunks_give_the_cohort_one_pass_gives(store, case_level):
    """Cases are built a chunk of patients at a time (memory holds one chunk's items): chunks of 1 and
    of 7 patients give exactly the table of one chunk holding every patient."""
    kw = dict(case_level=case_level, targets=["disease"], covariates=["age", "sex"], seed=3)
    whole = build_cohort(store, chunk_patients=10_000, **kw).table
    assert len(whole) == (120 if case_level == "patient" else 240) and whole["case_id"].is_monotonic_increasing
    for size in (1, 7):
        part = build_cohort(store, chunk_patients=size, **kw).table
        assert list(part.columns) == list(whole.columns)
        assert part.astype(str).equals(whole.astype(str)), f"chunks of {size} patients differ"
        assert list(part.dtypes) == list(whole.dtypes)


@pytest.mark.parametrize("split_from,case_level", [("hash", "patient"), ("hash", "study"), ("source", "patient")])
def test_only_split_is_the_split_of_the_whole_cohort(store, split_from, case_level):
    """``only_split`` builds the rows ``.split(name)`` of the whole cohort gives (hash splits read only
    that split's patients; source splits filter the whole cohort), the same values in the same order."""
    kw = dict(case_level=case_level, targets=["disease"], covariates=["age", "sex"], seed=3, split_from=split_from,
              chunk_patients=7)
    whole = build_cohort(store, **kw)
    for name in ("train", "valid", "test"):
        want = whole.split(name).table
        got = build_cohort(store, only_split=name, **kw)
        assert got.meta["only_split"] == name and got.modalities == whole.modalities
        assert list(got.table.columns) == list(want.columns)
        assert got.table.astype(str).equals(want.astype(str)), f"{split_from} {case_level} {name}"
    assert len(build_cohort(store, only_split="test", **kw).table) == (0 if split_from == "source" else
                                                                       len(whole.split("test")))
    with pytest.raises(CohortError, match="unknown split 'dev'.*train, valid, test"):
        build_cohort(store, only_split="dev")


def test_a_split_without_patients_is_a_table_with_the_columns(store):
    whole = build_cohort(store, targets=["disease"], covariates=["age", "sex"], split_from="source")
    empty = build_cohort(store, targets=["disease"], covariates=["age", "sex"], split_from="hash",
                         fractions=(1.0, 0.0, 0.0), only_split="test")
    assert len(empty) == 0 and list(empty.table.columns) == list(whole.table.columns)


def test_integral_spelling():
    from medweave.cohort import integral_spelling

    assert [integral_spelling(x) for x in ("2.0", "2", "-3.0", "2.5", "a", "nan", "inf", "")] == \
        ["2", "2", "-3", "2.5", "a", "nan", "inf", ""]


def test_an_integer_column_of_the_catalog_stays_integer_in_every_cohort(tmp_path):
    """A target or covariate whose every value in the store is an integer (an INTEGER item column, a
    labels key of JSON integers) is an ``Int64`` column, with or without a missing value: as Python
    values a column of integers with one missing became floats, so a class read "2.0" in the whole
    cohort and "2" in a split without a missing case. A labels key of JSON floats stays floats. The
    type is kept through save and load. A case's other item without the column (a NULL, pandas' NA
    from DuckDB) does not hide its value: a covariate took that NA when the item came first (37 of
    these 60 cases read no instance number, not 4)."""
    ADAPTERS.register("test-cases", CaseLinesAdapter)
    lines = []
    for p in range(60):
        rec = {"patient": f"p{p}", "study": "s0", "modality": "image", "payload": f"img{p}",
               "labels": {"score": float(p % 3)}}
        if p % 17:  # a few cases without either value
            rec["labels"]["grade"] = p % 3
            rec["instance_number"] = 1 + p % 4
        lines.append(rec)
        # an item without the column: its NULL (pandas' NA from DuckDB) is no value, whichever item is first
        lines.append({"patient": f"p{p}", "study": "s0", "modality": "text", "payload": f"rep{p}"})
    (tmp_path / "d.cases").write_text("\n".join(json.dumps(x) for x in lines))
    with Store(tmp_path / "store", write=True) as st:
        assert ingest([tmp_path / "d.cases"], st, progress=False).ok
    with Store(tmp_path / "store") as st:
        kw = dict(targets=["grade"], covariates=["instance_number", "score"], seed=1)
        whole = build_cohort(st, **kw)
        parts = {name: build_cohort(st, only_split=name, **kw).table for name in ("train", "valid", "test")}
    assert whole.table["grade"].isna().sum() == 4 and whole.table["instance_number"].isna().sum() == 4
    for t in (whole.table, *parts.values()):
        assert str(t["grade"].dtype) == "Int64" and str(t["instance_number"].dtype) == "Int64"
        assert t["score"].dtype == np.float64
        assert set(t["grade"].dropna().astype(str)) <= {"0", "1", "2"}
        assert set(t["score"].dropna().astype(str)) <= {"0.0", "1.0", "2.0"}
    assert sorted(whole.table["grade"].dropna().astype(str).unique()) == ["0", "1", "2"]
    back = Cohort.load(whole.save(tmp_path / "c.parquet")).table
    assert str(back["grade"].dtype) == "Int64" and back["grade"].astype(str).equals(whole.table["grade"].astype(str))
