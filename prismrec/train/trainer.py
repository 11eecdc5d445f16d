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
from prismrec.errors import RunError, TrainingDiverged
from prismrec.eval.evaluator import Evaluator
from prismrec.losses import added
from prismrec.recommender import Recommender
from prismrec.train import distributed
from prismrec.train.distributed import SINGLE, DistEnv


DIVERGENCE_FACTOR = 1e6
"""A training loss whose magnitude exceeds ``DIVERGENCE_FACTOR`` times that of the run's first
batch (taken as at least 1) has diverged: :class:`TrainingDiverged` stops the run, as for a
non-finite loss. Losses start near their initial value (BPR at ``ln 2``) and fall; a million-fold
rise only happens when the optimisation blows up (e.g. ``lr=1e9``, whose loss reached 1.5e18)."""

CHECKPOINT_FORMAT = "prismrec.checkpoint/1"
"""Version tag of the state :func:`fit` hands to its ``checkpoint`` callback."""


@dataclass
class FitResult:
    """What training produced: per-epoch history and the selected (best-validation) epoch.

    ``seconds`` is wall time, summed over a resumed run's processes.
    """

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


def rng_states() -> dict:
    """Every global random state (Python, NumPy, torch CPU and CUDA), as plain values and tensors
    (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    """Restore :func:`rng_states`."""
    random.setstate(_as_tuples(states["python"]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def fit(
    model: Recommender,
    dataset,
    cfg,
    evaluator: Evaluator | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    log_line: Callable[[str], None] | None = None,
    dist_env: DistEnv = SINGLE,
) -> FitResult:
    """Train ``model`` on ``dataset.train`` with settings ``cfg`` (a :class:`TrainConfig`).

    Returns the history and best epoch; the model holds the best-validation state on return.

    ``checkpoint``, when given, receives the complete training state at the end of an epoch
    (every epoch, or once ``cfg.checkpoint_every_s`` seconds have passed since the last one): the
    model, the fused-Adam state, every RNG (Python, NumPy, torch, the BPR sampler's and the
    model's own generators), the early-stopping state and the history. Passing such a state as
    ``resume`` (to a freshly built model with the same settings) continues the run exactly: the
    result is bit-identical to an uninterrupted run on the same device.

    ``progress`` shows one line per epoch on stderr (loss, validation metric, best, ETA);
    ``log_line``, when given, receives every such line whether or not it is shown (the run's
    ``run.log``).

    ``dist_env``: this process's place in a data-parallel run (:mod:`prismrec.train.distributed`):
    each rank trains on its share of every global batch, the gradients are summed over ranks, rank
    0 validates and broadcasts the metrics, and only rank 0 shows progress (give ``checkpoint``
    to rank 0 only). A single process (the default) is unchanged.

    Raises :class:`TrainingDiverged` when a loss term becomes non-finite or the loss exceeds
    :data:`DIVERGENCE_FACTOR` times the first batch's.
    """
    evaluator = evaluator or Evaluator(
        dataset, ks=cfg.topk, batch_size=cfg.eval_batch_size, mask_valid_at_test=cfg.mask_valid_at_test
    )
    # a cold-item split's held-out items are never negatives (they would be trained downwards)
    cold = dataset.cold() if hasattr(dataset, "cold") else None
    sampler = BPRSampler(dataset.train, cfg.batch_size, cfg.negative_pool, seed=cfg.seed, exclude=cold)
    # fused Adam: one kernel per step instead of a dozen passes over every parameter
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
    )
    distributed.broadcast_parameters(model, dist_env)  # every rank starts from rank 0's weights
    progress = progress and dist_env.is_main
    log_line = log_line if dist_env.is_main else None
    result = FitResult()
    best_score, best_state, bad_epochs, first_epoch = -math.inf, None, 0, 0
    guard = _DivergenceGuard()
    seconds_before = 0.0
    if resume is not None:
        if resume.get("format") != CHECKPOINT_FORMAT:
            raise RunError(f"cannot resume from a checkpoint of format {resume.get('format')!r} "
                           f"(this prismrec writes {CHECKPOINT_FORMAT!r}): start the run afresh")
        try:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            sampler.set_state(resume["sampler"])
            model.load_generator_states(resume["generators"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise RunError(
                f"cannot resume: the checkpoint does not fit this {type(model).__name__} model "
                f"({str(exc).splitlines()[0][:200]}); was prismrec changed since it was written? "
                "Rerun with --overwrite to start the run afresh"
            ) from None
        best = resume["best"]
        best_score, best_state, bad_epochs = best["score"], best["state"], best["bad_epochs"]
        result.best_epoch, result.best_valid = best["epoch"], best["valid"]
        result.history = list(resume["history"])
        guard.reference = resume["loss_reference"]
        first_epoch, seconds_before = resume["epoch"], resume["seconds"]
        set_rng_states(resume["rng"])
    started = last_saved = time.perf_counter()
    every_s = float(getattr(cfg, "checkpoint_every_s", 0.0) or 0.0)
    display = _Progress(cfg.epochs, cfg.patience, cfg.valid_metric, enabled=progress, done=first_epoch,
                        bad_epochs=bad_epochs, sink=log_line, min_epochs=cfg.min_epochs)
    device = model.device
    with display:
        for epoch in range(first_epoch, cfg.epochs):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * cfg.lr_decay ** (epoch / cfg.lr_decay_epochs)
            model.train()
            model.on_epoch_start(epoch)
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            row.update(train_epoch(model, sampler, optimizer, epoch, device, guard, dist_env))
            row.update(model.epoch_log())  # model-specific values, e.g. a schedule's weight
            t0 = time.perf_counter()
            valid = evaluator.evaluate(model, "valid") if dist_env.is_main else None
            valid = distributed.broadcast_object(valid, dist_env)  # one early-stopping decision
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
            if bad_epochs > cfg.patience and epoch + 1 >= cfg.min_epochs:
                result.stop_reason = f"early stopping: no improvement for {bad_epochs} epoch{'' if bad_epochs == 1 else 's'}"
                break
            now = time.perf_counter()
            if checkpoint is not None and epoch + 1 < cfg.epochs and now - last_saved >= every_s:
                checkpoint({
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "sampler": sampler.get_state(),
                    "generators": model.generator_states(),
                    "rng": rng_states(),
                    "best": {"score": best_score, "epoch": result.best_epoch, "valid": result.best_valid,
                             "state": best_state, "bad_epochs": bad_epochs},
                    "history": result.history,
                    "loss_reference": guard.reference,
                    "seconds": seconds_before + now - started,
                })
                last_saved = time.perf_counter()
        else:
            result.stop_reason = f"reached epochs={cfg.epochs}"
    result.epochs = len(result.history)
    result.seconds = seconds_before + time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    return result


class _DivergenceGuard:
    """Stops a run whose loss is non-finite or has grown :data:`DIVERGENCE_FACTOR`-fold."""

    def __init__(self) -> None:
        self.reference: float | None = None  # |loss| of the run's first batch, at least 1

    def check(self, total: float, terms: dict[str, float | torch.Tensor], epoch: int, batch: int) -> None:
        """Raise :class:`TrainingDiverged` if the batch's loss ``total`` (the sum of ``terms``,
        floats or 0-d tensors) is non-finite or :data:`DIVERGENCE_FACTOR` times the first's."""
        where = f"at epoch {epoch}, batch {batch}: the run is stopped"
        advice = ("Lower the learning rate or the loss weights, raise a temperature set close to 0 (a tau "
                  "of 1e-30 divides similarities into overflow), and check the input features for extreme values.")
        if not math.isfinite(total):
            bad = [k for k, v in terms.items() if not math.isfinite(_value(v))]
            raise TrainingDiverged(f"loss term(s) {', '.join(bad)} became non-finite {where}. {advice}")
        if self.reference is None:
            self.reference = max(abs(total), 1.0)
        elif abs(total) > DIVERGENCE_FACTOR * self.reference:
            values = ", ".join(f"{k}={_value(v):.3g}" for k, v in terms.items())
            raise TrainingDiverged(
                f"the loss diverged {where}: {total:.3g} is more than {DIVERGENCE_FACTOR:.0e} times "
                f"the first batch's ({self.reference:.3g}; terms {values}). {advice}"
            )


