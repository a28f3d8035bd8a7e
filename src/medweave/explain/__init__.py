"""Explanations: per-modality contributions (exact Shapley, "absent" = masked), the sequential model's
step trace, and per-feature attributions inside a modality (tabular, image saliency, words)."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what the names below resolve to, imported only on first use
    from .context import ExplainError, ModelContext
    from .core import PARTS, explain
    from .features import image_saliency, tabular_attributions, text_attributions, word_occlusion
    from .modalities import coalition_values, explain_modalities, leave_one_out, modality_shapley

__getattr__, __dir__ = lazy_exports(__name__, {
    "ExplainError": ".context", "ModelContext": ".context",
    "PARTS": ".core", "explain": ".core",
    "image_saliency": ".features", "tabular_attributions": ".features", "text_attributions": ".features",
    "word_occlusion": ".features",
    "coalition_values": ".modalities", "explain_modalities": ".modalities", "leave_one_out": ".modalities",
    "modality_shapley": ".modalities",
})
__all__ = [
    "ExplainError", "ModelContext", "PARTS", "coalition_values", "explain", "explain_modalities",
    "image_saliency", "leave_one_out", "modality_shapley", "tabular_attributions", "text_attributions",
    "word_occlusion",
]
