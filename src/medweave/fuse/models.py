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
* ``StackedFusion`` — one model per modality and a per-head weighted sum of their logits, the weights
  fitted on the parts' out-of-fold logits (``train.fit_stacked``): a fuser that can learn to ignore a
  modality that does not generalise.
* ``EnsembleFusion`` — members of one architecture, their logits (and per-step predictions) averaged:
  what ``train.fit_cv`` returns (the cross-validation's fold models at the chosen epoch and the model
  trained on all cases), so that the prediction does not rest on one fit stopped after a few epochs.

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
LINEAR_ADAPTERS = ("tabular", "mlp")  # inputs a linear read-out can take (not a raw waveform)


class LinearPaths(nn.Module):
    """Late fusion beside the fused state: per modality, a direct linear read-out of its input into
    every head's logits, added when the modality is present (``sum_m mask_m * (w_m . x_m)``).

    On a small cohort a logistic regression on a few strong covariates is hard to beat; a fused
    network that must carry them through its hidden state (and past every later update) can lose
    them. With this path the fused model *contains* that regression and its other parts learn what
    the other modalities add. Embeddings are layer-normalised first (as in ``MLPAdapter``); tabular
    features are already standardised. No bias: the heads keep theirs."""

    def __init__(self, dims: Mapping[str, int], heads: Sequence[HeadSpec], modalities: Sequence[str],
                 adapter_kinds: Mapping[str, str]):
        super().__init__()
        self.modalities = list(modalities)
        self.split = [h.n_out for h in heads]
        self.names = [h.name for h in heads]
        self.paths = nn.ModuleDict({
            m: nn.Sequential(nn.Identity() if adapter_kinds[m] == "tabular" else nn.LayerNorm(dims[m]),
                             nn.Linear(dims[m], sum(self.split), bias=False))
            for m in self.modalities})
        for path in self.paths.values():
            nn.init.zeros_(path[-1].weight)  # starts as no contribution: the fused model as before

    def terms(self, inputs: Mapping[str, torch.Tensor], mask: torch.Tensor,
              all_modalities: Sequence[str]) -> dict[str, torch.Tensor]:
        """Per modality in ``self.modalities``: its (B, sum n_out) contribution, zero where absent."""
        out = {}
        for m in self.modalities:
            j = list(all_modalities).index(m)
            present = mask[:, j:j + 1]
            x = torch.nan_to_num(inputs[m]) * present.to(inputs[m].dtype)
            out[m] = self.paths[m](x) * present.to(x.dtype)
        return out

    def per_head(self, total: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, total.split(self.split, dim=-1)))


