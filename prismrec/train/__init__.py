"""Training loop with early stopping on validation."""

from prismrec.train.allocator import keep_freed_memory
from prismrec.train.config import TrainConfig
from prismrec.train.trainer import FitResult, TrainingDiverged, fit, seed_everything

__all__ = ["FitResult", "TrainConfig", "TrainingDiverged", "fit", "keep_freed_memory", "seed_everything"]
