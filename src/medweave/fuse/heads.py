"""Task heads: binary, multi-class, multi-label, regression; several at once (multi-task).

A head is a linear read-out of the fused state; its loss ignores samples whose target is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

HEAD_KINDS = ("binary", "multiclass", "multilabel", "regression")


@dataclass
class HeadSpec:
    name: str
    kind: str = "binary"
    n_out: int = 1
    classes: list = field(default_factory=list)

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"head {self.name!r}: kind {self.kind!r} is not known; allowed values: {', '.join(HEAD_KINDS)}")
        if self.kind in ("binary", "regression"):
            self.n_out = 1


def head_loss(spec: HeadSpec, logits: torch.Tensor, target: torch.Tensor,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over samples with a target (NaN, or -1 for multi-class, means missing).

    ``logits``: (B, n_out); ``weight``: optional (B,) per-sample weights (a weighted mean).
    """
    if spec.kind == "multiclass":
        keep = target >= 0
        per = F.cross_entropy(logits[keep], target[keep].long(), reduction="none") if keep.any() else None
    elif spec.kind == "multilabel":
        keep = ~torch.isnan(target).all(dim=1)
        if keep.any():
            t = target[keep]
            elem = F.binary_cross_entropy_with_logits(logits[keep], torch.nan_to_num(t), reduction="none")
            per = (elem * (~torch.isnan(t))).sum(1) / (~torch.isnan(t)).sum(1).clamp(min=1)
        else:
            per = None
    else:
        t = target.reshape(-1)
        keep = ~torch.isnan(t)
        out = logits.reshape(-1)[keep]
        if not keep.any():
            per = None
        elif spec.kind == "binary":
            per = F.binary_cross_entropy_with_logits(out, t[keep], reduction="none")
        else:
            per = (out - t[keep]) ** 2
    if per is None:
        return logits.sum() * 0
    if weight is None:
        return per.mean()
    w = weight[keep]
    return (per * w).sum() / w.sum().clamp(min=1e-8)


def head_probs(spec: HeadSpec, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Probabilities (binary: P(y=1) of shape (B,); multiclass: softmax; multilabel: sigmoids) or values."""
    if spec.kind == "binary":
        return torch.sigmoid(logits.reshape(-1) / temperature)
    if spec.kind == "multiclass":
        return torch.softmax(logits / temperature, dim=-1)
    if spec.kind == "multilabel":
        return torch.sigmoid(logits / temperature)
    return logits.reshape(-1)
