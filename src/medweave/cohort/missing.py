"""Missingness simulation: MCAR, MAR and MNAR, seeded, applied to a copy of a cohort.

* ``mcar``: every case with the modality loses it with probability ``rate``.
* ``mar``: the probability depends on another observed column (``column``): p_i = clip(2 * rate * r_i, 0, 1)
  where r_i is the case's percentile rank of that column (higher value -> more often missing; the mean
  stays ``rate`` for rate <= 0.5).
* ``mnar``: the probability depends on the target: ``class_rates`` maps a target value to its
  probability (the MultiModN protocol: {1: 0.8, 0: 0.0}). Given only ``rate``, all missingness is put
  on the positive class as far as it goes (p_pos = min(1, rate / prevalence)).

Only cases that have the modality, and (with ``splits``) only those splits, are touched. Each call
is recorded in ``cohort.meta["missingness"]``.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .cohort import Cohort, CohortError, item_id_column, item_id_lists

MECHANISMS = ("mcar", "mar", "mnar")


def simulate_missing(
    cohort: Cohort,
    modality: str,
    mechanism: str,
    rate: float | None = None,
    seed: int = 0,
    column: str | None = None,
    target: str | None = None,
    class_rates: Mapping[Any, float] | None = None,
    splits: Sequence[str] | None = None,
) -> Cohort:
    if mechanism not in MECHANISMS:
        raise CohortError(f"missingness mechanism {mechanism!r} is not known; allowed values: {', '.join(MECHANISMS)}")
    if modality not in cohort.modalities:
        raise CohortError(f"modality {modality!r} is not in the cohort; allowed values: {', '.join(cohort.modalities)}")
    if rate is not None and not 0 <= rate <= 1:
        raise CohortError(f"missingness rate must be within [0, 1], got {rate}")
    t = cohort.table.copy()
    present = t[f"{modality}_present"].to_numpy(dtype=bool)
    eligible = present.copy()
    if splits is not None:
        eligible &= t["split"].isin(list(splits)).to_numpy()
    p = np.zeros(len(t))
    if mechanism == "mcar":
        _need(rate, "rate", mechanism)
        p[:] = rate
    elif mechanism == "mar":
        _need(rate, "rate", mechanism)
        if not column or column not in t.columns:
            raise CohortError(f"MAR needs column= one of the cohort's columns: {', '.join(map(str, t.columns))}")
        values = pd.to_numeric(t[column], errors="coerce")
        ranks = values.rank(pct=True).fillna(0.5).to_numpy()
        p = np.clip(2 * rate * ranks, 0, 1)
    else:
        target = target or (cohort.targets[0] if cohort.targets else None)
        if target is None or target not in t.columns:
            raise CohortError(f"MNAR needs target= one of the cohort's targets: {', '.join(cohort.targets) or '(none)'}")
        y = t[target]
        if class_rates is None:
            _need(rate, "rate or class_rates", mechanism)
            prevalence = float((y[eligible] == 1).fillna(False).mean()) if eligible.any() else 0.0  # (NA: not 1)
            p_pos = min(1.0, rate / prevalence) if prevalence > 0 else 0.0
            p_neg = max(0.0, (rate - prevalence * p_pos) / (1 - prevalence)) if prevalence < 1 else 0.0
            class_rates = {1: p_pos, 0: p_neg}
        p = y.map(lambda v: float(class_rates.get(v, class_rates.get(str(v), 0.0))) if pd.notna(v) else 0.0).to_numpy()
    rng = np.random.default_rng(seed)
    drop = eligible & (rng.random(len(t)) < p)
    t.loc[drop, f"{modality}_present"] = False
    t[f"{modality}_items"] = item_id_column([] if d else v for d, v in zip(drop, item_id_lists(t[f"{modality}_items"])))
    meta = copy.deepcopy(cohort.meta)
    meta.setdefault("missingness", []).append({
        "modality": modality, "mechanism": mechanism, "rate": rate, "seed": seed, "column": column,
        "target": target if mechanism == "mnar" else None,
        "class_rates": {str(k): v for k, v in class_rates.items()} if class_rates else None,
        "splits": list(splits) if splits else None, "removed": int(drop.sum()),
    })
    return Cohort(t, list(cohort.modalities), list(cohort.targets), list(cohort.covariates), meta)


def _need(value: Any, name: str, mechanism: str) -> None:
    if value is None:
        raise CohortError(f"{mechanism.upper()} needs {name}=")
