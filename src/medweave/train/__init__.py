"""Training: fitting, early stopping, calibration, checkpoints."""

from .trainer import (Dataset, TrainConfig, build_model, evaluate_loss, fit, fit_cv, fit_stacked, fit_temperature,
                      group_folds, load_checkpoint,
                      predict_logits, save_checkpoint, seed_everything)

__all__ = ["Dataset", "TrainConfig", "build_model", "fit", "fit_cv", "fit_stacked", "group_folds", "fit_temperature", "predict_logits", "evaluate_loss",
           "save_checkpoint", "load_checkpoint", "seed_everything"]
