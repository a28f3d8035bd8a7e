"""Evaluate a saved model: on its own cohort's test split, or on a new folder with the layout of its
training data; optionally under simulated missingness (MCAR / MAR / MNAR, incl. the MultiModN flip)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import MissingConfig
from ..fuse import head_probs
from .metrics import binary_report


class EvaluateError(ValueError):
    pass


def parse_missing(text: str) -> MissingConfig:
    """``MECH:MODALITY:SPEC`` — ``mcar:image:0.3``, ``mar:image:0.3:age`` (rate, column) or
    ``mnar:image:0=0.5,1=0`` (probability per target value; the flip of a train-time {1: 0.5})."""
    parts = text.split(":")
    if len(parts) < 3 or parts[0] not in ("mcar", "mar", "mnar"):
        raise EvaluateError(f"--missing {text!r}: expected MECH:MODALITY:SPEC with MECH one of mcar, mar, mnar "
                            "(e.g. mcar:image:0.3, mar:image:0.3:age, mnar:image:0=0.5,1=0)")
    mech, modality, spec = parts[0], parts[1], parts[2]
    try:
        if mech == "mnar" and "=" in spec:
            rates = {k: float(v) for k, v in (kv.split("=") for kv in spec.split(","))}
            return MissingConfig(modality=modality, mechanism=mech, class_rates=rates, splits=None, seed=0)
        return MissingConfig(modality=modality, mechanism=mech, rate=float(spec),
                             column=parts[3] if len(parts) > 3 else None, splits=None, seed=0)
    except ValueError as exc:
        raise EvaluateError(f"--missing {text!r}: {exc}") from None


PREDICT_CHUNK = 2048  # cases a Ray actor predicts per call: a multiple of predict_logits' batch (512)


class Predictor:
    """A model folder loaded once (in a Ray actor, or here), predicting the logits of dataset chunks."""

    def __init__(self, model_dir: str):
        from ..train import load_checkpoint

        self.model, _ = load_checkpoint(Path(model_dir))

    def logits(self, ds, batch_size: int) -> dict[str, np.ndarray]:
        from ..train import predict_logits

        return predict_logits(self.model, ds, batch_size)


def predict_batch(model, ds, engine=None, model_dir: str | Path | None = None, chunk: int = PREDICT_CHUNK,
                  batch_size: int = 512) -> dict[str, np.ndarray]:
    """The logits of every case of ``ds``: here, or (a Ray ``engine``) in Ray actors that each load the
    model from ``model_dir`` once and predict chunks of ``chunk`` cases, in order (a dataset of one
    chunk or less is predicted here: starting actors would cost more). The chunks are whole batches
    of ``predict_logits`` (``chunk`` is rounded up to a multiple of ``batch_size``), so every batch is
    the one a local run computes: the same floats, to the last bit."""
    from ..train import predict_logits

    chunk = -(-max(chunk, 1) // batch_size) * batch_size
    if engine is None or not engine.is_ray or len(ds) <= chunk:
        return predict_logits(model, ds, batch_size)
    if model_dir is None:
        raise ValueError("batch prediction on Ray needs the model folder (each actor loads it)")
    chunks = [(ds.subset(np.arange(start, min(len(ds), start + chunk))), batch_size)
              for start in range(0, len(ds), chunk)]
    parts = list(engine.map_actors(Predictor, (str(model_dir),), "logits", chunks))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def score(model, config: dict, ds, n_boot: int = 1000, seed: int = 0, engine=None,
          model_dir: str | Path | None = None) -> dict[str, Any]:
    """Calibrated predictions for ``ds`` and the metrics of every binary head (predicted on Ray with
    a Ray ``engine``: see ``predict_batch``)."""
    import torch

    logits = predict_batch(model, ds, engine, model_dir)
    temps = config.get("temperatures", {})
    out: dict[str, Any] = {}
    for spec in model.head_specs:
        probs = head_probs(spec, torch.from_numpy(logits[spec.name]), temps.get(spec.name, 1.0)).numpy()
        if spec.kind == "binary":
            out[spec.name] = binary_report(ds.targets[spec.name], probs, n_boot=n_boot, seed=seed)
        elif spec.kind == "multiclass":
            y = ds.targets[spec.name]
            keep = y >= 0
            acc = float((probs[keep].argmax(1) == y[keep]).mean()) if keep.any() else float("nan")
            out[spec.name] = {"n": {"value": int(keep.sum())}, "accuracy": {"value": acc}}
        elif spec.kind == "regression":
            y = ds.targets[spec.name]
            keep = ~np.isnan(y)
            out[spec.name] = {"n": {"value": int(keep.sum())},
                              "mae": {"value": float(np.abs(probs[keep] - y[keep]).mean())}}
    return out


def evaluate_model(model_dir: str | Path, data: Sequence[str] | None = None, store: str | Path | None = None,
                   split: str | None = None, missing: Sequence[str] = (), n_boot: int = 1000,
                   progress: bool = True, engine=None) -> dict[str, Any]:
    """Metrics of a saved model on its cohort's split or on new data. With an ``engine``, encoding (of
    what the embedding cache does not hold) and batch prediction run on it (default: the saved
    config's engine for encoding, prediction here)."""
    from ..train import load_checkpoint
    from ..train.pipeline import apply_missing, arrays_folder, checkpoint_dataset, make_cohort, prepare_eval_data

    model_dir = Path(model_dir)
    model, config = load_checkpoint(model_dir)
    specs_missing = [parse_missing(m) for m in missing]
    if split is None and data:
        split = "all"

    def cv_check(name: str) -> None:
        if not data and name in ("valid", "all") and (config.get("training") or {}).get("cv_folds"):
            raise EvaluateError(f"split {name!r}: this model was trained on train + valid (cross-validated early "
                                "stopping, train.cv_folds); evaluate it on a test split or on new data with --data")

    if split is not None:
        cv_check(split)
    # Only the split scored is built (hash splits read only its patients: see build_cohort's only_split);
    # the heads' classes come from the checkpoint. A head without recorded classes needs the train split:
    # then the whole cohort is built, as before.
    whole = split == "all" or any(h.get("kind") == "multiclass" and not h.get("classes")
                                  for h in config["architecture"]["heads"])
    first = None if whole else (split or "test")
    cfg, st, cohort, cache = prepare_eval_data(model_dir, config, data, Path(store) if store else None, progress,
                                               only_split=first)
    if engine is not None:
        from ..config import EngineConfig

        cfg.engine = EngineConfig(kind=engine.kind, address=engine.address, num_cpus=engine.num_cpus)
    try:
        if split is None:
            split = "test" if (cohort.table["split"] == "test").any() else "valid"
            if split == "valid":
                cv_check(split)
                if not whole:
                    cohort = make_cohort(cfg, st, only_split="valid")
        if split != "all" and not (cohort.table["split"] == split).any():
            present = cohort.table["split"] if whole else make_cohort(cfg, st).table["split"]
            raise EvaluateError(f"split {split!r} has no cases; splits present: "
                                f"{', '.join(sorted(present.unique()))}, or 'all'")
        # Only the split's cases are encoded. The inputs are written once to a temporary folder beside
        # the store and read a batch at a time (the folder is removed on leaving; the open arrays keep
        # reading their files until they go).
        with arrays_folder(Path(st.root)) as arrays_dir:
            ds, _, info = checkpoint_dataset(config, cfg, cohort, st, cache, progress, arrays_dir=arrays_dir,
                                            model_dir=model_dir, split=None if split == "all" else split)
    finally:
        cache.close()
        st.close()
    if split != "all":
        cohort = cohort.split(split)
    ds, applied = apply_missing(cohort, ds, specs_missing)
    return {
        "model": str(model_dir),
        "data": list(data) if data else config["cohort"]["store"],
        "split": split,
        "cases": len(ds),
        "presence": {m: int(ds.mask[:, j].sum()) for j, m in enumerate(ds.modalities)},
        "simulated_missingness": applied,
        "metrics": score(model, config, ds, n_boot=n_boot, engine=engine, model_dir=model_dir),
        "encode_failures": info["failures"][:20],
    }
