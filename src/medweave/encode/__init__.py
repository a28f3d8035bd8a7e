"""Frozen encoders per modality, an on-disk embedding cache, and cohort encoding."""

from .base import DEFAULT_ENCODERS, ENCODERS, Encoder, get_encoder
from .cache import EmbeddingCache
from .pipeline import CaseEmbeddings, EncodeStats, encode_cohort, encode_items
from .table import TabularFeaturizer, tabular_frame

__all__ = ["Encoder", "ENCODERS", "DEFAULT_ENCODERS", "get_encoder", "EmbeddingCache", "CaseEmbeddings",
           "EncodeStats", "encode_cohort", "encode_items", "TabularFeaturizer", "tabular_frame"]