def _value(v: float | torch.Tensor) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def release_grads(optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)``: every parameter's gradient set to ``None``, without
    the profiler mark torch.optim opens and closes around it on every call (~0.05 ms of CPU time
    per batch, 1.6 ms a BPR-MF epoch on lfm2k; the loop itself costs a microsecond). An optimiser
    whose class has its own ``zero_grad`` (or an object that only looks like one) gets that call."""
    if getattr(type(optimizer), "zero_grad", None) is not torch.optim.Optimizer.zero_grad:
        optimizer.zero_grad(set_to_none=True)
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def adam_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``, bit for bit, for the trainer's fused Adam without torch.optim's
    per-step Python (hooks, profiler marks, per-parameter state checks, grouping by device):
    ~0.35 ms of CPU time less per step, of a small model's ~6 ms batch (BPR-MF on lfm2k;
    ``python -m benchmarks.adam_step``). The fused
    kernel is called directly, after the step counters' increment, with the group's settings,
    on the parameters that have a gradient, in the group's order, as ``Adam.step`` calls it.

    Anything else takes ``optimizer.step()``: another optimiser or setting (not fused, amsgrad,
    maximize, capturable, a tensor learning rate), registered step hooks, a parameter whose state
    is not yet initialised (the first step, which creates it), a sparse or complex gradient, or
    parameters of several devices or dtypes in a group."""
    groups = _fused_adam_groups(optimizer)
    if groups is None:
        optimizer.step()
        return
    with torch.no_grad():
        for group, params, grads, states in groups:
            steps = [st["step"] for st in states]
            torch._foreach_add_(steps, 1)
            beta1, beta2 = group["betas"]
            torch._fused_adam_(params, grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states],
                               [], steps, amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                               weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                               grad_scale=None, found_inf=None)


