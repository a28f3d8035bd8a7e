"""Fusion models behind one interface.

``model(inputs, mask)``: ``inputs`` maps each modality to a (B, d_m) float tensor (rows of absent
samples may hold anything, NaN included: they are never read), ``mask`` is a (B, M) bool tensor in the
order of ``model.modalities``. The result is a dict with ``logits`` (head name -> (B, n_out)) and, for
the sequential model, ``steps`` (head name -> (B, M + 1, n_out): the prediction before any modality and
after each step) and ``step_present`` ((B, M) bool: whether step s updated the state of the sample).

* ``SequentialFusion`` — the MultiModN idea: a learned initial state, one update per modality
  ``state = f_m(state, x_m)``, shared decoders reading the state after every step. An absent modality
  is skipped **per sample** (``torch.where`` on the mask, no Python loop over samples).
* ``ConcatFusion`` — the classic baseline: zero-filled embeddings concatenated with missing indicators
  into an MLP (it can learn missingness shortcuts; that is the point of having it).
* ``AttentionFusion`` — a transformer over modality tokens, with a learned "absent" token per modality.

Nothing here mixes samples: no batch normalisation, so a sample's output never depends on the rest of
its batch.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..registry import Registry
from .heads import HeadSpec


class MLPAdapter(nn.Module):
    """Project one modality's embedding to the model width (layer-normalised input: for embeddings)."""

    def __init__(self, d_in: int, d: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TabularAdapter(nn.Module):
    """Standardised numbers and one-hot categories: no input normalisation across features (it would
    mix a sample's age with its sex); the linear layer embeds each category."""

    def __init__(self, d_in: int, d: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Conv1dAdapter(nn.Module):
    """A small learnable 1D CNN over a flattened (leads x samples) waveform."""

    def __init__(self, d_in: int, d: int, dropout: float = 0.1, leads: int = 12):
        super().__init__()
        self.leads = leads
        self.net = nn.Sequential(
            nn.Conv1d(leads, 32, 7, stride=2, padding=3), nn.GELU(),
            nn.Conv1d(32, 64, 7, stride=2, padding=3), nn.GELU(),
            nn.Conv1d(64, 64, 5, stride=2, padding=2), nn.GELU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, d), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], self.leads, -1))


ADAPTER_KINDS = {"mlp": MLPAdapter, "tabular": TabularAdapter, "conv1d": Conv1dAdapter}
DEFAULT_ADAPTERS = {"table": "tabular"}


