"""CSV and TSV tables (plain or gzipped), in wide or long form, described by a small TOML mapping.

WIDE form: each row (a patient, a stay, a study) becomes one TABLE item; its remaining columns go to
``meta["values"]`` ({column: value}, numbers as numbers, dates shifted to ISO text, free text scrubbed).
LONG form: each row is one observation (patient, time, code, value, unit) and becomes one TABLE item
with the fields ``code``, ``value_num`` (or ``value_text`` when the value is not a number), ``unit``
and ``time``; other kept columns go to ``meta["values"]``.

The mapping (TOML) names the roles of the columns. Keys of one table section::

    form = "wide" | "long"          patient = "subject_id"       study = "hadm_id"
    time = "admittime"              time_offset = "labresultoffset"   offset_unit = "minutes"
    code = "labname"                value = "labresult"          unit = "labmeasurenameinterface"
    code_system = "ICD9-CM"         label = "expire_flag"        labels = ["a", "b"]
    split = "fold"                  age = "age"                  birth_date = "dob"
    sex = "gender"                  study_date = "admittime"     study_description = "diagnosis"
    identifiers = ["name", "mrn"]   drop = ["row_id"]            dates = ["dischtime"]
    text = ["diagnosis"]            date_format = "%d/%m/%Y"     skip = true
    join = [{file = "patient.csv", on = "patientunitstayid", columns = ["uniquepid"]}]

A mapping file either holds one section at its top level, or several under ``[files."NAME"]``
(NAME = the file name, with or without its ``.csv``/``.gz`` suffixes), the top-level keys then
being defaults for every file. Where the mapping comes from: the ingest option ``mapping`` (a path),
else a sidecar ``<table>.mapping.toml`` beside the file, else ``medweave-mapping.toml`` in its
folder, else nothing: the table is read as wide with a patient column guessed from common names.

    columns = {"Username" = "pseudonymise", "visit" = "shift", "Company" = "keep", "fax" = "drop"}

De-identification: the patient column becomes a keyed pseudonym, the study column a study id. Every
other column gets an action: declared in ``columns`` (keep, drop, shift, pseudonymise = a keyed
token that keeps equal values equal, text = scrubbed), or in the older lists (``identifiers`` and
``drop``: dropped; ``dates``: shifted; ``text``: scrubbed), else judged by the meaning of its name and
by its values (``medweave.store.deid_table``): identifiers (names, e-mail, phone, card and identity
numbers, addresses, ...) are dropped with a warning naming them, columns of dates (ISO, dd-mm-yyyy
and other layouts) are shifted per patient. ``birth_date`` is only used to compute ``age`` and then
dropped; string cells of several words (and every cell of ``text`` columns) are scrubbed.

Relative times (eICU's minute offsets from unit admission) are not dates: ``time`` stays NULL and
the offset goes to ``meta["time_offset_min"]`` (converted from ``offset_unit`` to minutes), so no
synthetic calendar is invented.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ...store.catalog import Item, Modality
from ...store.deid_table import SAMPLE, date_layout, identifier_by_content, identifier_by_name, parse_action
from ..base import Adapter, IngestContext, IngestError, Unit, quoted

TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")
FOLDER_MAPPING = "medweave-mapping.toml"
SIDECAR_SUFFIX = ".mapping.toml"
MAPPINGS_DIR = Path(__file__).resolve().parents[1] / "mappings"

# Normalised (lower case, letters and digits only) column names tried, in order, as the patient.
PATIENT_COLUMN_GUESSES = (
    "patientid", "subjectid", "uniquepid", "patientunitstayid", "personid", "participantid",
    "patient", "subject", "pid", "caseid",
)
OFFSET_MINUTES = {"seconds": 1 / 60, "minutes": 1.0, "hours": 60.0, "days": 1440.0}
MAX_AGE = 120.0  # ages above this are the data set's masking (MIMIC's shifted DOB), not real ages
AGE_OVER_89 = 90.0  # "> 89" (eICU, HIPAA) is stored as 90


def builtin_mapping(name: str) -> Path:
    """The path of a mapping shipped with medweave (``mimic-iii-demo``, ``eicu-demo``)."""
    path = MAPPINGS_DIR / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in MAPPINGS_DIR.glob("*.toml"))
        raise IngestError(f"no built-in mapping {name!r}; available: {', '.join(known) or '(none)'}")
    return path


def table_name(path: Path) -> str:
    """The file name without its table suffix (``PATIENTS.csv.gz`` -> ``PATIENTS``)."""
    name = path.name
    for suffix in sorted(TABLE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _norm(column: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(column).lower())


# --- the mapping -------------------------------------------------------------------------------


@dataclass
class TableSpec:
    """The validated mapping section of one table: which column plays which role."""

    form: str = "wide"
    patient: str | None = None
    study: str | None = None
    time: str | None = None
    time_offset: str | None = None
    offset_unit: str = "minutes"
    code: str | None = None
    value: str | None = None
    unit: str | None = None
    code_system: str | None = None
    label: str | None = None
    labels: list[str] = field(default_factory=list)
    split: str | None = None
    age: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    identifiers: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    date_format: str | None = None
    skip: bool = False
    join: list[dict[str, Any]] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)  # column -> keep|drop|shift|pseudonymise|text

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "TableSpec":
        """Build a spec from a mapping section; an unknown key or a bad value raises IngestError."""
        allowed = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise IngestError(f"{where}: unknown mapping key(s) {unknown}; allowed: {', '.join(allowed)}")
        values = dict(data)
        if isinstance(values.get("join"), dict):
            values["join"] = [values["join"]]
        for key, value in values.items():
            kind = allowed[key].type
            if key == "columns":
                if not isinstance(value, dict):
                    raise IngestError(f"{where}: mapping key 'columns' must be a table of column = action, "
                                      f"got {value!r}")
                try:
                    values["columns"] = {str(c): parse_action(a, f"{where}, columns.{c}") for c, a in value.items()}
                except ValueError as exc:
                    raise IngestError(str(exc)) from None
                continue
            if "list" in kind and not (isinstance(value, list) and all(isinstance(v, (str, dict)) for v in value)):
                raise IngestError(f"{where}: mapping key {key!r} must be a list, got {value!r}")
            if kind.startswith("str") and not isinstance(value, str):
                raise IngestError(f"{where}: mapping key {key!r} must be a column name (text), got {value!r}")
        spec = cls(**values)
        spec._check(where)
        return spec

    def _check(self, where: str) -> None:
        if self.form not in ("wide", "long"):
            raise IngestError(f"{where}: mapping key 'form' is {self.form!r}; allowed: wide, long")
        if self.form == "long" and not self.code:
            raise IngestError(f"{where}: a long table needs a 'code' column in its mapping")
        if self.offset_unit not in OFFSET_MINUTES:
            raise IngestError(f"{where}: 'offset_unit' is {self.offset_unit!r}; allowed: {', '.join(OFFSET_MINUTES)}")
        for j in self.join:
            if not isinstance(j, dict) or {"file", "on", "columns"} - set(j):
                raise IngestError(f"{where}: each 'join' needs keys file, on, columns; got {j!r}")

    def label_columns(self) -> list[str]:
        return list(dict.fromkeys(([self.label] if self.label else []) + self.labels))

    def date_columns(self) -> list[str]:
        """Every column parsed as a date (and so shifted)."""
        cols = [self.time, self.birth_date, self.study_date, *self.dates]
        return list(dict.fromkeys(c for c in cols if c))

    def role_columns(self) -> dict[str, str]:
        """{column: role} for every column named by a single-column role."""
        roles = {}
        for role in ("patient", "study", "time", "time_offset", "code", "value", "unit", "label", "split",
                     "age", "birth_date", "sex", "study_date", "study_description"):
            col = getattr(self, role)
            if col:
                roles.setdefault(col, role)
        for col in self.labels:
            roles.setdefault(col, "labels")
        for key in ("identifiers", "drop", "dates", "text"):
            for col in getattr(self, key):
                roles.setdefault(col, key)
        for col in self.columns:
            roles.setdefault(col, "columns")
        return roles

    def hidden_columns(self) -> set[str]:
        """Columns that never go to ``meta["values"]``: ids, targets, and what has its own field."""
        hidden = {self.patient, self.study, self.time, self.time_offset, self.code, self.value, self.unit,
                  self.split, self.birth_date, *self.label_columns(), *self.identifiers, *self.drop}
        return {c for c in hidden if c}


def load_mapping(path: Path, cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse a TOML mapping file (cached per run in ``cache``); bad TOML raises IngestError."""
    key = str(Path(path).resolve())
    if cache is not None and key in cache:
        return cache[key]
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IngestError(f"mapping file {path} not found") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise IngestError(f"mapping file {Path(path).name} is not valid TOML: {exc}") from exc
    if cache is not None:
        cache[key] = data
    return data