def _fused_adam_groups(optimizer) -> list[tuple] | None:
    """Per parameter group: the group, its parameters with a gradient, their gradients and
    states; ``None`` where :func:`adam_step` must call ``optimizer.step()``."""
    from torch.optim import optimizer as base

    if (type(optimizer) is not torch.optim.Adam or optimizer._optimizer_step_pre_hooks
            or optimizer._optimizer_step_post_hooks or base._global_optimizer_pre_hooks
            or base._global_optimizer_post_hooks or getattr(optimizer, "grad_scale", None) is not None
            or getattr(optimizer, "found_inf", None) is not None or not hasattr(torch, "_fused_adam_")):
        return None
    groups = []
    for group in optimizer.param_groups:
        if (not group["fused"] or group["amsgrad"] or group["maximize"] or group["capturable"]
                or group["differentiable"] or group.get("decoupled_weight_decay") or torch.is_tensor(group["lr"])):
            return None
        params = [p for p in group["params"] if p.grad is not None]
        states = [optimizer.state.get(p) for p in params]
        if any(not st for st in states):
            return None  # the first step creates the state
        grads = [p.grad for p in params]
        if any(g.is_sparse or g.is_complex() or g.device != grads[0].device or g.dtype != grads[0].dtype
               or p.dtype != grads[0].dtype for p, g in zip(params, grads)):
            return None
        if params:
            groups.append((group, params, grads, states))
    return groups


