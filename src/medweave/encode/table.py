"""Tabular features at case level: standardised numbers and categories, with missingness explicit.

The raw frame of a case gathers its cohort covariates (age, sex, view position, ...) and the values
of its ``table`` items (long form: one column per code, mean of numeric values or last text value;
wide form: one column per key of ``meta.values``). ``TabularFeaturizer`` is fitted on the training
split only and turns a frame into: standardised numbers (missing -> 0) each with a missing
indicator, and one-hot categories (missing -> all zeros, plus a missing indicator). The model's input
layer for this modality is linear, so one-hot categories followed by it are learned embeddings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..cohort.cohort import item_id_lists

MAX_CATEGORIES = 20


CASE_CHUNK = 2048  # cases whose table items are read together: memory holds one chunk's values


def tabular_frame(cohort, store, covariates: Sequence[str] | None = None, max_codes: int = 64,
                  chunk_cases: int = CASE_CHUNK) -> pd.DataFrame:
    """One row per cohort case (same order), one column per covariate or table code.

    The ``max_codes`` most frequent codes (over the cohort's table items) become columns: numeric
    codes (any value a number) by the mean of their values, the others by their last value. The
    items are read ``chunk_cases`` cases at a time, twice (a pass to count the codes, a pass to fill
    the rows), so memory holds one chunk's values and the case-level frame, not every table item of
    the cohort; the frame is the same as when all are read at once."""
    covariates = list(cohort.covariates if covariates is None else covariates)
    frame = cohort.table[covariates].copy() if covariates else pd.DataFrame(index=cohort.table.index)
    if not ("table" in cohort.modalities and cohort.table["table_present"].any()):
        return frame
    n, step = len(frame), max(1, chunk_cases)
    ids_per_case = cohort.table["table_items"]

    def chunk_records(first: int) -> list[tuple[int, int, int, str, Any]]:
        """(row position in the catalog, order within the row, case, code, value) of a chunk's items."""
        item_case = {iid: first + i for i, ids in enumerate(item_id_lists(ids_per_case, first, first + step))
                     for iid in ids}
        if not item_case:
            return []
        rows = store.lookup(lambda con: con.execute(  # it reads every row group of these columns
            "SELECT rowid, item_id, code, value_num, value_text, meta FROM items WHERE modality = 'table' "
            "AND item_id IN (SELECT unnest(?))", [list(item_case)]).fetchall())
        out = []
        for rowid, iid, code, vnum, vtext, meta in rows:
            case = item_case[iid]
            if code is not None:
                out.append((rowid, 0, case, str(code), vnum if vnum is not None else vtext))
            elif meta:
                for j, (k, v) in enumerate((json.loads(meta).get("values") or {}).items()):
                    out.append((rowid, j, case, str(k), v))
        return out

    # pass 1: each code's count, first place in catalog order, and whether any of its values is a number
    counts: dict[str, int] = {}
    first_at: dict[str, tuple[int, int]] = {}
    numeric_any: set[str] = set()
    for first in range(0, n, step):
        recs = chunk_records(first)
        if not recs:
            continue
        codes = [r[3] for r in recs]
        num = pd.to_numeric(pd.Series([r[4] for r in recs], dtype=object), errors="coerce")
        numeric_any.update(c for c, ok in zip(codes, num.notna()) if ok)
        for r in recs:
            counts[r[3]] = counts.get(r[3], 0) + 1
            if r[3] not in first_at or r[:2] < first_at[r[3]]:
                first_at[r[3]] = r[:2]
    if not counts:
        return frame
    # The most frequent codes, ties as one read of every item in catalog order gives them: each
    # code repeated by its count, in the order the codes first appear (references, not copies).
    order = sorted(counts, key=first_at.__getitem__)
    top = list(pd.Series(np.repeat(np.array(order, dtype=object), [counts[c] for c in order]))
               .value_counts().index[:max_codes])
    numeric_codes = sorted(c for c in top if c in numeric_any)
    text_codes = sorted(c for c in top if c not in numeric_any)
    keep = set(top)
    # pass 2: the case rows, chunk by chunk (every item of a case is in its chunk)
    parts = []
    for first in range(0, n, step):
        recs = [r for r in chunk_records(first) if r[3] in keep]
        recs.sort(key=lambda r: r[:2])  # catalog order, as one read gives them: "last" is the same value
        if not recs:
            continue
        long = pd.DataFrame([r[2:] for r in recs], columns=["case", "code", "value"])
        num = pd.to_numeric(long["value"], errors="coerce")
        long_num = long.assign(v=num).dropna(subset=["v"])
        long_num = long_num[long_num["code"].isin(numeric_codes)]
        wide_num = long_num.pivot_table(index="case", columns="code", values="v", aggfunc="mean")
        wide_txt = long[long["code"].isin(text_codes)].groupby(["case", "code"])["value"].last().unstack()
        parts.append(pd.concat([wide_num.reindex(columns=numeric_codes), wide_txt.reindex(columns=text_codes)],
                               axis=1))
    if not parts:  # no code wanted (max_codes 0)
        return frame
    extra = pd.concat(parts, axis=0).reindex(range(n))
    extra.index = frame.index
    extra.columns = [f"table:{c}" for c in extra.columns]
    return pd.concat([frame, extra], axis=1)


@dataclass
class TabularFeaturizer:
    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)  # column -> (mean, std)
    categorical: dict[str, list[str]] = field(default_factory=dict)  # column -> categories

    def fit(self, frame: pd.DataFrame) -> "TabularFeaturizer":
        for col in frame.columns:
            values = frame[col]
            num = pd.to_numeric(values, errors="coerce")
            if values.notna().sum() == 0:
                continue
            if num.notna().sum() >= 0.9 * values.notna().sum():
                mu, sd = float(num.mean()), float(num.std(ddof=0))
                self.numeric[col] = (mu, sd if sd > 1e-8 else 1.0)
            else:
                cats = values.dropna().astype(str).value_counts().index[:MAX_CATEGORIES]
                self.categorical[col] = sorted(cats)
        return self

    @property
    def names(self) -> list[str]:
        out = []
        for col in self.numeric:
            out += [col, f"{col}:missing"]
        for col, cats in self.categorical.items():
            out += [f"{col}={c}" for c in cats] + [f"{col}:missing"]
        return out

    @property
    def dim(self) -> int:
        return len(self.names)

    def groups(self) -> dict[str, list[int]]:
        """Feature indices per source column (for per-feature attributions with feature masks)."""
        out: dict[str, list[int]] = {}
        for i, n in enumerate(self.names):
            base = n.split(":missing")[0].split("=")[0]
            out.setdefault(base, []).append(i)
        return out

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Features (cases, dim) and presence (cases,): a case with no value at all is absent."""
        cols = []
        any_value = np.zeros(len(frame), dtype=bool)
        for col, (mu, sd) in self.numeric.items():
            v = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64) if col in frame else np.full(len(frame), np.nan)
            miss = np.isnan(v)
            any_value |= ~miss
            cols += [np.where(miss, 0.0, (v - mu) / sd), miss.astype(np.float64)]
        for col, cats in self.categorical.items():
            v = frame[col].astype("string") if col in frame else pd.Series([pd.NA] * len(frame), dtype="string")
            miss = v.isna().to_numpy()
            any_value |= ~miss
            hot = [(v == c).fillna(False).to_numpy(dtype=bool) for c in cats]
            unmatched = ~miss & ~np.logical_or.reduce(hot, axis=0) if hot else np.zeros(len(frame), dtype=bool)
            if unmatched.any():  # "2" and "2.0" are one category (see cohort.integral_spelling)
                from ..cohort import class_lookup

                find = class_lookup(list(cats))
                for r in np.flatnonzero(unmatched):
                    j = find(str(v.iloc[r]))
                    if j is not None:
                        hot[j][r] = True
            cols += [h.astype(np.float64) for h in hot]
            cols.append(miss.astype(np.float64))
        x = np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((len(frame), 0), np.float32)
        return x, any_value

    def to_dict(self) -> dict[str, Any]:
        return {"numeric": {k: list(v) for k, v in self.numeric.items()}, "categorical": self.categorical}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TabularFeaturizer":
        return cls({k: tuple(v) for k, v in d["numeric"].items()}, {k: list(v) for k, v in d["categorical"].items()})
