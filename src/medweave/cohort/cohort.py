"""Cohorts: a table of cases x modalities with an explicit presence mask, targets and splits.

A case is a patient (default) or a study. For every modality the table has two columns:
``<modality>_items`` (the item ids of the case, a list, possibly empty) and ``<modality>_present``
(a bool). Absent is a value: nothing downstream should read an empty list as zeros; read the mask.

Splits are deterministic and grouped by patient: a keyed hash of (seed, patient id) places each
patient in exactly one split, so no patient is in two splits. A data set's own split (``fields.split``
of its items, e.g. NIH ``train/`` and ``valid/``) can be kept instead with ``split_from="source"``;
a patient found in several source splits is moved, whole, into the one holding most of its cases.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..store.catalog import Modality, Store

SPLITS = ("train", "valid", "test")
_META_KEY = b"medweave.cohort"

# A ``<modality>_items`` column is one Arrow list array (pandas ``ArrowDtype``): offsets and one
# buffer of the ids' characters, about 32 bytes an item id. As a Python list of str per case it was
# about 85 bytes an id and 60 a list, 35 MB at 30,000 phantom patients, held by every stage after
# the cohort build. A case's value still reads as a plain list (``table[col].iloc[i]``, iteration).
ITEM_IDS = pa.large_list(pa.large_string())


def item_id_column(lists: "Iterable[list[str]] | pd.Series | pa.Array | pa.ChunkedArray"
                   ) -> pd.arrays.ArrowExtensionArray:
    """An item-id column of a cohort table from Python lists of ids, a column (Arrow or of lists) or
    an Arrow list array (a missing list becomes an empty one)."""
    if isinstance(lists, pd.Series) and isinstance(lists.dtype, pd.ArrowDtype):
        lists = pa.array(lists.array)
    arr = lists if isinstance(lists, (pa.Array, pa.ChunkedArray)) else pa.array(list(lists), type=ITEM_IDS)
    if arr.type != ITEM_IDS:
        arr = arr.cast(ITEM_IDS)
    if arr.null_count:
        arr = arr.fill_null(pa.scalar([], type=ITEM_IDS))
    return pd.arrays.ArrowExtensionArray(arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr]))


def item_id_lists(col: pd.Series, start: int = 0, stop: int | None = None) -> list[list[str]]:
    """Rows ``start:stop`` of an item-id column as Python lists (made for that slice only)."""
    part = col.iloc[start:stop]
    if isinstance(part.dtype, pd.ArrowDtype):
        return [[] if v is None else v for v in pa.array(part.array).to_pylist()]
    return [[] if v is None else list(v) for v in part]


class CohortError(ValueError):
    """A cohort request that cannot be satisfied; the message names the value and what is allowed."""


@dataclass
class Cohort:
    table: pd.DataFrame
    modalities: list[str]
    targets: list[str] = field(default_factory=list)
    covariates: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # --- views ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    @property
    def case_ids(self) -> list[str]:
        return list(self.table["case_id"])

    def mask(self) -> np.ndarray:
        """Presence mask, shape (cases, modalities), in the order of ``self.modalities``."""
        if not self.modalities:
            return np.zeros((len(self.table), 0), dtype=bool)
        return self.table[[f"{m}_present" for m in self.modalities]].to_numpy(dtype=bool)

    def split(self, name: str) -> "Cohort":
        if name not in self.table["split"].unique() and name not in SPLITS:
            raise CohortError(f"unknown split {name!r}; allowed values: {', '.join(SPLITS)}")
        sub = self.table[self.table["split"] == name].reset_index(drop=True)
        return Cohort(sub, list(self.modalities), list(self.targets), list(self.covariates), dict(self.meta))

    def summary(self) -> dict[str, Any]:
        t = self.table
        out: dict[str, Any] = {
            "cases": len(t),
            "patients": int(t["patient_id"].nunique()),
            "case_level": self.meta.get("case_level"),
            "splits": {s: int(n) for s, n in t["split"].value_counts().sort_index().items()},
            "present": {m: int(t[f"{m}_present"].sum()) for m in self.modalities},
            "absent": {m: int((~t[f"{m}_present"]).sum()) for m in self.modalities},
            "targets": {},
        }
        for name in self.targets:
            col = t[name]
            if pd.api.types.is_numeric_dtype(col) and col.dropna().isin([0, 1]).all():
                out["targets"][name] = {"positive": int((col == 1).sum()), "negative": int((col == 0).sum()),
                                        "missing": int(col.isna().sum())}
            else:
                out["targets"][name] = {"values": int(col.nunique()), "missing": int(col.isna().sum())}
        if self.meta.get("missingness"):
            out["simulated_missingness"] = self.meta["missingness"]
        return out

    # --- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the cohort as Parquet (atomically); its description lives in the file's metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # the item-id columns go in as Arrow arrays, outside pandas' metadata (which would name their
        # dtype, one that pyarrow cannot turn back into pandas'; ``load`` makes them again)
        lists = {f"{m}_items" for m in self.modalities} & set(self.table.columns)
        table = pa.Table.from_pandas(self.table.drop(columns=sorted(lists)), preserve_index=False)
        for i, name in enumerate(self.table.columns):
            if name in lists:
                table = table.add_column(i, name, pa.array(item_id_column(self.table[name])))
        info = {"modalities": self.modalities, "targets": self.targets, "covariates": self.covariates,
                "meta": self.meta}
        schema_meta = dict(table.schema.metadata or {})
        schema_meta[_META_KEY] = json.dumps(info, default=str).encode()
        table = table.replace_schema_metadata(schema_meta)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Cohort":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no cohort file (build one with `medweave cohort build`)")
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise CohortError(f"{path}: a Parquet file, but not a medweave cohort (no {_META_KEY.decode()} metadata)")
        info = json.loads(raw)
        # The item-id lists stay the Arrow arrays read (``ITEM_IDS``): through pandas each case's list
        # was a NumPy object array (150 MB more peak at 30,000 phantom patients), as Python lists 35 MB.
        order = list(table.column_names)
        lists = [f"{m}_items" for m in info["modalities"] if f"{m}_items" in order]
        df = table.drop_columns(lists).to_pandas()
        for name in lists:
            df[name] = pd.Series(item_id_column(table.column(name)), index=df.index)
        df = df[[c for c in order if c in df.columns]]
        return cls(df, info["modalities"], info["targets"], info.get("covariates", []), info["meta"])


def integral_spelling(text: str) -> str:
    """A class or category (as text) with an integral number written as an integer: "2.0" -> "2" ("2",
    "2.5" and "a" stay). One value reads "2" from an integer column and "2.0" from a float column; a
    value that matches no class as written is looked up again by this spelling (``targets_for``,
    ``TabularFeaturizer.transform``). A cohort keeps a column the catalog holds as integers as
    integers (``Int64``, see ``_integral_names``), but the classes and categories of models trained
    on cohorts built before that (a column of integers with a missing value was floats, "2.0") and
    values of mixed types (numbers beside text in a labels key) still need the look-up."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        return text
    return str(int(x)) if x.is_integer() else text


