"""Fusion under missingness, on NIH ChestX-ray14 (800) and on the phantom cohort; plus speed.

Prints one table per data set: AUROC (95% bootstrap interval over *patients*, seed 0; mean and
spread over seeds beside it) for a logistic regression on the tabular inputs (the simplest baseline),
image-only, tabular-only and each fusion model, trained without missingness, and trained under the
MultiModN MNAR protocol (a share of the *positive* class loses the image in train and valid) and then
tested with no missingness and with the missingness *flipped* onto the negative class.
Model selection (early stopping) is ``--select cv`` (patient-grouped 5-fold cross-validation over
train + valid, then one model on all of it: ``train.cv_folds``) or ``holdout`` (the valid split).
Then the speed table: training samples/s of the sequential model vs the concatenation MLP on the
same embeddings, and encoding images/s of medweave's cached, batched pipeline vs a bare loop.

    python benchmarks/fusion.py                 # both sets, 3 seeds
    python benchmarks/fusion.py --sets nih --protocols clean --seeds 3
    python benchmarks/fusion.py --sets phantom --seeds 1 --select holdout
    python benchmarks/fusion.py --sets nih --protocols clean --seeds 1 --finetune-blocks 1 --no-speed

``--outer-folds K`` (NIH, frozen encoder): beside the table on the source's valid/ folder (172 images of
61 new patients), every one of the 800 images predicted once per seed by a model that never saw its
patient: K patient-grouped folds stratified by label, all choices (epochs, temperature, a stacked
model's parts) made inside the training folds; pooled out-of-fold AUROC with a patient-resampling
interval, the mean of the per-fold AUROCs (which no fold-to-fold calibration shift can move), and for
each fused row the paired difference to the best single-modality row.

    python benchmarks/fusion.py --sets nih --protocols clean --select cv --balance-patients --no-speed --outer-folds 5

``--finetune-blocks N``: the NIH table again with EfficientNet-Lite0's last N blocks fine-tuned on the
*train* split's pictures (``[encode] finetune_blocks``, ``train.pipeline.finetune_image_encoder``: never
the valid or test patients), after the frozen encoder's table (``--no-frozen``: the tuned one only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medweave.cohort import Cohort
from medweave.config import MissingConfig, load_config, parse_config
from medweave.encode import EmbeddingCache, encode_items
from medweave.evaluate import binary_report
from medweave.evaluate.metrics import auroc, paired_auroc_difference
from medweave.fuse import HeadSpec, head_probs
from medweave.settings import shared_data_dir
from medweave.store import Store
from medweave.train import (Dataset, TrainConfig, build_model, fit, fit_cv, fit_stacked, fit_temperature,
                            group_folds,
                            predict_logits)
from medweave.train.pipeline import (FINETUNE_MODALITY, apply_missing, build_dataset, finetune_image_encoder,
                                     head_specs, ingest_data, make_cohort)

REPO = Path(__file__).resolve().parents[1]
MNAR_TRAIN = {1: 0.5, 0: 0.0}
MNAR_FLIP = {0: 0.5, 1: 0.0}
TRAIN_DEFAULTS: dict = {}  # TrainConfig fields every model of the run gets (--no-cv-ensemble)


def resplit_holdout(cohort: Cohort, valid_share: float = 0.15, seed: int = 0) -> Cohort:
    """Source valid -> test; a share of the source-train *patients* -> valid (early stopping)."""
    t = cohort.table.copy()
    test = t["split"].isin(["valid", "test"])
    def u(p):
        return int.from_bytes(hashlib.sha256(f"{seed}:{p}".encode()).digest()[:8], "big") / 2**64
    to_valid = (~test) & t["patient_id"].map(lambda p: u(p) < valid_share)
    t.loc[test, "split"] = "test"
    t.loc[to_valid, "split"] = "valid"
    t.loc[~test & ~to_valid, "split"] = "train"
    return Cohort(t, cohort.modalities, cohort.targets, cohort.covariates, cohort.meta)


def frozen_at(size: int):
    """The frozen EfficientNet-Lite0 fed ``size`` x ``size`` pictures (224: the registered encoder): the
    pretrained tail as a ``FineTunedLite0``, the control for a tuning at that size."""
    if size == 224:
        return None
    from medweave.encode.finetune import FineTunedLite0, build_tail

    return FineTunedLite0({k: v.numpy().copy() for k, v in build_tail(1).state_dict().items()}, 1, size)


def prepare(cfg, workdir: Path, resplit: bool, frozen_size: int = 224):
    """(cohort, dataset, fine-tuning record or None); with ``cfg.encode.finetune_blocks`` the image
    encoder is tuned on the (resplit) cohort's train split first and encodes every split (else the
    frozen encoder at ``frozen_size``)."""
    store_dir = workdir / f"{cfg.name}-store"
    ingest_data(cfg, store_dir, progress=False)
    with Store(store_dir) as store:
        cohort = make_cohort(cfg, store)
        if resplit:
            cohort = resplit_holdout(cohort)
        tuned = finetune_image_encoder(cfg, cohort, store, head_specs(cfg, cohort), progress=False) \
            if cfg.encode.finetune_blocks else None
        cache = EmbeddingCache(workdir / f"{cfg.name}-embeddings.duckdb")
        enc = tuned.encoder() if tuned else frozen_at(frozen_size)
        ds, _, _ = build_dataset(cfg, cohort, store, cache, progress=True,
                                 encoders={FINETUNE_MODALITY: enc} if enc else None)
        cache.close()
    return cohort, ds, tuned


def only(ds: Dataset, modalities: list[str]) -> Dataset:
    return ds.only(modalities)


def logistic_baseline(ds: Dataset, cohort: Cohort, target: str, seed: int, test_missing, modality: str) -> dict:
    """A logistic regression (scikit-learn, C = 1) on the tabular features, fitted on train + valid."""
    from sklearn.linear_model import LogisticRegression

    split = cohort.table["split"].to_numpy()
    pool = np.flatnonzero(split != "test")
    x = np.nan_to_num(ds.inputs["table"])
    y = ds.targets[target]
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(x[pool], y[pool])
    test = np.flatnonzero(split == "test")
    p = clf.predict_proba(x[test])[:, 1]
    res = binary_report(y[test], p, n_boot=500, seed=seed, clusters=cohort.table["patient_id"].to_numpy()[test])
    return {name: res["auroc"] for name in test_missing}  # it reads no image: missingness cannot touch it


def train_model(kind: str, train_ds: Dataset, seed: int, hidden: int = 64, select: str = "cv",
                balance_patients: bool = False, linear: bool = True, train_idx=None, valid_idx=None,
                model_kw: dict | None = None, train_kw: dict | None = None, select_parts: bool = True):
    """(model, temperature) fitted on ``train_ds``: ``select="cv"``: patient-grouped 5-fold CV over all
    of it for the epoch count, then one model on all of it, its temperature from the out-of-fold
    logits (as ``medweave train`` does); ``"holdout"``: trained on ``train_idx``, stopped and
    calibrated on ``valid_idx``. Nothing outside ``train_ds`` is read."""
    kw = {"hidden": hidden, "dropout": 0.2, "linear": None if linear else []}
    if kind == "sequential":
        kw["order"] = list(train_ds.modalities)
    kw.update(model_kw or {})

    def make():
        return build_model(kind, {m: train_ds.inputs[m].shape[1] for m in train_ds.modalities}, [HeadSpec(target)],
                           seed=seed, **kw)

    target = next(iter(train_ds.targets))
    cfg = TrainConfig(**{"epochs": 80, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.05, "patience": 10,
                         "seed": seed, "balance_patients": balance_patients, **TRAIN_DEFAULTS, **(train_kw or {})})
    if kind == "stacked":  # each part on its own, the combiner on their held-out logits
        model = make()
        if select == "cv":
            res = fit_stacked(model, train_ds, cfg, list(train_ds.groups), folds=5, progress=False,
                              select_parts=select_parts)
            y = train_ds.targets[target]
        else:
            res = fit_stacked(model, train_ds.subset(train_idx), cfg, folds=0, valid=train_ds.subset(valid_idx),
                              progress=False, select_parts=select_parts)
            y = train_ds.targets[target][valid_idx]
        return model, fit_temperature(res["oof_logits"][target], y, "binary")
    if select == "cv":
        res = fit_cv(make, train_ds, list(train_ds.groups), cfg, folds=5, progress=False)
        model, logits, y = res["model"], res["oof_logits"][target], train_ds.targets[target]
    else:
        model = make()
        valid = train_ds.subset(valid_idx)
        fit(model, train_ds.subset(train_idx), valid, cfg, progress=False)
        logits, y = predict_logits(model, valid)[target], valid.targets[target]
    return model, fit_temperature(logits, y, "binary")


def predict_probs(model, ds: Dataset, temperature: float = 1.0) -> np.ndarray:
    import torch

    spec = model.head_specs[0]
    return head_probs(spec, torch.from_numpy(predict_logits(model, ds)[spec.name]), temperature).numpy()


def run_model(kind: str, ds: Dataset, cohort: Cohort, target: str, seed: int, train_missing, test_missing,
              modality: str, hidden: int = 64, select: str = "cv", balance_patients: bool = False,
              linear: bool = True, options: dict | None = None):
    split = cohort.table["split"].to_numpy()
    spec = [MissingConfig(modality=modality, mechanism="mnar", class_rates={str(k): v for k, v in train_missing.items()},
                          splits=["train", "valid"], seed=seed)] if train_missing and modality in ds.modalities else []
    train_ds, _ = apply_missing(cohort, ds, spec)
    if select == "cv":
        model, _ = train_model(kind, train_ds.subset(np.flatnonzero(split != "test")), seed, hidden, "cv",
                               balance_patients, linear, **(options or {}))
    else:
        model, _ = train_model(kind, train_ds, seed, hidden, "holdout", balance_patients, linear,
                               np.flatnonzero(split == "train"), np.flatnonzero(split == "valid"), **(options or {}))
    test_idx = np.flatnonzero(split == "test")
    test = ds.subset(test_idx)
    test_cohort = cohort.split("test")
    results = {}
    for name, rates in test_missing.items():
        tspec = [MissingConfig(modality=modality, mechanism="mnar", class_rates={str(k): v for k, v in rates.items()},
                               splits=None, seed=seed + 1)] if rates and modality in ds.modalities else []
        tds, _ = apply_missing(test_cohort, test, tspec)
        p = predict_probs(model, tds)
        results[name] = binary_report(tds.targets[target], p, n_boot=500, seed=seed, clusters=test.groups)["auroc"]
    return results


PROTOCOLS = {
    "clean": ("clean-trained, none", None, None),
    "clean_flip": ("clean-trained, flipped", None, MNAR_FLIP),
    "none": ("MNAR-trained, none", MNAR_TRAIN, None),
    "flip": ("MNAR-trained, flipped", MNAR_TRAIN, MNAR_FLIP),
}


ROWS = {  # --rows key: (row name, model kind, modalities or None for all)
    "logistic": ("logistic regression, tabular", "logistic", ["table"]),
    "image": ("image only (MLP)", "concat", ["image"]),
    "tabular": ("tabular only (MLP)", "concat", ["table"]),
    "sequential": ("sequential (MultiModN-style)", "sequential", None),
    "concat": ("concat + zero-fill + indicators", "concat", None),
    "attention": ("attention + absent tokens", "attention", None),
    "stacked": ("stacked (parts' out-of-fold logits)", "stacked", None),
    "stacked-all": ("stacked, every part kept", "stacked", None),
    "sequential-last": ("sequential, last-step loss only", "sequential", None),
}
ROW_OPTIONS = {  # --rows key: extra train_model arguments
    "stacked-all": {"select_parts": False},
    "sequential-last": {"train_kw": {"step_loss": "last"}},
}


def fusion_table(title: str, cohort: Cohort, ds: Dataset, target: str, seeds: int, drop: str,
                 protocols: list[str] = list(PROTOCOLS), select: str = "cv", balance_patients: bool = False,
                 linear: bool = True, row_keys: list[str] = list(ROWS)) -> dict:
    rows = {ROWS[k][0]: (ROWS[k][1], ROWS[k][2] or ds.modalities, ROW_OPTIONS.get(k)) for k in ROWS if k in row_keys}
    keys = [k for k in PROTOCOLS if k in protocols]
    out = {}
    print(f"\n{title}: AUROC on the test split (seed 0 [95% CI over patients]; mean ± sd over {seeds} seed(s))")
    print(f"  model selection: {'patient-grouped 5-fold CV over train+valid' if select == 'cv' else 'valid split'}"
          f"{'' if select != 'cv' else '; model kept: ' + ('the one fitted on all' if TRAIN_DEFAULTS.get('cv_ensemble') is False else 'mean of it and the 5 fold models')}"
          f"{'; patient-balanced loss' if balance_patients else ''}"
          f"{'; tabular inputs also through a linear path' if linear else '; no linear paths'}")
    if any(k != "clean" for k in keys):
        print(f"  MNAR protocol: '{drop}' removed for {MNAR_TRAIN[1]:.0%} of positives in train+valid; "
              f"flip: for {MNAR_FLIP[0]:.0%} of negatives at test.\n  'clean-trained, flipped' is the reference: "
              "what the lost information alone costs a model that never saw the missingness pattern.")
    head = f"{'model':32s} " + " ".join(f"{PROTOCOLS[k][0]:>32s}" for k in keys)
    if {"none", "flip"} <= set(keys):
        head += f" {'flip-none':>9s}"
    print(head)
    print("-" * len(head))
    for name, (kind, mods, options) in rows.items():
        sub = only(ds, mods)
        per_seed: dict[str, list] = {k: [] for k in keys}
        first = {}
        for seed in range(seeds):
            res = {}
            for train_missing in dict.fromkeys(PROTOCOLS[k][1] is None for k in keys):
                tests = {k: PROTOCOLS[k][2] for k in keys if (PROTOCOLS[k][1] is None) == train_missing}
                if kind == "logistic":
                    res.update(logistic_baseline(sub, cohort, target, seed, tests, drop))
                else:
                    res.update(run_model(kind, sub, cohort, target, seed, None if train_missing else MNAR_TRAIN,
                                         tests, drop, select=select, balance_patients=balance_patients,
                                         linear=linear, options=options))
            for k in keys:
                per_seed[k].append(res[k]["value"])
            if seed == 0:
                first = res
        cell = lambda k: (f"{first[k]['value']:.3f} [{first[k]['lo']:.2f},{first[k]['hi']:.2f}] "  # noqa: E731
                          f"({np.mean(per_seed[k]):.3f}±{np.std(per_seed[k]):.3f})")
        line = f"{name:32s} " + " ".join(f"{cell(k):>32s}" for k in keys)
        delta = None
        if {"none", "flip"} <= set(keys):
            delta = float(np.mean(per_seed["flip"]) - np.mean(per_seed["none"]))
            line += f" {delta:>+9.3f}"
        print(line, flush=True)
        out[name] = {"seed0": first, "mean": {k: float(np.mean(v)) for k, v in per_seed.items()},
                     "sd": {k: float(np.std(v)) for k, v in per_seed.items()}, "flip_minus_none": delta}
    return out


def logistic_fit_predict(train: Dataset, test: Dataset) -> np.ndarray:
    """The tabular logistic regression (scikit-learn, C = 1) fitted on ``train``, P(y = 1) on ``test``."""
    from sklearn.linear_model import LogisticRegression

    target = next(iter(train.targets))
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(np.nan_to_num(train.inputs["table"]), train.targets[target])
    return clf.predict_proba(np.nan_to_num(test.inputs["table"]))[:, 1]


PARTS = ("logistic", "image", "tabular")  # single-modality rows: a fused row is compared with the best of them


def outer_cv_predictions(ds: Dataset, target: str, folds: int, seed: int, kind: str, modalities: list[str],
                         balance_patients: bool, linear: bool, options: dict | None = None) -> np.ndarray:
    """Out-of-fold P(y = 1) for every case: the cases are dealt into ``folds`` patient-grouped folds,
    stratified by label (``group_folds(..., labels=)``, seed ``1000 + seed``); each fold is predicted by
    a model that saw only the other folds, its epochs and temperature chosen by a patient-grouped CV
    *inside* those folds (``train_model(select="cv")``)."""
    fold = group_folds(list(ds.groups), folds, seed=1000 + seed, labels=ds.targets[target])
    sub = ds.only(modalities)
    p = np.full(len(ds), np.nan)
    for f in range(folds):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if kind == "logistic":
            p[te] = logistic_fit_predict(sub.subset(tr), sub.subset(te))
            continue
        model, temp = train_model(kind, sub.subset(tr), seed, select="cv", balance_patients=balance_patients,
                                  linear=linear, **(options or {}))
        p[te] = predict_probs(model, sub.subset(te), temp)
    return p


def outer_cv_table(title: str, ds: Dataset, target: str, folds: int, seeds: int, balance_patients: bool = False,
                   linear: bool = True, row_keys: list[str] = list(ROWS)) -> dict:
    """The whole set, every case predicted once per seed by a model that never saw its patient: pooled
    out-of-fold AUROC (seed 0 [95% CI resampling patients]; mean ± sd over seeds, each seed its own
    fold partition and model seed), and for each fused row the paired difference to the best part."""
    rows = {k: (ROWS[k][0], ROWS[k][1], ROWS[k][2] or ds.modalities) for k in ROWS if k in row_keys}
    y, groups = ds.targets[target], np.asarray(ds.groups)
    print(f"\n{title}: pooled out-of-fold AUROC, {folds} outer folds by patient (stratified), all {len(ds)} "
          f"cases of {len(set(map(str, groups)))} patients; seed 0 [95% CI over patients] (mean ± sd over "
          f"{seeds} seed(s)); every choice (epochs, temperature) made inside the training folds"
          f"; model kept: {'the one fitted on all' if TRAIN_DEFAULTS.get('cv_ensemble') is False else 'mean of it and the 5 fold models'}"
          f"{'; patient-balanced loss' if balance_patients else ''}")
    preds: dict[str, list[np.ndarray]] = {}
    out: dict = {}
    partitions = [group_folds(list(groups), folds, seed=1000 + s, labels=y) for s in range(seeds)]
    for key, (name, kind, mods) in rows.items():
        t0 = time.perf_counter()
        preds[key] = [outer_cv_predictions(ds, target, folds, s, kind, list(mods), balance_patients, linear,
                                           ROW_OPTIONS.get(key)) for s in range(seeds)]
        vals = [float(binary_report(y, p, n_boot=0)["auroc"]["value"]) for p in preds[key]]
        first = binary_report(y, preds[key][0], n_boot=500, seed=0, clusters=groups)["auroc"]
        per_fold = [float(np.mean([auroc(y[fold == f], p[fold == f]) for f in range(folds)]))
                    for fold, p in zip(partitions, preds[key])]
        line = (f"  {name:36s} {first['value']:.3f} [{first['lo']:.2f},{first['hi']:.2f}] "
                f"({np.mean(vals):.3f}±{np.std(vals):.3f})   per-fold mean {np.mean(per_fold):.3f}±{np.std(per_fold):.3f}")
        out[key] = {"name": name, "seed0": first, "per_seed": vals, "mean": float(np.mean(vals)),
                    "sd": float(np.std(vals)), "per_fold_mean": per_fold, "seconds": time.perf_counter() - t0}
        parts = [k for k in PARTS if k in preds and k != key]
        if key not in PARTS and parts:
            diffs = []
            for s in range(seeds):
                best = max(parts, key=lambda k: out[k]["per_seed"][s])
                d = paired_auroc_difference(y, preds[best][s], preds[key][s], n_boot=500 if s == 0 else 0,
                                            seed=0, clusters=groups)
                diffs.append((best, d))
            b0, d0 = diffs[0]
            line += (f"   minus best part ({b0}): {d0['value']:+.3f} [{d0['lo']:+.2f},{d0['hi']:+.2f}] "
                     f"(mean {np.mean([d['value'] for _, d in diffs]):+.3f})")
            out[key]["minus_best_part"] = {"seed0": d0, "best_part_seed0": b0,
                                           "per_seed": [d["value"] for _, d in diffs]}
        print(line, flush=True)
    return out


def speed_table(ds: Dataset, repeats: int = 3) -> dict:
    res = {}
    for kind in ("concat", "sequential", "attention"):
        rates = []
        for r in range(repeats):
            kw = {"hidden": 64}
            if kind == "sequential":
                kw["order"] = list(ds.modalities)
            model = build_model(kind, {m: ds.inputs[m].shape[1] for m in ds.modalities}, [HeadSpec("y")], **kw)
            big = ds.subset(np.resize(np.arange(len(ds)), 4096))
            big.targets = {"y": np.resize(next(iter(ds.targets.values())), 4096).astype(np.float32)}
            rates.append(fit(model, big, None, TrainConfig(epochs=3, batch_size=64, patience=99, seed=r),
                             progress=False)["train_samples_per_s"])
        res[kind] = float(np.median(rates))
    print("\nTraining speed on the same embeddings (4,096 samples, batch 64, median of 3 runs)")
    for kind, v in res.items():
        print(f"  {kind:12s} {v:10,.0f} samples/s   {v / res['concat']:.2f}x concat")
    return res


def encode_speed(store_dir: Path, n: int = 256) -> dict:
    """medweave's encode_items (fresh cache) vs a bare loop over the same image files."""
    from medweave.encode.image import features, load_backbone, to_input
    from medweave.encode.loaders import load_item

    with Store(store_dir) as store:
        rows = store.con.execute(
            f"SELECT * EXCLUDE (labels, meta) FROM items WHERE modality = 'image' ORDER BY item_id LIMIT {n}"
        ).df().to_dict("records")
        root = store.root
        load_backbone()
        features(np.zeros((2, 3, 224, 224), np.float32))  # warm-up
        t0 = time.perf_counter()
        batch = []
        for r in rows:  # the bare loop: read, preprocess, forward in batches of 32
            batch.append(to_input(load_item(root, r)))
            if len(batch) == 32:
                features(np.stack(batch))
                batch = []
        if batch:
            features(np.stack(batch))
        bare = len(rows) / (time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            cache = EmbeddingCache(Path(tmp) / "c.duckdb")
            t0 = time.perf_counter()
            encode_items(rows, "efficientnet-lite0", root, cache, progress=False)
            ours = len(rows) / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            encode_items(rows, "efficientnet-lite0", root, cache, progress=False)
            cached = len(rows) / (time.perf_counter() - t0)
            cache.close()
    print(f"\nImage encoding, EfficientNet-Lite0, {len(rows)} images")
    print(f"  bare loop        {bare:8.1f} images/s")
    print(f"  medweave         {ours:8.1f} images/s   {ours / bare:.2f}x bare")
    print(f"  medweave cached  {cached:8.1f} images/s (second pass: nothing re-encoded)")
    return {"bare": bare, "medweave": ours, "cached": cached}


def phantom_config(data: Path, mapping: Path) -> dict:
    return {
        "name": "phantom",
        "data": {"paths": [str(data)], "mapping": str(mapping)},
        "cohort": {"case": "patient", "targets": ["disease"], "covariates": ["age", "sex"],
                   "modalities": ["image", "text", "table", "signal"], "fractions": [0.6, 0.15, 0.25]},
        # Reports restate the label almost word for word (their AUROC alone is ~0.99), which would
        # saturate every fusion model; the fusion table uses the three modalities that leave room.
        "model": {"kind": "sequential", "modalities": ["table", "image", "signal"], "hidden": 64},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="nih,phantom")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--patients", type=int, default=1000, help="phantom patients")
    ap.add_argument("--workdir", type=Path, default=REPO / "out" / "bench-fusion")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS), help=f"columns, of: {', '.join(PROTOCOLS)}")
    ap.add_argument("--select", choices=["cv", "holdout"], default="cv", help="early stopping")
    ap.add_argument("--balance-patients", action="store_true", help="each patient weighs the same in the loss")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed tables")
    ap.add_argument("--no-linear", action="store_true", help="fusers without linear paths (model.linear = [])")
    ap.add_argument("--no-cv-ensemble", action="store_true",
                    help="with --select cv: keep the model trained on all cases alone, not the mean of it and the "
                         "fold models (train.cv_ensemble = false; the figures before the ensemble)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"table rows, of: {', '.join(ROWS)}")
    ap.add_argument("--finetune-blocks", type=int, default=0,
                    help="NIH: also the table with the image encoder's last N blocks fine-tuned on the train split")
    ap.add_argument("--finetune-epochs", type=int, default=15)
    ap.add_argument("--finetune-augmentations", type=int, default=4)
    ap.add_argument("--finetune-size", type=int, default=224, help="picture side fed to the tuned encoder")
    ap.add_argument("--no-frozen", action="store_true", help="with --finetune-blocks: skip the frozen table")
    ap.add_argument("--finetune-seed", type=int, default=0, help="seed of the tuning (the heads': 0..seeds-1)")
    ap.add_argument("--frozen-size", type=int, default=224, help="picture side of the frozen encoder's table")
    ap.add_argument("--outer-folds", type=int, default=0,
                    help="NIH: also the outer patient-grouped CV over all 800 images with this many folds (0: off)")
    args = ap.parse_args()
    row_keys = args.rows.split(",")
    if [k for k in row_keys if k not in ROWS]:
        ap.error(f"--rows: {[k for k in row_keys if k not in ROWS][0]!r} is not known; allowed: {', '.join(ROWS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.no_cv_ensemble:
        TRAIN_DEFAULTS["cv_ensemble"] = False
    import torch

    torch.set_num_threads(1)  # small models: one thread is faster than several on a shared CPU
    results: dict = {}
    sets = args.sets.split(",")
    protocols = args.protocols.split(",")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        ap.error(f"--protocols: {unknown[0]!r} is not known; allowed values: {', '.join(PROTOCOLS)}")
    if "nih" in sets:
        nih = shared_data_dir() / "nih-cxr14-800"
        if not nih.is_dir():
            print(f"NIH: skipped, {nih} not found (set MEDWEAVE_DATA)")
        else:
            cfg = load_config(REPO / "configs" / "nih-cxr14.toml")
            variants = [] if args.finetune_blocks and args.no_frozen else [("frozen", cfg)]
            if args.finetune_blocks:  # the tuning's seed is train.seed (the benchmark's heads take 0..seeds-1)
                variants.append(("tuned", cfg.model_copy(update={"encode": cfg.encode.model_copy(update={
                    "finetune_blocks": args.finetune_blocks, "finetune_epochs": args.finetune_epochs,
                    "finetune_augmentations": args.finetune_augmentations, "finetune_size": args.finetune_size}),
                    "train": cfg.train.model_copy(update={"seed": args.finetune_seed})})))
            for label, vcfg in variants:
                t0 = time.perf_counter()
                cohort, ds, tuned = prepare(vcfg, args.workdir, resplit=True, frozen_size=args.frozen_size)
                what = (f"frozen EfficientNet-Lite0 ({args.frozen_size})" if tuned is None else
                        f"EfficientNet-Lite0, last {args.finetune_blocks} block(s) fine-tuned at {args.finetune_size} "
                        f"on {tuned.heads['pictures']} train-split pictures (seed {args.finetune_seed}, "
                        f"{args.finetune_epochs} epochs, "
                        f"{args.finetune_augmentations} augmented copies, {tuned.seconds:.0f} s; version {tuned.version})")
                print(f"NIH ChestX-ray14-800: {len(ds)} images; splits {cohort.summary()['splits']} "
                      f"(source valid/ = test; 15% of train/ patients = valid); image encoder: {what}; "
                      f"prepared in {time.perf_counter() - t0:.0f} s", flush=True)
                results["nih" if label == "frozen" else "nih_tuned"] = fusion_table(
                    f"NIH ChestX-ray14-800, target abnormal, {label} encoder", cohort, ds, "abnormal", args.seeds,
                    "image", protocols, args.select, args.balance_patients, not args.no_linear, row_keys)
                if tuned is not None:
                    results["nih_tuned"]["finetune"] = tuned.info()
                if args.outer_folds > 1 and tuned is None:
                    results["nih_outer_cv"] = outer_cv_table(
                        f"NIH ChestX-ray14-800, target abnormal, {label} encoder", ds, "abnormal", args.outer_folds,
                        args.seeds, args.balance_patients, not args.no_linear, row_keys)
            if not args.no_speed:
                results["speed_train"] = speed_table(ds)
                results["speed_encode"] = encode_speed(args.workdir / "nih-cxr14-store")
    if "phantom" in sets:
        from medweave.demo import generate_phantom

        m = generate_phantom(args.workdir / "phantom", n_patients=args.patients, seed=0)
        cfg = parse_config(phantom_config(m.path("data"), m.mapping))
        cohort, ds, _ = prepare(cfg, args.workdir, resplit=False)
        print(f"\nPhantom (synthetic, {args.patients} patients): true effects per modality: "
              f"{json.dumps(m.effects, default=str)[:300]}")
        present = {mm: int(ds.mask[:, j].sum()) for j, mm in enumerate(ds.modalities)}
        print(f"  presence: {present}; splits {cohort.summary()['splits']}")
        results["phantom"] = fusion_table("Phantom, target disease", cohort, ds, "disease", args.seeds, "image",
                                          protocols, args.select, args.balance_patients, not args.no_linear,
                                          row_keys)
        if "speed_train" not in results and not args.no_speed:
            results["speed_train"] = speed_table(ds)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
