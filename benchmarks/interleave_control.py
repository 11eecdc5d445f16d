"""What the floors benchmark's per-batch interleaving costs the epoch it times: cache refills.

:mod:`benchmarks.floors` runs every training batch right after recording and replaying that batch's
kernels (its interleaved columns), and also times the trainer's epochs on their own (its "run
alone" column). For a model whose batch takes a few milliseconds the two differ by up to ~10 %
(lfm2k LATTICE: 1.39x vs 1.25x its floor). This benchmark puts a control next to them: the same
trainer's epoch with a pass over an unrelated :data:`SWEEP_MB` MB buffer between its batches,
which does nothing but evict the model's data from the caches (the replay streams the recorded
inputs, whose size the table gives, and fresh outputs through them).

Per model, after a warm-up epoch, ``--epochs`` rounds of three training epochs, each followed by a
validation as in a run (not timed), the three in turn: **alone** (``train_epoch`` as a run calls
it), **sweep** (the buffer pass between batches) and **interleaved** (the floors benchmark's
:class:`~benchmarks.floors.FloorFirst` between batches); thread CPU time of the trainer's work
alone (what runs between its batches is subtracted), medians over the rounds. If **sweep** costs
about what **interleaved** does, the interleaved column's excess over **alone** is the caches, not
the trainer. Writes ``results/interleave_control.{json,md}``.

    python -m benchmarks.interleave_control [--datasets lfm2k] [--models lattice,lightgcn,bpr] [--epochs 5]
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from benchmarks.common import per_model_main, table_head
from benchmarks.floors import FloorFirst, KernelRecorder, StepTimer, training_setup
from prismrec.eval.evaluator import Evaluator
from prismrec.train.trainer import train_epoch

SWEEP_MB = 64
"""The control's buffer: twice this machine's 32 MiB last-level cache."""

WAYS = ("alone", "sweep", "interleaved")


class Between:
    """A sampler running ``work()`` before handing over each batch, its thread CPU time kept
    apart (``aside_cpu``)."""

    def __init__(self, sampler, work) -> None:
        self.sampler, self.work, self.aside_cpu = sampler, work, 0.0

    def epoch(self, device=None):
        for batch in self.sampler.epoch():
            c0 = time.thread_time()
            self.work()
            self.aside_cpu += time.thread_time() - c0
            yield batch


def replay_inputs_mb(model, batch) -> float:
    """MiB of the distinct tensors that one training batch's floor kernels read (what a replay of
    them streams through the caches besides its outputs), recorded as the floors benchmark does."""
    with KernelRecorder() as rec:
        sum(model.batch_loss(batch).values()).backward()
    model.zero_grad(set_to_none=True)
    sizes = {}
    for _, args, kwargs in rec.calls:
        for arg in (*args, *kwargs.values()):
            for t in arg if isinstance(arg, (list, tuple)) else (arg,):
                if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                    sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(sizes.values()) / 2**20


def measure(name: str, data, rounds: int) -> dict:
    model, cfg, sampler, optimizer = training_setup(name, data)
    tc = cfg.train
    evaluator = Evaluator(data, ks=tc.topk, batch_size=tc.eval_batch_size)
    buffer = torch.ones(SWEEP_MB << 18)  # float32: 4 bytes each

    def epoch(way: str, index: int) -> float:
        model.train()
        model.on_epoch_start(index)
        if way == "interleaved":
            feed, opt = FloorFirst(model, sampler, optimizer, index), StepTimer(optimizer)
        else:
            feed, opt = Between(sampler, (lambda: buffer.mul_(1.0)) if way == "sweep" else (lambda: None)), optimizer
        c0 = time.thread_time()
        train_epoch(model, feed, opt, index, model.device)
        seconds = time.thread_time() - c0 - feed.aside_cpu
        evaluator.evaluate(model, "valid")  # as a run's next epoch starts after one
        return seconds

    epoch("alone", 0)  # warm-up
    model.train()
    batches = sampler.epoch()
    next(batches)
    replay_mb = replay_inputs_mb(model, next(batches))  # a batch after the first (LATTICE's first rebuilds its graph)
    cpu = {way: [] for way in WAYS}
    for r in range(rounds):
        order = WAYS if r % 2 == 0 else WAYS[::-1]
        for way in order:
            cpu[way].append(epoch(way, 1 + r * len(WAYS) + order.index(way)))
    med = {way: statistics.median(v) for way, v in cpu.items()}
    return {"train_cpu_s": med, "rounds_cpu_s": cpu, "sweep_mb": SWEEP_MB, "replay_inputs_mb": replay_mb, "rounds": rounds,
            "sweep_vs_alone": med["sweep"] / med["alone"], "interleaved_vs_alone": med["interleaved"] / med["alone"],
            "load1": os.getloadavg()[0]}


def markdown(res: dict) -> str:
    lines = table_head("Interleaving's cost to the epoch it times, against a cache-eviction control",
                       f"{res['machine']}; {res['threads']} thread(s); {res['date']}.",
                       ["dataset/model", "alone ms", "sweep ms (x alone)", "interleaved ms (x alone)",
                        "replay inputs MiB", "rounds", "1-min load"])
    for key, r in res["rows"].items():
        ms = {way: 1000 * s for way, s in r["train_cpu_s"].items()}
        lines.append(f"| {key} | {ms['alone']:.1f} | {ms['sweep']:.1f} ({r['sweep_vs_alone']:.2f}) | "
                     f"{ms['interleaved']:.1f} ({r['interleaved_vs_alone']:.2f}) | {r['replay_inputs_mb']:.1f} | "
                     f"{r['rounds']} | {r['load1']:.2f} |")
    lines += ["", "Training epoch, thread CPU time of the trainer's own work, medians over rounds that alternate the "
              "three ways (each epoch followed by an untimed validation): alone, as a run; sweep, with a pass over "
              f"an unrelated {SWEEP_MB} MB buffer between batches (cache eviction and nothing else); interleaved, "
              "with the floors benchmark's record + bare replay of each batch's kernels between batches. Replay inputs: "
              "the distinct tensors one batch's recorded kernels read (a batch after an epoch's first). "
              "`python -m benchmarks.interleave_control --datasets <d> --models <m,...> --epochs <rounds>`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    per_model_main("interleave_control", measure, markdown, "lattice,lightgcn,bpr",
                   lambda r: (f"alone {1000 * r['train_cpu_s']['alone']:.1f} ms, sweep x{r['sweep_vs_alone']:.2f}, "
                              f"interleaved x{r['interleaved_vs_alone']:.2f}"))
