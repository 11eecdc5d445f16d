"""Training settings: the trainer's contract (DESIGN.md §3 Config, Trainer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """Training and evaluation protocol (ALGORITHMS.md 1.3-1.4); defaults are MMRec's."""

    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay (models regularise through their own loss terms)."""
    lr_decay: float = 1.0
    """``s0`` of the LR schedule ``lr_e = lr · s0^(e/s1)``; 1.0 = constant."""
    lr_decay_epochs: int = 50
    """``s1`` of the LR schedule."""
    batch_size: int = 2048
    """Training pairs per batch."""
    epochs: int = 1000
    """Maximum number of epochs."""
    patience: int = 20
    """Stop once ``patience + 1`` consecutive validations fail to improve strictly."""
    valid_metric: str = "recall@20"
    """Validation metric monitored for early stopping and model selection."""
    topk: tuple[int, ...] = (5, 10, 20, 50)
    """Cut-offs ``K`` at which every metric is computed."""
    eval_batch_size: int = 4096
    """Users scored per evaluation batch."""
    negative_pool: Literal["train_items", "all_items"] = "train_items"
    """Items negatives are drawn from."""
    mask_valid_at_test: bool = False
    """Also mask validation items at test (False = MMRec protocol)."""
    seed: int = 999
    """Seed of every random choice of a run."""
    device: str = "cpu"
    """Torch device, e.g. ``cpu`` or ``cuda``."""
    threads: int = 0
    """CPU threads for torch (0 = leave torch's default)."""
    checkpoint_every_s: float = 0.0
    """Write a resumable training checkpoint into the run directory at the end of an epoch once
    this many seconds have passed since the last one; 0 = after every epoch. It changes only how
    much work a killed run repeats, never the result (not part of the run's identity)."""
