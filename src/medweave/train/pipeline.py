"""From a config to a trained, calibrated, saved model — and back from a saved model to predictions
on new data with the same layout.

ingest (idempotent) -> cohort -> simulated missingness (if configured) -> encode (cached) ->
tabular features (fitted on train) -> fit -> temperature scaling -> checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..cohort import Cohort, build_cohort, class_lookup, is_missing, item_id_column, simulate_missing
from ..config import ExperimentConfig
from ..encode import EmbeddingCache, TabularFeaturizer, encode_cohort, tabular_frame
from ..encode.arrays import write_disk_array
from ..encode.base import DEFAULT_ENCODERS
from ..fuse import HeadSpec, ensemble_members
from ..ingest import ingest
from ..store import Store
from .trainer import (Dataset, TrainConfig, build_model, fit, fit_cv, fit_stacked, fit_temperature, predict_logits,
                      save_checkpoint)


class PipelineError(RuntimeError):
    pass


def code_version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except Exception:
        rev = ""
    return f"{__version__}+{rev}" if rev else __version__


def ingest_data(cfg: ExperimentConfig, store_dir: Path, paths: Sequence[str] | None = None,
                progress: bool = True) -> None:
    """Ingest the config's data (or ``paths``) into ``store_dir``; already stored sources are skipped."""
    options = {"mapping": cfg.data.mapping} if cfg.data.mapping else {}
    with Store(store_dir, write=True, keep_phi=cfg.data.keep_phi) as st:
        report = ingest(list(paths or cfg.data.paths), st, fmt=cfg.data.format, namespace=cfg.data.namespace,
                        options=options, progress=progress, engine=cfg.engine.build())
    if report.n_ok + report.n_already == 0:
        raise PipelineError(f"nothing could be ingested from {list(paths or cfg.data.paths)}: "
                            + "; ".join(f"{p}: {r}" for p, r in report.errors[:5]))


def make_cohort(cfg: ExperimentConfig, store: Store, only_split: str | None = None) -> Cohort:
    """The config's cohort of ``store`` (``only_split``: only that split's cases, see ``build_cohort``)."""
    c = cfg.cohort
    return build_cohort(store, case_level=c.case, modalities=c.modalities, targets=c.targets,
                        covariates=c.covariates, fractions=c.fractions, seed=c.seed, split_from=c.split_from,
                        only_split=only_split)


def apply_missing(cohort: Cohort, ds: Dataset, specs) -> tuple[Dataset, list[dict]]:
    """Simulate missingness on the model's inputs (the ``table`` modality included) with the cohort's
    own ``simulate_missing``; returns the dataset with its new mask and what was applied."""
    if not specs:
        return ds, []
    view = cohort.table.drop(columns=[c for c in cohort.table.columns if c.endswith(("_items", "_present"))])
    for j, m in enumerate(ds.modalities):
        view[f"{m}_present"] = ds.mask[:, j]
        view[f"{m}_items"] = item_id_column([] for _ in range(len(view)))
    c = Cohort(view, list(ds.modalities), list(cohort.targets), list(cohort.covariates), {"missingness": []})
    for s in specs:
        rates = {_key(k): v for k, v in s.class_rates.items()} if s.class_rates else None
        c = simulate_missing(c, s.modality, s.mechanism, rate=s.rate, seed=s.seed, column=s.column,
                             class_rates=rates, splits=s.splits)
    mask = np.stack([c.table[f"{m}_present"].to_numpy(dtype=bool) for m in ds.modalities], axis=1)
    return ds.with_mask(mask), c.meta["missingness"]


def _key(k: str):
    try:
        return int(k)
    except ValueError:
        return k


def head_specs(cfg: ExperimentConfig, cohort: Cohort, classes: dict[str, list] | None = None) -> list[HeadSpec]:
    specs = []
    for h in cfg.heads:
        if h.kind == "multiclass":
            cls = (classes or {}).get(h.name) or sorted(
                cohort.split("train").table[h.target].dropna().astype(str).unique())
            specs.append(HeadSpec(h.name, h.kind, len(cls), list(cls)))
        else:
            specs.append(HeadSpec(h.name, h.kind))
    return specs


