"""Fitting fusion models: AdamW, early stopping on the validation split, seeded and reproducible,
temperature scaling, checkpoints as safetensors + a JSON config."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..config import TrainSection as TrainConfig  # one definition: the config section
from ..encode.arrays import take_rows
from ..fuse import FUSERS, FusionModel, HeadSpec, head_loss, modality_dropout
from ..progress import progress_bar


@dataclass
class Dataset:
    """Model-ready arrays: per-modality inputs (NaN rows where absent), the mask, the targets.

    An input may be a ``DiskArray`` (``medweave.encode.arrays``): rows on disk, read a batch at a time
    by ``tensors(index)``; training and prediction never read all of it at once."""

    case_ids: list[str]
    modalities: list[str]
    inputs: dict[str, np.ndarray]
    mask: np.ndarray  # (N, M) bool, columns in ``modalities`` order
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    groups: np.ndarray | None = None  # (N,) patient of each case, where known (patient-balanced loss, CV)

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, index: np.ndarray) -> "Dataset":
        """The cases ``index``; inputs kept on disk (``DiskArray``) stay there (nothing is read)."""
        return Dataset([self.case_ids[i] for i in index], list(self.modalities),
                       {m: take_rows(a, index) for m, a in self.inputs.items()}, self.mask[index],
                       {k: v[index] for k, v in self.targets.items()},
                       None if self.groups is None else np.asarray(self.groups)[index])

    def with_mask(self, mask: np.ndarray) -> "Dataset":
        return Dataset(list(self.case_ids), list(self.modalities), self.inputs, mask.astype(bool), self.targets,
                       self.groups)

    def only(self, modalities: Sequence[str]) -> "Dataset":
        """The same cases with a subset of the modalities (e.g. image-only, tabular-only parts)."""
        cols = [self.modalities.index(m) for m in modalities]
        return Dataset(list(self.case_ids), list(modalities), {m: self.inputs[m] for m in modalities},
                       self.mask[:, cols], self.targets, self.groups)

    def case_weights(self) -> np.ndarray:
        """1 / (cases of the same patient), scaled to mean 1: each patient weighs the same in a loss,
        however many images it has (ones where no patient is known)."""
        if self.groups is None or not len(self):
            return np.ones(len(self), np.float32)
        _, inverse, counts = np.unique(np.asarray(self.groups).astype(str), return_inverse=True, return_counts=True)
        w = 1.0 / counts[inverse]
        return (w / w.mean()).astype(np.float32)

    def tensors(self, index: np.ndarray | None = None, targets: bool = True):
        idx = slice(None) if index is None else index
        x = {m: torch.from_numpy(np.ascontiguousarray(a[idx], dtype=np.float32)) for m, a in self.inputs.items()}
        return x, torch.from_numpy(np.ascontiguousarray(self.mask[idx])), ({
            k: torch.from_numpy(np.ascontiguousarray(v[idx], dtype=np.float32)) for k, v in self.targets.items()}
            if targets else {})


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


def build_model(kind: str, dims: Mapping[str, int], heads: Sequence[HeadSpec], seed: int = 0,
                **kwargs) -> FusionModel:
    """A fusion model by registry name; its initial weights depend on ``seed`` only."""
    cls = FUSERS.get(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(dims, heads, **kwargs)


def presence_weights(ds: Dataset, specs: Sequence[HeadSpec]) -> dict[str, torch.Tensor]:
    """Per head, a (modalities, classes) table of weights P(y = c) / P(y = c | modality present).

    Under missingness that depends on the label, the samples that reach step m of a sequential model
    have another class balance than the cohort; a decoder trained on them learns "this modality is
    present" as evidence. Weighting each step's loss by these ratios gives every step the cohort's
    class balance, so presence carries no label information into the model.
    """
    out = {}
    for spec in specs:
        if spec.kind not in ("binary", "multiclass"):
            continue
        y = ds.targets[spec.name]
        known = (y >= 0) & ~np.isnan(y)
        n_cls = 2 if spec.kind == "binary" else spec.n_out
        prior = np.array([(y[known] == c).mean() for c in range(n_cls)])
        w = np.ones((len(ds.modalities), n_cls))
        for j in range(len(ds.modalities)):
            sel = known & ds.mask[:, j]
            if sel.sum() == 0:
                continue
            cond = np.array([(y[sel] == c).mean() for c in range(n_cls)])
            w[j] = np.where(cond > 0, prior / np.maximum(cond, 1e-8), 1.0)
        out[spec.name] = torch.tensor(np.clip(w, 0.1, 10.0), dtype=torch.float32)
    return out


def _loss(model: FusionModel, out: dict, targets: dict[str, torch.Tensor], step_loss: str,
          weights: dict[str, torch.Tensor] | None = None, case_w: torch.Tensor | None = None) -> torch.Tensor:
    """``weights``: presence weights (see presence_weights); ``case_w``: (B,) per-case weights."""
    total = 0.0
    for spec in model.head_specs:
        t = targets[spec.name]
        if "steps" in out and step_loss == "all":
            # The MultiModN loss: every step that updated a sample's state (a skipped modality adds no
            # term, so absence itself is never rewarded), computed as one call over (sample, step).
            steps = out["steps"][spec.name][:, 1:]
            n_steps = steps.shape[1]
            flat_t = t.repeat_interleave(n_steps, dim=0)
            w = out["step_present"].reshape(-1).to(steps.dtype)  # a skipped step adds no term
            if weights and spec.name in weights:
                cls = torch.nan_to_num(t, nan=0).clamp(min=0).long()
                w = w * weights[spec.name].T[cls][:, [model.modalities.index(m) for m in out["order"]]].reshape(-1)
            if case_w is not None:
                w = w * case_w.repeat_interleave(n_steps)
            total = total + head_loss(spec, steps.reshape(-1, steps.shape[-1]), flat_t, w)
        else:
            total = total + head_loss(spec, out["logits"][spec.name], t, case_w)
    return total


def evaluate_loss(model: FusionModel, ds: Dataset, batch_size: int = 512, balance_patients: bool = False) -> float:
    """Mean loss of the final prediction (``balance_patients``: each patient weighs the same)."""
    model.eval()
    cw = torch.from_numpy(ds.case_weights()) if balance_patients else None
    losses, n = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            idx = np.arange(start, min(len(ds), start + batch_size))
            x, mask, t = ds.tensors(idx)
            out = model(x, mask)
            w = None if cw is None else cw[idx]
            size = len(idx) if w is None else float(w.sum())
            losses += float(_loss(model, out, t, "last", case_w=w)) * size
            n += size
    return losses / max(n, 1e-8)


def fit(model: FusionModel, train: Dataset, valid: Dataset | None, cfg: TrainConfig,
        progress: bool = True, on_epoch=None, keep_best: bool = True) -> dict[str, Any]:
    """Train with AdamW; keep the weights of the epoch with the lowest validation loss
    (``keep_best=False``: the weights after the last epoch run). ``on_epoch(model)`` is called after
    every epoch (the model in eval mode)."""
    gen = seed_everything(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    # Inputs are read a batch at a time (they may be on disk); the mask and targets, a few bytes a
    # case, are held. A batch's rows are the same floats, in the same order, as when the whole input
    # was one tensor indexed by the batch, so training is the same to the last bit.
    mask_all = torch.from_numpy(np.ascontiguousarray(train.mask))
    t_all = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in train.targets.items()}
    weights = presence_weights(train, model.head_specs) if cfg.balance_presence and hasattr(model, "order") else None
    case_w = torch.from_numpy(train.case_weights()) if cfg.balance_patients else None
    best, best_state, bad_epochs = math.inf, copy.deepcopy(model.state_dict()), 0
    history: list[dict[str, float]] = []
    samples, seconds = 0, 0.0
    with progress_bar(f"train {model.kind}", total=cfg.epochs, unit="epochs", enabled=progress) as advance:
        for epoch in range(cfg.epochs):
            model.train()
            perm = torch.randperm(len(train), generator=gen)
            t0 = time.perf_counter()
            running = 0.0
            for start in range(0, len(train), cfg.batch_size):
                idx = perm[start:start + cfg.batch_size]
                x = train.tensors(idx.numpy(), targets=False)[0]
                mask = modality_dropout(mask_all[idx], cfg.modality_dropout, gen)
                order = None
                if cfg.random_order and hasattr(model, "order"):
                    order = [model.order[i] for i in torch.randperm(len(model.order), generator=gen)]
                out = model(x, mask, order=order)
                loss = _loss(model, out, {k: v[idx] for k, v in t_all.items()}, cfg.step_loss, weights,
                             None if case_w is None else case_w[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.item() * len(idx)
            seconds += time.perf_counter() - t0
            samples += len(train)
            val = (evaluate_loss(model, valid, balance_patients=cfg.balance_patients)
                   if valid is not None and len(valid) else running / len(train))
            history.append({"epoch": epoch, "train_loss": running / len(train), "valid_loss": val})
            if on_epoch is not None:
                model.eval()
                on_epoch(model)
            advance()
            if val < best - 1e-4:
                best, best_state, bad_epochs = val, copy.deepcopy(model.state_dict()), 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    break
    if keep_best:
        model.load_state_dict(best_state)
    model.eval()
    return {"history": history, "best_valid_loss": best, "epochs_run": len(history),
            "train_samples_per_s": samples / seconds if seconds else float("nan")}


def group_folds(groups: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """Fold number (0..k-1) per sample, whole groups (patients) per fold, by a seeded hash of the group:
    a patient's images never sit on both sides of a fold."""
    import hashlib

    def u(g: str) -> float:
        return int.from_bytes(hashlib.sha256(f"{seed}\x1f{g}".encode()).digest()[:8], "big") / 2**64

    uniq = sorted(set(map(str, groups)), key=u)
    fold_of = {g: i % k for i, g in enumerate(uniq)}
    return np.array([fold_of[str(g)] for g in groups])


