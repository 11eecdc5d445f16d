"""Where a training batch's time goes beyond its floor, per model: the floor's kernels, every other
operator (element-wise passes, reductions, fills, copies) and the rest (Python, autograd, the
trainer's bookkeeping, sampling, views).

For each model (the settings of :mod:`benchmarks.floors`), after a warm-up epoch, every batch of
``--epochs`` epochs is run twice, back to back, as in the floors benchmark: once under a recorder
of every operator call except views and profiler marks, the calls then replayed bare grouped by
the floor's kinds (:func:`benchmarks.floors.kind`) and, for the others, by operator name; and once
by the trainer's own ``train_epoch``. All spans in the thread's CPU time (one thread). Per batch:

* **trainer**: the trainer's batch (sampling, forward, backward, guard, step);
* **kernels**: the floor's kernels; **step**: the fused-Adam step (both part of the floor);
* **other operators**: the recorded calls that are not floor kernels, bare (top names listed; the
  JSON's ``other_ops_by_call_ms`` gives the 20 largest by operator and argument shapes);
* **rest** = trainer - kernels - other operators - step: what no operator accounts for.
  A bare replay pays Python's dispatch per call too, so ``rest`` is a lower bound (it can be
  slightly negative for a model of many small operators).

The sampler's share of ``rest`` is measured separately (one extra epoch of draws).
Writes ``results/batch_anatomy.{json,md}``.

    python -m benchmarks.batch_anatomy [--datasets lfm2k] [--models bpr,vbpr,bm3] [--epochs 2]
"""

from __future__ import annotations

import os
import time

import torch

from benchmarks.common import per_model_main
from benchmarks.floors import FloorFirst, StepTimer, is_kernel, kind, training_setup
from prismrec.train.trainer import train_epoch

MARKS = {"_record_function_enter_new", "_record_function_exit"}


def computes(func) -> bool:
    """Whether an operator call does work worth replaying: not a view, not a profiler mark."""
    return not func.is_view and func.overloadpacket.__name__ not in MARKS


def shapes(args) -> str:
    """The shapes of an operator call's tensor arguments (lists of tensors in brackets), as
    ``2048x64 2048x1``: which pass over which rows an operator is."""
    def one(a) -> str:
        if isinstance(a, torch.Tensor):
            return "x".join(map(str, a.shape)) or "scalar"
        if isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
            return "[" + ",".join(one(x) for x in a if isinstance(x, torch.Tensor)) + "]"
        return ""
    return " ".join(filter(None, map(one, args)))


def group(call) -> str:
    """The floor's kind for a floor kernel, else ``op:<name>:<argument shapes>``."""
    return kind(call) if is_kernel(call[0]) else f"op:{call[0].overloadpacket.__name__}:{shapes(call[1])}"


def anatomy_epoch(model, sampler, optimizer, epoch: int) -> dict:
    """One epoch's CPU seconds: the trainer's, its steps', and the replayed operators' by group."""
    model.train()
    recorded = FloorFirst(model, sampler, optimizer, epoch, computes, group, time.thread_time)
    timed = StepTimer(optimizer)
    c0 = time.thread_time()
    train_epoch(model, recorded, timed, epoch, model.device)
    trainer = time.thread_time() - c0 - recorded.aside_cpu
    c0 = time.thread_time()
    for _ in sampler.epoch():
        pass
    return {"trainer": trainer, "step": timed.cpu, "groups": recorded.kernels,
            "sampler": time.thread_time() - c0, "batches": recorded.batches}


def measure(name: str, data, epochs: int) -> dict:
    """Per-batch CPU milliseconds of one model's median epoch (by the trainer's time)."""
    model, _, sampler, optimizer = training_setup(name, data)
    model.on_epoch_start(0)
    train_epoch(model, sampler, optimizer, 0, model.device)  # warm-up
    runs = [anatomy_epoch(model, sampler, optimizer, e) for e in range(1, epochs + 1)]
    run = sorted(runs, key=lambda r: r["trainer"])[len(runs) // 2]
    ms = 1000 / run["batches"]
    groups = {k: v * ms for k, v in run["groups"].items()}
    kernels = {k: v for k, v in groups.items() if not k.startswith("op:")}
    calls = dict(sorted(((k[3:], v) for k, v in groups.items() if k.startswith("op:")), key=lambda kv: -kv[1]))
    others: dict[str, float] = {}
    for key, v in calls.items():  # by operator name, over its shapes
        others[key.split(":")[0]] = others.get(key.split(":")[0], 0.0) + v
    others = dict(sorted(others.items(), key=lambda kv: -kv[1]))
    trainer, step = run["trainer"] * ms, run["step"] * ms
    return {"trainer_ms": trainer, "kernels_ms": sum(kernels.values()), "kernels_by_kind_ms": kernels,
            "step_ms": step, "other_ops_ms": sum(others.values()), "other_ops_by_name_ms": others,
            "other_ops_by_call_ms": dict(list(calls.items())[:20]),  # operator:shapes, the 20 largest
            "rest_ms": trainer - step - sum(kernels.values()) - sum(others.values()),
            "sampler_ms": run["sampler"] * ms, "batches": run["batches"], "epochs": epochs,
            "trainer_ms_epochs": [r["trainer"] * 1000 / r["batches"] for r in runs],
            "load1": round(os.getloadavg()[0], 2)}


def markdown(res: dict) -> str:
    lines = ["# Where a training batch's time goes, per model (thread CPU ms per batch)", "",
             f"{res['machine']}; {res['threads']} thread(s); {res.get('date', '')}.", "",
             "| dataset/model | trainer | floor kernels | step | other operators (largest) | rest (of which sampler) "
             "| kernels + step share | batches | 1-min load |", "|---|---|---|---|---|---|---|---|---|"]
    for key, r in res["rows"].items():
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(r["other_ops_by_name_ms"].items())[:5])
        share = (r["kernels_ms"] + r["step_ms"]) / r["trainer_ms"]
        lines.append(f"| {key} | {r['trainer_ms']:.2f} | {r['kernels_ms']:.2f} | {r['step_ms']:.2f} | "
                     f"{r['other_ops_ms']:.2f} ({top}) | {r['rest_ms']:.2f} ({r['sampler_ms']:.2f}) | "
                     f"{share:.0%} | {r['batches']} | {r['load1']} |")
    lines += ["", "Per training batch, median epoch of those measured after a warm-up, thread CPU time. trainer: "
              "the batch as `train_epoch` runs it; floor kernels and step: what `benchmarks.floors` counts as the "
              "floor; other operators: every other recorded operator call (views and profiler marks excluded) "
              "replayed bare; rest: trainer - kernels - step - other operators (Python, autograd, the trainer's "
              "bookkeeping, views, sampling; a lower bound, since a bare replay pays Python's dispatch per call "
              "too). `python -m benchmarks.batch_anatomy --datasets ... --models ... --epochs ...`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    per_model_main("batch_anatomy", measure, markdown, "bpr,vbpr,bm3",
                   lambda r: f"trainer {r['trainer_ms']:.2f} ms, kernels {r['kernels_ms']:.2f}, step {r['step_ms']:.2f}, "
                             f"other ops {r['other_ops_ms']:.2f}, rest {r['rest_ms']:.2f}")


if __name__ == "__main__":
    main()
