"""Fusion models (sequential state fusion, concatenation, attention, stacking), task heads, modality dropout."""

from .heads import HEAD_KINDS, HeadSpec, head_loss, head_probs
from .models import (FUSERS, AttentionFusion, ConcatFusion, FusionModel, SequentialFusion,
                     StackedFusion, modality_dropout)

__all__ = ["FUSERS", "FusionModel", "SequentialFusion", "ConcatFusion", "AttentionFusion", "StackedFusion", "modality_dropout",
           "HeadSpec", "HEAD_KINDS", "head_loss", "head_probs"]
