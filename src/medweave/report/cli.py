"""``medweave report``: the HTML report of a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

EPILOG = "Example: medweave report --model demo-out/models/sequential --out report.html"


def report_command(
    model: Path = typer.Option(..., "--model", help="Model folder from `medweave train`."),
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write."),
    vqa_model: Optional[Path] = typer.Option(None, "--vqa-model", help="VQA model folder: adds its scores and probes."),
    cases: int = typer.Option(3, "--cases", help="How many cases to explain in the report."),
    bootstrap: int = typer.Option(500, "--bootstrap", help="Bootstrap resamples for the 95% intervals."),
) -> None:
    """One self-contained HTML report: cohort, metrics with intervals, ROC and calibration, missingness,
    VQA scores (with --vqa-model) and explained cases."""
    from rich.console import Console

    from ..explain import ExplainError
    from .build import build_report
    from .vqa import VQAUnavailable

    try:
        path = build_report(model, out, vqa_model=vqa_model, n_cases=cases, n_boot=bootstrap)
    except (ExplainError, FileNotFoundError, VQAUnavailable) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2)
    print(f"report written: {path}")