def mapping_section(mapping: dict[str, Any], path: Path) -> dict[str, Any]:
    """The mapping keys for ``path``: its ``[files."NAME"]`` section over the top-level defaults."""
    defaults = {k: v for k, v in mapping.items() if k != "files"}
    files = mapping.get("files") or {}
    for name in (path.name, table_name(path)):
        if name in files:
            if not isinstance(files[name], dict):
                raise IngestError(f"mapping section files.{name} must be a table of keys, got {files[name]!r}")
            return {**defaults, **files[name]}
    return defaults


def find_mapping(path: Path, options: dict[str, Any]) -> Path | None:
    """The mapping file for a table: the ``mapping`` option (a path, or the name of a built-in
    mapping), a sidecar, a folder mapping, or None."""
    if options.get("mapping"):
        given = Path(options["mapping"])
        if not given.exists() and (MAPPINGS_DIR / f"{given.name}.toml").is_file():
            return MAPPINGS_DIR / f"{given.name}.toml"
        return given
    for candidate in (path.parent / f"{table_name(path)}{SIDECAR_SUFFIX}", path.parent / FOLDER_MAPPING):
        if candidate.is_file():
            return candidate
    return None


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- reading and checking ----------------------------------------------------------------------


class RawTable:
    """A table as read: its header and its rows of text cells (None for empty), in plain Python.
    No data frame per column: a table of 100,000 columns costs as much as its cells, not its columns."""

    def __init__(self, name: str, header: list[str], rows: list[list[str | None]],
                 samples: dict[str, list[str]] | None = None):
        self.name, self.header, self.rows = name, header, rows
        self.index = {c: j for j, c in enumerate(header)}
        self._columns: dict[str, list[str | None]] = {}
        self.samples = samples  # a slice of a table: each column's sample from the whole table's first rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> list[str]:
        return self.header

    def column(self, name: str) -> list[str | None]:
        if name not in self._columns:
            j = self.index[name]
            self._columns[name] = [r[j] for r in self.rows]
        return self._columns[name]

    def sample(self, name: str, n: int = SAMPLE) -> list[str]:
        """Up to ``n`` non-empty values of a column (from the first rows), stripped."""
        if self.samples is not None:
            return self.samples[name][:n]
        j, out = self.index[name], []
        for r in self.rows:
            v = r[j]
            if v is not None:
                out.append(v.strip())
                if len(out) >= n:
                    break
        return out

    def frame(self, names: list[str]) -> pd.DataFrame:
        """Some columns as a data frame of text (for the few columns that play a role)."""
        return pd.DataFrame({c: pd.Series(self.column(c), dtype=object) for c in dict.fromkeys(names)},
                            index=pd.RangeIndex(len(self.rows)))


