"""``medweave explain``: one case's explanation as a self-contained HTML page and/or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def explain_command(
    model: Path = typer.Option(..., "--model", help="Model folder from `medweave train`."),
    case: str = typer.Option(..., "--case", help="Case id (see `medweave cohort show` or the web UI)."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write."),
    as_json: bool = typer.Option(False, "--json", help="Print the explanation as JSON (overlays as base64 PNG)."),
    part: List[str] = typer.Option([], "--part", help="modalities, tabular, image, text (repeatable; default all)."),
    head: Optional[str] = typer.Option(None, "--head", help="Head to explain (default: the first)."),
) -> None:
    """Explain one prediction: exact Shapley contributions per modality (absent = masked), the sequential
    model's step trace, tabular attributions (Captum), image saliency and report words by occlusion."""
    from rich.console import Console

    from ..explain import PARTS, ExplainError, ModelContext, explain
    from ..report import render_explanation

    err = Console(stderr=True)
    try:
        ctx = ModelContext.load(model, head=head)
        e = explain(ctx, case, parts=part or PARTS)
    except (ExplainError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_explanation(e, str(model)), encoding="utf-8")
    if as_json:
        print(json.dumps(e))
    elif out:
        print(f"explanation of case {case} written: {out}")
    else:
        print(json.dumps({k: v for k, v in e.items() if k != "image"}, indent=1))


EPILOG = "Example: medweave explain --model demo-out/models/sequential --case CASE_ID --out case.html"
