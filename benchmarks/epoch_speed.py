"""Seconds per epoch (training + one validation) of prismrec's models, with where the time goes.

For each case, a fresh model with default settings runs 1 warm-up + N measured epochs (sampling,
forward = propagation + loss, backward, optimiser, then a full validation); medians are
reported. With ``--repeats R`` every case is measured R times (fresh model each time, the cases
interleaved so that a noisy spell of a shared machine hits all of them alike) and the median of
the R runs is reported with the range of their epoch times, the threads used and the load
average. Comparisons with other frameworks live in ``benchmarks/peers.py`` (same invocation,
same split); this script makes no cross-framework claim. Writes ``results/epoch_speed.{json,md}``.

    python -m benchmarks.epoch_speed [--cases tiktok:lightgcn,baby:lightgcn] [--epochs 5] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import prismrec  # noqa: F401  (sets the OpenMP wait policy before torch loads)
import torch

from benchmarks.common import machine, write
from prismrec.data import BPRSampler, load_dataset
from prismrec.eval import Evaluator
from prismrec.experiment.config import resolve_config
from prismrec.models import get_model
from prismrec.train.allocator import keep_freed_memory
from prismrec.train.trainer import seed_everything, train_epoch

DEFAULT_CASES = ["baby:lightgcn", "tiktok:vbpr", "tiktok:lightgcn", "tiktok:freedom", "tiktok:mgcn",
                 "tiktok:gume", "tiktok:rlmmrec", "baby:bpr"]
PARTS = ("sample_s", "forward_s", "backward_s", "optim_s", "train_s", "eval_s")


def breakdown(model_name: str, dataset, epochs: int = 5, model=None, settings=None) -> dict:
    """Median seconds of each part of an epoch over ``epochs`` epochs after one warm-up.

    ``epoch_s`` lists every measured epoch's training + validation seconds (``train_s_runs`` and
    ``eval_s_runs`` the two parts).
    """
    cfg = resolve_config(model_name, dataset.name, settings or {})
    seed_everything(cfg.train.seed)
    if model is None:
        model = get_model(model_name)(dataset, cfg.params)
    sampler = BPRSampler(dataset.train, cfg.train.batch_size, cfg.train.negative_pool, cfg.train.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)
    evaluator = Evaluator(dataset, ks=cfg.train.topk, batch_size=cfg.train.eval_batch_size)
    rows = []
    for epoch in range(epochs + 1):
        model.train()
        model.on_epoch_start(epoch)
        row = train_epoch(model, sampler, optimizer, epoch, model.device)
        t0 = time.perf_counter()
        evaluator.evaluate(model, "valid")
        row["eval_s"] = time.perf_counter() - t0
        rows.append(row)
    rows = rows[1:]  # drop the warm-up epoch
    return ({k: statistics.median(r[k] for r in rows) for k in PARTS}
            | {"epochs": epochs, "epoch_s": [r["train_s"] + r["eval_s"] for r in rows],
               "train_s_runs": [r["train_s"] for r in rows], "eval_s_runs": [r["eval_s"] for r in rows]})


def main() -> None:
    keep_freed_memory()  # as `prismrec train` does
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = args.cases.split(",")
    datasets, runs = {}, {case: [] for case in cases}
    load = [os.getloadavg()]
    for repeat in range(args.repeats):
        for case in cases:
            name, model = case.split(":")
            datasets.setdefault(name, load_dataset(name))
            runs[case].append(breakdown(model, datasets[name], args.epochs))
            print(repeat, case, {k: round(v, 3) for k, v in runs[case][-1].items() if k in PARTS}, flush=True)
        load.append(os.getloadavg())
    results = {}
    for case, rs in runs.items():
        epochs = [r["train_s"] + r["eval_s"] for r in rs]
        results[case] = {k: statistics.median(r[k] for r in rs) for k in PARTS}
        results[case].update(epochs=args.epochs, repeats=len(rs), epoch_s_runs=epochs)
    md = ["# Seconds per epoch", "", f"{machine()}; load average (1, 5, 15 min) before and after each "
          f"round: {[tuple(round(x, 2) for x in v) for v in load]}", "",
          "| dataset | model | sample | forward | backward | optim | train | valid | epoch | range |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for case, r in results.items():
        name, model = case.split(":")
        cells = [f"{r[k]:.3f}" for k in PARTS]
        spread = f"{min(r['epoch_s_runs']):.2f}-{max(r['epoch_s_runs']):.2f}"
        md.append(f"| {name} | {model} | " + " | ".join(cells) + f" | **{r['train_s'] + r['eval_s']:.3f}** | {spread} |")
    md += ["", f"Medians over {args.epochs} epochs after one warm-up epoch, then the median of "
           f"{args.repeats} such runs per case (fresh models with default settings; 'range' = the runs' "
           "epoch times). 'forward' is the propagation plus the loss (LightGCN: its last layer for the "
           "batch's rows only); 'valid' is one full-ranking validation (all metrics at K = 5, 10, 20, 50). "
           "Against other frameworks: `python -m benchmarks.peers` (same invocation, same split)."]
    write("epoch_speed", {"machine": machine(), "load_average": load, "results": results}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