class FusionModel(nn.Module):
    kind = ""

    def __init__(self, dims: Mapping[str, int], heads: Sequence[HeadSpec], hidden: int = 128,
                 dropout: float = 0.1, adapters: Mapping[str, str] | None = None):
        super().__init__()
        self.modalities = list(dims)
        self.dims = dict(dims)
        self.hidden = hidden
        self.head_specs = list(heads)
        adapters = adapters or {}
        self.adapters = nn.ModuleDict({
            m: ADAPTER_KINDS[adapters.get(m, DEFAULT_ADAPTERS.get(m, "mlp"))](d, hidden, dropout)
            for m, d in dims.items()})
        self.heads = nn.ModuleDict({h.name: nn.Linear(hidden, h.n_out) for h in heads})

    def _embed(self, inputs: Mapping[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Adapter outputs per modality; absent rows are computed on zeros and must be masked by the caller."""
        out = {}
        for j, m in enumerate(self.modalities):
            x = torch.nan_to_num(inputs[m]) * mask[:, j:j + 1].to(inputs[m].dtype)
            out[m] = self.adapters[m](x)
        return out

    def _read(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(state) for name, head in self.heads.items()}


class StateUpdate(nn.Module):
    """``f_m(state, x) = state + g * tanh(W [state, x])``, with a learned gate ``g`` from the same
    product: one matrix multiply per step (a GRU cell needs several), residual so that a step can be
    close to the identity when a modality adds little."""

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.proj = nn.Linear(2 * hidden, 2 * hidden)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        cand, gate = self.proj(torch.cat([state, x], dim=1)).split(self.hidden, dim=1)
        return state + torch.sigmoid(gate) * torch.tanh(cand)


class SequentialFusion(FusionModel):
    kind = "sequential"

    def __init__(self, dims, heads, hidden: int = 128, dropout: float = 0.1, adapters=None,
                 order: Sequence[str] | None = None):
        super().__init__(dims, heads, hidden, dropout, adapters)
        self.order = list(order) if order else list(self.modalities)
        self.state0 = nn.Parameter(torch.zeros(hidden))
        self.updates = nn.ModuleDict({m: StateUpdate(hidden) for m in self.modalities})
        self.norm = nn.LayerNorm(hidden)

    def forward(self, inputs, mask, order: Sequence[str] | None = None):
        order = list(order) if order is not None else self.order
        emb = self._embed(inputs, mask)
        batch = mask.shape[0]
        state = self.state0.expand(batch, -1)
        states, updated = [state], []
        for m in order:
            j = self.modalities.index(m)
            new = self.updates[m](emb[m], state)
            state = torch.where(mask[:, j:j + 1], new, state)
            states.append(state)
            updated.append(mask[:, j])
        # All decoders read all steps in one call: (B, steps, hidden) -> (B, steps, n_out).
        steps = self._read(self.norm(torch.stack(states, dim=1)))
        return {"logits": {name: v[:, -1] for name, v in steps.items()}, "steps": steps,
                "step_present": torch.stack(updated, dim=1), "order": order}


class ConcatFusion(FusionModel):
    kind = "concat"

    def __init__(self, dims, heads, hidden: int = 128, dropout: float = 0.1, adapters=None, indicators: bool = True):
        super().__init__(dims, heads, hidden, dropout, adapters)
        self.indicators = indicators
        width = hidden * len(dims) + (len(dims) if indicators else 0)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.GELU())

    def forward(self, inputs, mask, order=None):
        emb = self._embed(inputs, mask)
        m = mask.to(next(iter(emb.values())).dtype)
        parts = [emb[k] * m[:, j:j + 1] for j, k in enumerate(self.modalities)]  # zero-fill
        if self.indicators:
            parts.append(1.0 - m)
        return {"logits": self._read(self.mlp(torch.cat(parts, dim=1)))}


class AttentionFusion(FusionModel):
    kind = "attention"

    def __init__(self, dims, heads, hidden: int = 128, dropout: float = 0.1, adapters=None,
                 layers: int = 2, n_heads: int = 4):
        super().__init__(dims, heads, hidden, dropout, adapters)
        n = len(dims)
        self.type_emb = nn.Parameter(torch.randn(n, hidden) * 0.02)
        self.absent = nn.Parameter(torch.randn(n, hidden) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        layer = nn.TransformerEncoderLayer(hidden, n_heads, hidden * 2, dropout, batch_first=True,
                                           activation="gelu", norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, inputs, mask, order=None):
        emb = self._embed(inputs, mask)
        tokens = torch.stack([emb[m] for m in self.modalities], dim=1)  # (B, M, d)
        tokens = torch.where(mask[:, :, None], tokens, self.absent[None]) + self.type_emb[None]
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        out = self.encoder(x)
        return {"logits": self._read(self.norm(out[:, 0]))}


FUSERS: Registry[type[FusionModel]] = Registry("fusion model", "medweave.fusers")
FUSERS.register("sequential", SequentialFusion)
FUSERS.register("concat", ConcatFusion)
FUSERS.register("attention", AttentionFusion)


def modality_dropout(mask: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop each present modality with probability ``p``, per sample, keeping at least one present."""
    if p <= 0:
        return mask
    drop = torch.rand(mask.shape, generator=generator) < p
    new = mask & ~drop
    empty = ~new.any(dim=1) & mask.any(dim=1)
    return torch.where(empty[:, None], mask, new)
