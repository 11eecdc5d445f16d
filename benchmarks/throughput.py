"""Study throughput: cells per hour of one ``prismrec compare``, run in different ways.

The same compare (default: LightGCN, FREEDOM and MGCN on tiktok, 3 seeds, epochs capped) is run
in each of these ways (``--ways``, default all), each as a fresh ``prismrec compare`` into its own
empty output folder:

* ``sequential``: one cell at a time with every core (``--workers 1 --set threads=CORES``);
* ``sequential-auto``: one cell at a time with the threads ``threads=auto`` gives it (one on a
  graph below 8,000 users + items, every core above);
* ``workers``: CORES cells at a time, one thread each (``--workers CORES --set threads=1``);
* ``auto``: compare's default (``--workers auto``: one 1-thread cell per core, as many side by
  side as the memory allows).

With ``--tune SPACE`` the study is a ``prismrec tune`` of the one model in ``--models`` over
``SPACE`` (``--trials`` trials, then ``--seeds`` final seeds; a trained run counts as a cell) in the
ways ``tune`` (one worker, ``--workers 1``) and ``tune-workers`` (``--workers CORES``). With
``--train`` it is a ``prismrec train`` of the one model with ``--seeds`` seeds (a seed's run is a
cell), in the ways ``train`` (one seed after another in the process, ``--workers 1``) and
``train-auto`` (the default: one 1-thread seed per core side by side).

Rounds alternate the order of the ways (reversed in odd rounds), so that a load swing on a
shared machine hits them alike; the table gives the median wall time and cells per hour of each,
their range, and the 1-minute load average sampled every few seconds while each ran.
Writes ``results/throughput.{json,md}`` (a compare on tiktok) or
``results/throughput_<dataset>[_tune|_train].{json,md}``.

    python -m benchmarks.throughput [--models lightgcn,freedom,mgcn] [--dataset tiktok]
        [--seeds 3] [--epochs 3] [--rounds 1] [--cores 2] [--ways sequential,workers]
        [--tune "lr=1e-4..1e-2:log" --trials 6 | --train] [--set MODEL.key=value] [--note TEXT] [--name FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import machine, write


def modes(cores: int) -> dict[str, list[str]]:
    """The compare options of each way of running the study on ``cores`` cores."""
    return {
        "sequential": ["--workers", "1", "--set", f"threads={cores}"],
        "sequential-auto": ["--workers", "1"],
        "workers": ["--workers", str(cores), "--set", "threads=1"],
        "auto": [],
    }


def tune_modes(cores: int) -> dict[str, list[str]]:
    """The tune options of each way of running a search on ``cores`` cores."""
    return {"tune": ["--workers", "1"], "tune-workers": ["--workers", str(cores)]}


def train_modes(cores: int) -> dict[str, list[str]]:
    """The train options of each way of training several seeds (``cores`` unused: the signature of the others)."""
    return {"train": ["--workers", "1"], "train-auto": []}


def study_modes(args) -> dict[str, list[str]]:
    """The ways of the study ``args`` asks for: a compare's, a tune's (``--tune``) or a train's (``--train``)."""
    return (tune_modes if args.tune else train_modes if args.train else modes)(args.cores)


class LoadSampler:
    """Samples the 1-minute load average every ``every`` seconds in a background thread."""

    def __init__(self, every: float = 5.0) -> None:
        self.every, self.values = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.values.append(os.getloadavg()[0])
            self._stop.wait(self.every)

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_study(args, mode_options: list[str], out: Path) -> dict:
    """One ``prismrec compare`` (or with ``args.tune`` one ``prismrec tune``) into ``out``: its
    wall seconds, cells (trained runs) and load samples."""
    settings = [f"epochs={args.epochs}", *args.set]
    if args.tune:
        cmd = [sys.executable, "-m", "prismrec", "tune", "--model", args.models, "--dataset", args.dataset,
               "--space", args.tune, "--trials", str(args.trials), "--n-seeds", str(args.seeds)]
    elif args.train:
        cmd = [sys.executable, "-m", "prismrec", "train", "--model", args.models, "--dataset", args.dataset,
               "--n-seeds", str(args.seeds), "--quiet"]
    else:
        cmd = [sys.executable, "-m", "prismrec", "compare", "--models", args.models, "--datasets", args.dataset,
               "--n-seeds", str(args.seeds)]
    cmd += ["--out", str(out), *[x for kv in settings for x in ("--set", kv)], *mode_options]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with LoadSampler() as load:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[3]} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    if args.tune:  # every trial and every final seed, complete
        summary = json.loads((out / "tuning.json").read_text())
        failed = {f"trial {t['number']}": t["state"] for t in summary["trials"] if t["state"] != "complete"}
        cells = len(summary["trials"]) + args.seeds
    elif args.train:
        metrics = json.loads((out / "metrics.json").read_text())
        failed = {} if metrics.get("status") == "ok" and len(metrics["per_seed"]) == args.seeds else {"run": metrics}
        cells = args.seeds
    else:
        results = json.loads((out / "results.json").read_text())
        failed = {f"{model} seed {seed}": why for cells in results["cells"].values() for model, cell in cells.items()
                  for seed, why in cell.get("failed", {}).items()}
        cells = len(args.models.split(",")) * args.seeds
    if failed:  # a failed cell is fast: counting it would inflate the throughput
        raise RuntimeError(f"runs failed in {' '.join(cmd)}: {failed}")
    return {"wall_s": wall, "cells": cells, "cells_per_hour": 3600 * cells / wall,
            "load1": [round(x, 2) for x in load.values]}


