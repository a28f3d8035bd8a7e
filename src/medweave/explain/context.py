"""A loaded model with the data of its cohort, ready to predict and explain single cases.

``ModelContext.load(model_dir)`` reads the checkpoint, rebuilds the model's cohort from its store
(embeddings from the cache, the fitted tabular featuriser) and keeps the model-ready arrays in
memory. ``score(inputs, mask)`` is the one function every explanation perturbs: the calibrated
probability of the explained head's positive class (multi-class heads: of the explained class), so
that contributions read in probability points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cohort import Cohort
from ..encode import TabularFeaturizer
from ..fuse import FusionModel, HeadSpec, head_probs
from ..store import Store
from ..train import Dataset, load_checkpoint


class ExplainError(ValueError):
    """A request that cannot be explained (unknown case, head, method); the message says what exists."""


@dataclass
class ModelContext:
    model_dir: Path
    model: FusionModel
    config: dict[str, Any]
    cohort: Cohort
    dataset: Dataset
    store_dir: Path
    featurizer: TabularFeaturizer | None
    head: HeadSpec
    class_index: int = 0
    _row: dict[str, int] = field(default_factory=dict)
    _image_encoder: Any = None

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path, head: str | None = None, progress: bool = False,
             store_dir: str | Path | None = None) -> "ModelContext":
        """Load a model folder and the cohort it was trained on (read from its store and cache), or the
        cohort that the model's config builds from another store (``store_dir``)."""
        from ..encode import EmbeddingCache
        from ..train.pipeline import checkpoint_dataset, experiment_from_checkpoint, make_cohort

        model_dir = Path(model_dir)
        model, config = load_checkpoint(model_dir)
        cfg = experiment_from_checkpoint(config)
        store_dir = Path(store_dir or config["cohort"]["store"])
        store = Store(store_dir)
        try:
            cohort = make_cohort(cfg, store)
        except Exception:
            store.close()
            raise
        cache = EmbeddingCache(store_dir.parent / (store_dir.name + "-embeddings.duckdb"))
        try:
            ds, featurizer, _ = checkpoint_dataset(config, cfg, cohort, store, cache, progress,
                                                    model_dir=model_dir)
        finally:
            cache.close()
            store.close()
        return cls(model_dir, model, config, cohort, ds, Path(store.root), featurizer, pick_head(model, head))

    def __post_init__(self) -> None:
        self._row = {c: i for i, c in enumerate(self.dataset.case_ids)}

    def image_encoder(self):
        """The encoder this model's image inputs came from: its fine-tuned one (model folder) when it
        was trained with ``encode.finetune_blocks``, else the config's (EfficientNet-Lite0)."""
        if self._image_encoder is None:
            from ..encode import get_encoder
            from ..encode.base import DEFAULT_ENCODERS
            from ..train.pipeline import checkpoint_encoders, experiment_from_checkpoint

            own = checkpoint_encoders(self.model_dir, self.config).get("image")
            self._image_encoder = own or get_encoder(
                experiment_from_checkpoint(self.config).encoders.get("image", DEFAULT_ENCODERS["image"]))
        return self._image_encoder

    # --- lookups ---------------------------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        return list(self.dataset.modalities)

    @property
    def temperature(self) -> float:
        return float(self.config.get("temperatures", {}).get(self.head.name, 1.0))

    def row(self, case_id: str) -> int:
        """Index of a case in the dataset; an unknown id is an ``ExplainError`` with examples of known ones."""
        if case_id not in self._row:
            raise ExplainError(f"unknown case {case_id!r}; {len(self._row)} cases are known, e.g. "
                               f"{', '.join(self.dataset.case_ids[:3])}")
        return self._row[case_id]

    def case_tensors(self, case_id: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Inputs (each (1, d)) and mask (1, M) of one case."""
        x, mask, _ = self.dataset.tensors(np.array([self.row(case_id)]))
        return x, mask

    def items_of(self, case_id: str, modality: str) -> list[str]:
        """Item ids of a case for one item modality (``table`` has its own featuriser)."""
        col = f"{modality}_items"
        if col not in self.cohort.table.columns:
            return []
        return list(self.cohort.table[col].iloc[self.row(case_id)])

    def open_store(self) -> Store:
        return Store(self.store_dir)

    # --- the function explanations perturb ---------------------------------------------------------
    def score(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor, steps: bool = False) -> torch.Tensor:
        """Calibrated probability of the explained class, (B,); with ``steps`` (sequential models) the
        probability before any modality and after each step, (B, M + 1)."""
        out = self.model(inputs, mask)
        logits = out["steps"][self.head.name] if steps else out["logits"][self.head.name]
        return self._prob(logits)

    def _prob(self, logits: torch.Tensor) -> torch.Tensor:
        if self.head.kind == "binary":
            return torch.sigmoid(logits[..., 0] / self.temperature)
        if self.head.kind == "multiclass":
            return torch.softmax(logits / self.temperature, dim=-1)[..., self.class_index]
        if self.head.kind == "multilabel":
            return torch.sigmoid(logits / self.temperature)[..., self.class_index]
        return logits[..., 0]

    def predict(self, case_id: str) -> dict[str, Any]:
        """Probabilities of every head for one case, and per-step ones for sequential models."""
        x, mask = self.case_tensors(case_id)
        with torch.no_grad():
            out = self.model(x, mask)
        result: dict[str, Any] = {"case_id": case_id, "present": present_list(self.modalities, mask[0]),
                                  "heads": {}}
        temps = self.config.get("temperatures", {})
        for spec in self.model.head_specs:
            p = head_probs(spec, out["logits"][spec.name], temps.get(spec.name, 1.0))[0]
            result["heads"][spec.name] = (float(p) if p.ndim == 0 else
                                          dict(zip(spec.classes or range(len(p)), map(float, p))))
        if "steps" in out:
            result["steps"] = step_trace(self, out, mask)
        return result


def pick_head(model: FusionModel, name: str | None) -> HeadSpec:
    """The head to explain: ``name``, else the first head."""
    if name is None:
        return model.head_specs[0]
    for spec in model.head_specs:
        if spec.name == name:
            return spec
    raise ExplainError(f"unknown head {name!r}; heads: {', '.join(s.name for s in model.head_specs)}")


def present_list(modalities: list[str], mask_row: torch.Tensor) -> list[str]:
    return [m for m, p in zip(modalities, mask_row.tolist()) if p]


def step_trace(ctx: ModelContext, out: dict, mask: torch.Tensor) -> list[dict[str, Any]]:
    """The sequential model's prediction before any modality and after each step (skipped steps say so)."""
    probs = ctx._prob(out["steps"][ctx.head.name])[0].tolist()
    trace = [{"step": "start", "prob": probs[0], "updated": False}]
    for s, m in enumerate(out["order"]):
        trace.append({"step": m, "prob": probs[s + 1], "updated": bool(out["step_present"][0, s])})
    return trace
