"""Epoch time idle and next to a competing CPU-bound process: thread counts and OpenMP wait policies.

The same LightGCN epoch (training + one validation, default settings) is timed in fresh
processes, one per cell, so that each gets its own OpenMP environment:

* threads: ``1``, ``2`` and ``auto`` (prismrec's default, :mod:`prismrec.threads`, decided when
  the run starts, i.e. after the competitor is running);
* wait policy: ``PASSIVE`` (prismrec's default), ``ACTIVE`` (spin) and ``gomp`` (torch imported
  before prismrec with no policy set: OpenMP's own default, what a plain torch script gets);
* condition: ``idle``, ``busy`` (one pure-Python busy loop at the timed process's priority) and,
  with ``--niced``, ``niced`` (the same loop at nice 19, like a background study).

Rounds interleave every cell of every condition, so that a noisy spell of a shared machine hits
all of them alike; each cell reports the median of its rounds' epoch medians and their range,
and the 1-minute load average and the busy cores seen before it started. Writes
``results/contention.{json,md}``.

    python -m benchmarks.contention [--dataset lfm2k] [--epochs 3] [--rounds 3] [--niced]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CELLS = [("1", "PASSIVE"), ("2", "gomp"), ("2", "ACTIVE"), ("2", "PASSIVE"), ("auto", "PASSIVE")]
"""(threads, wait policy) pairs timed in every condition; the last is prismrec's default."""
BUSY_LOOP = "while True: pass"


def worker(dataset: str, model: str, threads: str, wait: str, epochs: int) -> dict:
    """Time ``epochs`` epochs after a warm-up in this process (run by :func:`run_cell`)."""
    if wait == "gomp":
        import torch  # noqa: F401  (loaded before prismrec: OpenMP reads no policy)
    from prismrec.threads import apply_threads, busy_cpus

    busy = busy_cpus()
    chosen = apply_threads("auto" if threads == "auto" else int(threads))
    from benchmarks.epoch_speed import breakdown
    from prismrec.data import load_dataset

    br = breakdown(model, load_dataset(dataset), epochs)
    return {"threads_used": chosen, "busy_seen": busy, "epoch_s": br["epoch_s"],
            "train_s": br["train_s"], "eval_s": br["eval_s"]}


def run_cell(args, threads: str, wait: str) -> dict:
    """One cell in a fresh process with its own OpenMP environment; its JSON result."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if wait != "gomp":
        env["OMP_WAIT_POLICY"] = wait
    cmd = [sys.executable, "-m", "benchmarks.contention", "--worker", threads, wait,
           "--dataset", args.dataset, "--model", args.model, "--epochs", str(args.epochs)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_competitor(nice: int) -> subprocess.Popen:
    """A pure-Python busy loop (one core), ``nice`` above this process; given a second to get going."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP],
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)
    time.sleep(1.0)
    return proc


def summarise(runs: list[dict]) -> dict:
    """Median of the rounds' epoch medians, their range, the threads used and the load seen."""
    meds = [statistics.median(r["epoch_s"]) for r in runs]
    return {"epoch_s": statistics.median(meds), "min": min(meds), "max": max(meds), "rounds": meds,
            "threads_used": sorted({r["threads_used"] for r in runs}),
            "load1": [r["load1"] for r in runs], "busy_seen": [round(r["busy_seen"], 2) for r in runs]}


def markdown(res: dict, args) -> str:
    conds = list(res["cells"])
    idle = res["cells"]["idle"]
    head = "| threads | wait | " + " | ".join(f"{c} s (range)" for c in conds) + " | " + \
        " | ".join(f"{c} / idle" for c in conds[1:]) + " | threads used |"
    lines = [f"# Epoch time next to a competing process ({args.model}, {args.dataset})", "",
             f"{res['machine']}; {args.rounds} interleaved rounds, each the median of {args.epochs} "
             f"epochs (training + one validation) after a warm-up; run {res['date']}.", "",
             head, "|" + "---|" * (2 + 2 * len(conds))]
    for key in idle:
        threads, wait = key.split("/")
        cells = [f"{res['cells'][c][key]['epoch_s']:.2f} ({res['cells'][c][key]['min']:.2f}-"
                 f"{res['cells'][c][key]['max']:.2f})" for c in conds]
        ratios = [f"{res['cells'][c][key]['epoch_s'] / idle[key]['epoch_s']:.1f}x" for c in conds[1:]]
        used = "; ".join(f"{c}: {res['cells'][c][key]['threads_used']}" for c in conds)
        lines.append(f"| {threads} | {wait} | " + " | ".join(cells + ratios) + f" | {used} |")
    default = idle["auto/PASSIVE"]["epoch_s"]
    best_idle = min(v["epoch_s"] for v in idle.values())
    lines += ["", f"prismrec's default (auto threads, PASSIVE) idle: {default:.2f} s, "
              f"{default / best_idle:.2f}x the fastest idle cell; "
              + "; ".join(f"{c}: {res['cells'][c]['auto/PASSIVE']['epoch_s'] / default:.1f}x its idle time, "
                          f"{res['cells'][c]['auto/PASSIVE']['epoch_s'] / res['cells'][c]['2/gomp']['epoch_s']:.2f}x "
                          "torch's default (2 threads, OpenMP's own wait policy)" for c in conds[1:]) + ".",
              "", "busy: one pure-Python busy loop at the timed process's priority; niced: the same at "
              "nice 19. 'gomp' = torch imported before prismrec with no OMP_WAIT_POLICY (what a plain "
              "torch script gets). 1-minute load average and busy cores seen before each cell: in the JSON."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="lfm2k")
    parser.add_argument("--model", default="lightgcn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--niced", action="store_true", help="also time next to a nice-19 competitor")
    parser.add_argument("--worker", nargs=2, metavar=("THREADS", "WAIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.dataset, args.model, *args.worker, args.epochs)))
        return
    conditions = {"idle": None, "busy": 0} | ({"niced": 19} if args.niced else {})
    runs = {c: {f"{t}/{w}": [] for t, w in CELLS} for c in conditions}
    for r in range(args.rounds):
        for cond, nice in conditions.items():
            competitor = start_competitor(nice) if nice is not None else None
            try:
                for t, w in CELLS[r % len(CELLS):] + CELLS[: r % len(CELLS)]:  # rotate the order
                    load1 = os.getloadavg()[0]
                    row = run_cell(args, t, w) | {"load1": load1}
                    runs[cond][f"{t}/{w}"].append(row)
                    print(r, cond, t, w, round(statistics.median(row["epoch_s"]), 3), row["threads_used"],
                          f"load {load1:.2f}", flush=True)
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
    from benchmarks.common import machine, write

    res = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "dataset": args.dataset, "model": args.model, "epochs": args.epochs, "rounds": args.rounds,
           "cells": {c: {k: summarise(v) for k, v in cells.items()} for c, cells in runs.items()}}
    write("contention", res, markdown(res, args))


if __name__ == "__main__":
    main()