def summarise(runs: list[dict]) -> dict:
    walls = [r["wall_s"] for r in runs]
    cph = [r["cells_per_hour"] for r in runs]
    loads = [x for r in runs for x in r["load1"]]
    return {"wall_s": statistics.median(walls), "wall_range": [min(walls), max(walls)],
            "cells_per_hour": statistics.median(cph), "cells_per_hour_range": [min(cph), max(cph)],
            "load1_range": [min(loads, default=0), max(loads, default=0)],
            "load1_mean": statistics.fmean(loads) if loads else 0.0, "runs": runs}


def markdown(res: dict) -> str:
    a = res["args"]
    what = (f"a search of {a['models']} over {a['tune']} on {a['dataset']}, {a['trials']} trials + {a['seeds']} "
            "final seeds" if a.get("tune") else f"{a['models']} on {a['dataset']}, {a['seeds']} seeds")
    command = "tune" if a.get("tune") else "train" if a.get("train") else "compare"
    lines = [f"# Study throughput: {what} (epochs <= {a['epochs']})", "",
             f"{res['machine']}; {a['cores']} cores; {a['rounds']} round(s), the ways' order alternated; "
             f"run {res['date']}.", ""]
    if a.get("note"):
        lines += [a["note"], ""]
    first = next(iter(res["modes"]))
    lines += [f"| way | options | wall s (range) | cells / hour (range) | x {first} | "
              "1-min load while running (mean) |", "|---|---|---|---|---|---|"]
    for name, s in res["modes"].items():
        options = " ".join(study_modes(argparse.Namespace(**{"train": False, **a}))[name])
        lines.append(f"| {name} | {f'`{options}`' if options else 'none (the default)'} | {s['wall_s']:.0f} "
                     f"({s['wall_range'][0]:.0f}-{s['wall_range'][1]:.0f}) | {s['cells_per_hour']:.1f} "
                     f"({s['cells_per_hour_range'][0]:.1f}-{s['cells_per_hour_range'][1]:.1f}) | "
                     f"{s['cells_per_hour'] / res['modes'][first]['cells_per_hour']:.2f} | "
                     f"{s['load1_range'][0]:.1f}-{s['load1_range'][1]:.1f} ({s['load1_mean']:.1f}) |")
    lines += ["", f"Each run is a whole `prismrec {command}` (process start, data "
              "loading, graph building, training, validation, one test evaluation per cell, the report) into an "
              "empty folder; a cell is one trained run (a trial or a final seed of a search)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="lightgcn,freedom,mgcn")
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cores", type=int, default=2, help="threads of the sequential run = workers of the other")
    parser.add_argument("--ways", default=None, help=f"comma list of ways: {', '.join(modes(2))} (default all); "
                        f"with --tune: {', '.join(tune_modes(2))}; with --train: {', '.join(train_modes(2))}")
    parser.add_argument("--tune", default=None, help="a search space (key=LOW..HIGH[:log]): time a tune instead")
    parser.add_argument("--trials", type=int, default=6, help="with --tune: the search's trials")
    parser.add_argument("--train", action="store_true", help="time a prismrec train of the one model's seeds instead")
    parser.add_argument("--set", action="append", default=None,
                        help="key=value or MODEL.key=value for every cell (repeatable; default: FREEDOM's "
                             "modality weights, which tiktok's image + audio need, as in the quality benchmarks)")
    parser.add_argument("--note", default="", help="a line on the run's conditions, kept in the results")
    parser.add_argument("--name", default=None, help="results file name (default: throughput, "
                        "throughput_<dataset> or throughput_<dataset>_tune)")
    args = parser.parse_args()
    if args.set is None:  # a compare's default models on tiktok; a search's or a train's settings are its own
        args.set = [] if args.tune or args.train else ["freedom.mm_weights=[0.5,0.5]"]
    for item in args.set:  # this script sets them (was: --set epochs replaced --epochs, --set threads was ignored)
        option = {"epochs": "--epochs", "threads": "--cores"}.get(item.partition("=")[0].strip())
        if option:
            parser.error(f"--set {item}: choose it with {option}, not --set")
    known = study_modes(args)
    if (args.tune or args.train) and "," in args.models:
        parser.error(f"--models {args.models}: --tune and --train take one model")
    args.ways = args.ways or ",".join(known)
    ways = {name: options for name, options in known.items() if name in args.ways.split(",")}
    unknown = set(args.ways.split(",")) - set(ways)
    if unknown:
        parser.error(f"--ways {args.ways}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    runs: dict[str, list[dict]] = {name: [] for name in ways}
    root = Path(tempfile.mkdtemp(prefix="prismrec-throughput-"))
    try:
        for r in range(args.rounds):
            order = list(ways) if r % 2 == 0 else list(ways)[::-1]
            for name in order:
                out = root / f"{name}-{r}"
                row = run_study(args, ways[name], out)
                runs[name].append(row)
                print(f"round {r} {name}: {row['wall_s']:.0f} s, {row['cells_per_hour']:.1f} cells/h, "
                      f"load {min(row['load1'], default=0):.1f}-{max(row['load1'], default=0):.1f}", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": vars(args),
           "modes": {name: summarise(rows) for name, rows in runs.items()}}
    name = "throughput" if args.dataset == "tiktok" and not (args.tune or args.train) else f"throughput_{args.dataset}"
    write(args.name or name + ("_tune" if args.tune else "_train" if args.train else ""), res, markdown(res))


if __name__ == "__main__":
    main()
