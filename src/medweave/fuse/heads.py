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

    ``logits``: (B, n_out); ``weight``: optional (B,) per-sample weights (a weighted mean). Missing
    targets get weight 0 (multiplied, not indexed: no data-dependent shapes in the hot path).
    """
    if spec.kind == "multiclass":
        keep = (target >= 0).to(logits.dtype)
        per = F.cross_entropy(logits, target.clamp(min=0).long(), reduction="none")
    elif spec.kind == "multilabel":
        known = ~torch.isnan(target)
        elem = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(target), reduction="none") * known
        per = elem.sum(1) / known.sum(1).clamp(min=1)
        keep = known.any(dim=1).to(logits.dtype)
    else:
        t = target.reshape(-1)
        keep = (~torch.isnan(t)).to(logits.dtype)
        out = logits.reshape(-1)
        filled = torch.nan_to_num(t)
        if spec.kind == "binary":
            per = F.binary_cross_entropy_with_logits(out, filled, reduction="none")
        else:
            per = (out - filled) ** 2
    w = keep if weight is None else keep * weight
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