def targets_for(cfg: ExperimentConfig, cohort: Cohort, specs: list[HeadSpec]) -> dict[str, np.ndarray]:
    out = {}
    for h, spec in zip(cfg.heads, specs):
        col = cohort.table[h.target]
        if spec.kind == "multiclass":
            find = class_lookup(spec.classes)  # "2.0" and "2" are one class (see cohort.integral_spelling)
            out[h.name] = np.array([-1 if is_missing(v) or (i := find(str(v))) is None else i for v in col],
                                   dtype=np.float32)
        else:
            out[h.name] = np.array([np.nan if is_missing(v) else float(v) for v in col], dtype=np.float32)
    return out


def build_dataset(cfg: ExperimentConfig, cohort: Cohort, store: Store, cache: EmbeddingCache,
                  featurizer: TabularFeaturizer | None = None, specs: list[HeadSpec] | None = None,
                  progress: bool = True, arrays_dir: str | Path | None = None,
                  encoders: dict[str, Any] | None = None) -> tuple[Dataset, TabularFeaturizer | None, dict]:
    """Model-ready arrays for every case of ``cohort``. The featurizer is fitted on the train split
    when none is given. With ``arrays_dir`` (an existing, empty folder) the inputs are written there
    once, a chunk of cases at a time, and the dataset reads them by rows (``DiskArray``): memory
    then holds the mask, the targets and one batch, not every case's vectors. ``encoders``: encoders
    (instances, e.g. a fine-tuned one) that replace the config's for their modalities."""
    mods = list(cfg.model.modalities)
    item_mods = [m for m in mods if m != "table"]
    unknown = [m for m in item_mods if m not in cohort.modalities]
    if unknown:
        raise PipelineError(f"model modality {unknown[0]!r} is not in the cohort; cohort modalities: "
                            f"{', '.join(cohort.modalities)} (and 'table' for covariates)")
    emb = encode_cohort(cohort, store, {**cfg.encoders, **(encoders or {})}, cache, modalities=item_mods,
                        progress=progress,
                        engine=cfg.engine.build(), out_dir=arrays_dir)
    inputs, mask_cols = dict(emb.arrays), [emb.mask[m] for m in item_mods]
    if "table" in mods:
        frame = tabular_frame(cohort, store)
        if featurizer is None:
            featurizer = TabularFeaturizer().fit(frame[cohort.table["split"].to_numpy() == "train"])
        x, present = featurizer.transform(frame)
        x[~present] = np.nan
        inputs["table"] = x if arrays_dir is None else write_disk_array(Path(arrays_dir) / "table.npy", x)
        del frame, x
        mask_cols.insert(mods.index("table"), present)
    specs = specs or head_specs(cfg, cohort)
    ds = Dataset(list(cohort.table["case_id"]), mods, {m: inputs[m] for m in mods},
                 np.stack(mask_cols, axis=1), targets_for(cfg, cohort, specs),
                 groups=cohort.table["patient_id"].astype(str).to_numpy())
    return ds, featurizer, {"encoders": emb.encoders, "failures": emb.failures}


FINETUNE_MODALITY = "image"  # the modality whose encoder ``[encode] finetune_blocks`` tunes