GUARD_EVERY_ON_GPU = 32
"""On a GPU, the batches' loss terms are copied to the host (and checked by the divergence
guard) once per this many batches instead of after every batch: each copy waits for the GPU to
finish, and a wait per batch would leave it idle while Python prepares the next one. A diverged
run is still stopped naming its first bad batch, at most this many batches later."""


def _guard_interval(device: torch.device) -> int:
    """Batches whose loss terms are copied to the host at once: 1 on CPU (where the copy is free)."""
    return GUARD_EVERY_ON_GPU if device.type != "cpu" else 1


def train_epoch(model, sampler: BPRSampler, optimizer, epoch: int, device,
                guard: _DivergenceGuard | None = None, dist_env: DistEnv = SINGLE) -> dict:
    """One pass over the training pairs; returns mean loss terms and where the time went.

    ``guard`` checks every batch's loss (non-finite or diverged raises :class:`TrainingDiverged`;
    on a GPU in groups of :data:`GUARD_EVERY_ON_GPU` batches, so the loop never waits for the
    device per batch). Under ``dist_env`` with several ranks, each rank computes its share of
    every batch (weighted by its share of the rows) and the gradients and logged terms are summed
    over ranks. On a CPU in one process a model's closed-form
    :meth:`~prismrec.recommender.Recommender.batch_gradients` is taken where it has one (its
    ``forward_s`` then holds the gradients too). On a GPU the phase times (``forward_s`` ...) are
    host time (kernels run asynchronously); ``train_s`` is the epoch's wall time.
    """
    guard = guard or _DivergenceGuard()
    device = torch.device(device)
    accelerated = device.type != "cpu"  # a GPU of any kind (CUDA, MPS, ...)
    check_every = _guard_interval(device)
    sums: dict[str, float] = {}
    pending: list[tuple[tuple[str, ...], torch.Tensor, int]] = []  # logged terms not yet on the host

    def settle() -> None:
        """Copy the pending batches' terms to the host (one copy), check and sum them in order."""
        if not pending:
            return
        values = (pending[0][1] if len(pending) == 1 else torch.cat([v for _, v, _ in pending])).tolist()
        offset = 0
        for names, _, index in pending:
            row = values[offset:offset + len(names)]
            offset += len(names)
            guard.check(sum(row), dict(zip(names, row)), epoch, index)
            for k, value in zip(names, row):
                sums[k] = sums.get(k, 0.0) + value
        pending.clear()

    timing = {"sample_s": 0.0, "forward_s": 0.0, "backward_s": 0.0, "optim_s": 0.0}
    n_batches = 0
    t_epoch = tick = time.perf_counter()
    # On a GPU the sampler copies the epoch's triples there once, asynchronously.
    for batch in (sampler.epoch(device) if accelerated else sampler.epoch()):
        if dist_env.active:
            batch, weight = distributed.shard(batch, dist_env)
        now = time.perf_counter()
        timing["sample_s"] += now - tick
        release_grads(optimizer)
        # A model with a closed-form batch gradient (BPR-MF) writes it itself on a CPU in one process.
        terms = None if accelerated or dist_env.active else model.batch_gradients(batch)
        total = None
        if terms is None:
            # A model's batch_loss gives loss(batch, forward())'s terms and gradients with less work on
            # a CPU (row-restricted products, sliced on the host); on a GPU the full products are cheap
            # and host slicing would stall every batch, so the default path is taken there.
            terms = model.loss(batch, model()) if accelerated else model.batch_loss(batch)
            if dist_env.active:  # this rank's share of the global batch's mean
                terms = {k: v * weight for k, v in terms.items()}
            # Each term's gradient is 1, as through the plain loop's sum (tests/test_trainer_steps.py).
            total = added(terms.values())
        tick = time.perf_counter()
        timing["forward_s"] += tick - now
        logged = torch.stack([v.detach() for v in terms.values()]).reshape(-1)
        if dist_env.active:  # the global batch's terms, the same on every rank
            logged = distributed.allreduce_sum(logged, dist_env)
        pending.append((tuple(terms), logged, n_batches))
        if len(pending) >= check_every:
            settle()
        if total is not None:
            total.backward()
        distributed.allreduce_grads(model, dist_env)
        now = time.perf_counter()
        timing["backward_s"] += now - tick
        adam_step(optimizer)
        tick = time.perf_counter()
        timing["optim_s"] += tick - now
        n_batches += 1
    settle()
    row = {f"loss_{k}": v / n_batches for k, v in sums.items()}
    row["loss"] = sum(row.values())
    row["train_s"] = time.perf_counter() - t_epoch
    row.update(timing)
    return row