def fit_cv(make_model, train: Dataset, groups: Sequence[str], cfg: TrainConfig, folds: int = 5,
           progress: bool = True) -> dict[str, Any]:
    """Early stopping by patient-grouped cross-validation instead of one small holdout.

    Each fold trains on the other folds, recording its held-out loss (and logits) after every epoch,
    and stops ``cfg.patience`` epochs after its best one. The number of epochs is the argmin of the
    held-out loss averaged over the folds (a fold that stopped early keeps its last loss for the
    later epochs): a curve over all training patients instead of one noisy holdout of a few dozen.
    The final model (``make_model()``, same seed) is then trained on *all* of ``train`` for that
    many epochs. Returns ``fit``'s summary plus ``model`` (the final one), ``cv_epochs``, the mean
    curve and the out-of-fold logits at the chosen epoch (for calibration: every training case
    scored by a model that did not see it)."""
    fold = group_folds(groups, folds, cfg.seed)
    curves, logits_by_fold = [], []
    with progress_bar(f"cross-validate ({folds} folds)", total=folds, unit="folds", enabled=progress) as advance:
        for f in range(folds):
            tr, va = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            if len(va) == 0 or len(tr) == 0:
                advance()
                continue
            valid = train.subset(va)
            per_epoch: list[dict[str, np.ndarray]] = []
            res = fit(make_model(), train.subset(tr), valid, cfg, progress=False,
                      on_epoch=lambda m: per_epoch.append(predict_logits(m, valid)), keep_best=False)
            curves.append([h["valid_loss"] for h in res["history"]])
            logits_by_fold.append((va, per_epoch))
            advance()
    if not curves:
        raise ValueError(f"cross-validation needs at least 2 groups; got {len(set(map(str, groups)))}")
    n = max(len(c) for c in curves)
    mean = np.mean([c + [c[-1]] * (n - len(c)) for c in curves], axis=0)
    best = int(np.argmin(mean))
    oof: dict[str, np.ndarray] = {}
    for va, per_epoch in logits_by_fold:
        for k, v in per_epoch[min(best, len(per_epoch) - 1)].items():
            oof.setdefault(k, np.full((len(train),) + v.shape[1:], np.nan, np.float32))[va] = v
    final = make_model()
    result = fit(final, train, None, TrainConfig(**{**cfg.model_dump(), "epochs": best + 1, "patience": best + 2}),
                 progress=progress, keep_best=False)
    result.update({"model": final, "cv_folds": folds, "cv_epochs": best + 1, "cv_curve": [float(v) for v in mean],
                   "best_valid_loss": float(mean[best]), "oof_logits": oof})
    return result


