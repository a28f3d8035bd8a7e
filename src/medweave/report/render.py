"""Jinja2 rendering of the report and of single explanations, with figures inlined as base64 PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..explain.core import png64
from .plots import bar_plot, step_plot

TEMPLATES = Path(__file__).parent / "templates"


def environment():
    """The Jinja2 environment (autoescaping on) with the report's filters."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt_value
    env.filters["word_color"] = word_color
    return env


def fmt_value(v: Any) -> str:
    """Numbers with 3 decimals (NaN as a dash); anything else as text."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def word_color(attribution: float, scale: float) -> str:
    """Red for words that raise the prediction, blue for words that lower it, by magnitude."""
    a = max(-1.0, min(1.0, attribution / scale)) if scale else 0.0
    return f"rgba(200,30,30,{a:.2f})" if a >= 0 else f"rgba(30,80,200,{-a:.2f})"


def explanation_figures(e: dict[str, Any]) -> dict[str, Any]:
    """Plots of one explanation (Shapley bars, step trace) as base64 PNG; adds the word colour scale."""
    if e.get("text") and e["text"].get("words"):
        e["text"]["scale"] = max(abs(w["attribution"]) for w in e["text"]["words"]) or 1.0
    figs = {"shapley": png64(bar_plot(e["shapley"], "modality contributions (Shapley, absent = masked)",
                                      "change in probability")), "steps": None}
    if e.get("steps"):
        figs["steps"] = png64(step_plot(e["steps"], "prediction after each step"))
    return figs


def css() -> str:
    return (TEMPLATES / "base.css").read_text()


def render_explanation(e: dict[str, Any], model_dir: str) -> str:
    """One self-contained HTML page for one explained case."""
    return environment().get_template("explain.html.j2").render(e=e, figs=explanation_figures(e), css=css(),
                                                                model_dir=model_dir)


def render_report(context: dict[str, Any]) -> str:
    return environment().get_template("report.html.j2").render(css=css(), **context)
