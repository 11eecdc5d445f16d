"""Data-parallel training over several processes (``torchrun``), one global batch split by rank.

``torchrun --nproc-per-node K -m prismrec train ...`` starts K copies of the command; each reads
its rank from the environment (:func:`from_env`) and joins a process group (NCCL on GPUs, gloo on
CPU). Every rank draws the **same** global batch (the sampler is seeded alike), keeps its
contiguous share of the rows (:func:`shard`), and computes the model's loss on it weighted by
its share of the batch; the gradients are summed over ranks (:func:`allreduce_grads`), so a step
is that of the global batch at the same learning rate. The forward pass propagates the full
graph on every rank (it is replicated, not split), so the speed-up comes only from the per-row
part of the loss and its backward: expect little for full-graph models, more where the loss part
dominates.

Loss terms that average over a batch's rows (BPR, ``half_sq`` L2) need nothing more: each rank's
share, weighted by its rows' share, adds up to the global mean. Terms that couple a batch's rows
see the global batch through :class:`RankShares`, which :func:`init` installs in
:mod:`prismrec.losses`: in-batch InfoNCE (MGCN, GUME, SIGER, EGRA, SMORE) scores each rank's query
rows against **every** rank's keys (an all-gather whose backward returns each key's gradient,
summed over ranks, to the rank that owns it), EGRA's entity weights are normalised over the
global batch and ``emb_norm``'s norms are taken over all rows. A step is then that of one
process with the global batch, up to float rounding (``tests/test_distributed.py``). Still per
rank: random noise views (GUME's/SIGER's/EGRA's ``um``, BM3's dropout: each rank draws its own)
and terms over a batch's *distinct* rows (BM3, DA-MRS's alignment). A term that sums over the
batch's rows instead of averaging must go through :func:`prismrec.losses.batch_sum` (the trainer
weights each rank's terms as shares of a mean); LGMRec's ``hcl`` does not yet (1/K of its weight).

Validation runs on rank 0 and its metrics are broadcast (every rank takes the same early-stopping
decision); rank 0 alone writes the run directory.

This is what :func:`torch.nn.parallel.DistributedDataParallel` does for a module called through
its ``forward``; prismrec's trainer calls ``model.batch_loss`` instead, so the same reduction is
done here explicitly (one flat all-reduce per step).
"""

from __future__ import annotations