def predict_logits(model: FusionModel, ds: Dataset, batch_size: int = 512, steps: bool = False) -> dict[str, np.ndarray]:
    model.eval()
    outs: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            idx = np.arange(start, min(len(ds), start + batch_size))
            x, mask, _ = ds.tensors(idx)
            out = model(x, mask)
            src = out["steps"] if steps else out["logits"]
            for k, v in src.items():
                outs.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def fit_temperature(logits: np.ndarray, y: np.ndarray, kind: str) -> float:
    """Temperature scaling: the T > 0 minimising validation NLL of logits / T (1.0 when not applicable)."""
    if kind not in ("binary", "multiclass"):
        return 1.0
    lg = torch.tensor(logits, dtype=torch.float64)
    t = torch.tensor(y, dtype=torch.float64)
    keep = ~torch.isnan(t) if kind == "binary" else t >= 0
    keep = keep & torch.isfinite(lg.reshape(len(t), -1)).all(dim=1)  # unscored rows (out-of-fold gaps)
    if keep.sum() < 10:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure():
        opt.zero_grad()
        z = lg[keep] / torch.exp(log_t)
        if kind == "binary":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z.reshape(-1), t[keep])
        else:
            loss = torch.nn.functional.cross_entropy(z, t[keep].long())
        loss.backward()
        return loss

    opt.step(closure)
    value = float(torch.exp(log_t.detach()))
    return value if math.isfinite(value) and 0.05 < value < 20 else 1.0


