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


def test_patient_folds_keep_each_patient_on_one_side():
    from medweave.train import group_folds

    groups = [f"p{i // 3}" for i in range(90)] + [f"q{i}" for i in range(30)]
    fold = group_folds(groups, 5, seed=0)
    assert set(fold) == set(range(5))
    for g in set(groups):
        assert len({fold[i] for i, h in enumerate(groups) if h == g}) == 1, g
    counts = np.bincount(fold)
    assert counts.min() > 10  # patients spread over the folds
    assert not np.array_equal(fold, group_folds(groups, 5, seed=1))


def test_case_weights_give_every_patient_the_same_total():
    ds = toy(n=10)
    ds.groups = np.array(["a"] * 6 + ["b", "c", "d", "e"])
    w = ds.case_weights()
    assert abs(w.mean() - 1) < 1e-6
    assert abs(w[:6].sum() - w[6]) < 1e-5 and abs(w[6] - w[9]) < 1e-6
    assert ds.subset(np.arange(6, 10)).groups.tolist() == ["b", "c", "d", "e"]
    assert np.all(toy(n=5).case_weights() == 1)


def test_cross_validated_stopping_trains_the_final_model_for_the_chosen_epochs():
    from medweave.evaluate.metrics import auroc
    from medweave.train import fit_cv

    ds = toy(n=500)
    ds.groups = np.array([f"p{i // 2}" for i in range(500)])
    make = lambda: build_model("sequential", {"a": 5, "b": 7}, [HeadSpec("y")], hidden=16, seed=0,  # noqa: E731
                               order=["a", "b"])
    res = fit_cv(make, ds.subset(np.arange(400)), list(ds.groups[:400]), TrainConfig(epochs=12, seed=0), folds=4,
                 progress=False)
    assert 1 <= res["cv_epochs"] <= 12 and len(res["cv_curve"]) <= 12
    assert res["cv_epochs"] == int(np.argmin(res["cv_curve"])) + 1
    assert res["epochs_run"] == res["cv_epochs"]  # the final model: all 400 cases, that many epochs
    oof = res["oof_logits"]["y"].reshape(-1)
    assert np.isfinite(oof).all() and auroc(ds.targets["y"][:400], oof) > 0.75  # every case scored out of fold
    p = predict_logits(res["model"], ds.subset(np.arange(400, 500)))["y"].reshape(-1)
    assert auroc(ds.targets["y"][400:], p) > 0.8
    again = fit_cv(make, ds.subset(np.arange(400)), list(ds.groups[:400]), TrainConfig(epochs=12, seed=0), folds=4,
                   progress=False)
    np.testing.assert_array_equal(p, predict_logits(again["model"], ds.subset(np.arange(400, 500)))["y"].reshape(-1))


