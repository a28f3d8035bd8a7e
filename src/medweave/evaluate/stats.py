"""Statistics for the harness: means with bootstrap intervals clustered by a key (the image), paired
bootstrap intervals of a difference between two runs on the same samples, and the exact McNemar test.

Clustered bootstrap: samples that share a key (questions about one picture) are not independent, so
a resample draws whole clusters with replacement (1,000 resamples, seeded) and the interval is the
2.5 and 97.5 percentiles of the resampled means. With one sample per cluster it is the ordinary
bootstrap over samples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _cluster_index(clusters: Sequence[str]) -> tuple[np.ndarray, int]:
    _, inv = np.unique(np.asarray([str(c) for c in clusters], dtype=object).astype(str), return_inverse=True)
    return inv, int(inv.max()) + 1 if len(inv) else 0


def cluster_weights(clusters: Sequence[str], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(resample weights per cluster, shape (n_boot, C); cluster index per sample)."""
    inv, n = _cluster_index(clusters)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, (n_boot, n))
    weights = np.zeros((n_boot, n))
    np.add.at(weights, (np.repeat(np.arange(n_boot), n), picks.ravel()), 1.0)
    return weights, inv


def mean_ci(values: Sequence[float], clusters: Sequence[str] | None = None, n_boot: int = 1000,
            seed: int = 0) -> dict:
    """{"value", "lo", "hi", "n", "clusters"}: the mean of per-sample values with a cluster-bootstrap 95%
    interval (NaNs when there are no values; no interval with ``n_boot`` 0)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, "clusters": 0}
    clusters = list(clusters) if clusters is not None else [str(i) for i in range(len(v))]
    lo = hi = float("nan")
    w, inv = cluster_weights(clusters, n_boot, seed) if n_boot else (None, _cluster_index(clusters)[0])
    n_clusters = int(inv.max()) + 1
    if n_boot:
        sums = np.bincount(inv, weights=v, minlength=n_clusters)
        counts = np.bincount(inv, minlength=n_clusters).astype(float)
        means = (w @ sums) / np.maximum(w @ counts, 1e-12)
        lo, hi = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    return {"value": float(v.mean()), "lo": lo, "hi": hi, "n": int(v.size), "clusters": n_clusters}


def paired_difference(a: Sequence[float], b: Sequence[float], clusters: Sequence[str] | None = None,
                      n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean of ``b - a`` over the same samples, with a paired (cluster) bootstrap 95% interval."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    res = mean_ci(d, clusters, n_boot, seed)
    res["a"] = float(np.mean(a)) if len(a) else float("nan")
    res["b"] = float(np.mean(b)) if len(b) else float("nan")
    return res


def mcnemar_exact(a_right: Sequence[bool], b_right: Sequence[bool]) -> dict:
    """Exact (binomial) McNemar test on paired right/wrong outcomes: ``b`` = right under A only,
    ``c`` = right under B only; two-sided p = P(X <= min(b, c)) * 2 under Binomial(b + c, 1/2), capped at 1."""
    from scipy.stats import binom

    a = np.asarray(a_right, dtype=bool)
    bb = np.asarray(b_right, dtype=bool)
    b = int((a & ~bb).sum())
    c = int((~a & bb).sum())
    n = b + c
    p = 1.0 if n == 0 else float(min(1.0, 2 * binom.cdf(min(b, c), n, 0.5)))
    return {"a_only": b, "b_only": c, "both": int((a & bb).sum()), "neither": int((~a & ~bb).sum()), "p": p}