def finetune_image_encoder(cfg: ExperimentConfig, cohort: Cohort, store: Store, specs: list[HeadSpec],
                           progress: bool = True):
    """Fine-tune EfficientNet-Lite0's tail on the pictures of the cohort's **train** split only (valid,
    test and new data never reach it), each picture labelled with its case's targets (every binary
    and multiclass head; a missing target is left out of that head's loss; with ``train.balance_patients``
    each patient's pictures weigh 1 in all, as in the fusion model's loss). The tuning itself is
    ``medweave.encode.finetune.finetune``. Returns the ``FinetuneResult``, whose ``encoder()`` encodes
    every split afterwards."""
    from ..encode.finetune import FinetuneConfig, PictureTargets, finetune
    from ..encode.loaders import load_item

    e, m = cfg.encode, FINETUNE_MODALITY
    if m not in cfg.model.modalities:
        raise PipelineError(f"encode.finetune_blocks is {e.finetune_blocks}, but model.modalities "
                            f"({', '.join(cfg.model.modalities)}) has no {m!r} to fine-tune an encoder for")
    name = cfg.encoders.get(m, DEFAULT_ENCODERS[m])
    if name != "efficientnet-lite0":
        raise PipelineError(f"encode.finetune_blocks tunes efficientnet-lite0; encoders.{m} is {name!r}")
    if any(s.modality == m for s in cfg.missing):
        raise PipelineError(f"encode.finetune_blocks with simulated missingness of {m!r} ([[missing]]) is not "
                            "supported: the tuning would see pictures the simulation removes")
    train = cohort.split("train")
    targets = targets_for(cfg, train, specs)
    ids_per_case = [list(ids) for ids in train.table[f"{m}_items"]]
    wanted = sorted({i for ids in ids_per_case for i in ids})
    rows = store.con.execute(
        "SELECT * EXCLUDE (labels, meta) FROM items WHERE item_id IN (SELECT unnest(?))", [wanted]
    ).df().to_dict("records") if wanted else []
    by_id = {r["item_id"]: r for r in rows}
    pictures, case_of, seen = [], [], set()
    for i, ids in enumerate(ids_per_case):
        for x in ids:
            r = by_id.get(x)
            if r is None or r["content_hash"] in seen:
                continue
            try:
                pictures.append(load_item(store.root, r))
            except Exception:  # encoding reports it; the tuning goes on without it
                continue
            seen.add(r["content_hash"])
            case_of.append(i)
    if not pictures:
        raise PipelineError(f"encode.finetune_blocks: the train split has no readable {m} items")
    case_of = np.asarray(case_of)
    weights = None
    if cfg.train.balance_patients:  # as the fusion model's loss: each patient's pictures weigh 1 in all
        patient = train.table["patient_id"].astype(str).to_numpy()[case_of]
        _, inverse, counts = np.unique(patient, return_inverse=True, return_counts=True)
        weights = (1.0 / counts[inverse]).astype(np.float32)
    single = {}
    for spec in specs:
        y = targets[spec.name][case_of]
        if spec.kind == "binary":
            single[spec.name] = (np.where(np.isnan(y), -1, y).astype(np.int64), ["0", "1"])
        elif spec.kind == "multiclass":
            single[spec.name] = (y.astype(np.int64), list(spec.classes))
    if not single:
        raise PipelineError("encode.finetune_blocks needs a binary or multiclass head to learn from")
    ft = FinetuneConfig(blocks_tuned=e.finetune_blocks, epochs=e.finetune_epochs,
                        augmentations=e.finetune_augmentations, lr=e.finetune_lr, seed=cfg.train.seed,
                        size=e.finetune_size)
    result = finetune(pictures, PictureTargets(single, weights=weights), ft, progress=print if progress else None)
    result.heads = {"pictures": len(pictures), "train_cases": int(len(train.table)),
                    "patients": int(train.table["patient_id"].nunique()), "targets": sorted(single),
                    "balance_patients": weights is not None}
    return result


@dataclass
class TrainResult:
    model_dir: Path
    fit: dict[str, Any]
    temperatures: dict[str, float]
    cohort: Cohort
    dataset: Dataset


def arrays_folder(store_dir: Path) -> tempfile.TemporaryDirectory:
    """A fresh folder for a run's case-level arrays, beside the store's embedding cache (on the same
    disk, not in a RAM-backed /tmp); removed when the run ends (arrays still open keep reading it)."""
    store_dir.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f".{store_dir.name}-arrays-", dir=store_dir.parent)


def train_experiment(cfg: ExperimentConfig, model_dir: str | Path, progress: bool = True,
                     config_source: str | None = None, arrays_on_disk: bool = True) -> TrainResult:
    """``arrays_on_disk``: the case-level inputs are written once to a temporary folder beside the
    store and read a batch at a time (False: held in memory; the same model either way)."""
    model_dir = Path(model_dir)
    store_dir = Path(cfg.data.store) if cfg.data.store else model_dir / "store"
    ingest_data(cfg, store_dir, progress=progress)
    with contextlib.ExitStack() as stack:
        arrays_dir = stack.enter_context(arrays_folder(store_dir)) if arrays_on_disk else None
        return _train(cfg, model_dir, store_dir, progress, config_source, arrays_dir)