class FusionModel(nn.Module):
    kind = ""

    def __init__(self, dims: Mapping[str, int], heads: Sequence[HeadSpec], hidden: int = 128,
                 dropout: float = 0.1, adapters: Mapping[str, str] | None = None,
                 linear: Sequence[str] | None = None):
        super().__init__()
        self.modalities = list(dims)
        self.dims = dict(dims)
        self.hidden = hidden
        self.head_specs = list(heads)
        adapters = adapters or {}
        kinds = {m: adapters.get(m, DEFAULT_ADAPTERS.get(m, "mlp")) for m in dims}
        self.adapters = nn.ModuleDict({m: ADAPTER_KINDS[kinds[m]](d, hidden, dropout) for m, d in dims.items()})
        self.heads = nn.ModuleDict({h.name: nn.Linear(hidden, h.n_out) for h in heads})
        # Linear paths: by default for the tabular inputs (covariates, labs), see LinearPaths.
        linear = [m for m in dims if kinds[m] == "tabular"] if linear is None else list(linear)
        for m in linear:
            if m not in dims:
                raise ValueError(f"linear path for {m!r}: not a model modality; modalities: {', '.join(dims)}")
            if kinds[m] not in LINEAR_ADAPTERS:
                raise ValueError(f"linear path for {m!r}: its adapter {kinds[m]!r} reads a raw signal; "
                                 f"allowed for adapters {', '.join(LINEAR_ADAPTERS)}")
        self.linear = LinearPaths(dims, heads, linear, kinds) if linear else None

    def _embed(self, inputs: Mapping[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Adapter outputs per modality; absent rows are computed on zeros and must be masked by the caller."""
        out = {}
        for j, m in enumerate(self.modalities):
            x = torch.nan_to_num(inputs[m]) * mask[:, j:j + 1].to(inputs[m].dtype)
            out[m] = self.adapters[m](x)
        return out

    def _read(self, state: torch.Tensor, inputs=None, mask=None) -> dict[str, torch.Tensor]:
        out = {name: head(state) for name, head in self.heads.items()}
        if self.linear is not None and inputs is not None:
            terms = self.linear.terms(inputs, mask, self.modalities)
            extra = self.linear.per_head(torch.stack(list(terms.values())).sum(0))
            out = {k: v + extra[k] for k, v in out.items()}
        return out


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
                 order: Sequence[str] | None = None, linear: Sequence[str] | None = None):
        super().__init__(dims, heads, hidden, dropout, adapters, linear)
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
        if self.linear is not None:
            # A modality's linear term joins the prediction at its step and stays in every later one
            # (zero where it is absent), so each step still predicts from what has been seen so far.
            terms = self.linear.terms(inputs, mask, self.modalities)
            width = sum(self.linear.split)
            zero = emb[order[0]].new_zeros(batch, width)
            cum = torch.stack([zero] + [terms.get(m, zero) for m in order], dim=1).cumsum(dim=1)
            extra = self.linear.per_head(cum)
            steps = {k: v + extra[k] for k, v in steps.items()}
        return {"logits": {name: v[:, -1] for name, v in steps.items()}, "steps": steps,
                "step_present": torch.stack(updated, dim=1), "order": order}


class ConcatFusion(FusionModel):
    kind = "concat"

    def __init__(self, dims, heads, hidden: int = 128, dropout: float = 0.1, adapters=None, indicators: bool = True,
                 linear: Sequence[str] | None = None):
        super().__init__(dims, heads, hidden, dropout, adapters, linear)
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
        return {"logits": self._read(self.mlp(torch.cat(parts, dim=1)), inputs, mask)}


class AttentionFusion(FusionModel):
    kind = "attention"

    def __init__(self, dims, heads, hidden: int = 128, dropout: float = 0.1, adapters=None,
                 layers: int = 2, n_heads: int = 4, linear: Sequence[str] | None = None):
        super().__init__(dims, heads, hidden, dropout, adapters, linear)
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
        return {"logits": self._read(self.norm(out[:, 0]), inputs, mask)}


class StackedFusion(FusionModel):
    """Stacking: one model per modality, each reading that modality alone (its adapter, MLP, heads and,
    for tabular inputs, a linear path: the ``concat`` model on one modality), and a combiner per head,
    ``logit = b + sum_m mask_m * w_m * z_m``, where ``z_m`` is part ``m``'s logit.

    Why: a jointly trained fused network has one set of weights and one stopping epoch for paths that
    learn and overfit at different speeds (on NIH a 1,280-d picture embedding overfits in 2-4 epochs, 8
    covariates need ~10), and it learns how much to trust each modality from the training cases
    themselves, where a tabular MLP always looks useful. ``train.fit_stacked`` fits every part on its own
    (its own early stopping, on the cases where its modality is present) and the ``w_m`` on the parts'
    *out-of-fold* logits: a part that does not generalise gets a weight near 0, so the fused model can
    ignore it, and the combiner is a calibration of the parts at the same time. An absent modality adds
    no term (it is not read); there are no missing-indicator terms, so absence carries no evidence."""

    kind = "stacked"

    members_inside = True  # ``build_model(..., members=n)``: each part is an ensemble of n, not the whole

    def __init__(self, dims, heads, hidden: int = 128, dropout: float = 0.1, adapters=None,
                 linear: Sequence[str] | None = None, members: int = 1):
        nn.Module.__init__(self)
        self.modalities = list(dims)
        self.dims = dict(dims)
        self.hidden = hidden
        self.head_specs = list(heads)
        adapters = adapters or {}
        if linear is not None:
            for m in linear:
                if m not in dims:
                    raise ValueError(f"linear path for {m!r}: not a model modality; modalities: {', '.join(dims)}")
        def part(m, d):
            return ConcatFusion({m: d}, heads, hidden, dropout, {m: adapters[m]} if m in adapters else None,
                                linear=None if linear is None else [x for x in linear if x == m])

        self.parts = nn.ModuleDict({
            m: part(m, d) if members <= 1 else EnsembleFusion([part(m, d) for _ in range(members)])
            for m, d in dims.items()})
        self.linear = None
        self.heads = nn.ModuleDict()  # the parts hold the heads
        n_out = sum(h.n_out for h in heads)
        self.stack_weight = nn.Parameter(torch.ones(len(self.modalities), len(self.head_specs)))
        self.stack_bias = nn.Parameter(torch.zeros(n_out))

    def part_logits(self, inputs, mask) -> dict[str, dict[str, torch.Tensor]]:
        """Each part's logits (modality -> head -> (B, n_out)); rows where the modality is absent are
        computed on zeros and must be masked by the caller."""
        return {m: self.parts[m]({m: inputs[m]}, mask[:, j:j + 1])["logits"] for j, m in enumerate(self.modalities)}

    def combine(self, parts: Mapping[str, Mapping[str, torch.Tensor]], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for h, spec in enumerate(self.head_specs):
            total = self.stack_bias[start:start + spec.n_out].expand(mask.shape[0], -1)
            for j, m in enumerate(self.modalities):
                present = mask[:, j:j + 1].to(total.dtype)
                total = total + present * (self.stack_weight[j, h] * torch.nan_to_num(parts[m][spec.name]))
            out[spec.name] = total
            start += spec.n_out
        return out

    def forward(self, inputs, mask, order=None):
        parts = self.part_logits(inputs, mask)
        return {"logits": self.combine(parts, mask), "parts": parts}


class EnsembleFusion(nn.Module):
    """Several fitted models of one architecture behind the fusion-model interface: ``logits`` (and a
    sequential model's ``steps``) are the members' mean logits; ``step_present`` and ``order`` are the
    first member's (every member reads the same mask and order).

    Why (``train.fit_cv``): with cross-validated early stopping on a few hundred cases the chosen epoch
    is often 2-4, and one fit stopped there is a noisy draw (on NIH the spread of one picture model's
    logits on new patients varied 30-fold between fits). The fold models are fitted anyway; averaging
    them with the model trained on all cases lowers that variance, and each case's out-of-fold logit
    (calibration, stacking) is then the prediction of one member, not of a model that is not kept."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("EnsembleFusion: no members")
        first = members[0]
        kinds = {getattr(m, "kind", "") for m in members}
        if len(kinds) != 1:
            raise ValueError(f"EnsembleFusion: members of different kinds {sorted(kinds)}")
        self.members = nn.ModuleList(members)
        self.kind = first.kind
        self.modalities = list(first.modalities)
        self.dims = dict(first.dims)
        self.hidden = first.hidden
        self.head_specs = list(first.head_specs)
        if hasattr(first, "order"):
            self.order = list(first.order)

    def forward(self, inputs, mask, order=None):
        outs = [m(inputs, mask, order=order) for m in self.members]
        res = {k: v for k, v in outs[0].items() if k not in ("logits", "steps", "parts")}
        for key in ("logits", "steps"):
            if key in outs[0]:
                res[key] = {h: torch.stack([o[key][h] for o in outs]).mean(dim=0) for h in outs[0][key]}
        return res


def ensemble_members(model: nn.Module) -> int:
    """How many members ``build_model(..., members=)`` must give to rebuild ``model`` (1: a plain model)."""
    if isinstance(model, EnsembleFusion):
        return len(model.members)
    parts = getattr(model, "parts", None)
    if isinstance(parts, nn.ModuleDict):
        sizes = {ensemble_members(p) for p in parts.values()}
        if len(sizes) != 1:
            raise ValueError(f"stacked model with parts of different ensemble sizes {sorted(sizes)}")
        return sizes.pop()
    return 1


FUSERS: Registry[type[FusionModel]] = Registry("fusion model", "medweave.fusers")
FUSERS.register("sequential", SequentialFusion)
FUSERS.register("concat", ConcatFusion)
FUSERS.register("attention", AttentionFusion)
FUSERS.register("stacked", StackedFusion)


def modality_dropout(mask: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop each present modality with probability ``p``, per sample, keeping at least one present."""
    if p <= 0:
        return mask
    drop = torch.rand(mask.shape, generator=generator) < p
    new = mask & ~drop
    empty = ~new.any(dim=1) & mask.any(dim=1)
    return torch.where(empty[:, None], mask, new)