class TableFile:
    """A CSV/TSV (optionally gzipped) read as a stream of records, never whole: ``records()`` reads
    the file from its start each time, yielding the header (stripped names) and then each row as text
    cells (None for empty), padded to the header's width. UTF-8 is expected; a file that is not UTF-8
    is read as Latin-1 throughout (``latin1()``, after a warning naming the first bad byte): what
    decoding the whole file first gave.

    Errors are the ones reading the whole file gave, in the same order: a file that cannot be read to
    its end, then a row wider than the header or a CSV error (``IngestError`` naming the line)."""

    PROBE_CHUNK = 1 << 20

    def __init__(self, path: Path):
        self.path = path
        self.sep = "\t" if ".tsv" in path.name.lower() else ","
        self.encoding = "utf-8-sig"

    def _binary(self):
        return (gzip.open if self.path.name.lower().endswith(".gz") else open)(self.path, "rb")

    def _unreadable(self, exc: BaseException) -> IngestError:
        return IngestError(f"{self.path.name} is not a readable table: {quoted(exc)}")

    def records(self) -> Iterator[list[str | None]]:
        name = self.path.name
        try:
            fh = io.TextIOWrapper(self._binary(), encoding=self.encoding, newline="")
        except (OSError, EOFError) as exc:
            raise self._unreadable(exc) from None
        with fh:
            reader = csv.reader(fh, delimiter=self.sep)
            try:
                header = next(reader, None)
                if not header or not any(h.strip() for h in header):
                    raise IngestError(f"{name} is empty: expected a header row of column names")
                header = [str(c).strip() for c in header]
                yield header
                width = len(header)
                for n, row in enumerate(reader, 2):
                    if not row:
                        continue
                    if len(row) > width:
                        raise IngestError(f"{name} is not a readable table: line {n} has {len(row)} fields, "
                                          f"the header {width}")
                    cells = [v if v != "" else None for v in row]
                    if len(cells) < width:
                        cells += [None] * (width - len(cells))
                    yield cells
            except csv.Error as exc:
                raise IngestError(f"{name} is not a readable table: {quoted(exc)}") from None
            except (OSError, EOFError) as exc:
                raise self._unreadable(exc) from None

    def probe(self) -> int | None:
        """Read the bytes to the end: a read error raises (as reading the whole file did first);
        returns where UTF-8 decoding fails (the position ``bytes.decode("utf-8-sig")`` names), else None."""
        dec = codecs.getincrementaldecoder("utf-8-sig")()
        bad, offset, bom = None, 0, False
        try:
            with self._binary() as fh:
                while chunk := fh.read(self.PROBE_CHUNK):
                    if offset == 0:
                        bom = chunk.startswith(codecs.BOM_UTF8)
                    if bad is None:
                        pending = len(dec.getstate()[0])
                        try:
                            dec.decode(chunk)
                        except UnicodeDecodeError as exc:
                            bad = exc.start if offset == 0 else offset - pending + exc.start - (3 if bom else 0)
                    offset += len(chunk)
        except (OSError, EOFError) as exc:
            raise self._unreadable(exc) from None
        if bad is None:
            pending = len(dec.getstate()[0])
            try:
                dec.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                bad = offset - pending + exc.start - (3 if bom else 0)
        return bad

    def read(self, consume, warn=None):
        """``consume(self.records())`` with the encoding settled: when reading as UTF-8 fails (a byte
        that is not UTF-8, or an error that reading the file whole would have met later), the file
        is probed to its end and read again as Latin-1 when it is not UTF-8."""
        try:
            return consume(self.records())
        except (UnicodeDecodeError, IngestError) as exc:
            if self.encoding != "utf-8-sig":
                raise
            bad = self.probe()
            if bad is None:
                if isinstance(exc, UnicodeDecodeError):  # (not reached: the probe finds what decoding did)
                    raise self._unreadable(exc) from None
                raise
        self.encoding = "latin-1"
        if warn:
            warn(f"not UTF-8 (byte {bad}): read as Latin-1")
        return consume(self.records())


def read_table(path: Path, warn=None) -> RawTable:
    """Read a CSV/TSV (optionally gzipped) whole as text cells, empty cells as None (a joined lookup
    table; a table to ingest is streamed, see ``CsvAdapter.read_slices``). UTF-8 is expected;
    other bytes are read as Latin-1 (with a warning through ``warn``)."""
    records = TableFile(path).read(list, warn)
    header = records[0]
    if len(set(header)) != len(header):
        raise IngestError(f"{path.name} has duplicate column names: expected each column once")
    return RawTable(table_name(path), header, records[1:])


