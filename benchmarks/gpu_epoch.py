"""Seconds per LightGCN / MGCN epoch on a GPU against the CPU, measured in the same invocation.

For each (dataset, model) a fresh model with default settings runs one warm-up and N measured
epochs (training through the trainer's GPU batch path, then a full validation) on the CPU and on
the device, the two alternated in every round so that a noisy spell hits both; medians over the
rounds, each round's epoch times, the load average before and after every round and the device's
name are written to ``results/gpu_epoch.{json,md}``. On a machine without the device it says so
in one line and exits 2 (nothing written): the device=cuda checks that need no GPU are
``tests/test_device_clean.py`` (its ``real_gpu`` case is the model smoke test on a GPU).

    python -m benchmarks.gpu_epoch [--device cuda] [--cases tiktok:lightgcn,tiktok:mgcn]
        [--epochs 3] [--rounds 3] [--threads 1] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import prismrec  # noqa: F401  (sets the OpenMP wait policy before torch loads)
import torch

from benchmarks.common import machine, write
from benchmarks.epoch_speed import PARTS, breakdown
from prismrec.data import load_dataset
from prismrec.errors import ConfigError
from prismrec.experiment.config import resolve_config
from prismrec.models import get_model
from prismrec.train.allocator import keep_freed_memory
from prismrec.train.config import check_device_available
from prismrec.train.trainer import seed_everything

DEFAULT_CASES = ["tiktok:lightgcn", "tiktok:mgcn"]


def measure(model_name: str, dataset, device: str, epochs: int) -> dict:
    """:func:`benchmarks.epoch_speed.breakdown` of a fresh default model on ``device``."""
    cfg = resolve_config(model_name, dataset.name, {})
    seed_everything(cfg.train.seed)
    model = get_model(model_name)(dataset, cfg.params).to(device)
    return breakdown(model_name, dataset, epochs, model=model)


def device_name(device: str) -> str:
    """What the device is (the GPU's name, or the CPU's description)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return machine().get("cpu", "cpu")


def main() -> None:
    keep_freed_memory()  # as `prismrec train` does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the CPU runs (and of the host side)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    try:
        check_device_available(args.device, fix="run this benchmark on a machine with one")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    torch.set_num_threads(args.threads)
    devices = ["cpu"] if torch.device(args.device).type == "cpu" else ["cpu", args.device]
    cases = args.cases.split(",")
    datasets, runs = {}, {(case, d): [] for case in cases for d in devices}
    load = [os.getloadavg()]
    for round_ in range(args.rounds):
        for case in cases:
            name, model = case.split(":")
            if name not in datasets:
                datasets[name] = load_dataset(name, args.data_dir) if args.data_dir else load_dataset(name)
            for device in devices if round_ % 2 == 0 else devices[::-1]:
                runs[(case, device)].append(measure(model, datasets[name], device, args.epochs))
                r = runs[(case, device)][-1]
                print(round_, case, device, {k: round(r[k], 3) for k in PARTS}, flush=True)
        load.append(os.getloadavg())
    results = {}
    for (case, device), rs in runs.items():
        results[f"{case}@{device}"] = {k: statistics.median(r[k] for r in rs) for k in PARTS} | {
            "case": case, "device": device, "rounds": len(rs), "epochs": args.epochs,
            "epoch_s_runs": [r["train_s"] + r["eval_s"] for r in rs]}
    md = ["# Seconds per epoch on a GPU and on the CPU", "",
          f"{machine()}; device {args.device}: {device_name(args.device)}; CPU threads {args.threads}; "
          f"load average (1, 5, 15 min) before and after each round: "
          f"{[tuple(round(x, 2) for x in v) for v in load]}", "",
          "| dataset | model | device | train | valid | epoch | range | speed-up |",
          "|---|---|---|---|---|---|---|---|"]
    for case in cases:
        name, model = case.split(":")
        cpu = results[f"{case}@cpu"]
        for device in devices:
            r = results[f"{case}@{device}"]
            epoch = r["train_s"] + r["eval_s"]
            speedup = (cpu["train_s"] + cpu["eval_s"]) / epoch if epoch else float("nan")
            md.append(f"| {name} | {model} | {device} | {r['train_s']:.3f} | {r['eval_s']:.3f} | **{epoch:.3f}** | "
                      f"{min(r['epoch_s_runs']):.2f}-{max(r['epoch_s_runs']):.2f} | {speedup:.1f}x |")
    md += ["", f"Medians over {args.epochs} epochs after one warm-up epoch, then the median of {args.rounds} "
           "rounds (CPU and device alternated within each round; fresh models with default settings). "
           "'train' is one epoch through the trainer (on the GPU: pinned non-blocking batches, the full "
           "forward per batch, loss terms read back once per 32 batches); 'valid' is one full-ranking "
           "validation. The phase split (sample/forward/backward/optim) is in the JSON; on a GPU it is "
           "host time (kernels run asynchronously)."]
    write("gpu_epoch", {"machine": machine(), "device": args.device, "device_name": device_name(args.device),
                        "threads": args.threads, "load_average": load, "results": results}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
