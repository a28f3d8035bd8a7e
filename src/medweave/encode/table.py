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

MAX_CATEGORIES = 20


def tabular_frame(cohort, store, covariates: Sequence[str] | None = None, max_codes: int = 64) -> pd.DataFrame:
    """One row per cohort case (same order), one column per covariate or table code."""
    covariates = list(cohort.covariates if covariates is None else covariates)
    frame = cohort.table[covariates].copy() if covariates else pd.DataFrame(index=cohort.table.index)
    if "table" in cohort.modalities and cohort.table["table_present"].any():
        item_case = {iid: i for i, ids in enumerate(cohort.table["table_items"]) for iid in ids}
        rows = store.con.execute(
            "SELECT item_id, code, value_num, value_text, meta FROM items WHERE modality = 'table' "
            "AND item_id IN (SELECT unnest(?))", [list(item_case)]).fetchall()
        records: list[tuple[int, str, Any]] = []
        for iid, code, vnum, vtext, meta in rows:
            case = item_case[iid]
            if code is not None:
                records.append((case, str(code), vnum if vnum is not None else vtext))
            elif meta:
                for k, v in (json.loads(meta).get("values") or {}).items():
                    records.append((case, str(k), v))
        if records:
            long = pd.DataFrame(records, columns=["case", "code", "value"])
            top = long["code"].value_counts().index[:max_codes]
            long = long[long["code"].isin(top)]
            num = pd.to_numeric(long["value"], errors="coerce")
            numeric_codes = set(long.loc[num.notna(), "code"])
            long_num = long.assign(v=num).dropna(subset=["v"])
            wide_num = long_num.pivot_table(index="case", columns="code", values="v", aggfunc="mean")
            wide_txt = (long[~long["code"].isin(numeric_codes)]
                        .groupby(["case", "code"])["value"].last().unstack())
            extra = pd.concat([wide_num, wide_txt], axis=1).reindex(range(len(frame)))
            extra.index = frame.index
            extra.columns = [f"table:{c}" for c in extra.columns]
            frame = pd.concat([frame, extra], axis=1)
    return frame


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
            for c in cats:
                cols.append((v == c).fillna(False).to_numpy(dtype=np.float64))
            cols.append(miss.astype(np.float64))
        x = np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((len(frame), 0), np.float32)
        return x, any_value

    def to_dict(self) -> dict[str, Any]:
        return {"numeric": {k: list(v) for k, v in self.numeric.items()}, "categorical": self.categorical}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TabularFeaturizer":
        return cls({k: tuple(v) for k, v in d["numeric"].items()}, {k: list(v) for k, v in d["categorical"].items()})
