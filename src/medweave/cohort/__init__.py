"""Cohorts: cases x modalities with a presence mask, targets, patient-grouped splits, missingness simulation."""

from .cohort import (SPLITS, Cohort, CohortError, assign_splits, build_cohort, class_lookup, integral_spelling,
                     is_missing, item_id_column, item_id_lists)
from .missing import MECHANISMS, simulate_missing

__all__ = ["Cohort", "CohortError", "build_cohort", "assign_splits", "SPLITS", "simulate_missing", "MECHANISMS"]
