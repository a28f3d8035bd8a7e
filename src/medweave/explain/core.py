"""``explain(ctx, case_id)``: everything known about why the model predicts what it does for one case,
as one JSON-ready dict (image overlays as base64 PNG)."""

from __future__ import annotations

import base64
import time
from typing import Any, Sequence

from .context import ExplainError, ModelContext
from .features import IMAGE_METHODS, TABULAR_METHODS, image_saliency, overlay_png, tabular_attributions, text_attributions
from .modalities import explain_modalities

PARTS = ("modalities", "tabular", "image", "text")


def explain(ctx: ModelContext, case_id: str, parts: Sequence[str] = PARTS,
            tabular_methods: Sequence[str] = TABULAR_METHODS,
            image_methods: Sequence[str] = IMAGE_METHODS) -> dict[str, Any]:
    """Explain one case. ``parts`` picks what to compute (``modalities`` is cheap; ``image`` costs the
    most: about a second per method on a CPU). Timings per part are included."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ExplainError(f"unknown explanation part {unknown[0]!r}; allowed values: {', '.join(PARTS)}")
    ctx.row(case_id)
    result: dict[str, Any] = {"case_id": case_id, "model": ctx.model.kind, "head": ctx.head.name,
                              "split": str(ctx.cohort.table["split"].iloc[ctx.row(case_id)]), "seconds": {}}
    for part in parts:
        t0 = time.perf_counter()
        if part == "modalities":
            result.update(explain_modalities(ctx, case_id))
        elif part == "tabular":
            result["tabular"] = tabular_attributions(ctx, case_id, tabular_methods)
        elif part == "image":
            result["image"] = image_section(ctx, case_id, image_methods)
        elif part == "text":
            result["text"] = text_attributions(ctx, case_id)
        result["seconds"][part] = round(time.perf_counter() - t0, 3)
    return result


def image_section(ctx: ModelContext, case_id: str, methods: Sequence[str]) -> dict[str, Any]:
    """Saliency overlays (base64 PNG) per method, plus the plain image."""
    sal = image_saliency(ctx, case_id, methods)
    if not sal:
        return {}
    out = {"item_id": sal["item_id"], "image_png": png64(overlay_png(sal["input"], None)), "overlays": {}}
    for method, smap in sal["maps"].items():
        out["overlays"][method] = png64(overlay_png(sal["input"], smap, method.replace("_", " ")))
    return out


def png64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
