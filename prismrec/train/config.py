"""Training settings: the trainer's contract (DESIGN.md §3 Config, Trainer)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from prismrec.errors import ConfigError
from prismrec.eval.metrics import METRIC_NAMES, check_cut_offs

MAX_CUT_OFF = 10**9
"""Largest cut-off K anywhere; where the dataset is known, a K above its item count is refused
(:meth:`TrainConfig.check_cut_offs`, :func:`~prismrec.eval.metrics.check_cut_offs`)."""
DEVICE_TYPES = ("cpu", "cuda", "mps")
"""Device types a run may use (``cuda:1`` selects a GPU by index)."""
MAX_THREADS = 1024
"""Largest explicit ``threads``: torch cannot take more than 2**31-1 (a traceback), and OpenMP
crashes the process when it cannot create the threads asked for."""
DEFAULT_TOPK = (5, 10, 20, 50)
"""The default cut-offs (MMRec's), kept on datasets of fewer than 50 items (they rank every item)."""


@dataclass
class TrainConfig:
    """Training and evaluation protocol (ALGORITHMS.md 1.3-1.4); defaults are MMRec's.

    Every value is checked on construction (:func:`check_train_config`), so a bad setting is a
    :class:`~prismrec.errors.ConfigError` before any data is read; :meth:`check_device` adds what
    depends on this machine (a GPU that is not there), before training.
    """

    def __post_init__(self) -> None:
        check_train_config(self)

    def check_device(self) -> None:
        """Raise :class:`ConfigError` unless ``device`` exists on this machine."""
        check_device_available(self.device)

    def check_cut_offs(self, n_items: int, dataset: str) -> None:
        """Raise :class:`ConfigError` when a ``topk`` the user set holds a cut-off above the
        dataset's item count (:func:`~prismrec.eval.metrics.check_cut_offs`). The default
        :data:`DEFAULT_TOPK` is not refused on a smaller dataset."""
        if tuple(self.topk) != DEFAULT_TOPK:
            check_cut_offs(self.topk, n_items, dataset, f"setting topk={list(self.topk)}",
                           f"give cut-offs from 1 to {n_items:,} with --set topk=... or in the --config file")

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
    min_epochs: int = 0
    """Early stopping never stops before this many epochs (0 = from the first, as the reference).
    A warm-up for short patiences: contrastive models' BPR term can sit at ln 2 for the first
    10-20 epochs while validation dips, and a patience of 10 then ends a run that would recover."""
    valid_metric: str = "recall@20"
    """Validation metric monitored for early stopping and model selection."""
    topk: tuple[int, ...] = DEFAULT_TOPK
    """Cut-offs ``K`` at which every metric is computed."""
    eval_batch_size: int = 4096
    """Users scored per evaluation batch."""
    negative_pool: Literal["train_items", "all_items"] = "train_items"
    """Items negatives are drawn from: those with a training interaction, or every item. A
    cold-item dataset's cold items are never drawn under either (they are held out for
    evaluation; ``BPRSampler(exclude=dataset.cold())``)."""
    mask_valid_at_test: bool = False
    """Also mask validation items at test (False = MMRec protocol)."""
    seed: int = 999
    """Seed of every random choice of a run."""
    device: str = "cpu"
    """Torch device, e.g. ``cpu`` or ``cuda``."""
    threads: int | Literal["auto"] = "auto"
    """CPU threads for torch: ``auto`` = the cores this process may use (affinity, CPU quota;
    ``OMP_NUM_THREADS`` when set; one on a graph under 8,000 users + items; fewer when OpenMP
    threads spin and other processes keep cores busy: :mod:`prismrec.threads`), a whole number
    >= 1 = that many, 0 = torch's default."""
    checkpoint_every_s: float = 0.0
    """Write a resumable training checkpoint into the run directory at the end of an epoch once
    this many seconds have passed since the last one; 0 = after every epoch. It changes only how
    much work a killed run repeats, never the result (not part of the run's identity)."""


def require_setting(ok: bool, key: str, value, rule: str) -> None:
    """Raise :class:`ConfigError` naming ``key=value`` and its ``rule`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"setting {key}={value!r} is invalid: {rule}. Fix it with --set {key}=... "
                          "or in the --config file")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_train_config(cfg: TrainConfig) -> None:
    """Check every training setting's range; raise :class:`ConfigError` naming the first bad one."""
    require_setting(_is_number(cfg.lr) and cfg.lr > 0, "lr", cfg.lr, "the learning rate must be a number > 0, e.g. 0.001")
    require_setting(_is_number(cfg.weight_decay) and cfg.weight_decay >= 0, "weight_decay", cfg.weight_decay,
             "weight decay must be a number >= 0")
    require_setting(_is_number(cfg.lr_decay) and 0 < cfg.lr_decay <= 1, "lr_decay", cfg.lr_decay,
             "the LR decay factor must be a number in (0, 1] (1.0 = constant; above 1 the learning rate "
             "would grow every lr_decay_epochs)")
    require_setting(_is_int(cfg.lr_decay_epochs) and cfg.lr_decay_epochs >= 1, "lr_decay_epochs", cfg.lr_decay_epochs,
             "must be a whole number >= 1")
    require_setting(_is_int(cfg.batch_size) and cfg.batch_size >= 1, "batch_size", cfg.batch_size,
             "training pairs per batch must be a whole number >= 1, e.g. 2048")
    require_setting(_is_int(cfg.epochs) and cfg.epochs >= 1, "epochs", cfg.epochs,
             "the number of epochs must be a whole number >= 1")
    require_setting(_is_int(cfg.min_epochs) and cfg.min_epochs >= 0, "min_epochs", cfg.min_epochs,
             "min_epochs must be a whole number >= 0 (0 = early stopping from the first epoch)")
    require_setting(_is_int(cfg.patience) and cfg.patience >= 0, "patience", cfg.patience,
             "patience must be a whole number >= 0 (0 = stop at the first epoch that does not improve)")
    require_setting(_is_int(cfg.eval_batch_size) and cfg.eval_batch_size >= 1, "eval_batch_size", cfg.eval_batch_size,
             "users per evaluation batch must be a whole number >= 1")
    require_setting(cfg.threads == "auto" or (_is_int(cfg.threads) and 0 <= cfg.threads <= MAX_THREADS), "threads",
             cfg.threads, f"CPU threads must be auto or a whole number from 0 to {MAX_THREADS:,} (auto = the usable "
             "cores, 0 = torch's default)")
    every = getattr(cfg, "checkpoint_every_s", 0.0)
    require_setting(_is_number(every) and every >= 0, "checkpoint_every_s", every, "must be a number of seconds >= 0")
    require_setting(_is_int(cfg.seed) and 0 <= cfg.seed < 2**32, "seed", cfg.seed, "seeds are whole numbers 0..2**32-1")
    require_setting(cfg.negative_pool in ("train_items", "all_items"), "negative_pool", cfg.negative_pool,
             "must be train_items or all_items")
    require_setting(isinstance(cfg.mask_valid_at_test, bool), "mask_valid_at_test", cfg.mask_valid_at_test,
             "must be true or false")
    topk = tuple(cfg.topk) if isinstance(cfg.topk, (list, tuple)) else ()
    require_setting(bool(topk) and all(_is_int(k) and 1 <= k <= MAX_CUT_OFF for k in topk), "topk", cfg.topk,
             f"cut-offs must be a non-empty list of whole numbers from 1 to {MAX_CUT_OFF:,}, e.g. [10, 20]")
    require_setting(len(set(topk)) == len(topk), "topk", cfg.topk,
             "each cut-off once (a repeated one would be computed and reported twice), e.g. [10, 20]")
    metric, at, k = str(cfg.valid_metric).partition("@")
    require_setting(metric in METRIC_NAMES and at == "@" and k.isdigit() and int(k) in topk, "valid_metric",
             cfg.valid_metric, f"must be METRIC@K with METRIC one of {', '.join(METRIC_NAMES)} and K one of "
             f"topk {list(topk)}")
    device = str(cfg.device)
    kind, colon, index = device.partition(":")
    require_setting(kind in DEVICE_TYPES and (not colon or index.isdigit()), "device", cfg.device,
             f"the device must be one of {', '.join(DEVICE_TYPES)}, optionally with an index (cuda:1)")
    require_setting(kind != "cpu" or not colon or int(index) == 0, "device", cfg.device,  # cpu:5 ran on the CPU
             "the CPU is one device: give cpu (an index selects a GPU, e.g. cuda:1)")


def check_device_available(device: str, setting: str = "device", fix: str = "run with --set device=cpu") -> None:
    """Raise :class:`ConfigError` when ``device`` (already well-formed) is absent on this machine;
    the message names the ``setting`` that asked for it and ends with ``fix``."""
    kind, _, index = str(device).partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{setting}={device!r} but this machine has no CUDA GPU that torch can use; {fix}")
        if index and int(index) >= count:
            raise ConfigError(f"{setting}={device!r} but this machine has {count} CUDA GPU(s) "
                              f"(cuda:0..cuda:{count - 1}); pick one of those")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{setting}={device!r} but Apple's MPS backend is not available here; {fix}")


STAGE_DEVICE_FIX = "set device: cpu in pretrain_settings (or leave device out of it)"


def check_stage_device(settings) -> None:
    """Raise :class:`ConfigError` when an earlier stage's settings (``pretrain_settings``, e.g.
    ``{device: cuda}``) ask for a device this machine lacks: said before any training starts,
    not as a traceback from inside the stage."""
    if isinstance(settings, dict) and "device" in settings:
        check_device_available(str(settings["device"]), "pretrain_settings device", STAGE_DEVICE_FIX)


def check_run_devices(config) -> None:
    """Raise :class:`ConfigError` unless every device a run of ``config`` (an experiment config:
    ``train`` and the model's ``params``) would use exists here: the training device and, for a
    model with an earlier stage, that stage's (``pretrain_settings``)."""
    config.train.check_device()
    check_stage_device(getattr(config.params, "pretrain_settings", None))


def check_override_devices(overrides: dict) -> None:
    """:func:`check_run_devices` for ``--set`` overrides before they are resolved per model
    (``device``, ``pretrain_settings``)."""
    if "device" in overrides:
        TrainConfig(device=str(overrides["device"])).check_device()  # well-formed, then present
    check_stage_device(overrides.get("pretrain_settings"))
