"""Seconds per epoch (training + one validation) against MMRec's, same machine kind and data.

For each model, a fresh model with default settings runs 1 warm-up + N measured epochs
(sampling, forward = propagation + loss, backward, optimiser, then a full validation); medians
are reported. With ``--repeats R`` every case is measured R times (fresh model each time, the
cases interleaved so that a noisy spell of this shared machine hits all of them alike) and the
median of the R runs is reported with the range of their epoch times. MMRec's figures were
measured with its own code on this machine kind (2 threads, default settings; see the issues) —
MMRec also evaluates the test split every epoch, prismrec never does during training. Writes
``results/epoch_speed.{json,md}``. Run on a quiet machine.

    python -m benchmarks.epoch_speed [--cases tiktok:lightgcn,baby:lightgcn] [--epochs 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import machine, write
from prismrec.data import BPRSampler, load_dataset
from prismrec.eval import Evaluator
from prismrec.experiment.config import resolve_config
from prismrec.models import get_model
from prismrec.train.allocator import keep_freed_memory
from prismrec.train.trainer import seed_everything, train_epoch

# MMRec per-epoch seconds on this machine kind: (training, validation); test costs validation again.
MMREC = {
    ("baby", "lightgcn"): (5.4, 3.9),
    ("tiktok", "vbpr"): (0.7, 0.55),
    ("tiktok", "lightgcn"): (1.7, 0.55),
    ("tiktok", "freedom"): (1.3, 0.55),
    ("tiktok", "mgcn"): (4.6, 0.55),
}
DEFAULT_CASES = [f"{d}:{m}" for d, m in MMREC] + ["tiktok:gume", "tiktok:rlmmrec", "baby:bpr"]
PARTS = ("sample_s", "forward_s", "backward_s", "optim_s", "train_s", "eval_s")


def breakdown(model_name: str, dataset, epochs: int = 5, model=None, settings=None) -> dict:
    """Median seconds of each part of an epoch over ``epochs`` epochs after one warm-up."""
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
    return {k: statistics.median(r[k] for r in rows) for k in PARTS} | {"epochs": epochs}


def main() -> None:
    keep_freed_memory()  # as `prismrec train` does
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = args.cases.split(",")
    datasets, runs = {}, {case: [] for case in cases}
    for repeat in range(args.repeats):
        for case in cases:
            name, model = case.split(":")
            datasets.setdefault(name, load_dataset(name))
            runs[case].append(breakdown(model, datasets[name], args.epochs))
            print(repeat, case, {k: round(v, 3) for k, v in runs[case][-1].items()}, flush=True)
    results = {}
    for case, rs in runs.items():
        epochs = [r["train_s"] + r["eval_s"] for r in rs]
        results[case] = {k: statistics.median(r[k] for r in rs) for k in PARTS}
        results[case].update(epochs=args.epochs, repeats=len(rs), epoch_s_runs=epochs)
    md = ["# Seconds per epoch: prismrec vs MMRec", "", f"{machine()}", "",
          "| dataset | model | sample | forward | backward | optim | train | valid | prismrec epoch | "
          "range | MMRec train + valid | ratio | MMRec epoch incl. test | ratio |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, r in results.items():
        name, model = case.split(":")
        ours = r["train_s"] + r["eval_s"]
        cells = [f"{r[k]:.3f}" for k in PARTS]
        spread = f"{min(r['epoch_s_runs']):.2f}-{max(r['epoch_s_runs']):.2f}"
        ref = MMREC.get((name, model))
        if ref:
            tv, full = ref[0] + ref[1], ref[0] + 2 * ref[1]
            cells += [f"**{ours:.3f}**", spread, f"{tv:.2f}", f"**{tv / ours:.1f}x**", f"{full:.2f}",
                      f"{full / ours:.1f}x"]
            r.update(mmrec_train_valid_s=tv, mmrec_epoch_s=full, speedup_train_valid=tv / ours,
                     speedup_epoch=full / ours)
        else:
            cells += [f"**{ours:.3f}**", spread, "—", "—", "—", "—"]
        md.append(f"| {name} | {model} | " + " | ".join(cells) + " |")
    md += ["", f"Medians over {args.epochs} epochs after one warm-up epoch, then the median of "
           f"{args.repeats} such runs per case (fresh models with default settings; 'range' = the runs' "
           "epoch times). 'forward' is the propagation plus the loss (LightGCN: its last layer for the "
           "batch's rows only); 'valid' is one "
           "full-ranking validation (all metrics at K = 5, 10, 20, 50)."]
    write("epoch_speed", {"machine": machine(), "results": results}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