class _Progress:
    """What a researcher sees while a model trains: one short line per epoch.

    Each line holds the epoch (of the cap), the loss, the validation metric, the best so far
    and an ETA, and fits 80 columns. The ETA is an upper bound on the time left: the epochs that
    remain before early stopping if validation does not improve again (``patience``), or before
    the epoch cap (``cap``) when that comes first; the line says which. On a terminal the line
    is redrawn in place (the finished run leaves its last line); otherwise (a pipe, a log file)
    every epoch is one plain line. Every line also goes to ``sink`` (the run's ``run.log``),
    whether or not anything is shown.
    """

    def __init__(self, total: int, patience: int, metric: str, enabled: bool, done: int = 0,
                 bad_epochs: int = 0, sink: Callable[[str], None] | None = None, stream=None,
                 min_epochs: int = 0) -> None:
        import sys

        self.total, self.patience, self.metric, self.min_epochs = total, patience, metric, min_epochs
        self.enabled, self.sink = enabled, sink
        self.stream = stream if stream is not None else sys.stderr
        self.live = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.bad_epochs, self.seconds, self.epochs_timed = bad_epochs, 0.0, 0
        self.drawn = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()

    def eta(self, epoch: int) -> tuple[int, str]:
        """Epochs left at most after ``epoch`` (0-based) and what bounds them: patience or cap."""
        by_cap = self.total - epoch - 1
        by_patience = max(self.patience + 1 - self.bad_epochs, self.min_epochs - epoch - 1)
        return (by_patience, "patience") if by_patience < by_cap else (by_cap, "cap")

    def line(self, row: dict, best_epoch: int, best: float) -> str:
        """The text shown for one epoch (at most 80 characters)."""
        left, bound = self.eta(row["epoch"])
        per_epoch = self.seconds / max(self.epochs_timed, 1)
        eta = f"eta<={_clock(left * per_epoch)} ({bound})" if left > 0 else "last epoch"
        name = _short_metric(self.metric)
        pace = f"{per_epoch:.1f}s" if per_epoch < 60 else _clock(per_epoch)
        return (f"ep {row['epoch'] + 1}/{self.total} loss {row['loss']:.4g} "
                f"{name} {row['valid_' + self.metric]:.4f} best {best:.4f}@{best_epoch + 1} "
                f"{pace}/ep {eta}")

    def update(self, row: dict, best_epoch: int, best: float) -> None:
        """Show and log the epoch just validated (``best_epoch`` 0-based)."""
        self.bad_epochs = 0 if best_epoch == row["epoch"] else self.bad_epochs + 1
        self.seconds += row["train_s"] + row["eval_s"]
        self.epochs_timed += 1
        text = self.line(row, best_epoch, best)
        if self.sink is not None:
            self.sink(text)
        if not self.enabled:
            return
        if self.live:
            import shutil

            width = shutil.get_terminal_size((80, 24)).columns - 1
            self.stream.write("\r\x1b[2K" + text[:width])
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


_SHORT = {"recall": "R", "ndcg": "N", "precision": "P", "map": "MAP", "hit": "Hit"}


def _short_metric(metric: str) -> str:
    """``recall@20`` -> ``R@20`` (the display's abbreviation)."""
    name, at, k = metric.partition("@")
    return f"{_SHORT.get(name, name)}{at}{k}"


def _clock(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