def class_lookup(classes: list[str]):
    """``find(value) -> index or None`` over ``classes``: the class as written, else the one of the
    same integral spelling ("2.0" finds "2" and "2" finds "2.0"; see ``integral_spelling``)."""
    exact = {c: i for i, c in enumerate(classes)}
    spelt: dict[str, int] = {}
    for i, c in enumerate(classes):
        spelt.setdefault(integral_spelling(c), i)

    def find(value: str) -> int | None:
        i = exact.get(value)
        return spelt.get(integral_spelling(value)) if i is None else i

    return find


def _hash_unit(seed: int, key: str) -> float:
    h = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_splits(patients: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Place each patient in train/valid/test by a seeded hash: stable when patients are added."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise CohortError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    edges = np.cumsum(fractions)
    out = {}
    for p in patients:
        u = _hash_unit(seed, p)
        out[p] = SPLITS[int(np.searchsorted(edges, u, side="right").clip(0, 2))]
    return out


def is_missing(v: Any) -> bool:
    """A cohort value that is absent: None, NaN, or pandas' NA (an ``Int64`` column's; what DuckDB gives
    for a NULL of an integer column)."""
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v))


def _first_valid(values: Iterable[Any]) -> Any:
    for v in values:
        if not is_missing(v):
            return v
    return None


