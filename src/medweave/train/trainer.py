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
from ..fuse import FUSERS, FusionModel, HeadSpec, head_loss, modality_dropout
from ..progress import progress_bar


@dataclass
class Dataset:
    """Model-ready arrays: per-modality inputs (NaN rows where absent), the mask, the targets."""

    case_ids: list[str]
    modalities: list[str]
    inputs: dict[str, np.ndarray]
    mask: np.ndarray  # (N, M) bool, columns in ``modalities`` order
    targets: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, index: np.ndarray) -> "Dataset":
        return Dataset([self.case_ids[i] for i in index], list(self.modalities),
                       {m: a[index] for m, a in self.inputs.items()}, self.mask[index],
                       {k: v[index] for k, v in self.targets.items()})

    def with_mask(self, mask: np.ndarray) -> "Dataset":
        return Dataset(list(self.case_ids), list(self.modalities), self.inputs, mask.astype(bool), self.targets)

    def tensors(self, index: np.ndarray | None = None):
        idx = slice(None) if index is None else index
        x = {m: torch.from_numpy(np.ascontiguousarray(a[idx], dtype=np.float32)) for m, a in self.inputs.items()}
        return x, torch.from_numpy(np.ascontiguousarray(self.mask[idx])), {
            k: torch.from_numpy(np.ascontiguousarray(v[idx], dtype=np.float32)) for k, v in self.targets.items()}


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
          weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
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
            total = total + head_loss(spec, steps.reshape(-1, steps.shape[-1]), flat_t, w)
        else:
            total = total + head_loss(spec, out["logits"][spec.name], t)
    return total


def evaluate_loss(model: FusionModel, ds: Dataset, batch_size: int = 512) -> float:
    model.eval()
    losses, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            idx = np.arange(start, min(len(ds), start + batch_size))
            x, mask, t = ds.tensors(idx)
            out = model(x, mask)
            losses += float(_loss(model, out, t, "last")) * len(idx)
            n += len(idx)
    return losses / max(n, 1)


def fit(model: FusionModel, train: Dataset, valid: Dataset | None, cfg: TrainConfig,
        progress: bool = True) -> dict[str, Any]:
    """Train with AdamW; keep the weights of the epoch with the lowest validation loss."""
    gen = seed_everything(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    x_all, mask_all, t_all = train.tensors()
    weights = presence_weights(train, model.head_specs) if cfg.balance_presence and hasattr(model, "order") else None
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
                x = {m: v[idx] for m, v in x_all.items()}
                mask = modality_dropout(mask_all[idx], cfg.modality_dropout, gen)
                order = None
                if cfg.random_order and hasattr(model, "order"):
                    order = [model.order[i] for i in torch.randperm(len(model.order), generator=gen)]
                out = model(x, mask, order=order)
                loss = _loss(model, out, {k: v[idx] for k, v in t_all.items()}, cfg.step_loss, weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.item() * len(idx)
            seconds += time.perf_counter() - t0
            samples += len(train)
            val = evaluate_loss(model, valid) if valid is not None and len(valid) else running / len(train)
            history.append({"epoch": epoch, "train_loss": running / len(train), "valid_loss": val})
            advance()
            if val < best - 1e-4:
                best, best_state, bad_epochs = val, copy.deepcopy(model.state_dict()), 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    return {"history": history, "best_valid_loss": best, "epochs_run": len(history),
            "train_samples_per_s": samples / seconds if seconds else float("nan")}


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

def save_checkpoint(model_dir: str | Path, model: FusionModel, config: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (model kind, dims, heads, and all provenance).

    Crash-safe: ``config.json`` marks a complete model, so it is removed first and written last
    (temporary name, fsync, rename), with the weights' SHA-256 in it; a process killed at any point
    leaves a folder that ``load_checkpoint`` either loads whole or refuses."""
    from safetensors.torch import save_file

    from ..atomic import begin_folder, file_sha256, write_text, write_with

    model_dir = begin_folder(model_dir, "config.json")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_with(model_dir / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    config = {**config, "weights_sha256": file_sha256(model_dir / "model.safetensors")}
    write_text(model_dir / "config.json", json.dumps(config, indent=2, default=str))
    return model_dir


def _check_weights(path: Path, expected: str | None) -> None:
    """The weights file is there and (when the config records it) hashes as when it was saved."""
    from ..atomic import file_sha256

    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the model folder is incomplete (train it again)")
    if expected and file_sha256(path) != expected:
        raise ValueError(f"{path}: does not match config.json (weights_sha256): the file was changed after "
                         "training; train the model again")


def load_checkpoint(model_dir: str | Path) -> tuple[FusionModel, dict[str, Any]]:
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: not a medweave model (no config.json); train one with `medweave train`")
    config = json.loads((model_dir / "config.json").read_text())
    _check_weights(model_dir / "model.safetensors", config.get("weights_sha256"))
    arch = config["architecture"]
    heads = [HeadSpec(**h) for h in arch["heads"]]
    model = build_model(arch["kind"], arch["dims"], heads, **arch.get("kwargs", {}))
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    model.eval()
    return model, config
