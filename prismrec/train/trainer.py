"""The training loop (DESIGN.md §3 Trainer; ALGORITHMS.md 1.3).

Adam over shuffled BPR triples, the model's named loss terms summed, validation every epoch,
early stopping on the validation metric with the best state restored. The trainer never reads the
test split: the caller evaluates test once, after :func:`fit` returns.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from prismrec.data.sampler import BPRSampler
from prismrec.errors import TrainingDiverged
from prismrec.eval.evaluator import Evaluator
from prismrec.recommender import Recommender


@dataclass
class FitResult:
    """What training produced: per-epoch history and the selected (best-validation) epoch."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_valid: dict = field(default_factory=dict)
    epochs: int = 0
    seconds: float = 0.0
    stop_reason: str = ""


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch so one seed fixes a run.

    ``deterministic`` also selects torch's deterministic kernels: on CPU the default
    accumulation of gathered-row gradients (``index_put_``) sums in a thread-dependent order,
    which made two same-seed MGCN runs differ in the 9th digit. Torch's companion debugging aid,
    filling every new tensor with NaN (``fill_uninitialized_memory``), is switched off: no kernel
    here reads memory it has not written, and the fill cost a pass over every ``N x d`` buffer
    (a third of a LightGCN training epoch on baby).
    """
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(
    model: Recommender,
    dataset,
    cfg,
    evaluator: Evaluator | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``dataset.train`` with settings ``cfg`` (a :class:`TrainConfig`).

    Returns the history and best epoch; the model holds the best-validation state on return.
    Raises :class:`TrainingDiverged` if any loss term becomes non-finite.
    """
    evaluator = evaluator or Evaluator(
        dataset, ks=cfg.topk, batch_size=cfg.eval_batch_size, mask_valid_at_test=cfg.mask_valid_at_test
    )
    sampler = BPRSampler(dataset.train, cfg.batch_size, cfg.negative_pool, seed=cfg.seed)
    # fused Adam: one kernel per step instead of a dozen passes over every parameter
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
    )
    result = FitResult()
    best_score, best_state, bad_epochs = -math.inf, None, 0
    started = time.perf_counter()
    display = _Progress(cfg.epochs, cfg.valid_metric, enabled=progress)
    device = model.device
    with display:
        for epoch in range(cfg.epochs):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * cfg.lr_decay ** (epoch / cfg.lr_decay_epochs)
            model.train()
            model.on_epoch_start(epoch)
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            row.update(train_epoch(model, sampler, optimizer, epoch, device))
            row.update(model.epoch_log())  # model-specific values, e.g. a schedule's weight
            t0 = time.perf_counter()
            valid = evaluator.evaluate(model, "valid")
            row["eval_s"] = time.perf_counter() - t0
            row.update({f"valid_{k}": v for k, v in valid.items() if k != "users"})
            result.history.append(row)
            score = valid[cfg.valid_metric]
            if score > best_score:  # strictly greater, as the reference
                best_score, bad_epochs = score, 0
                result.best_epoch, result.best_valid = epoch, valid
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
            display.update(row, result.best_epoch, best_score)
            if on_epoch_end is not None:
                on_epoch_end(row)
            if bad_epochs > cfg.patience:
                result.stop_reason = f"early stopping: no improvement for {bad_epochs} epochs"
                break
        else:
            result.stop_reason = f"reached epochs={cfg.epochs}"
    result.epochs = len(result.history)
    result.seconds = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    return result


def train_epoch(model, sampler: BPRSampler, optimizer, epoch: int, device) -> dict:
    """One pass over the training pairs; returns mean loss terms and where the time went."""
    sums: dict[str, float] = {}
    timing = {"sample_s": 0.0, "forward_s": 0.0, "backward_s": 0.0, "optim_s": 0.0}
    n_batches = 0
    t_epoch = tick = time.perf_counter()
    for batch in sampler.epoch():
        batch = tuple(t.to(device, non_blocking=True) for t in batch)
        now = time.perf_counter()
        timing["sample_s"] += now - tick
        terms = model.batch_loss(batch)
        total = sum(terms.values())
        tick = time.perf_counter()
        timing["forward_s"] += tick - now
        if not torch.isfinite(total):
            bad = [k for k, v in terms.items() if not torch.isfinite(v)]
            raise TrainingDiverged(
                f"loss term(s) {', '.join(bad)} became non-finite at epoch {epoch}, batch "
                f"{n_batches}: the run is stopped. Lower the learning rate or the loss weights, "
                "and check the input features for extreme values."
            )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        now = time.perf_counter()
        timing["backward_s"] += now - tick
        optimizer.step()
        tick = time.perf_counter()
        timing["optim_s"] += tick - now
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n_batches += 1
    row = {f"loss_{k}": v / n_batches for k, v in sums.items()}
    row["loss"] = sum(row.values())
    row["train_s"] = time.perf_counter() - t_epoch
    row.update(timing)
    return row


class _Progress:
    """A one-line live display of the epoch, loss and validation metric (rich)."""

    def __init__(self, total: int, metric: str, enabled: bool) -> None:
        self.metric, self.enabled = metric, enabled
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]epoch {task.completed}/{task.total}"),
                BarColumn(bar_width=20),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self.task = self.bar.add_task("", total=total)

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)

    def update(self, row: dict, best_epoch: int, best: float) -> None:
        if not self.enabled:
            return
        text = (
            f"loss {row['loss']:.4f}  valid {self.metric} {row['valid_' + self.metric]:.4f}  "
            f"best {best:.4f} @ {best_epoch}  ({row['train_s']:.2f}s train, {row['eval_s']:.2f}s eval)"
        )
        self.bar.update(self.task, advance=1, description=text)
