"""Fitting fusion models: AdamW, early stopping on the validation split, seeded and reproducible,
temperature scaling, checkpoints as safetensors + a JSON config."""

from __future__ import annotations

import copy
import itertools
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
from ..fuse import FUSERS, EnsembleFusion, FusionModel, HeadSpec, head_loss, modality_dropout
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
                members: int = 1, **kwargs) -> FusionModel:
    """A fusion model by registry name; its initial weights depend on ``seed`` only. ``members > 1``:
    an ``EnsembleFusion`` of that many (a stacked model: each of its parts an ensemble), the shape a
    model from ``fit_cv`` with ``cv_ensemble`` has, for loading its weights."""
    cls = FUSERS.get(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if members <= 1:
            return cls(dims, heads, **kwargs)
        if getattr(cls, "members_inside", False):
            return cls(dims, heads, members=members, **kwargs)
        return EnsembleFusion([cls(dims, heads, **kwargs) for _ in range(members)])


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


def group_folds(groups: Sequence[str], k: int, seed: int = 0, labels: Sequence[float] | None = None) -> np.ndarray:
    """Fold number (0..k-1) per sample, whole groups (patients) per fold, by a seeded hash of the group:
    a patient's images never sit on both sides of a fold.

    With ``labels`` (a binary target per sample) the folds are also stratified: patients are dealt out
    in turn within each stratum (their share of positive images >= 1/2 or not), so every fold holds
    about the same share of positive patients. Unlabelled samples (NaN) do not count."""
    import hashlib

    def u(g: str) -> float:
        return int.from_bytes(hashlib.sha256(f"{seed}\x1f{g}".encode()).digest()[:8], "big") / 2**64

    keys = list(map(str, groups))
    uniq = sorted(set(keys), key=u)
    if labels is not None:
        y = np.asarray(labels, dtype=float)
        if len(y) != len(keys):
            raise ValueError(f"group_folds: {len(y)} labels for {len(keys)} samples")
        pos: dict[str, list[float]] = {}
        for g, v in zip(keys, y):
            if not np.isnan(v):
                pos.setdefault(g, []).append(v)
        stratum = {g: float(np.mean(pos[g]) >= 0.5) if g in pos else -1.0 for g in uniq}
        uniq = sorted(uniq, key=lambda g: stratum[g])  # stable: the hash order within each stratum
    fold_of = {g: i % k for i, g in enumerate(uniq)}
    return np.array([fold_of[g] for g in keys])


def fit_cv(make_model, train: Dataset, groups: Sequence[str], cfg: TrainConfig, folds: int = 5,
           progress: bool = True) -> dict[str, Any]:
    """Early stopping by patient-grouped cross-validation instead of one small holdout.

    Each fold trains on the other folds, recording its held-out loss (and logits) after every epoch,
    and stops ``cfg.patience`` epochs after its best one. The number of epochs is the argmin of the
    held-out loss averaged over the folds (a fold that stopped early keeps its last loss for the
    later epochs): a curve over all training patients instead of one noisy holdout of a few dozen.
    The final model (``make_model()``, same seed) is then trained on *all* of ``train`` for that
    many epochs. With ``cfg.cv_ensemble`` the model returned is an ``EnsembleFusion`` of the k fold
    models at the chosen epoch (each refitted on its folds for that many epochs, or for as many as it
    ran if it stopped before: training is seeded, so it is the model that gave that fold's held-out
    logits) and the final one; else the final one alone. Returns ``fit``'s summary (of the final
    fit) plus ``model``, ``cv_epochs``, ``cv_members``, the mean curve and the out-of-fold logits at
    the chosen epoch (for calibration: every training case scored by a model that did not see it)."""
    fold = group_folds(groups, folds, cfg.seed)
    curves, logits_by_fold, fold_rows = [], [], []
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
            fold_rows.append(tr)
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
    def run_for(epochs: int) -> TrainConfig:
        return TrainConfig(**{**cfg.model_dump(), "epochs": epochs, "patience": epochs + 1})

    final = make_model()
    result = fit(final, train, None, run_for(best + 1), progress=progress, keep_best=False)
    model: FusionModel = final
    if cfg.cv_ensemble:
        members = []
        for tr, (_, per_epoch) in zip(fold_rows, logits_by_fold):
            member = make_model()
            fit(member, train.subset(tr), None, run_for(min(best, len(per_epoch) - 1) + 1), progress=False,
                keep_best=False)
            members.append(member)
        model = EnsembleFusion(members + [final]).eval()
    result.update({"model": model, "cv_folds": folds, "cv_epochs": best + 1, "cv_curve": [float(v) for v in mean],
                   "cv_members": len(model.members) if cfg.cv_ensemble else 1,
                   "best_valid_loss": float(mean[best]), "oof_logits": oof})
    return result


def _combiner_loss(model, parts_oof, scored, targets, case_w, use, rows) -> tuple[float, float]:
    """(weighted mean loss, total weight) of the combiner on ``rows``, reading the parts in ``use`` only."""
    rows_t = torch.from_numpy(np.asarray(rows))
    sc = scored[rows_t] & torch.tensor(use)[None, :]
    sub = {m: {k: v[rows_t] for k, v in d.items()} for m, d in parts_oof.items()}
    with torch.no_grad():
        out = model.combine(sub, sc)
        w = None if case_w is None else case_w[rows_t]
        loss = sum(float(head_loss(s, out[s.name], targets[s.name][rows_t], w)) for s in model.head_specs)
    return loss, float(len(rows) if w is None else w.sum())


def _fit_combiner(model, parts_oof, scored, targets, case_w, penalty, use, rows) -> None:
    """The ridge logistic combiner on ``rows`` (L-BFGS from weights 1, bias 0); parts outside ``use`` get
    weight exactly 0."""
    rows_t = torch.from_numpy(np.asarray(rows))
    sc = scored[rows_t] & torch.tensor(use)[None, :]
    sub = {m: {k: v[rows_t] for k, v in d.items()} for m, d in parts_oof.items()}
    t = {k: v[rows_t] for k, v in targets.items()}
    w = None if case_w is None else case_w[rows_t]
    keep = torch.tensor(use, dtype=model.stack_weight.dtype)[:, None]
    with torch.no_grad():
        model.stack_weight.copy_(keep.expand_as(model.stack_weight))
        model.stack_bias.zero_()
    opt = torch.optim.LBFGS([model.stack_weight, model.stack_bias], lr=0.5, max_iter=200,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        out = model.combine(sub, sc)
        loss = sum(head_loss(s, out[s.name], t[s.name], w) for s in model.head_specs)
        loss = loss + penalty * (model.stack_weight ** 2).sum() / max(len(rows), 1)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        model.stack_weight.mul_(keep)


def fit_stacked(model: FusionModel, train: Dataset, cfg: TrainConfig, groups: Sequence[str] | None = None,
                folds: int = 5, valid: Dataset | None = None, progress: bool = True,
                penalty: float = 1.0, select_parts: bool = True) -> dict[str, Any]:
    """Fit a ``StackedFusion``: each part on its own, then the combiner on the parts' held-out logits.

    With ``folds > 1`` (``groups``: the patient of each case) every part is trained by ``fit_cv`` on the
    cases where its modality is present (its own epoch count from a patient-grouped CV, then trained on
    all of them; with ``cfg.cv_ensemble`` the part becomes the ensemble of its fold models and that
    model), and its out-of-fold logits are what the combiner learns from. Without folds the parts
    are early-stopped on ``valid`` and the combiner is fitted on their ``valid`` logits. The combiner
    (a weight per part and head, a bias per head output) minimises the heads' loss (patient-balanced with
    ``cfg.balance_patients``) plus ``penalty * sum(w**2) / n``, by L-BFGS: a ridge logistic regression on
    the parts' logits, so a part whose held-out logits carry nothing gets a weight near 0. With
    ``select_parts`` the parts it combines are chosen first: every non-empty subset is scored by a
    patient-grouped 5-fold CV of the combiner over those held-out logits, and the subset with the
    lowest loss is kept (fewer parts on a near-tie); a dropped part's weight is exactly 0 (never read).
    Returns per part its epochs (``parts``), ``epochs_run`` (the most of them), ``best_valid_loss`` (the
    chosen combiner's CV loss; without part selection its loss on the held-out logits), the combiner's ``stack_weights`` and ``oof_logits`` (the combined
    held-out logits, for calibration) over ``train`` (folds) or ``valid``."""
    if not hasattr(model, "parts"):
        raise ValueError(f"fit_stacked: a {model.kind!r} model has no parts; use kind 'stacked'")
    use_cv = folds > 1
    if not use_cv and (valid is None or not len(valid)):
        raise ValueError("fit_stacked: without cross-validation folds the parts need a valid split")
    held = train if use_cv else valid
    parts_oof: dict[str, dict[str, torch.Tensor]] = {}
    info: dict[str, Any] = {}
    groups = None if groups is None else np.asarray(list(map(str, groups)))
    for j, m in enumerate(model.modalities):
        part = model.parts[m]
        init = copy.deepcopy(part.state_dict())
        rows = np.flatnonzero(train.mask[:, j])
        part_train = train.subset(rows).only([m])
        if len(rows) == 0:
            raise ValueError(f"fit_stacked: no training case has modality {m!r}")
        full = {k: np.full((len(held),) + (s.n_out,), np.nan, np.float32) for k, s in
                ((s.name, s) for s in model.head_specs)}
        if use_cv:
            def make(part=part, init=init):
                fresh = copy.deepcopy(part)
                fresh.load_state_dict(init)
                return fresh
            res = fit_cv(make, part_train, list(groups[rows]), cfg, folds=folds, progress=progress)
            if isinstance(res["model"], EnsembleFusion):
                model.parts[m] = res["model"]  # the part becomes the ensemble of its CV fits
            else:
                part.load_state_dict(res["model"].state_dict())
            for k, v in res["oof_logits"].items():
                full[k][rows] = v.reshape(len(rows), -1)
            info[m] = {"cv_epochs": res["cv_epochs"], "cases": int(len(rows))}
        else:
            vrows = np.flatnonzero(valid.mask[:, j])
            res = fit(part, part_train, valid.subset(vrows).only([m]), cfg, progress=progress)
            for k, v in predict_logits(part, valid.subset(vrows).only([m])).items():
                full[k][vrows] = v.reshape(len(vrows), -1)
            info[m] = {"epochs_run": res["epochs_run"], "cases": int(len(rows))}
        parts_oof[m] = {k: torch.from_numpy(v) for k, v in full.items()}
    # Combiner: a part's logit counts where its modality is present and the part scored the case.
    scored = torch.from_numpy(np.ascontiguousarray(held.mask)).clone()
    for j, m in enumerate(model.modalities):
        finite = torch.stack([torch.isfinite(v).all(dim=1) for v in parts_oof[m].values()]).all(dim=0)
        scored[:, j] &= finite
    targets = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in held.targets.items()}
    case_w = torch.from_numpy(held.case_weights()) if cfg.balance_patients else None
    n_parts = len(model.modalities)
    subsets = [use for use in itertools.product([False, True], repeat=n_parts) if any(use)] if select_parts \
        else [(True,) * n_parts]
    cv_loss: dict[tuple, float] = {}
    if len(subsets) > 1:
        # Which parts to combine, by a patient-grouped CV of the combiner itself over the held-out
        # logits: a part kept only because it fits these cases (not new ones) is dropped.
        inner = group_folds(list(map(str, held.groups)) if held.groups is not None else
                            [str(i) for i in range(len(held))], 5, seed=cfg.seed + 1)
        for use in subsets:
            total, weight = 0.0, 0.0
            for f in range(5):
                tr, va = np.flatnonzero(inner != f), np.flatnonzero(inner == f)
                if not len(tr) or not len(va):
                    continue
                _fit_combiner(model, parts_oof, scored, targets, case_w, penalty, use, tr)
                loss, w = _combiner_loss(model, parts_oof, scored, targets, case_w, use, va)
                total, weight = total + loss * w, weight + w
            cv_loss[use] = total / max(weight, 1e-12)
        # The smallest loss; a subset with fewer parts wins a near-tie (within 0.1%).
        best = min(cv_loss.values())
        chosen = min((u for u in subsets if cv_loss[u] <= best * 1.001), key=lambda u: (sum(u), cv_loss[u]))
    else:
        chosen = subsets[0]
    _fit_combiner(model, parts_oof, scored, targets, case_w, penalty, chosen, np.arange(len(held)))
    scored = scored & torch.tensor(chosen)[None, :]
    model.eval()
    with torch.no_grad():
        combined = {k: v.numpy().copy() for k, v in model.combine(parts_oof, scored).items()}
        for k, v in combined.items():  # a case no part scored has no held-out prediction
            v[~scored.any(dim=1).numpy()] = np.nan
    held_loss = cv_loss.get(chosen)
    if held_loss is None:
        held_loss = _combiner_loss(model, parts_oof, scored, targets, case_w, chosen, np.arange(len(held)))[0]
    weights = {m: {s.name: float(model.stack_weight[j, h].detach()) for h, s in enumerate(model.head_specs)}
               for j, m in enumerate(model.modalities)}
    epochs = [p.get("cv_epochs", p.get("epochs_run", 0)) for p in info.values()]
    return {"parts": info, "epochs_run": int(max(epochs)), "best_valid_loss": float(held_loss), "stack_weights": weights, "stack_bias": model.stack_bias.detach().tolist(),
            "parts_used": [m for m, u in zip(model.modalities, chosen) if u],
            "parts_cv_loss": {"+".join(m for m, x in zip(model.modalities, u) if x): v for u, v in cv_loss.items()},
            "oof_logits": combined, "part_oof_logits": {m: {k: v.numpy() for k, v in d.items()} for m, d in parts_oof.items()},
            "cv_folds": folds if use_cv else 0}


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
    model = build_model(arch["kind"], arch["dims"], heads, members=int(arch.get("members", 1)), **kwargs)
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    model.eval()
    return model, config
