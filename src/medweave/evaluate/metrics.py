"""Metrics, each saying exactly how it counts, with bootstrap 95% intervals.

Binary tasks (``p`` = calibrated probability of the positive class, threshold 0.5 for the
thresholded metrics):

* ``auroc`` — area under the ROC curve (Mann-Whitney, ties count one half).
* ``auprc`` — average precision, step-wise over distinct thresholds (not trapezoidal), as scikit-learn's.
* ``balanced_accuracy`` — mean of sensitivity and specificity at p >= 0.5.
* ``f1`` — F1 of the positive class at p >= 0.5.
* ``brier`` — mean squared error of p against the 0/1 label.
* ``ece`` — expected calibration error: 15 equal-width bins of p, sum over bins of
  (bin share) x |mean label - mean p|.

Intervals: percentile bootstrap over cases (1,000 resamples, seeded); a resample with one class only
is skipped for the rank metrics.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney form of the ROC area (ties count one half); equals scikit-learn's roc_auc_score."""
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    from scipy.stats import rankdata  # here, not at import: scipy.stats costs seconds to import

    ranks = rankdata(p)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Sum over distinct thresholds of (recall step) x precision; equals average_precision_score."""
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]  # last index of each distinct score
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(ys.sum(), 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    pred = p >= 0.5
    return float(0.5 * (pred[y == 1].mean() + (~pred[y == 0]).mean()))


def f1(y: np.ndarray, p: np.ndarray) -> float:
    pred = p >= 0.5
    tp = float((pred & (y == 1)).sum())
    denom = pred.sum() + (y == 1).sum()
    return 2 * tp / denom if denom else 0.0


def ece(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(total)


BINARY_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auroc": auroc,
    "auprc": average_precision,
    "balanced_accuracy": balanced_accuracy,
    "f1": f1,
    "brier": lambda y, p: float(np.mean((p - y) ** 2)),
    "ece": ece,
}
_NEEDS_BOTH_CLASSES = {"auroc", "auprc", "balanced_accuracy"}


def bootstrap_ci(y: np.ndarray, p: np.ndarray, fn: Callable, needs_both: bool, n: int = 1000,
                 seed: int = 0, clusters: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap 95% interval; with ``clusters`` (e.g. patient ids) whole clusters are
    resampled, so that many images of one patient count as the one patient they are."""
    rng = np.random.default_rng(seed)
    groups = None
    if clusters is not None:
        _, inverse = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
        groups = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)] if len(inverse) else []
    vals = []
    for _ in range(n):
        if groups is None:
            i = rng.integers(0, len(y), len(y))
        else:
            i = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        if needs_both and len(np.unique(y[i])) < 2:
            continue
        vals.append(fn(y[i], p[i]))
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def paired_auroc_difference(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, n_boot: int = 1000, seed: int = 0,
                            clusters: np.ndarray | None = None) -> dict[str, float]:
    """AUROC(b) - AUROC(a) on the same cases, with a paired percentile-bootstrap 95% interval: each
    resample draws whole clusters (patients) once and scores both models on it, so what the two share
    (the cases, how hard they are) cancels out of the difference. ``value``, ``lo``, ``hi``, ``a``, ``b``."""
    y, p_a, p_b = np.asarray(y, dtype=float), np.asarray(p_a, dtype=float), np.asarray(p_b, dtype=float)
    if len(p_a) != len(y) or len(p_b) != len(y):
        raise ValueError(f"paired_auroc_difference: {len(y)} labels but {len(p_a)} and {len(p_b)} predictions")
    keep = ~np.isnan(y)
    y, p_a, p_b = y[keep].astype(int), p_a[keep], p_b[keep]
    both = np.stack([p_a, p_b], axis=1)
    lo, hi = bootstrap_ci(y, both, lambda t, q: auroc(t, q[:, 1]) - auroc(t, q[:, 0]), True, n_boot, seed,
                          None if clusters is None else np.asarray(clusters)[keep])
    a, b = auroc(y, p_a), auroc(y, p_b)
    return {"value": b - a, "lo": lo, "hi": hi, "a": a, "b": b}


def binary_report(y: np.ndarray, p: np.ndarray, n_boot: int = 1000, seed: int = 0,
                  clusters: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Every binary metric with its 95% bootstrap interval, over cases with a label (``clusters``:
    resample whole clusters, e.g. patients, see ``bootstrap_ci``)."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    keep = ~np.isnan(y)
    y, p = y[keep].astype(int), p[keep]
    clusters = None if clusters is None else np.asarray(clusters)[keep]
    out: dict[str, dict[str, float]] = {"n": {"value": int(len(y))}, "positives": {"value": int(y.sum())}}
    both = len(np.unique(y)) == 2
    for name, fn in BINARY_METRICS.items():
        needs = name in _NEEDS_BOTH_CLASSES
        if needs and not both:
            out[name] = {"value": float("nan"), "lo": float("nan"), "hi": float("nan")}
            continue
        lo, hi = bootstrap_ci(y, p, fn, needs, n_boot, seed, clusters)
        out[name] = {"value": fn(y, p), "lo": lo, "hi": hi}
    return out