def _combine_target(values: list[Any]) -> Any:
    """Combine one target's values over a case's items: binary -> any positive; else the first, as
    it is (an integer stays an integer)."""
    vals = [v for v in values if not is_missing(v)]
    if not vals:
        return None
    if all(isinstance(v, (bool, int, float, np.integer, np.floating)) for v in vals):
        nums = [float(v) for v in vals]
        if set(nums) <= {0.0, 1.0}:
            return int(max(nums))
    return vals[0]


_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                  "UBIGINT"}


def _integral_names(con, names: Sequence[str], item_columns: Sequence[str]) -> set[str]:
    """The targets and covariates whose every value in the store is an integer, by the catalog's
    types: an item column of an integer type (a case reads an item column when the items have it),
    or a key whose values are JSON integers in every ``labels`` and patient ``attrs`` object that has
    it (and no patient column of another type). Their cohort column is ``Int64`` (pandas' integer
    with a missing value): as Python values a column of integers with one missing became floats, so
    a class read "2.0" in one cohort and "2" in another of other cases (one split, ``only_split``)."""
    types = {r[0]: r[1] for r in con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
        "AND table_schema = current_schema()", ["items"]).fetchall()}
    patient_types = {r[0]: r[1] for r in con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
        "AND table_schema = current_schema()", ["patients"]).fetchall()}
    out = set()
    for name in dict.fromkeys(names):
        if name in item_columns:
            if types.get(name) in _INTEGER_TYPES:
                out.add(name)
            continue
        if name in patient_types and patient_types[name] not in _INTEGER_TYPES:
            continue
        path = '$."' + name.replace('"', '\\"') + '"'
        found = {r[0] for r in con.execute(
            "SELECT DISTINCT json_type(labels, ?) FROM items WHERE labels IS NOT NULL "
            "AND json_type(labels) = 'OBJECT' UNION SELECT DISTINCT json_type(attrs, ?) FROM patients "
            "WHERE attrs IS NOT NULL AND json_type(attrs) = 'OBJECT'", [path, path]).fetchall()}
        found -= {None, "NULL"}
        if name in patient_types:
            found.add("BIGINT")
        if found and found <= {"BIGINT", "UBIGINT"}:
            out.add(name)
    return out