def test_cv_ensemble_is_the_fold_models_and_the_final_one(tmp_path):
    """``train.cv_ensemble``: ``fit_cv`` keeps the k fold models (each the fit that gave its fold's held-out
    logits) and the model trained on all cases, and predicts with their mean logits (and steps); off, the
    last one alone. The ensemble saves and reloads to the same predictions."""
    from medweave.fuse import EnsembleFusion, ensemble_members
    from medweave.train import fit_cv, group_folds

    ds = toy(n=300, seed=2)
    ds.groups = np.array([f"p{i // 3}" for i in range(300)])
    make = lambda: build_model("sequential", {"a": 5, "b": 7}, [HeadSpec("y")], hidden=16, seed=0,  # noqa: E731
                               order=["a", "b"])
    res = fit_cv(make, ds, list(ds.groups), TrainConfig(epochs=8, patience=3, seed=0), folds=3, progress=False)
    model = res["model"]
    assert isinstance(model, EnsembleFusion) and res["cv_members"] == 4 == ensemble_members(model)
    fold = group_folds(list(ds.groups), 3, 0)
    for f in range(3):  # member f is the model that scored fold f out of fold
        va = np.flatnonzero(fold == f)
        np.testing.assert_allclose(predict_logits(model.members[f], ds.subset(va))["y"], res["oof_logits"]["y"][va],
                                   rtol=0, atol=1e-6)
    x, mask, _ = ds.tensors(np.arange(40))
    mask[::2, 1] = False  # per-sample skipping holds in every member
    with torch.no_grad():
        out, outs = model(x, mask), [m(x, mask) for m in model.members]
    for key in ("logits", "steps"):
        torch.testing.assert_close(out[key]["y"], torch.stack([o[key]["y"] for o in outs]).mean(dim=0))
    assert torch.equal(out["step_present"], outs[0]["step_present"]) and out["order"] == ["a", "b"]
    single = fit_cv(make, ds, list(ds.groups), TrainConfig(epochs=8, patience=3, seed=0, cv_ensemble=False), folds=3,
                    progress=False)
    assert not isinstance(single["model"], EnsembleFusion) and single["cv_members"] == 1
    np.testing.assert_array_equal(predict_logits(single["model"], ds)["y"], predict_logits(model.members[-1], ds)["y"])
    arch = {"kind": "sequential", "dims": {"a": 5, "b": 7}, "heads": [vars(HeadSpec("y"))],
            "kwargs": {"hidden": 16, "order": ["a", "b"]}, "members": ensemble_members(model)}
    save_checkpoint(tmp_path / "ens", model, {"architecture": arch})
    loaded, _ = load_checkpoint(tmp_path / "ens")
    assert isinstance(loaded, EnsembleFusion) and len(loaded.members) == 4
    np.testing.assert_array_equal(predict_logits(loaded, ds)["y"], predict_logits(model, ds)["y"])
    with pytest.raises(ValueError, match="different kinds"):
        EnsembleFusion([make(), build_model("concat", {"a": 5, "b": 7}, [HeadSpec("y")], hidden=16)])


def test_linear_path_reads_a_modality_only_where_it_is_present():
    ds = toy(n=50)
    for kind in ("sequential", "concat", "attention"):
        model = build_model(kind, {"a": 5, "b": 7}, [HeadSpec("y")], hidden=16, seed=0, linear=["a", "b"],
                            **({"order": ["a", "b"]} if kind == "sequential" else {}))
        with torch.no_grad():
            for path in model.linear.paths.values():
                path[-1].weight.normal_()  # zero at the start: give it something to say
        mask = ds.mask.copy()
        mask[:20, 1] = False
        x, m, _ = ds.with_mask(mask).tensors()
        base = model.eval()(x, m)["logits"]["y"]
        x2 = dict(x)
        x2["b"] = x["b"].clone()
        x2["b"][:20] = float("nan")  # absent rows may hold anything
        x2["b"][20:] += torch.randn(x["b"][20:].shape, generator=torch.Generator().manual_seed(0))  # not a constant
        out = model(x2, m)["logits"]["y"]
        assert torch.equal(out[:20], base[:20]), kind
        assert not torch.allclose(out[20:], base[20:]), kind
        if kind == "sequential":
            steps = model(x2, m)["steps"]["y"]
            assert torch.equal(steps[:, 1], model(x, m)["steps"]["y"][:, 1])  # step 'a' does not read 'b'
    with pytest.raises(ValueError, match="not a model modality"):
        build_model("concat", {"a": 5}, [HeadSpec("y")], linear=["c"])


