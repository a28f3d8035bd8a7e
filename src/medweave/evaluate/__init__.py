"""Evaluation: metrics with intervals, missingness protocols, reports."""

from .metrics import BINARY_METRICS, binary_report, bootstrap_ci, ece

__all__ = ["BINARY_METRICS", "binary_report", "bootstrap_ci", "ece"]
