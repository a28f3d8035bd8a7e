"""Metrics agree with scikit-learn's definitions; intervals cover the value; ECE counts as documented."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, roc_auc_score

from medweave.evaluate.metrics import auroc, average_precision, balanced_accuracy, binary_report, ece, f1


def test_metrics_equal_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 150)
        p = np.round(np.clip(rng.random(150) * 0.7 + y * 0.25, 0, 1), 1)  # many ties
        assert np.isclose(auroc(y, p), roc_auc_score(y, p))
        assert np.isclose(average_precision(y, p), average_precision_score(y, p))
        assert np.isclose(balanced_accuracy(y, p), balanced_accuracy_score(y, p >= 0.5))
        assert np.isclose(f1(y, p), f1_score(y, p >= 0.5))


def test_ece_counts_bins_as_documented():
    y = np.array([1, 1, 0, 0])
    p = np.array([0.95, 0.95, 0.05, 0.05])
    assert np.isclose(ece(y, p), 0.05)
    assert np.isclose(ece(np.array([1, 0]), np.array([0.5, 0.5])), 0.0)


def test_report_has_intervals_around_values_and_skips_missing_labels():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300).astype(float)
    p = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    y[:10] = np.nan
    r = binary_report(y, p, n_boot=200)
    assert r["n"]["value"] == 290
    for m in ("auroc", "auprc", "balanced_accuracy", "f1", "brier", "ece"):
        assert r[m]["lo"] <= r[m]["value"] <= r[m]["hi"], m
    one_class = binary_report(np.ones(20), rng.random(20), n_boot=50)
    assert np.isnan(one_class["auroc"]["value"]) and not np.isnan(one_class["brier"]["value"])


def test_cluster_bootstrap_counts_a_patients_images_as_one_patient():
    """Each of 60 patients contributes 10 identical images: resampling images would claim the
    precision of 600 independent cases; resampling patients gives the interval of 60."""
    from medweave.evaluate import binary_report

    rng = np.random.default_rng(0)
    y = (rng.random(60) < 0.5).astype(float)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + 0.3 * rng.standard_normal(60), 0, 1)
    patients = np.repeat(np.arange(60), 10)
    by_image = binary_report(np.repeat(y, 10), np.repeat(p, 10), n_boot=400, seed=0)["auroc"]
    by_patient = binary_report(np.repeat(y, 10), np.repeat(p, 10), n_boot=400, seed=0, clusters=patients)["auroc"]
    alone = binary_report(y, p, n_boot=400, seed=0)["auroc"]
    width = lambda r: r["hi"] - r["lo"]  # noqa: E731
    assert by_patient["value"] == by_image["value"] == alone["value"]
    assert width(by_patient) > 2 * width(by_image)
    assert abs(width(by_patient) - width(alone)) < 0.35 * width(alone)


def test_paired_auroc_difference_cancels_what_both_models_share():
    from medweave.evaluate.metrics import auroc, paired_auroc_difference

    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.5).astype(float)
    base = y + rng.standard_normal(300)
    better = base + 0.8 * y  # the same noise, more signal
    clusters = np.repeat(np.arange(100), 3)
    d = paired_auroc_difference(y, base, better, n_boot=300, seed=0, clusters=clusters)
    assert d["value"] == pytest.approx(auroc(y.astype(int), better) - auroc(y.astype(int), base))
    assert 0 < d["lo"] < d["value"] < d["hi"]
    same = paired_auroc_difference(y, base, base, n_boot=100, seed=0, clusters=clusters)
    assert same["value"] == 0 and same["lo"] == 0 and same["hi"] == 0
    with pytest.raises(ValueError, match="predictions"):
        paired_auroc_difference(y, base[:10], base)