def _train(cfg: ExperimentConfig, model_dir: Path, store_dir: Path, progress: bool, config_source: str | None,
           arrays_dir: str | None) -> TrainResult:
    with Store(store_dir) as store:
        cohort = make_cohort(cfg, store)
        specs = head_specs(cfg, cohort)
        tuned = finetune_image_encoder(cfg, cohort, store, specs, progress) if cfg.encode.finetune_blocks else None
        cache = EmbeddingCache(store_dir.parent / (store_dir.name + "-embeddings.duckdb"))
        try:
            ds, featurizer, enc_info = build_dataset(
                cfg, cohort, store, cache, specs=specs, progress=progress, arrays_dir=arrays_dir,
                encoders={FINETUNE_MODALITY: tuned.encoder()} if tuned else None)
        finally:
            cache.close()
    ds, missingness = apply_missing(cohort, ds, cfg.missing)
    split = cohort.table["split"].to_numpy()
    train, valid = ds.subset(np.flatnonzero(split == "train")), ds.subset(np.flatnonzero(split == "valid"))
    if len(train) == 0:
        raise PipelineError("the train split is empty; check cohort.split_from / fractions")
    dims = {m: int(a.shape[1]) for m, a in ds.inputs.items()}
    def make_model():
        return build_model(cfg.model.kind, dims, specs, seed=cfg.train.seed, **cfg.model.kwargs())

    tcfg = TrainConfig(**cfg.train.model_dump())
    temps = {}
    if cfg.model.kind == "stacked":
        # Each part on its own, the combiner on the parts' held-out logits (see fit_stacked): by
        # patient-grouped CV over train + valid with cv_folds > 1, else on the valid split.
        model = make_model()
        if tcfg.cv_folds > 1:
            idx = np.flatnonzero(np.isin(split, ["train", "valid"]))
            held = ds.subset(idx)
            result = fit_stacked(model, held, tcfg, list(cohort.table["patient_id"].to_numpy()[idx]),
                                 folds=tcfg.cv_folds, progress=progress)
        else:
            if not len(valid):
                raise PipelineError("model.kind 'stacked' needs a valid split or train.cv_folds > 1")
            held = valid
            result = fit_stacked(model, train, tcfg, folds=0, valid=valid, progress=progress)
        oof = result.pop("oof_logits")
        result.pop("part_oof_logits")
        result["history"] = []
        if tcfg.calibrate:
            temps = {s.name: fit_temperature(oof[s.name], held.targets[s.name], s.kind) for s in specs}
    elif tcfg.cv_folds > 1:
        # Cross-validated early stopping over train + valid, grouped by patient (see fit_cv).
        idx = np.flatnonzero(np.isin(split, ["train", "valid"]))
        pool = ds.subset(idx)
        result = fit_cv(make_model, pool, list(cohort.table["patient_id"].to_numpy()[idx]), tcfg,
                        folds=tcfg.cv_folds, progress=progress)
        model = result.pop("model")
        oof = result.pop("oof_logits")
        if tcfg.calibrate:
            temps = {s.name: fit_temperature(oof[s.name], pool.targets[s.name], s.kind) for s in specs}
    else:
        model = make_model()
        result = fit(model, train, valid if len(valid) else None, tcfg, progress=progress)
        if tcfg.calibrate and len(valid):
            logits = predict_logits(model, valid)
            temps = {s.name: fit_temperature(logits[s.name], valid.targets[s.name], s.kind) for s in specs}
    config = {
        "medweave_version": __version__,
        "code_version": code_version(),
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "experiment": cfg.model_dump(mode="json"),
        "config_source": config_source,
        "architecture": {"kind": cfg.model.kind, "dims": dims,
                         "heads": [vars(s) for s in specs], "kwargs": cfg.model.kwargs(),
                         "members": ensemble_members(model)},
        "encoders": {m: d for m, d in enc_info["encoders"].items()},
        "default_encoders": DEFAULT_ENCODERS,
        "tabular": featurizer.to_dict() if featurizer else None,
        "temperatures": temps,
        "cohort": {"store": str(store_dir), "cases": len(cohort), "splits": cohort.summary()["splits"],
                   "meta": cohort.meta, "simulated_missingness": missingness,
                   "presence": {m: int(ds.mask[:, j].sum()) for j, m in enumerate(ds.modalities)}},
        "training": {k: v for k, v in result.items() if k != "history"},
        "history": result["history"],
        "encode_failures": enc_info["failures"][:50],
        "finetune": tuned.info() if tuned else None,
    }
    save_checkpoint(model_dir, model, config, encoder_state=tuned.state if tuned else None)
    return TrainResult(model_dir, result, temps, cohort, ds)


