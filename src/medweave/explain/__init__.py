"""Explanations: per-modality contributions (exact Shapley, "absent" = masked), the sequential model's
step trace, and per-feature attributions inside a modality (tabular, image saliency, words)."""

from .context import ExplainError, ModelContext
from .core import PARTS, explain
from .features import image_saliency, tabular_attributions, text_attributions, word_occlusion
from .modalities import coalition_values, explain_modalities, leave_one_out, modality_shapley

__all__ = ["ModelContext", "ExplainError", "explain", "PARTS", "modality_shapley", "explain_modalities",
           "coalition_values", "leave_one_out", "tabular_attributions", "image_saliency", "text_attributions",
           "word_occlusion"]
