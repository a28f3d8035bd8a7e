"""The HTML report: one self-contained file (Jinja2 + matplotlib, images inline)."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what the names below resolve to, imported only on first use
    from .build import build_report
    from .render import render_explanation

__getattr__, __dir__ = lazy_exports(__name__, {
    "build_report": ".build",
    "render_explanation": ".render",
})
__all__ = [
    "build_report", "render_explanation",
]