def check_columns(columns: list[str], spec: TableSpec, path: Path) -> None:
    """Every column the mapping names must exist (identifier/drop lists may name absent ones)."""
    present = set(columns)
    for col, role in spec.role_columns().items():
        if col not in present and role not in ("identifiers", "drop", "columns"):
            raise IngestError(
                f"{path.name}: mapping column {col!r} ({role}) is missing; columns present: "
                f"{_listing(columns)}"
            )


def _listing(columns: list[str], limit: int = 40) -> str:
    shown = ", ".join(columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


def guess_patient_column(columns: list[str], path: Path) -> str:
    """The first column whose name is a common patient-id name, else IngestError naming the columns."""
    by_norm = {_norm(c): c for c in columns}
    for guess in PATIENT_COLUMN_GUESSES:
        if guess in by_norm:
            return by_norm[guess]
    raise IngestError(
        f"{path.name}: no patient column found (tried names like patient_id, subject_id, uniquepid); "
        f"columns present: {_listing(columns)}; name it with a mapping (patient = \"COLUMN\")"
    )


class _Joiner:
    """The mapping's joins (columns from other tables of the same folder, a left join keeping the row
    order), applied row by row: each joined table is read whole once per run (a lookup table) and
    its key looked up per row. Joins apply in order: a later one may join on an earlier one's column."""

    def __init__(self, header: list[str], spec: TableSpec, path: Path, cache: dict[str, Any]):
        self.header = list(header)
        index = {c: j for j, c in enumerate(self.header)}
        self.steps: list[tuple[int, dict, list[list[str | None]]]] = []
        for j in spec.join:
            other_path = path.parent / j["file"]
            key = str(other_path.resolve())
            if key not in cache:
                if not other_path.is_file():
                    raise IngestError(f"{path.name}: join table {j['file']} not found beside it")
                cache[key] = read_table(other_path)
            other = cache[key]
            on, cols = j["on"], list(j["columns"])
            for col in [on, *cols]:
                if col not in other.index:
                    raise IngestError(f"{path.name}: join column {col!r} is missing from {j['file']}; "
                                      f"columns present: {_listing(other.columns)}")
            if on not in index:
                raise IngestError(f"{path.name}: join key {on!r} is missing; columns present: {_listing(self.header)}")
            clash = [c for c in cols if c in index]
            if clash:
                raise IngestError(f"{path.name}: join columns {clash} already exist in the table")
            keys = other.column(on)
            if len(set(keys)) != len(keys):
                raise IngestError(f"{path.name}: join key {on!r} is not unique in {j['file']}: expected one row per key")
            self.steps.append((index[on], {k: i for i, k in enumerate(keys)}, [other.column(c) for c in cols]))
            for col in cols:
                index[col] = len(self.header)
                self.header.append(col)

    def extend(self, row: list[str | None]) -> list[str | None]:
        for on, lookup, values in self.steps:
            at = lookup.get(row[on])
            row += [v[at] if at is not None else None for v in values]
        return row


class _ColumnStats:
    """What deciding a column needs from the whole table: its first ``SAMPLE`` values (stripped) and
    whether every value is a number (``as_numbers``: then all integral or not)."""

    __slots__ = ("sample", "numeric", "present", "integral")

    def __init__(self) -> None:
        self.sample: list[str] = []
        self.numeric, self.present, self.integral = True, False, True

    def add(self, v: str) -> None:
        if len(self.sample) < SAMPLE:
            self.sample.append(v.strip())
        if self.numeric:
            x = _number(v)
            if x is None:
                self.numeric = False
            else:
                self.present = True
                if self.integral and not (x == int(x) and abs(x) < 2**53):
                    self.integral = False


@dataclass
class TableScan:
    """The first pass over a table to ingest (``CsvAdapter.read_slices``): its columns (joined ones
    included), row count, each column's statistics and its raw patient keys (distinct)."""

    header: list[str]
    rows: int
    stats: dict[str, _ColumnStats]
    patients: set[str]

    def samples(self) -> dict[str, list[str]]:
        return {c: st.sample for c, st in self.stats.items()}

    def numbers(self, col: str, values: list[str | None]) -> list[Any] | None:
        """``as_numbers`` of the whole column, applied to a slice of it."""
        st = self.stats[col]
        if not (st.numeric and st.present):
            return None
        if st.integral:
            return [None if v is None else int(float(v)) for v in values]
        return [None if v is None else float(v) for v in values]


# --- column conversions --------------------------------------------------------------------------


DATE_EXPECTED = ("ISO 8601, like 2020-01-31 or 2020-01-31 13:45:00, or one layout throughout such as "
                 "dd-mm-yyyy, dd/mm/yyyy, dd.mm.yyyy, yyyymmdd or 3 Mar 2012")


def parse_dates(values: pd.Series, column: str, date_format: str | None, sample: list[str] | None = None,
                offset: int = 0) -> pd.Series:
    """Parse a text column as datetimes: with ``date_format``, else in the layout its values share
    (``date_layout``), else as ISO 8601. A value that does not parse raises IngestError with its row
    number and the expected format (never the value itself: a date may identify). For a slice of a
    table: ``sample`` is the whole column's first values (the layout), ``offset`` the rows before it."""
    if sample is None:
        sample = [str(v).strip() for v in values.dropna().iloc[:SAMPLE]]
    layout = None if date_format else date_layout(sample[:SAMPLE])
    text = values.astype(object).where(values.notna(), None)
    text = text.map(lambda v: v.strip() if isinstance(v, str) else v)
    if date_format:
        parsed = pd.to_datetime(text, format=date_format, errors="coerce", utc=True)
    elif layout is None or layout.fmt:
        parsed = pd.to_datetime(text, format=layout.fmt if layout else "ISO8601", errors="coerce", utc=True)
    else:
        parsed = pd.to_datetime(text, format="mixed", dayfirst=layout.dayfirst, errors="coerce", utc=True)
    parsed = parsed.dt.tz_convert(None)  # aware values in UTC, naive ones as written
    bad = values.notna() & parsed.isna()
    if bad.any():
        row = offset + int(np.flatnonzero(bad.to_numpy())[0]) + 1
        expected = date_format or (layout.name if layout else DATE_EXPECTED)
        raise IngestError(f"column {column!r}, row {row}: not a date; expected {expected} "
                          f"(set date_format in the mapping for another layout)")
    return parsed.astype("datetime64[us]")


def parse_ages(values: pd.Series) -> pd.Series:
    """Ages as floats: numbers as they are, ``> 89`` as 90, anything else missing."""
    text = values.astype("string").str.strip()
    ages = pd.to_numeric(text, errors="coerce").astype("float64")
    over = text.str.fullmatch(r">\s*89").fillna(False).astype(bool)
    return ages.mask(over, AGE_OVER_89)


def normalise_sex(values: pd.Series) -> pd.Series:
    """Map common spellings to ``F``/``M``; other non-empty values are kept as written."""
    text = values.astype("string").str.strip()
    mapped = text.str.upper().map({"F": "F", "FEMALE": "F", "W": "F", "WOMAN": "F",
                                   "M": "M", "MALE": "M", "MAN": "M"})
    return mapped.fillna(text).replace({"": pd.NA})


_NUMBER_RE = re.compile(r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$")
_LEADING_ZERO_RE = re.compile(r"^\s*[+-]?0\d")


def _number(v: str) -> float | None:
    """A cell as a finite number, else None (text, a code with leading zeros, 1e999)."""
    if not _NUMBER_RE.match(v) or _LEADING_ZERO_RE.match(v):
        return None
    x = float(v)
    return x if math.isfinite(x) else None


def as_numbers(values: list[str | None]) -> list[Any] | None:
    """The column as numbers (ints where integral) when every present value is a finite number, else
    None. Codes written with leading zeros (``00006494300``) stay text, so does a column holding
    ``1e999`` (it overflowed ``int`` before: the unit failed)."""
    out: list[Any] = []
    present = False
    for v in values:
        if v is None:
            out.append(None)
            continue
        x = _number(v)
        if x is None:
            return None
        present = True
        out.append(x)
    if not present:
        return None
    finite = [x for x in out if x is not None]
    if all(x == int(x) and abs(x) < 2**53 for x in finite):
        return [None if x is None else int(x) for x in out]
    return out


def to_objects(values: pd.Series) -> list[Any]:
    """Plain Python values (None for missing) for JSON and the catalog."""
    arr = values.astype(object).to_numpy()
    return [None if (v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT) else v
            for v in arr]


# --- one table -----------------------------------------------------------------------------------


@dataclass
class ColumnPlan:
    """What happens to one value column, and why (for the report)."""

    action: str  # keep | drop | shift | pseudonymise | text | plain
    why: str = ""


class _Table:
    """A table being turned into items: the raw cells plus the de-identified columns computed from them."""

    def __init__(self, raw: RawTable, spec: TableSpec, path: Path, ctx: IngestContext,
                 scan: TableScan | None = None, offset: int = 0, plans: dict[str, "ColumnPlan"] | None = None):
        """``raw`` is the whole table, or (with ``scan``, the whole table's first pass) the slice of it
        that starts after ``offset`` rows; ``plans``: the columns' actions decided for the first slice."""
        self.raw, self.spec, self.path, self.ctx = raw, spec, path, ctx
        self.scan, self.offset = scan, offset
        self.name = raw.name
        self.n = len(raw)
        self.plans = plans if plans is not None else self._plan_columns()
        roles = [c for c in spec.role_columns() if c in raw.index]
        dated = [c for c, p in self.plans.items() if p.action == "shift"]
        self.df = raw.frame(roles + dated)
        self.raw_pid = self._raw_patients()
        unique = pd.unique(self.raw_pid)
        pid_of = {r: ctx.patient(r) for r in unique}
        self.pid = self.raw_pid.map(pid_of)
        anchor = dt.datetime(2000, 1, 1)
        shift_of = {p: ctx.shift(p, anchor) - anchor for p in pid_of.values()}
        self.shift = pd.to_timedelta(self.pid.map(shift_of))
        self.known = self._known_identifiers()
        self._scrubbed: dict[tuple[str, tuple[str, ...]], str] = {}
        sample = raw.samples.get if raw.samples is not None else (lambda c: None)
        self.dates = {c: parse_dates(self.df[c], c, spec.date_format, sample(c), offset) + self.shift
                      for c in spec.date_columns()}
        for c in dated:
            if c not in self.dates:
                self.dates[c] = parse_dates(self.df[c], c, spec.date_format if c in spec.dates else None, sample(c),
                                            offset) + self.shift
        if plans is None:
            self._report_dropped()

    def _plan_columns(self) -> dict[str, ColumnPlan]:
        """The action for every column outside the mapping's roles: declared in ``columns`` (or the
        older ``identifiers`` / ``drop`` / ``dates`` / ``text`` lists), else read from the meaning of
        the column's name and from its values (``medweave.store.deid_table``)."""
        spec, raw = self.spec, self.raw
        hidden = spec.hidden_columns()
        plans: dict[str, ColumnPlan] = {}
        for c in raw.columns:
            if c in spec.columns:
                plans[c] = ColumnPlan(spec.columns[c], "declared in the mapping")
            elif c in spec.identifiers or c in spec.drop:
                plans[c] = ColumnPlan("drop", "declared in the mapping")
            elif c in hidden:
                continue
            elif c in spec.dates:
                plans[c] = ColumnPlan("shift", "declared in the mapping")
            elif c in spec.text:
                plans[c] = ColumnPlan("text", "declared in the mapping")
            elif c in (spec.age, spec.sex, spec.study_description):
                plans[c] = ColumnPlan("plain")
            elif (kind := identifier_by_name(c)) is not None:
                plans[c] = ColumnPlan("drop", f"its name says {kind}")
            else:
                sample = raw.sample(c)
                numeric = as_numbers(sample) is not None
                # plain numbers can only be card numbers (13+ digits) or compact dates (yyyymmdd)
                layout = date_layout(sample) if not numeric or len(sample[0]) == 8 else None
                kind = (identifier_by_content(sample) if layout is None and (not numeric or len(sample[0]) >= 13)
                        else None)
                if layout is not None:  # before identifiers: 13-01-2019 also looks like a phone number
                    plans[c] = ColumnPlan("shift", f"its values are dates ({layout.name})")
                elif kind is not None:
                    plans[c] = ColumnPlan("drop", f"its values look like {kind}")
                else:
                    plans[c] = ColumnPlan("plain")
        return plans

    def _report_dropped(self) -> None:
        inferred = [(c, p.why) for c, p in self.plans.items() if p.action == "drop" and "declared" not in p.why]
        if inferred and not self.ctx.deid.keep_phi:
            shown = "; ".join(f"{c} ({why})" for c, why in inferred[:30])
            more = f"; and {len(inferred) - 30} more" if len(inferred) > 30 else ""
            self.ctx.warn(f"table {self.name}: {len(inferred)} column(s) not stored, as identifiers: {shown}{more}. "
                          f"Declare a column in the mapping to change this, e.g. columns = {{ \"{inferred[0][0]}\" = "
                          "\"keep\" } (actions: keep, drop, shift, pseudonymise, text)")

    def _raw_patients(self) -> pd.Series:
        raw = self.df[self.spec.patient].astype("string").str.strip()
        empty = raw.isna() | (raw == "")
        if empty.any():
            row = self.offset + int(np.flatnonzero(empty.to_numpy())[0]) + 1
            raise IngestError(f"{self.path.name}: row {row} has no patient id in column {self.spec.patient!r}")
        return raw.astype(object)

    def _known_identifiers(self) -> list[tuple[str, ...]]:
        """Per row, the raw identifier strings that must not survive in scrubbed text."""
        cols = [self.spec.patient, self.spec.study, *self._phi_columns()]
        cols = [c for c in dict.fromkeys(cols) if c and c in self.raw.index]
        columns = [self.raw.column(c) for c in cols]
        words = []
        for values in zip(*columns) if columns else [()] * self.n:
            found = set()
            for v in values:
                if v and v.strip():
                    found.add(v.strip())
                    if " " in v.strip() or "^" in v:
                        found.update(w for w in re.split(r"[\s^,]+", v) if len(w) >= 3)
            words.append(tuple(sorted(found)))
        return words

    def _phi_columns(self) -> list[str]:
        """Columns not stored as written because they identify (dropped or pseudonymised)."""
        return [c for c, p in self.plans.items() if p.action in ("drop", "pseudonymise")]

    def value_columns(self) -> list[str]:
        return [c for c, p in self.plans.items() if p.action != "drop"]

    def scrub_cells(self, values: list[Any], always: bool) -> list[Any]:
        """Scrub free-text cells (all cells when ``always``, else those with several words or long)."""
        out = list(values)
        for i, v in enumerate(out):
            if isinstance(v, str) and (always or " " in v.strip() or len(v) > 24):
                key = (v, self.known[i])
                if key not in self._scrubbed:
                    self._scrubbed[key] = self.ctx.scrub(v, known=list(self.known[i]))
                out[i] = self._scrubbed[key]
        return out

    def cells(self, col: str) -> list[Any]:
        """A column as stored values: shifted ISO dates, pseudonyms, numbers, or (scrubbed) text."""
        if col in self.dates:
            return [None if v is None else v.isoformat() for v in to_objects(self.dates[col])]
        if col == self.spec.age:
            return to_objects(parse_ages(self.df[col]))
        values = self.raw.column(col)
        action = self.plans[col].action if col in self.plans else "plain"
        if action == "pseudonymise" and not self.ctx.deid.keep_phi:
            return [None if v is None else "H" + self.ctx.deid.keyed("cell", f"{col}\x1f{v.strip()}")[:16]
                    for v in values]
        nums = self.scan.numbers(col, values) if self.scan is not None else as_numbers(values)
        if nums is not None:
            return nums
        if action == "keep":
            return list(values)
        return self.scrub_cells(values, always=action == "text")

    def studies(self) -> list[str | None]:
        if not self.spec.study:
            return [None] * self.n
        raw = self.df[self.spec.study].astype("string").str.strip()
        pairs = pd.Series(list(zip(self.pid, raw.fillna(""))), index=raw.index)
        ids = {pair: (self.ctx.study(*pair) if pair[1] else None) for pair in pd.unique(pairs)}
        return [ids[p] for p in pairs]

    def ages(self) -> list[Any]:
        spec = self.spec
        if spec.age:
            ages = parse_ages(self.df[spec.age])
        elif spec.birth_date and spec.time:
            ages = (self.dates[spec.time] - self.dates[spec.birth_date]).dt.days / 365.25
        else:
            return [None] * self.n
        ages = ages.where((ages >= 0) & (ages <= MAX_AGE)).round(2)
        return to_objects(ages)

    def times(self, col: str | None) -> list[Any]:
        if not col:
            return [None] * self.n
        return [_pydatetime(v) for v in to_objects(self.dates[col])]

    def column(self, col: str | None, convert=None) -> list[Any]:
        if not col:
            return [None] * self.n
        return to_objects(convert(self.df[col]) if convert else self.df[col])

    def offsets(self) -> list[Any]:
        if not self.spec.time_offset:
            return [None] * self.n
        minutes = pd.to_numeric(self.df[self.spec.time_offset], errors="coerce") * OFFSET_MINUTES[self.spec.offset_unit]
        return to_objects(minutes)

    def label_values(self) -> dict[str, list[Any]]:
        return {c: self.cells(c) for c in self.spec.label_columns()}

    def long_values(self) -> tuple[list[Any], list[Any]]:
        """(value_num, value_text) per row: numbers where the value parses, text otherwise."""
        if not self.spec.value:
            return [None] * self.n, [None] * self.n
        raw = self.df[self.spec.value]
        nums = pd.to_numeric(raw, errors="coerce")
        text = to_objects(raw.where(nums.isna()))
        return to_objects(nums.astype("float64")), self.scrub_cells(text, always=False)

    def items(self) -> Iterator[Item]:
        """One TABLE item per row."""
        spec, ctx = self.spec, self.ctx
        n = len(self.df)
        pids, studies = list(self.pid), self.studies()
        ages, sexes = self.ages(), self.column(spec.sex, normalise_sex)
        times, offsets = self.times(spec.time), self.offsets()
        splits = self.column(spec.split)
        labels = self.label_values()
        value_cols = self.value_columns()
        values = {c: self.cells(c) for c in value_cols}
        study_dates = self.times(spec.study_date)
        descriptions = (self.scrub_cells(self.column(spec.study_description), always=True)
                        if spec.study_description else [None] * n)
        long = spec.form == "long"
        if long:
            codes, units = self.scrub_cells(self.column(spec.code), False), self.column(spec.unit)
            value_num, value_text = self.long_values()
        for i in range(n):
            fields: dict[str, Any] = {"format": "csv"}
            row_labels = {c: labels[c][i] for c in labels if labels[c][i] is not None}
            if spec.label and labels[spec.label][i] is not None:
                fields["label"] = str(labels[spec.label][i])
            for key, val in (("age", ages[i]), ("time", times[i]), ("split", splits[i])):
                if val is not None:
                    fields[key] = val
            if long:
                fields.update({k: v for k, v in (("code", codes[i]), ("value_num", value_num[i]),
                                                  ("value_text", value_text[i]), ("unit", units[i]))
                               if v is not None})
            meta: dict[str, Any] = {"table": self.name,
                                    "values": {c: values[c][i] for c in value_cols if values[c][i] is not None}}
            if offsets[i] is not None:
                meta["time_offset_min"] = offsets[i]
            if spec.code_system:
                meta["code_system"] = spec.code_system
            yield Item(
                patient_id=pids[i],
                study_id=studies[i],
                modality=Modality.TABLE,
                fields=fields,
                labels=row_labels,
                meta=meta,
                source_key=f"row {self.offset + i + 1}",
                patient_attrs={"namespace": ctx.namespace, "sex": sexes[i]},
                study_attrs={"date": study_dates[i].date() if study_dates[i] else None,
                             "description": descriptions[i]} if studies[i] else {},
            )


# --- the adapter ---------------------------------------------------------------------------------


class CsvAdapter(Adapter):
    """CSV/TSV tables (``.csv``, ``.tsv``, gzipped or not), wide or long, described by a mapping."""

    name = "csv"
    version = "1"
    option_names = ()  # the mapping is read into each unit's extras, its content counts there
    extensions = TABLE_SUFFIXES
    description = "CSV/TSV tables, wide or long form, with an optional TOML column mapping"

    def is_companion(self, path: Path) -> bool:
        """Mapping files beside tables are read with them, not ingested on their own."""
        return path.name == FOLDER_MAPPING or path.name.endswith(SIDECAR_SUFFIX)

    def units(self, path: Path, ctx: IngestContext) -> Iterator[Unit]:
        """One unit per table, carrying its resolved mapping section (and the hashes of the joined
        tables, so a change to them re-ingests). Problems surface later, in ``read``.

        The extras are the unit's fingerprint (with the table's bytes): they hold the mapping's
        content for this table (its section over the defaults, which is all of the file that reading
        the table uses), never the mapping file's path, so that the same mapping given from another
        place (a moved file, a fresh work folder) finds the table already stored. (Stores written
        before this change had the path in it: they read each table once more, then not again.)"""
        try:
            section, _mapping_path = self._section(path, ctx)
            if section.get("skip") is True:
                return
            extra: dict[str, Any] = {"mapping": section}
            joins = section.get("join") or []
            for j in [joins] if isinstance(joins, dict) else joins:
                other = path.parent / str(j.get("file", "")) if isinstance(j, dict) else None
                if other is not None and other.is_file():
                    extra.setdefault("join_sha256", {})[other.name] = sha256_file(other)
        except IngestError as exc:
            extra = {"error": str(exc)}
        yield Unit(path, extra=extra)

    def _section(self, path: Path, ctx: IngestContext) -> tuple[dict[str, Any], Path | None]:
        mapping_path = find_mapping(path, ctx.options)
        if mapping_path is None:
            return {}, None
        mapping = load_mapping(mapping_path, ctx.state.setdefault("csv_mappings", {}))
        return mapping_section(mapping, path), mapping_path

    streams = True  # the runner stores a table slice by slice (``read_slices``), in one transaction

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        """Every item of the table (the slices of ``read_slices`` one after the other). The file is
        parsed once and its records held (``whole``): the runner streams large tables instead."""
        slices = self.read_slices(unit, ctx, whole=True)
        first = next(slices, [])  # the first pass and its errors happen here, not when iterated
        return itertools.chain(first, itertools.chain.from_iterable(slices))

    def read_slices(self, unit: Unit, ctx: IngestContext, rows: int | None = None,
                    whole: bool = False) -> Iterator[list[Item]]:
        """The table's items, ``rows`` rows (default ``SLICE_ROWS``) at a time: memory holds one
        slice, never the whole table. A first pass over the file checks it (every error of a bad table
        is raised before the first slice, as reading it whole did) and gathers what deciding a column
        needs from the whole table (``TableScan``); every raw patient key is in ``ctx.seen_ids``
        before the first slice. The items are those of reading the table whole: same rows, same
        values, same ids. With ``whole`` the file is parsed once into a list of records that both
        passes read (a small table: no second parse of the file)."""
        if "error" in unit.extra:
            raise IngestError(unit.extra["error"])
        path = unit.path
        spec = TableSpec.from_dict(unit.extra.get("mapping", {}), f"mapping for {path.name}")
        tf = TableFile(path)
        cache = ctx.state.setdefault("csv_tables", {})
        held = tf.read(list, ctx.warn) if whole else None  # header + rows, decoded once
        scan, joiner = (_scan(iter(held), spec, path, cache) if held is not None
                        else tf.read(lambda records: _scan(records, spec, path, cache), ctx.warn))
        ctx.seen_ids.update(scan.patients)
        scan.patients = set()
        if not scan.rows:
            return
        step = max(1, rows or SLICE_ROWS)
        samples, plans, offset, name = scan.samples(), None, 0, table_name(path)
        records = iter(held) if held is not None else tf.records()
        next(records)  # the header
        while True:
            rows_in = itertools.islice(records, step)
            # (held records were extended by the scan already: ``_Joiner.extend`` works in place)
            chunk = list(rows_in) if held is not None else [joiner.extend(r) for r in rows_in]
            if not chunk:
                return
            table = _Table(RawTable(name, list(scan.header), chunk, samples), spec, path, ctx, scan, offset, plans)
            plans = table.plans
            yield list(table.items())
            offset += len(chunk)
            del chunk, table


SLICE_ROWS = 2_048  # table rows turned into items and stored at a time (about 7 KB of memory a row; was 10,000)


def _scan(records: Iterator[list[str | None]], spec: TableSpec, path: Path,
          cache: dict[str, Any]) -> tuple[TableScan, _Joiner]:
    """The first pass over a table: its rows checked as reading it whole checked them, and the
    errors raised in that order (a bad row, duplicate column names, the joins, the patient column, the
    mapping's columns, an empty patient id); each column's ``_ColumnStats``; the raw patient keys."""
    header = next(records)
    deferred: IngestError | None = None
    joiner = None
    try:
        joiner = _Joiner(header, spec, path, cache)
        if not spec.patient:
            spec.patient = guess_patient_column(joiner.header, path)
        check_columns(joiner.header, spec, path)
    except IngestError as exc:  # raised after the rows are checked, as before
        deferred = exc
    n, empty_row, patients = 0, None, set()
    stats: dict[str, _ColumnStats] = {}
    if deferred is None:
        columns = list(dict.fromkeys(joiner.header))
        at = [joiner.header.index(c) for c in columns]  # (a repeated name: its first column; refused below)
        col_stats = [_ColumnStats() for _ in columns]
        stats = dict(zip(columns, col_stats))
        pidx = joiner.header.index(spec.patient)
        tracked = list(zip(at, col_stats))
    for row in records:
        n += 1
        if deferred is not None:
            continue
        row = joiner.extend(row)
        for j, st in tracked:
            v = row[j]
            if v is not None:
                st.add(v)
        raw = row[pidx]
        raw = raw.strip() if raw is not None else ""
        if not raw:
            if empty_row is None:
                empty_row = n
        else:
            patients.add(raw)
    if len(set(header)) != len(header):
        raise IngestError(f"{path.name} has duplicate column names: expected each column once")
    if deferred is not None:
        raise deferred
    if empty_row is not None:
        raise IngestError(f"{path.name}: row {empty_row} has no patient id in column {spec.patient!r}")
    return TableScan(joiner.header, n, stats, patients), joiner


def _pydatetime(v: Any) -> Any:
    """A pandas timestamp as a datetime; one before year 1 (a date of year 0 or less, or shifted there by
    de-identification) has no datetime and is unknown, as an unparseable date is."""
    if v is None:
        return None
    try:
        return v.to_pydatetime()
    except (ValueError, OverflowError):
        return None
