"""Evaluation: metrics with intervals, missingness protocols, reports."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what the names below resolve to, imported only on first use
    from .metrics import BINARY_METRICS, binary_report, bootstrap_ci, ece
    from .run import EvaluateError, evaluate_model, parse_missing, score

__getattr__, __dir__ = lazy_exports(__name__, {
    "BINARY_METRICS": ".metrics", "binary_report": ".metrics", "bootstrap_ci": ".metrics", "ece": ".metrics",
    "EvaluateError": ".run", "evaluate_model": ".run", "parse_missing": ".run", "score": ".run",
})
__all__ = [
    "BINARY_METRICS", "EvaluateError", "binary_report", "bootstrap_ci", "ece", "evaluate_model",
    "parse_missing", "score",
]
