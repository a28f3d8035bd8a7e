"""Per-modality contributions: exact Shapley values where "absent" means masked.

The players are the modalities. The value of a coalition S is the model's prediction with only the
modalities in S present — the others masked through the model's own presence mask (the sequential
model skips them, the attention model puts its learned "absent" token, the concat model its missing
indicators), never replaced by zeros. All 2^M coalitions go through the model in one batch
(M is small: 4 modalities = 16 rows). A modality the case lacks is a null player: masking it changes
nothing, so its value is exactly 0, and the values sum to f(all present) - f(none present).
"""

from __future__ import annotations

from math import factorial
from typing import Any

import numpy as np
import torch

from .context import ModelContext


def coalition_masks(m: int) -> torch.Tensor:
    """All 2^m subsets of m players as a (2^m, m) bool tensor; row k holds the bits of k."""
    bits = torch.arange(2 ** m)[:, None] >> torch.arange(m)[None]
    return (bits & 1).bool()


def shapley_weights(m: int) -> np.ndarray:
    """(m, 2^m) matrix W such that phi = W @ v for the values v of all coalitions (exact Shapley)."""
    w = np.zeros((m, 2 ** m))
    for i in range(m):
        for k in range(2 ** m):
            if k >> i & 1:
                continue
            size = bin(k).count("1")
            weight = factorial(size) * factorial(m - size - 1) / factorial(m)
            w[i, k | (1 << i)] += weight
            w[i, k] -= weight
    return w


def shapley_from_values(v: np.ndarray, m: int) -> np.ndarray:
    """Shapley values (B, m) from coalition values (B, 2^m), summed as weighted marginal differences
    v(S + i) - v(S): a player whose differences are all zero (an absent modality) gets exactly 0."""
    phi = np.zeros((v.shape[0], m))
    for i in range(m):
        without = np.array([k for k in range(2 ** m) if not k >> i & 1])
        sizes = np.array([bin(k).count("1") for k in without])
        weights = np.array([factorial(s) * factorial(m - s - 1) / factorial(m) for s in sizes])
        phi[:, i] = (v[:, without | (1 << i)] - v[:, without]) @ weights
    return phi


def coalition_values(ctx: ModelContext, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> np.ndarray:
    """f(S) for every coalition S of every case: (B, 2^M), masks intersected with each case's own."""
    b, m = mask.shape
    subsets = coalition_masks(m)
    n = subsets.shape[0]
    big_mask = (mask[:, None, :] & subsets[None]).reshape(b * n, m)
    big_inputs = {k: v.repeat_interleave(n, dim=0) for k, v in inputs.items()}
    with torch.no_grad():
        return ctx.score(big_inputs, big_mask).reshape(b, n).double().numpy()


def modality_shapley(ctx: ModelContext, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, Any]:
    """Exact Shapley values per modality for a batch of cases.

    Returns ``values`` (B, M), ``full`` f(case as recorded), ``empty`` f(nothing present) and the
    coalition table, all as numpy arrays.
    """
    v = coalition_values(ctx, inputs, mask)
    phi = shapley_from_values(v, mask.shape[1])
    return {"values": phi, "full": v[:, -1], "empty": v[:, 0], "coalitions": v}


def explain_modalities(ctx: ModelContext, case_id: str) -> dict[str, Any]:
    """Shapley contributions of one case as a JSON-ready dict (and the step trace for sequential models)."""
    from .context import present_list, step_trace

    x, mask = ctx.case_tensors(case_id)
    res = modality_shapley(ctx, x, mask)
    out: dict[str, Any] = {
        "present": present_list(ctx.modalities, mask[0]),
        "prediction": float(res["full"][0]),
        "all_absent": float(res["empty"][0]),
        "shapley": {m: float(res["values"][0, j]) for j, m in enumerate(ctx.modalities)},
    }
    if hasattr(ctx.model, "order"):
        with torch.no_grad():
            out["steps"] = step_trace(ctx, ctx.model(x, mask), mask)
    return out


def leave_one_out(ctx: ModelContext, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> np.ndarray:
    """f(all) - f(all but m) per modality (B, M): the cheap occlusion baseline the benchmark compares."""
    v = coalition_values(ctx, inputs, mask)
    m = mask.shape[1]
    full = (1 << m) - 1
    return np.stack([v[:, full] - v[:, full & ~(1 << j)] for j in range(m)], axis=1)


def ordered_removal_curve(ctx: ModelContext, inputs: dict[str, torch.Tensor], mask: torch.Tensor,
                          ranking: np.ndarray) -> np.ndarray:
    """Prediction as modalities are masked one by one in ``ranking`` order (B, M + 1), per case."""
    v = coalition_values(ctx, inputs, mask)
    b, m = mask.shape
    curves = np.zeros((b, m + 1))
    for i in range(b):
        k = (1 << m) - 1
        curves[i, 0] = v[i, k]
        for s, j in enumerate(ranking[i]):
            k &= ~(1 << int(j))
            curves[i, s + 1] = v[i, k]
    return curves


__all__ = ["coalition_masks", "shapley_weights", "shapley_from_values", "coalition_values", "modality_shapley", "explain_modalities",
           "leave_one_out", "ordered_removal_curve"]
