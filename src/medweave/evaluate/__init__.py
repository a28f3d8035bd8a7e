"""Evaluation: metrics with intervals, missingness protocols, reports."""

from .metrics import BINARY_METRICS, binary_report, bootstrap_ci, ece

__all__ = ["BINARY_METRICS", "binary_report", "bootstrap_ci", "ece"]
from .run import EvaluateError, evaluate_model, parse_missing, score

__all__ += ["EvaluateError", "evaluate_model", "parse_missing", "score"]
