"""Training loop with early stopping on validation."""

from prismrec.train.trainer import FitResult, TrainingDiverged, fit, seed_everything

__all__ = ["FitResult", "TrainingDiverged", "fit", "seed_everything"]
