"""What the row-restricted training paths save: a batch through ``batch_loss`` vs the full path.

A model whose loss reads only a batch's rows computes only those rows in ``batch_loss``
(LightGCN's last layer; MGCN, GUME, EGRA: the behaviour view's last layer, the user rows of the
modality views and the per-node fuser; SMORE: the behaviour view's last layer, the views' user
rows and the preference module; BM3: the predictor; VBPR: the content projection). The
full path, ``loss(batch, forward())``, is what every batch cost before; both give the same terms
and gradients (``tests/test_row_paths.py``). For each model the same batches go through both
paths, alternated batch by batch (forward, backward, no optimiser step, so every batch sees the
same parameters), and the median seconds of each are reported. Writes
``results/row_paths.{json,md}`` (``row_paths_<dataset>`` for other datasets), one row per model,
kept across runs (``--models`` remeasures some).

    python -m benchmarks.row_paths [--dataset tiktok] [--models lightgcn,mgcn,...] [--batches 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import prismrec  # noqa: F401  (sets the OpenMP wait policy before torch loads)
import torch

from benchmarks.common import RESULTS, machine, write
from benchmarks.floors import build, settings
from prismrec.data import BPRSampler, load_dataset
from prismrec.train.allocator import keep_freed_memory

MODELS = ["lightgcn", "mgcn", "gume", "egra", "smore", "bm3", "vbpr"]


def time_paths(name: str, data, batches: int) -> dict:
    """Median seconds per batch (forward + backward) of the row path and of the full path."""
    model, cfg = build(name, data, settings(name, data.name))
    model.train()
    model.on_epoch_start(0)
    tc = cfg.train
    sampler = BPRSampler(data.train, tc.batch_size, tc.negative_pool, tc.seed)
    paths = {"row": lambda b: model.batch_loss(b), "full": lambda b: model.loss(b, model())}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for n, batch in enumerate(sampler.epoch()):
        if n > batches:
            break
        order = list(paths) if n % 2 == 0 else list(paths)[::-1]
        for key in order:
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            sum(paths[key](batch).values()).backward()
            if n > 0:  # the first batch warms both up
                times[key].append(time.perf_counter() - t0)
    row, full = statistics.median(times["row"]), statistics.median(times["full"])
    return {"row_s": row, "full_s": full, "saving": 1 - row / full, "batches": len(times["row"]),
            "row_range": [min(times["row"]), max(times["row"])],
            "full_range": [min(times["full"]), max(times["full"])], "load1": os.getloadavg()[0]}


def markdown(res: dict) -> str:
    lines = [f"# Row-restricted training paths on {res['dataset']}", "",
             f"{res['machine']}; {res['threads']} thread(s); updated {res['date']}.", "",
             "| model | full path ms / batch (range) | batch_loss ms / batch (range) | saved | batches | 1-min load |",
             "|---|---|---|---|---|---|"]
    for name, r in res["models"].items():
        lines.append(f"| {name} | {1000 * r['full_s']:.0f} ({1000 * r['full_range'][0]:.0f}-"
                     f"{1000 * r['full_range'][1]:.0f}) | {1000 * r['row_s']:.0f} ({1000 * r['row_range'][0]:.0f}-"
                     f"{1000 * r['row_range'][1]:.0f}) | {100 * r['saving']:.0f} % | {r['batches']} | {r['load1']:.2f} |")
    lines += ["", "Forward + backward of the same batches (default settings), the two paths alternated batch "
              "by batch, medians; no optimiser step. Full path = `loss(batch, forward())`, what every batch "
              "cost before the row paths; both give the same terms and gradients (tests/test_row_paths.py)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    keep_freed_memory()
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    name_out = "row_paths" if args.dataset == "tiktok" else f"row_paths_{args.dataset}"
    path = RESULTS / f"{name_out}.json"
    res = json.loads(path.read_text()) if path.exists() else {"models": {}}
    if res.get("threads") not in (None, args.threads):
        res["models"] = {}  # other thread count: start over
    res.update(machine=machine(), dataset=args.dataset, threads=args.threads)
    for name in args.models.split(","):
        res["models"][name] = time_paths(name, data, args.batches)
        res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        r = res["models"][name]
        print(f"{name}: full {1000 * r['full_s']:.0f} ms, row {1000 * r['row_s']:.0f} ms, "
              f"saved {100 * r['saving']:.0f} %", flush=True)
        write(name_out, res, markdown(res))


if __name__ == "__main__":
    main()