def test_a_linear_tabular_path_keeps_a_strong_covariate_beside_a_noisy_embedding():
    """Small cohort: y follows 3 tabular columns; the 'image' is 256-d noise with a faint signal. The
    fused model with the tabular linear path must score at least as well as its tabular part."""
    from medweave.evaluate.metrics import auroc

    rng = np.random.default_rng(0)
    n = 700
    tab = rng.standard_normal((n, 3)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * tab[:, 0] - 1.0 * tab[:, 1])))).astype(np.float32)
    img = rng.standard_normal((n, 256)).astype(np.float32) + 0.3 * y[:, None] * (np.arange(256) < 8)
    ds = Dataset([str(i) for i in range(n)], ["table", "image"], {"table": tab, "image": img},
                 np.ones((n, 2), bool), {"y": y})
    tr, va, te = np.arange(300), np.arange(300, 400), np.arange(400, n)
    scores = {}
    for name, mods, kw in (("tabular", ["table"], {}), ("fused", ["table", "image"], {}),
                           ("fused, no linear path", ["table", "image"], {"linear": []})):
        sub = ds.only(mods)
        model = build_model("sequential", {m: sub.inputs[m].shape[1] for m in mods}, [HeadSpec("y")], hidden=32,
                            seed=0, order=mods, dropout=0.2, **kw)
        fit(model, sub.subset(tr), sub.subset(va), TrainConfig(epochs=60, patience=10, weight_decay=0.05, seed=0),
            progress=False)
        scores[name] = auroc(y[te], predict_logits(model, sub.subset(te))["y"].reshape(-1))
    assert scores["fused"] >= scores["tabular"] - 0.01, scores
    assert scores["fused"] > scores["fused, no linear path"], scores


def test_stratified_patient_folds_balance_the_positive_patients():
    from medweave.train import group_folds

    rng = np.random.default_rng(0)
    groups = [f"p{i // 2}" for i in range(400)]  # 200 patients, two images each
    pos = rng.random(200) < 0.3
    labels = np.repeat(pos, 2).astype(float)
    labels[5] = np.nan  # an unlabelled image does not count
    fold = group_folds(groups, 5, seed=0, labels=labels)
    for g in set(groups):
        assert len({fold[i] for i, h in enumerate(groups) if h == g}) == 1, g
    per_fold = [pos[np.unique([int(groups[i][1:]) for i in np.flatnonzero(fold == f)])].sum() for f in range(5)]
    assert max(per_fold) - min(per_fold) <= 1, per_fold  # dealt out in turn within each stratum
    plain = group_folds(groups, 5, seed=0)
    plain_counts = [pos[np.unique([int(groups[i][1:]) for i in np.flatnonzero(plain == f)])].sum() for f in range(5)]
    assert max(plain_counts) - min(plain_counts) >= max(per_fold) - min(per_fold)
    with pytest.raises(ValueError, match="labels"):
        group_folds(groups, 5, labels=labels[:10])


