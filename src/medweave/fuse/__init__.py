"""Fusion models (sequential state fusion, concatenation, attention, stacking), task heads, modality dropout."""

from .heads import HEAD_KINDS, HeadSpec, head_loss, head_probs
from .models import (FUSERS, AttentionFusion, ConcatFusion, EnsembleFusion, FusionModel, SequentialFusion,
                     StackedFusion, ensemble_members, modality_dropout)

__all__ = ["FUSERS", "FusionModel", "SequentialFusion", "ConcatFusion", "AttentionFusion", "StackedFusion", "EnsembleFusion",
           "ensemble_members", "modality_dropout",
           "HeadSpec", "HEAD_KINDS", "head_loss", "head_probs"]