import atexit
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from prismrec import losses
from prismrec.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a data-parallel run."""

    rank: int = 0
    """This process's rank, 0..world_size-1 (``RANK``)."""
    world_size: int = 1
    """Number of processes (``WORLD_SIZE``)."""
    local_rank: int = 0
    """Rank on this machine (``LOCAL_RANK``): picks the GPU ``cuda:<local_rank>``."""

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: evaluates, logs and writes the run directory."""
        return self.rank == 0


SINGLE = DistEnv()


def from_env() -> DistEnv:
    """The rank and world size ``torchrun`` put in the environment (a single process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return DistEnv(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def quiet_follower(env: DistEnv | None = None) -> bool:
    """``True`` on a ``torchrun`` rank other than 0, whose Python warnings are then switched off.

    Every rank loads the data and builds the model, so every rank would repeat each warning,
    header and summary; rank 0 shows them once and the caller prints nothing else on a follower
    (:func:`fit` already shows progress on rank 0 only). Errors still reach every rank's stderr:
    a failure on one rank is never hidden. The warning filter is process-wide (the CLI restores
    it when its command returns).
    """
    env = from_env() if env is None else env
    if env.is_main:
        return False
    warnings.simplefilter("ignore")
    return True


def init(env: DistEnv, device: str) -> str:
    """Join the process group (once) and return the device this rank trains on.

    ``device="cuda"`` becomes ``cuda:<local_rank>`` (NCCL); CPU ranks use gloo. An explicit
    ``cuda:N`` under several ranks is a :class:`ConfigError` (each rank needs its own GPU)."""
    if not env.active:
        return device
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if index:
            raise ConfigError(f"device={device!r} under torchrun: give device=cuda, each rank takes "
                              "cuda:<LOCAL_RANK>")
        device = f"cuda:{env.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # torch.distributed.nn.functional binds the world group as default arguments when first
        # imported (torch.use_deterministic_algorithms imports it, through the compiler's config):
        # imported after the group exists, it keeps the group alive after destroy_process_group,
        # and gloo's worker threads then live into the interpreter's finalisation, where one
        # releasing a finished collective's tensors aborts the rank ("terminate called without an
        # active exception"). Imported first, it binds nothing and leaving the group joins them.
        import torch.distributed.nn.functional  # noqa: F401

        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
        atexit.register(_leave_group)
    losses.use_batch_shares(RankShares(env))  # in-batch terms see the global batch
    return device


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class RankShares(losses.BatchShares):
    """The global batch for the losses (:class:`prismrec.losses.BatchShares`): each rank holds the
    contiguous share :func:`shard` gave it, in rank order (:attr:`split`; false while a batch too
    small to split is replicated on every rank)."""

    def __init__(self, env: DistEnv) -> None:
        self.env = env
        self.split = True

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every rank's ``rows`` in rank order and where this rank's begin (gradients flow back)."""
        sizes = torch.zeros(self.env.world_size, dtype=torch.int64, device=rows.device)
        sizes[self.env.rank] = len(rows)
        dist.all_reduce(sizes)
        sizes = sizes.tolist()
        return _GatherRows.apply(rows, sizes, self.env.rank), sum(sizes[: self.env.rank])

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over ranks (no gradient)."""
        return allreduce_sum(values.detach(), self.env)


class _GatherRows(torch.autograd.Function):
    """All ranks' rows (``sizes[r]`` on rank ``r``) concatenated in rank order.

    Forward: an all-gather (padded to the largest share). Backward: every rank holds a gradient
    for all the rows; their sum over ranks is each row's gradient in the global loss, and each
    rank keeps its own rows' part (an all-reduce: gloo has no reduce-scatter). The rank's loss is
    its share of the global mean, so the sum over ranks that :func:`allreduce_grads` then takes is
    the single process's gradient."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        width = max(sizes)
        padded = rows.new_zeros((width, *rows.shape[1:]))
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)  # reduced in place: our own copy
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def shard(batch: tuple[torch.Tensor, ...], env: DistEnv) -> tuple[tuple[torch.Tensor, ...], float]:
    """This rank's contiguous share of a global batch and its weight (its share of the rows).

    A batch with fewer rows than ranks (an epoch's last, at worst) leaves no rank empty (a mean
    over no rows is NaN): every rank takes all of it at weight ``1 / K``, and the losses see it
    as one process would (the installed :class:`RankShares` is not split for it)."""
    if not env.active:
        return batch, 1.0
    n = len(batch[0])
    shares = losses.batch_shares()
    if isinstance(shares, RankShares):
        shares.split = n >= env.world_size
    if n < env.world_size:
        return batch, 1.0 / env.world_size
    parts = [torch.tensor_split(t, env.world_size) for t in batch]
    mine = tuple(p[env.rank] for p in parts)
    return mine, len(mine[0]) / n


def broadcast_parameters(model: torch.nn.Module, env: DistEnv) -> None:
    """Make every rank start from rank 0's parameters and dense buffers (sparse graphs are built
    from the data, the same on every rank)."""
    if not env.active:
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.layout != torch.strided:
            continue
        dist.broadcast(tensor.data, src=0)


def allreduce_grads(model: torch.nn.Module, env: DistEnv) -> None:
    """Sum every parameter's gradient over ranks (one flat all-reduce).

    A parameter without a gradient on every rank keeps none (as in a single process, where
    Adam then leaves it alone); one with a gradient on some rank gets the sum (zeros elsewhere)."""
    if not env.active:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    device = params[0].device
    sizes = [p.numel() for p in params]
    flat = torch.zeros(sum(sizes) + len(params), dtype=torch.float32, device=device)
    offset = 0
    for p, size in zip(params, sizes):
        if p.grad is not None:
            flat[offset:offset + size] = p.grad.reshape(-1)
        offset += size
    flat[offset:] = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(flat)
    has_grad = flat[sum(sizes):].cpu().tolist()  # one device-to-host copy, not one per parameter
    offset = 0
    for k, (p, size) in enumerate(zip(params, sizes)):
        if has_grad[k] > 0:
            p.grad = flat[offset:offset + size].view_as(p).to(p.dtype).clone()
        offset += size


def allreduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """``values`` summed over ranks (a copy; unchanged in a single process)."""
    values = values.clone()
    if env.active:
        dist.all_reduce(values)
    return values


def broadcast_object(value, env: DistEnv):
    """Rank 0's ``value`` on every rank."""
    if not env.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    """Wait for every rank."""
    if env.active:
        dist.barrier()
