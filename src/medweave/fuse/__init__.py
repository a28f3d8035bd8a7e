"""Fusion models (sequential state fusion, concatenation, attention), task heads, modality dropout."""

from .heads import HEAD_KINDS, HeadSpec, head_loss, head_probs
from .models import (FUSERS, AttentionFusion, ConcatFusion, FusionModel, SequentialFusion,
                     modality_dropout)

__all__ = ["FUSERS", "FusionModel", "SequentialFusion", "ConcatFusion", "AttentionFusion", "modality_dropout",
           "HeadSpec", "HEAD_KINDS", "head_loss", "head_probs"]
