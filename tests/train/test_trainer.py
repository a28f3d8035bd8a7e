"""Trainer: reproducible with a seed, early stopping, calibration, presence balancing, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medweave.fuse import HeadSpec
from medweave.train import Dataset, TrainConfig, build_model, fit, fit_temperature, load_checkpoint, predict_logits, save_checkpoint
from medweave.train.trainer import presence_weights


def toy(n=400, seed=0, mnar=False):
    """Two modalities, each carrying signal about y; optionally 'b' missing mostly for positives."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.float32)
    a = rng.standard_normal((n, 5)).astype(np.float32) + y[:, None] * np.array([1.2, -1.0, 0, 0, 0], np.float32)
    b = rng.standard_normal((n, 7)).astype(np.float32) + y[:, None] * np.array([0, 1.5, -1.2, 0, 0, 0, 0], np.float32)
    mask = np.ones((n, 2), bool)
    if mnar:
        mask[:, 1] = ~((y == 1) & (rng.random(n) < 0.7))
    b[~mask[:, 1]] = np.nan
    return Dataset([str(i) for i in range(n)], ["a", "b"], {"a": a, "b": b}, mask, {"y": y})


def train(kind, ds, seed=0, **kw):
    model = build_model(kind, {"a": 5, "b": 7}, [HeadSpec("y")], hidden=16, seed=seed,
                        **({"order": ["a", "b"]} if kind == "sequential" else {}))
    idx = np.arange(len(ds))
    res = fit(model, ds.subset(idx[:300]), ds.subset(idx[300:]), TrainConfig(epochs=15, seed=seed, **kw), progress=False)
    return model, res


@pytest.mark.parametrize("kind", ["sequential", "concat", "attention"])
def test_same_seed_same_model(kind):
    ds = toy()
    m1, _ = train(kind, ds)
    m2, _ = train(kind, ds)
    m3, _ = train(kind, ds, seed=1)
    p1, p2, p3 = (predict_logits(m, ds)["y"] for m in (m1, m2, m3))
    np.testing.assert_array_equal(p1, p2)
    assert not np.allclose(p1, p3)


def test_training_learns_and_stops_early():
    ds = toy(n=600)
    model, res = train("sequential", ds, patience=2)
    from medweave.evaluate.metrics import auroc

    p = predict_logits(model, ds.subset(np.arange(300, 600)))["y"].reshape(-1)
    assert auroc(ds.targets["y"][300:], p) > 0.8
    assert res["epochs_run"] <= 15 and res["history"][0]["valid_loss"] > res["best_valid_loss"]


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    ds = toy()
    model, _ = train("sequential", ds)
    config = {"architecture": {"kind": "sequential", "dims": {"a": 5, "b": 7}, "heads": [vars(HeadSpec("y"))],
                               "kwargs": {"hidden": 16, "order": ["a", "b"]}}}
    save_checkpoint(tmp_path / "m", model, config)
    assert (tmp_path / "m" / "model.safetensors").exists()
    loaded, cfg = load_checkpoint(tmp_path / "m")
    np.testing.assert_array_equal(predict_logits(model, ds)["y"], predict_logits(loaded, ds)["y"])
    with pytest.raises(FileNotFoundError, match="not a medweave model"):
        load_checkpoint(tmp_path)


def test_temperature_scaling_lowers_nll_of_overconfident_logits():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.5).astype(float)
    logits = (y * 2 - 1) * 1.0 + rng.standard_normal(2000) * 1.5
    over = logits * 4  # overconfident
    t = fit_temperature(over, y, "binary")
    assert 2.5 < t < 6

    def nll(z):
        p = 1 / (1 + np.exp(-z))
        return -np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))

    assert nll(over / t) < nll(over)
    assert fit_temperature(over, y, "regression") == 1.0


def test_presence_weights_restore_the_class_balance_at_each_step():
    ds = toy(n=2000, mnar=True)
    w = presence_weights(ds, [HeadSpec("y")])["y"].numpy()
    assert np.allclose(w[0], 1.0)  # 'a' is always present
    y, present = ds.targets["y"], ds.mask[:, 1]
    assert w[1, 1] > 1.5 and w[1, 0] < 1.0  # positives are rare where 'b' is present: up-weighted
    reweighted = (w[1, 1] * (y[present] == 1).sum()) / (w[1, 1] * (y[present] == 1).sum() + w[1, 0] * (y[present] == 0).sum())
    assert abs(reweighted - y.mean()) < 1e-6


def test_presence_balancing_removes_the_missingness_shortcut():
    """Trained where 'b' is missing mostly for positives, tested where it is missing for negatives:
    the balanced sequential model must not read absence as evidence; the zero-fill concat model does."""
    from medweave.evaluate.metrics import auroc

    train_ds = toy(n=1500, seed=1, mnar=True)
    test = toy(n=1500, seed=2)
    rng = np.random.default_rng(3)
    flipped = test.mask.copy()
    flipped[:, 1] = ~((test.targets["y"] == 0) & (rng.random(1500) < 0.7))
    test_flip = test.with_mask(flipped)

    def score(kind, **kw):
        model, _ = train(kind, train_ds, **kw)
        return auroc(test.targets["y"], predict_logits(model, test_flip)["y"].reshape(-1))

    balanced = score("sequential")
    unbalanced = score("sequential", balance_presence=False)
    concat = score("concat")
    assert balanced > 0.85, balanced
    assert balanced > unbalanced + 0.04 and balanced > concat + 0.15, (balanced, unbalanced, concat)