def build_cohort(
    store: Store,
    case_level: str = "patient",
    modalities: Sequence[str] | None = None,
    targets: Sequence[str] = (),
    covariates: Sequence[str] = (),
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    split_from: str = "hash",
    require_target: bool = False,
    chunk_patients: int = 2000,
    only_split: str | None = None,
) -> Cohort:
    """Turn the store into a cohort. See the module docstring for the layout and the split rules.

    ``only_split``: only that split's cases (the rows ``build_cohort(...).split(name)`` would give).
    With hash splits each patient's split is known from its id alone, so only that split's patients are
    read: scoring a model's test split reads 15% of the store's patients, not all of them. With
    ``split_from="source"`` the whole cohort is built and then filtered (a patient's split depends on
    all of its items' source splits).

    Targets and covariates are looked up by name, in order: an item column (``label``, ``age``,
    ``view_position``...), a key of the items' ``labels`` JSON, a patient column (``sex``) or a key of the
    patient's ``attrs``. A name found nowhere is an error that lists the names that do exist.
    """
    if case_level not in ("patient", "study"):
        raise CohortError(f"case level {case_level!r} is not known; allowed values: patient, study")
    if split_from not in ("hash", "source"):
        raise CohortError(f"split_from {split_from!r} is not known; allowed values: hash, source")
    if only_split is not None and only_split not in SPLITS:
        raise CohortError(f"unknown split {only_split!r}; allowed values: {', '.join(SPLITS)}")
    all_modalities = [m.value for m in Modality]
    con = store.con
    select = ("SELECT item_id, patient_id, study_id, modality, labels, split, * EXCLUDE "
              "(item_id, patient_id, study_id, modality, labels, split, meta, blob, text) FROM items")
    if not con.execute("SELECT count(*) FROM items").fetchone()[0]:
        raise CohortError(f"{store.root}: the store holds no items; ingest data first")
    present = {r[0] for r in con.execute("SELECT DISTINCT modality FROM items").fetchall()}
    mods = list(modalities) if modalities else [m for m in all_modalities if m in present]
    bad = [m for m in mods if m not in all_modalities]
    if bad:
        raise CohortError(f"unknown modality {bad[0]!r}; allowed values: {', '.join(all_modalities)}")
    # Names are checked on the whole store first (columns, and the keys of every labels / attrs JSON,
    # found by DuckDB), then the cases are built patient chunk by patient chunk: memory holds one
    # chunk's items, not the store's.
    item_columns = [d[0] for d in con.execute(select + " LIMIT 0").description]
    patient_columns = [d[0] for d in con.execute("SELECT * FROM patients LIMIT 0").description]
    json_keys = ("SELECT DISTINCT unnest(json_keys({col})) FROM {table} "
                 "WHERE {col} IS NOT NULL AND json_type({col}) = 'OBJECT'")
    names_seen = set(item_columns) | {"case_id", "labels_d"} | set(patient_columns) - {"patient_id"} | {"attrs_d"}
    names_seen |= {r[0] for r in con.execute(json_keys.format(col="labels", table="items")).fetchall()}
    names_seen |= {r[0] for r in con.execute(json_keys.format(col="attrs", table="patients")).fetchall()}
    for name in list(targets) + list(covariates):
        if name not in names_seen:
            raise CohortError(
                f"target/covariate {name!r} is not in the store; names found: "
                f"{', '.join(sorted(n for n in names_seen if not n.endswith('_d')))}"
            )
    # Each chunk reads only the columns a case row is made of (the six below and the targets and
    # covariates that are item columns), not every item column: DuckDB's buffer pool keeps the blocks
    # a query reads, and every chunk's lookup reads all of the table's row groups.
    base = ["item_id", "patient_id", "study_id", "modality", "labels", "split"]
    wanted = base + [n for n in dict.fromkeys([*targets, *covariates]) if n in item_columns and n not in base]
    select = f"SELECT {', '.join(_quote(c) for c in wanted)} FROM items"
    patient_ids = [r[0] for r in con.execute("SELECT DISTINCT patient_id FROM items ORDER BY patient_id").fetchall()]
    if only_split is not None and split_from == "hash":  # a patient's split is a hash of its id
        in_split = assign_splits(patient_ids, fractions, seed)
        patient_ids = [p for p in patient_ids if in_split[p] == only_split]
        del in_split
    store.release_buffers()  # the name checks and the patient list scanned the whole items table
    # The cases are kept as columns (a list of values each), not as a dict per case: at 30,000 phantom
    # patients the dicts were about 25 MB of peak beside the values themselves. The names are set up
    # front, in a case row's order, so that a split without patients is a table with its columns.
    # Each chunk's item-id lists become Arrow arrays (``ITEM_IDS``) when the chunk is done.
    columns: dict[str, list[Any]] = {name: [] for name in dict.fromkeys(
        ["case_id", "patient_id", "source_split", *[f"{m}_{s}" for m in mods for s in ("items", "present")],
         *targets, *covariates])}
    id_parts: dict[str, list[pa.Array]] = {f"{m}_items": [] for m in mods}
    for first in range(0, len(patient_ids), max(1, chunk_patients)):
        chunk = patient_ids[first:first + max(1, chunk_patients)]
        items = con.execute(select + " WHERE patient_id IN (SELECT unnest(?)) ORDER BY item_id", [chunk]).df()
        records = _chunk_records(store, items, chunk, case_level, mods, targets, covariates)
        for row in records:
            for name, value in row.items():
                if name not in id_parts:
                    columns.setdefault(name, []).append(value)
        for name, parts in id_parts.items():
            parts.append(pa.array([row[name] for row in records], type=ITEM_IDS))
        del items, records
        store.release_buffers()  # each chunk's lookup scans every row group of the columns it reads
    # by case id (study-level case ids need not follow patient order); case ids are unique
    case_ids = columns.get("case_id", [])
    order = sorted(range(len(case_ids)), key=case_ids.__getitem__)
    at = pa.array(order, pa.int64())
    integral = _integral_names(con, [*targets, *covariates], item_columns)
    table = pd.DataFrame({name: item_id_column(pa.chunked_array(id_parts[name], type=ITEM_IDS).take(at))
                          if name in id_parts else
                          pd.array([None if is_missing(values[i]) else values[i] for i in order], dtype="Int64")
                          if name in integral else [values[i] for i in order] for name, values in columns.items()})
    del columns, id_parts, case_ids, order, at
    store.release_buffers()  # the type look-ups scanned the labels and attrs
    if require_target and targets:
        table = table.dropna(subset=list(targets)).reset_index(drop=True)

    moved = 0
    if split_from == "source":
        if table["source_split"].isna().all():
            raise CohortError("split_from='source' but no item carries a split; use split_from='hash'")
        per_patient = table.groupby("patient_id")["source_split"].agg(
            lambda s: s.fillna("train").value_counts().sort_index().idxmax())
        moved = int((table["source_split"].fillna("train") != table["patient_id"].map(per_patient)).sum())
        table["split"] = table["patient_id"].map(per_patient).map(_normalise_split_name)
    else:
        mapping = assign_splits(sorted(table["patient_id"].unique()), fractions, seed)
        table["split"] = table["patient_id"].map(mapping)
    table = table.drop(columns=["source_split"])
    if only_split is not None:
        table = table[table["split"] == only_split].reset_index(drop=True)
    meta = {
        "store": str(store.root),
        "case_level": case_level,
        "split_from": split_from,
        "fractions": list(fractions),
        "seed": seed,
        "cases_moved_to_keep_patients_in_one_split": moved,
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "medweave_version": __version__,
        "missingness": [],
    }
    if only_split is not None:
        meta["only_split"] = only_split
    return Cohort(table, mods, list(targets), list(covariates), meta)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _chunk_records(store: Store, items: pd.DataFrame, patient_ids: list[str], case_level: str,
                   mods: list[str], targets: Sequence[str], covariates: Sequence[str]) -> list[dict[str, Any]]:
    """The case rows of one chunk of patients (``items``: all of their items, ordered by item id)."""
    # QA items belong to the image they ask about: place them in that image's case.
    if case_level == "study":
        items["case_id"] = items["study_id"].fillna(items["patient_id"])
    else:
        items["case_id"] = items["patient_id"]
    items["labels_d"] = items["labels"].map(lambda s: json.loads(s) if isinstance(s, str) and s else {})
    patients = store.con.execute("SELECT * FROM patients WHERE patient_id IN (SELECT unnest(?)) "
                                 "ORDER BY patient_id", [patient_ids]).df().set_index("patient_id")
    patients["attrs_d"] = patients["attrs"].map(lambda s: json.loads(s) if isinstance(s, str) and s else {})

    def lookup(name: str, g: pd.DataFrame, pid: str, combine) -> Any:
        if name in g.columns and name not in ("labels_d",):
            return combine(g[name].tolist())
        vals = [d.get(name) for d in g["labels_d"] if name in d]
        if vals:
            return combine(vals)
        if pid in patients.index:
            prow = patients.loc[pid]
            if name in patients.columns and prow[name] is not None:
                return prow[name]
            return prow["attrs_d"].get(name)
        return None

    records = []
    for case_id, g in items.groupby("case_id", sort=True):
        pid = g["patient_id"].iloc[0]
        row: dict[str, Any] = {"case_id": case_id, "patient_id": pid,
                               "source_split": _first_valid(g["split"].tolist())}
        for m in mods:
            ids = sorted(g.loc[g["modality"] == m, "item_id"].tolist())
            row[f"{m}_items"] = ids
            row[f"{m}_present"] = bool(ids)
        for name in targets:
            row[name] = lookup(name, g, pid, _combine_target)
        for name in covariates:
            row[name] = lookup(name, g, pid, _first_valid)
        records.append(row)
    return records


def _normalise_split_name(name: str) -> str:
    low = str(name).lower()
    if low in ("val", "validation", "dev"):
        return "valid"
    return low