# --- checkpoints ------------------------------------------------------------------------------------

ENCODER_FILE = "encoder.safetensors"  # a fine-tuned image encoder's tail, beside model.safetensors


def save_checkpoint(model_dir: str | Path, model: FusionModel, config: dict[str, Any],
                    encoder_state: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (model kind, dims, heads, and all provenance),
    and with ``encoder_state`` (a fine-tuned encoder tail) ``encoder.safetensors``.

    Crash-safe: ``config.json`` marks a complete model, so it is removed first and written last
    (temporary name, fsync, rename), with the weights' SHA-256 (and the encoder's) in it; a process
    killed at any point leaves a folder that ``load_checkpoint`` either loads whole or refuses."""
    from safetensors.torch import save_file

    from ..atomic import begin_folder, file_sha256, write_text, write_with

    model_dir = begin_folder(model_dir, "config.json")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_with(model_dir / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    config = {**config, "weights_sha256": file_sha256(model_dir / "model.safetensors")}
    (model_dir / ENCODER_FILE).unlink(missing_ok=True)
    if encoder_state:
        from safetensors.numpy import save_file as save_numpy

        tensors = {k: np.ascontiguousarray(v) for k, v in encoder_state.items()}
        write_with(model_dir / ENCODER_FILE, lambda tmp: save_numpy(tensors, str(tmp)))
        config["encoder_sha256"] = file_sha256(model_dir / ENCODER_FILE)
    write_text(model_dir / "config.json", json.dumps(config, indent=2, default=str))
    return model_dir


def _check_weights(path: Path, expected: str | None, field: str = "weights_sha256") -> None:
    """The weights file is there and (when the config records it) hashes as when it was saved."""
    from ..atomic import file_sha256

    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the model folder is incomplete (train it again)")
    if expected and file_sha256(path) != expected:
        raise ValueError(f"{path}: does not match config.json ({field}): the file was changed after "
                         "training; train the model again")


def load_encoder_state(model_dir: Path, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """The fine-tuned encoder tail saved with a model (``encoder.safetensors``), checked against the
    SHA-256 its config.json records."""
    from safetensors.numpy import load_file

    path = Path(model_dir) / ENCODER_FILE
    if not config.get("encoder_sha256"):
        raise ValueError(f"{model_dir / 'config.json'}: no encoder_sha256; the model folder is incomplete "
                         "(train it again)")
    _check_weights(path, config["encoder_sha256"], "encoder_sha256")
    return dict(load_file(str(path)))


def load_checkpoint(model_dir: str | Path) -> tuple[FusionModel, dict[str, Any]]:
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: not a medweave model (no config.json); train one with `medweave train`")
    config = json.loads((model_dir / "config.json").read_text())
    _check_weights(model_dir / "model.safetensors", config.get("weights_sha256"))
    if config.get("encoder_sha256"):
        _check_weights(model_dir / ENCODER_FILE, config["encoder_sha256"], "encoder_sha256")
    arch = config["architecture"]
    heads = [HeadSpec(**h) for h in arch["heads"]]
    kwargs = dict(arch.get("kwargs", {}))
    kwargs.setdefault("linear", [])  # saved before linear paths existed: a model without them
    model = build_model(arch["kind"], arch["dims"], heads, **kwargs)
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    model.eval()
    return model, config