def noise_toy(n=600, seed=0):
    """'a' carries the signal; 'b' is noise that a flexible model can still fit on the training cases."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.float32)
    a = rng.standard_normal((n, 5)).astype(np.float32) + y[:, None] * np.array([1.0, -0.8, 0, 0, 0], np.float32)
    b = rng.standard_normal((n, 40)).astype(np.float32)
    groups = np.array([f"p{i // 2}" for i in range(n)])
    return Dataset([str(i) for i in range(n)], ["a", "b"], {"a": a, "b": b}, np.ones((n, 2), bool), {"y": y}, groups)


def test_stacking_drops_a_part_whose_held_out_logits_carry_nothing():
    from medweave.evaluate.metrics import auroc
    from medweave.train import fit_stacked

    ds = noise_toy()
    train_, test = ds.subset(np.arange(400)), ds.subset(np.arange(400, 600))
    model = build_model("stacked", {"a": 5, "b": 40}, [HeadSpec("y")], hidden=16, seed=0)
    res = fit_stacked(model, train_, TrainConfig(epochs=15, patience=3, seed=0), list(train_.groups), folds=4,
                      progress=False)
    assert res["parts_used"] == ["a"], res["parts_cv_loss"]
    assert res["stack_weights"]["b"]["y"] == 0.0 and res["stack_weights"]["a"]["y"] > 0.5
    assert set(res["parts"]) == {"a", "b"} and all(p["cv_epochs"] >= 1 for p in res["parts"].values())
    p = predict_logits(model, test)["y"].reshape(-1)
    part_a = predict_logits(model.parts["a"], test.only(["a"]))["y"].reshape(-1)
    assert auroc(test.targets["y"], p) == pytest.approx(auroc(test.targets["y"], part_a))  # b is never read
    assert auroc(test.targets["y"], p) > 0.7
    # both parts informative: both are kept, and the fused model beats each part on new cases
    both = toy(n=800, seed=3)
    both.groups = np.array([str(i) for i in range(800)])
    model2 = build_model("stacked", {"a": 5, "b": 7}, [HeadSpec("y")], hidden=16, seed=0)
    res2 = fit_stacked(model2, both.subset(np.arange(500)), TrainConfig(epochs=15, patience=3, seed=0),
                       [str(i) for i in range(500)], folds=4, progress=False)
    assert res2["parts_used"] == ["a", "b"]
    new = both.subset(np.arange(500, 800))
    fused = auroc(new.targets["y"], predict_logits(model2, new)["y"].reshape(-1))
    for m in ("a", "b"):
        assert fused > auroc(new.targets["y"], predict_logits(model2.parts[m], new.only([m]))["y"].reshape(-1))


def test_stacking_on_a_valid_split_and_absent_modalities():
    from medweave.train import fit_stacked

    ds = toy(n=500, seed=1, mnar=False)
    ds.mask[::3, 1] = False  # a third of the cases have no 'b'
    ds.inputs["b"][::3] = np.nan
    model = build_model("stacked", {"a": 5, "b": 7}, [HeadSpec("y")], hidden=16, seed=0)
    res = fit_stacked(model, ds.subset(np.arange(350)), TrainConfig(epochs=20, patience=4, seed=0), folds=0,
                      valid=ds.subset(np.arange(350, 500)), progress=False)
    assert res["parts"]["b"]["cases"] == int(ds.mask[:350, 1].sum())  # a part trains where its modality is
    assert np.isfinite(res["oof_logits"]["y"]).all()
    assert np.isfinite(predict_logits(model, ds)["y"]).all()
    with pytest.raises(ValueError, match="valid split"):
        fit_stacked(build_model("stacked", {"a": 5, "b": 7}, [HeadSpec("y")]), ds, TrainConfig(), folds=0)
    with pytest.raises(ValueError, match="no parts"):
        fit_stacked(build_model("concat", {"a": 5, "b": 7}, [HeadSpec("y")]), ds, TrainConfig(), folds=0, valid=ds)


def test_a_stacked_experiment_trains_saves_and_reloads(tmp_path):
    """``model.kind = "stacked"`` through ``train_experiment``: parts and combiner fitted by patient-grouped
    CV, the checkpoint reloads to the same predictions."""
    from medweave.config import parse_config
    from medweave.demo import generate_phantom
    from medweave.train.pipeline import train_experiment

    m = generate_phantom(tmp_path / "ph", n_patients=80, seed=3)
    cfg = parse_config({"name": "st", "data": {"paths": [str(m.path("data"))], "mapping": str(m.mapping)},
                        "cohort": {"targets": ["disease"], "covariates": ["age", "sex"], "modalities": ["signal"],
                                   "fractions": [0.6, 0.2, 0.2]},
                        "model": {"kind": "stacked", "modalities": ["table", "signal"], "hidden": 16},
                        "train": {"epochs": 8, "batch_size": 16, "patience": 3, "cv_folds": 3}})
    res = train_experiment(cfg, tmp_path / "model", progress=False)
    assert set(res.fit["parts"]) == {"table", "signal"} and res.fit["parts_used"]
    assert 1 <= res.fit["epochs_run"] <= 8 and "disease" in res.temperatures
    model, saved = load_checkpoint(tmp_path / "model")
    assert saved["architecture"]["kind"] == "stacked"
    assert saved["architecture"]["members"] == 4  # each part: its 3 fold models and the one on all cases
    for name, weight in res.fit["stack_weights"].items():
        j = model.modalities.index(name)
        assert float(model.stack_weight[j, 0].detach()) == pytest.approx(weight["disease"])