def experiment_from_checkpoint(config: dict[str, Any]) -> ExperimentConfig:
    from ..config import parse_config

    return parse_config(config["experiment"], "model config.json")


def prepare_eval_data(model_dir: Path, config: dict, data_paths: Sequence[str] | None, store_dir: Path | None,
                      progress: bool = True, only_split: str | None = None
                      ) -> tuple[ExperimentConfig, Store, Cohort, EmbeddingCache]:
    """Open (and, for new data, ingest into) the store to evaluate on; returns an open store.
    ``only_split``: the cohort holds only that split's cases (see ``build_cohort``)."""
    cfg = experiment_from_checkpoint(config)
    if data_paths:
        store_dir = store_dir or model_dir / "eval-store"
        ingest_data(cfg, store_dir, paths=data_paths, progress=progress)
    else:
        store_dir = Path(config["cohort"]["store"])
    store = Store(store_dir)
    cohort = make_cohort(cfg, store, only_split=only_split)
    cache = EmbeddingCache(store_dir.parent / (store_dir.name + "-embeddings.duckdb"))
    return cfg, store, cohort, cache


def checkpoint_encoders(model_dir: str | Path | None, config: dict[str, Any]) -> dict[str, Any]:
    """The encoders a saved model brings with it: its fine-tuned image encoder (``encoder.safetensors``,
    checked against config.json) when it was trained with ``encode.finetune_blocks``; else none."""
    ft = config.get("finetune")
    if not ft:
        return {}
    if model_dir is None:
        raise PipelineError("this model has a fine-tuned image encoder (config.json: finetune); "
                            "give its model folder to read encoder.safetensors")
    from ..encode.finetune import FineTunedLite0, state_hash
    from .trainer import load_encoder_state

    c = ft["config"]
    state = load_encoder_state(Path(model_dir), config)
    if state_hash(state) != ft["version"]:
        raise PipelineError(f"{Path(model_dir) / 'encoder.safetensors'}: its weights hash to {state_hash(state)}, "
                            f"config.json (finetune.version) records {ft['version']}")
    return {FINETUNE_MODALITY: FineTunedLite0(state, c["blocks_tuned"], c.get("size", 224))}


def checkpoint_dataset(config: dict[str, Any], cfg: ExperimentConfig, cohort: Cohort, store: Store,
                       cache: EmbeddingCache, progress: bool = True, arrays_dir: str | Path | None = None,
                       model_dir: str | Path | None = None, split: str | None = None):
    """Model-ready arrays for ``cohort`` the way a saved model saw its training data: its own fitted
    tabular featuriser, its heads' classes and its fine-tuned encoder if it has one (read from
    ``model_dir``; ``arrays_dir``: on disk, see ``build_dataset``). ``split``: only that split's
    cases are encoded (the heads are still read from the whole cohort; each case's row is its own).
    Returns (dataset, featuriser, encode info)."""
    featurizer = TabularFeaturizer.from_dict(config["tabular"]) if config.get("tabular") else None
    classes = {h["name"]: h["classes"] for h in config["architecture"]["heads"] if h.get("classes")}
    specs = head_specs(cfg, cohort, classes)
    if split is not None:
        cohort = cohort.split(split)
    ds, _, info = build_dataset(cfg, cohort, store, cache, featurizer=featurizer, specs=specs, progress=progress,
                                arrays_dir=arrays_dir, encoders=checkpoint_encoders(model_dir, config))
    return ds, featurizer, info


def save_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))
