"""The HTML report: one self-contained file (Jinja2 + matplotlib, images inline)."""

from .build import build_report
from .render import render_explanation

__all__ = ["build_report", "render_explanation"]
