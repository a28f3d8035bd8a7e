"""``build_report(model_dir, out)``: one self-contained HTML file about a trained model.

Cohort (presence map, counts, splits), metrics with bootstrap intervals, ROC and calibration plots,
the missingness table (the evaluation split re-scored under simulated MCAR / MNAR removal, with the
same ``apply_missing`` and ``score`` as ``medweave evaluate --missing``), VQA scores and probe tables
when a VQA model is given, and a few explained cases. Images are inlined (base64 PNG).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluate import metrics as metric_defs
from ..evaluate import parse_missing, score
from ..explain import ModelContext, explain
from ..explain.core import png64
from ..fuse import head_probs
from ..train import predict_logits
from .plots import calibration_plot, presence_map, roc_plot
from .render import explanation_figures, render_report
from .vqa import vqa_tables


def eval_split(ctx: ModelContext) -> str:
    splits = set(ctx.cohort.table["split"])
    return "test" if "test" in splits else ("valid" if "valid" in splits else "train")


def missing_scenarios(modalities: list[str]) -> list[tuple[str, list[str]]]:
    """(label, --missing specs) rows: as recorded; per modality MCAR 50 %, all absent, MNAR."""
    rows: list[tuple[str, list[str]]] = [("as recorded", [])]
    for m in modalities:
        rows += [(f"{m}: MCAR 50%", [f"mcar:{m}:0.5"]),
                 (f"{m}: absent for all", [f"mcar:{m}:1.0"]),
                 (f"{m}: MNAR, absent for half of positives", [f"mnar:{m}:0=0,1=0.5"])]
    return rows


def missingness_table(ctx: ModelContext, split: str, n_boot: int) -> list[dict[str, Any]]:
    """One row per scenario: presence counts and the first binary head's AUROC/Brier/ECE."""
    from ..train.pipeline import apply_missing

    idx = np.flatnonzero(ctx.cohort.table["split"].to_numpy() == split)
    ds, cohort = ctx.dataset.subset(idx), ctx.cohort.split(split)
    head = ctx.head.name
    rows = []
    for label, specs in missing_scenarios(ctx.modalities):
        sub, _ = apply_missing(cohort, ds, [parse_missing(s) for s in specs])
        m = score(ctx.model, ctx.config, sub, n_boot=n_boot)[head]
        if "auroc" not in m:
            continue
        rows.append({"scenario": label, "presence": {mm: int(sub.mask[:, j].sum()) for j, mm in enumerate(ctx.modalities)},
                     "auroc": m["auroc"], "brier": m["brier"], "ece": m["ece"]})
    return rows


def head_predictions(ctx: ModelContext, idx: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(labels, calibrated probabilities) of every binary head on the cases ``idx`` (labelled only)."""
    ds = ctx.dataset.subset(idx)
    logits = predict_logits(ctx.model, ds)
    temps = ctx.config.get("temperatures", {})
    out = {}
    for spec in ctx.model.head_specs:
        if spec.kind != "binary":
            continue
        p = head_probs(spec, torch.from_numpy(logits[spec.name]), temps.get(spec.name, 1.0)).numpy()
        y = ds.targets[spec.name]
        keep = ~np.isnan(y)
        out[spec.name] = (y[keep].astype(int), p[keep])
    return out


def pick_cases(ctx: ModelContext, idx: np.ndarray, n: int) -> list[str]:
    """The most confident positive, the most confident negative, the most uncertain case (then more)."""
    if not len(idx):
        return [ctx.dataset.case_ids[i] for i in idx[:n]]
    ds = ctx.dataset.subset(idx)
    p = head_probs(ctx.head, torch.from_numpy(predict_logits(ctx.model, ds)[ctx.head.name]), ctx.temperature).numpy()
    order = [int(np.argmax(p)), int(np.argmin(p)), *np.argsort(np.abs(p - 0.5)).tolist()]
    picked = list(dict.fromkeys(order))[:n]
    return [ds.case_ids[i] for i in picked]


def build_report(model_dir: str | Path, out: str | Path, vqa_model: str | Path | None = None,
                 n_cases: int = 3, n_boot: int = 500, ctx: ModelContext | None = None,
                 image_methods: tuple[str, ...] = ("integrated_gradients", "occlusion")) -> Path:
    """Write the report to ``out`` and return its path. Each explained case costs a few seconds (image
    saliency); ``image_methods`` picks the saliency methods drawn."""
    model_dir, out = Path(model_dir), Path(out)
    ctx = ctx or ModelContext.load(model_dir)
    split = eval_split(ctx)
    idx = np.flatnonzero(ctx.cohort.table["split"].to_numpy() == split)
    preds = head_predictions(ctx, idx)
    metrics = {h: metric_defs.binary_report(y, p, n_boot=n_boot) for h, (y, p) in preds.items()}
    explained = []
    for case_id in pick_cases(ctx, idx, n_cases):
        e = explain(ctx, case_id, image_methods=image_methods)
        e["figs"] = explanation_figures(e)
        explained.append(e)
    summary = ctx.cohort.summary()
    context = {
        "title": ctx.config.get("experiment", {}).get("name", model_dir.name),
        "model_dir": str(model_dir), "kind": ctx.model.kind, "store": str(ctx.store_dir),
        "trained_at": ctx.config.get("trained_at", "?"), "code_version": ctx.config.get("code_version", "?"),
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "synthetic": "phantom" in str(ctx.config.get("experiment", {}).get("name", "")),
        "cohort": summary, "eval_split": split, "metrics": metrics,
        "presence": {m: int(ctx.dataset.mask[:, j].sum()) for j, m in enumerate(ctx.modalities)},
        "figs": {"presence": png64(presence_map(ctx.dataset.mask, ctx.modalities, ctx.cohort.table["split"])),
                 "roc": {h: png64(roc_plot(y, p, f"ROC, {h} ({split})")) for h, (y, p) in preds.items()
                         if len(set(y)) == 2},
                 "calibration": {h: png64(calibration_plot(y, p, f"calibration, {h} ({split})"))
                                 for h, (y, p) in preds.items() if len(set(y)) == 2}},
        "metric_definitions": " ".join(metric_defs.__doc__.split()),
        "missing_rows": missingness_table(ctx, split, max(100, n_boot // 5)),
        "vqa": vqa_tables(vqa_model) if vqa_model else None,
        "explained": explained,
    }
    from ..atomic import write_text

    write_text(out, render_report(context))  # temporary name, fsync, rename: never a half-written report
    return out
