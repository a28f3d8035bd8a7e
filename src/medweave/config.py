"""Experiment configs are data: TOML (or YAML) files validated by pydantic.

An unknown key, encoder, model kind or head kind fails with a message that names it and the allowed
values. ``${VAR}`` in strings expands from the environment; ``${MEDWEAVE_DATA}`` defaults to the
shared data folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .settings import shared_data_dir


class ConfigError(ValueError):
    """A config that does not validate; the message names the key and the allowed values."""


def validation_messages(exc: ValidationError, noun: str = "key", show_input: bool = False) -> list[str]:
    """One plain sentence per pydantic error: the unknown / missing / bad ``noun`` by its dotted name."""
    out = []
    for e in exc.errors():
        key = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            out.append(f"unknown {noun} {key!r}")
        elif e["type"] == "missing":
            out.append(f"{noun} {key!r} is required")
        else:
            got = f" (got {e.get('input')!r})" if show_input else ""
            out.append(f"{noun} {key!r}: {e['msg'].removeprefix('Value error, ')}{got}")
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    paths: list[str] = Field(description="Files or folders to ingest.")
    format: Optional[str] = None
    namespace: str = "default"
    mapping: Optional[str] = None
    keep_phi: bool = False
    store: Optional[str] = None  # default: <model dir>/store

    @field_validator("format")
    @classmethod
    def _known_format(cls, v):
        from .ingest import ADAPTERS

        if v is not None and v not in ADAPTERS:
            raise ValueError(f"unknown ingest format {v!r}; allowed values: {', '.join(ADAPTERS.names())}")
        return v


class CohortConfig(_Strict):
    case: Literal["patient", "study"] = "patient"
    targets: list[str]
    covariates: list[str] = []
    modalities: Optional[list[str]] = None
    split_from: Literal["hash", "source"] = "hash"
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0


class HeadConfig(_Strict):
    name: str
    target: Optional[str] = None
    kind: Literal["binary", "multiclass", "multilabel", "regression"] = "binary"


class ModelConfig(_Strict):
    kind: str = "sequential"
    modalities: list[str] = Field(description="Model inputs in order; 'table' = covariates + table items.")
    hidden: int = 128
    dropout: float = 0.1
    adapters: dict[str, Literal["mlp", "tabular", "conv1d"]] = {}
    indicators: bool = True  # concat only: missing indicators beside the zero-filled embeddings
    layers: int = 2  # attention only
    # Modalities read also by a direct linear path into the heads (late fusion beside the fused state;
    # see fuse.models.LinearPaths). None: those with the tabular adapter; [] : none.
    linear: Optional[list[str]] = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v):
        from .fuse import FUSERS

        if v not in FUSERS:
            raise ValueError(f"unknown model kind {v!r}; allowed values: {', '.join(FUSERS.names())}")
        return v

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"hidden": self.hidden, "dropout": self.dropout, "adapters": dict(self.adapters),
                              "linear": None if self.linear is None else list(self.linear)}
        if self.kind == "concat":
            kw["indicators"] = self.indicators
        if self.kind == "attention":
            kw["layers"] = self.layers
        if self.kind == "sequential":
            kw["order"] = list(self.modalities)
        return kw


class TrainSection(_Strict):
    """Training options (also the trainer's own ``TrainConfig``)."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 8
    seed: int = 0
    modality_dropout: float = 0.0
    random_order: bool = False
    step_loss: Literal["all", "last"] = "all"  # sequential: every step (MultiModN) or the last only
    balance_presence: bool = True  # sequential, step_loss "all": see train.trainer.presence_weights
    calibrate: bool = True  # temperature scaling on the validation split
    # Each patient weighs the same in the training and validation losses (a case weighs 1 / the
    # patient's cases): on image-level cohorts where a few patients have dozens of images.
    balance_patients: bool = False
    # > 1: early stopping by patient-grouped k-fold cross-validation over train + valid (the epoch
    # count that minimises the mean held-out loss), then one model on all of them for that many
    # epochs, calibrated on the out-of-fold predictions. 0: stop on the valid split.
    cv_folds: int = Field(0, ge=0, le=20)
    # With cv_folds > 1: the model kept is the mean of the k fold models (each at the chosen epoch) and
    # the model trained on all cases (fuse.models.EnsembleFusion), not that last model alone. False:
    # the last model alone (models trained before this option).
    cv_ensemble: bool = True


class EncodeSection(_Strict):
    """Fine-tuning the picture encoder before the fusion model trains (``medweave.encode.finetune``):
    EfficientNet-Lite0's last ``finetune_blocks`` blocks and head convolution learn the experiment's
    targets from the *train* split's pictures only (radiology-safe augmentation, no flip); the tuned
    tail is saved in the model folder and every picture (train, valid, test, new data) is then encoded
    with it. 0: the frozen backbone."""

    finetune_blocks: int = Field(0, ge=0, le=16)
    finetune_epochs: int = Field(15, ge=1)
    finetune_augmentations: int = Field(4, ge=0, description="augmented copies per picture")
    finetune_lr: float = Field(3e-4, gt=0)
    finetune_size: int = Field(224, ge=32, le=640, description="picture side fed to the backbone")


class MissingConfig(_Strict):
    modality: str
    mechanism: Literal["mcar", "mar", "mnar"]
    rate: Optional[float] = None
    column: Optional[str] = None
    class_rates: Optional[dict[str, float]] = None
    splits: Optional[list[str]] = ["train", "valid"]  # None: every split
    seed: int = 0


class EngineConfig(_Strict):
    """Where fan-out work (ingest parsing and de-identification, encoding) runs: ``local`` or ``ray``
    (``address``: a cluster to join; none: a local Ray instance with ``num_cpus``)."""

    kind: Literal["local", "ray"] = "local"
    address: Optional[str] = None
    num_cpus: Optional[int] = Field(default=None, ge=1)

    def build(self):
        from .engine import Engine

        return Engine(self.kind, self.address, self.num_cpus)

    @model_validator(mode="after")
    def _address_needs_ray(self):
        if self.address and self.kind != "ray":
            raise ValueError('an address joins a Ray cluster: set kind = "ray"')
        return self


class ExperimentConfig(_Strict):
    name: str = "experiment"
    data: DataConfig
    cohort: CohortConfig
    encoders: dict[str, str] = {}
    encode: EncodeSection = EncodeSection()
    model: ModelConfig
    heads: list[HeadConfig] = []
    train: TrainSection = TrainSection()
    missing: list[MissingConfig] = []
    engine: EngineConfig = EngineConfig()

    @field_validator("encoders")
    @classmethod
    def _known_encoders(cls, v):
        from .encode import ENCODERS

        for modality, name in v.items():
            if name not in ENCODERS:
                raise ValueError(f"unknown encoder {name!r} for {modality!r}; allowed values: {', '.join(ENCODERS.names())}")
        return v

    @model_validator(mode="after")
    def _heads_default(self):
        if not self.heads:
            self.heads = [HeadConfig(name=t, target=t) for t in self.cohort.targets]
        for h in self.heads:
            h.target = h.target or h.name
            if h.target not in self.cohort.targets:
                raise ValueError(f"head {h.name!r} reads target {h.target!r}, which is not in cohort.targets "
                                 f"({', '.join(self.cohort.targets)})")
        return self


_VAR = re.compile(r"\$\{(\w+)\}")


def _expand(obj: Any) -> Any:
    if isinstance(obj, str):
        def sub(m):
            name = m.group(1)
            if name == "MEDWEAVE_DATA":
                return os.environ.get(name) or str(shared_data_dir())
            return os.environ.get(name, m.group(0))
        return _VAR.sub(sub, obj)
    if isinstance(obj, list):
        return [_expand(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _expand(v) for k, v in obj.items()}
    return obj


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            model = ExperimentConfig
            for part in parent:
                field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
                ann = getattr(field, "annotation", None)
                ann = getattr(ann, "__args__", [ann])[0] if getattr(ann, "__origin__", None) is list else ann
                model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
                if model is None:
                    break
            allowed = ", ".join(model.model_fields) if model is not None else "?"
            lines.append(f"{source}: unknown key {loc!r}; allowed keys here: {allowed}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def read_data_file(path: Path) -> Any:
    """The content of a YAML (.yaml/.yml), JSON (.json) or TOML (any other suffix) file; the parser's
    exception when it does not parse (callers name the file)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text)
    if path.suffix == ".json":
        import json

        return json.loads(text)
    return tomllib.loads(text)


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = read_data_file(path)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    return parse_config(raw, str(path))


def parse_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(_expand(raw))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
