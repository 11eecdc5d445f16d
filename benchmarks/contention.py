"""Epoch time idle and next to a competing CPU-bound process: thread counts and OpenMP wait policies.

The same epoch of one model (``--model``, default LightGCN; training + one validation, default
settings plus the quality benchmarks' modality pair and weights, as ``benchmarks.floors`` takes)
is timed in fresh processes, one per cell, so that each gets its own OpenMP environment:

* threads: ``1``, ``2`` and ``auto`` (prismrec's default, :mod:`prismrec.threads`, decided when
  the run starts, i.e. after the competitor is running);
* wait policy: ``PASSIVE`` (prismrec's default), ``ACTIVE`` (spin), ``gomp`` (torch imported
  before prismrec with no policy set: OpenMP's own default, what a plain torch script gets) and,
  given in ``--cells``, ``spinN`` (passive after N spins, ``GOMP_SPINCOUNT=N``);
* condition: ``idle``, ``busy`` (one pure-Python busy loop at the timed process's priority) and,
  with ``--niced``, ``niced`` (the same loop at nice 19, like a background study).

Rounds interleave every cell of every condition, so that a noisy spell of a shared machine hits
all of them alike; each cell reports the median of its rounds' epoch medians and their range,
and the 1-minute load average and the busy cores seen before it started. ``--cells`` picks the
(threads, wait policy) pairs; a cell that runs past ``--cell-timeout`` seconds is stopped and
reported as such (a collapsed configuration would otherwise hold the machine for minutes).
``--note`` adds a line on the run's conditions (e.g. what else the machine ran). Writes
``results/contention.{json,md}`` (lfm2k, LightGCN) or ``results/contention_<dataset>[_<model>].{json,md}``.

    python -m benchmarks.contention [--dataset lfm2k] [--epochs 3] [--rounds 3] [--niced]
        [--cells 1/PASSIVE,2/ACTIVE,auto/PASSIVE] [--cell-timeout 90] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

WAITS = ("PASSIVE", "ACTIVE", "gomp", "spinN")
"""How a cell's idle OpenMP threads wait: ``PASSIVE`` / ``ACTIVE`` (``OMP_WAIT_POLICY``), ``gomp``
(none set, torch imported first: OpenMP's own default) or ``spinN`` (``PASSIVE`` with
``GOMP_SPINCOUNT=N``: spin about N iterations, then sleep)."""
CELLS = [("1", "PASSIVE"), ("2", "gomp"), ("2", "ACTIVE"), ("2", "PASSIVE"), ("auto", "PASSIVE")]
"""(threads, wait policy) pairs timed in every condition; the last is prismrec's default."""
BUSY_LOOP = "while True: pass"


def parse_cells(text: str) -> list[tuple[str, str]]:
    """``"1/PASSIVE,auto/spin1000"`` -> ``[("1", "PASSIVE"), ("auto", "spin1000")]``; ValueError
    naming the first cell that is not THREADS/WAIT (a positive count or ``auto``, one of :data:`WAITS`)."""
    cells = [tuple(cell.strip().split("/")) for cell in text.split(",")]
    for cell in cells:
        ok = len(cell) == 2 and (cell[0] == "auto" or cell[0].isdigit() and int(cell[0]) > 0) and (
            cell[1] in WAITS[:3] or cell[1].startswith("spin") and cell[1][4:].isdigit())
        if not ok:
            raise ValueError(f"{'/'.join(cell)!r} is not THREADS/WAIT (THREADS a positive count or auto, "
                             f"WAIT one of {', '.join(WAITS)}), e.g. 1/PASSIVE,2/gomp,auto/spin1000")
    return cells


def result_name(dataset: str, model: str) -> str:
    """``contention`` for lfm2k LightGCN, else ``contention_<dataset>[_<model>]``: one file per run kind."""
    parts = ([] if dataset == "lfm2k" else [dataset]) + ([] if model == "lightgcn" else [model])
    return "_".join(["contention", *parts])


def worker(dataset: str, model: str, threads: str, wait: str, epochs: int) -> dict:
    """Time ``epochs`` epochs after a warm-up in this process (run by :func:`run_cell`)."""
    if wait == "gomp":
        import torch  # noqa: F401  (loaded before prismrec: OpenMP reads no policy)
    from prismrec.data import load_dataset
    from prismrec.threads import apply_threads, busy_cpus

    busy = busy_cpus()
    data = load_dataset(dataset)
    chosen = apply_threads("auto" if threads == "auto" else int(threads), nodes=data.n_users + data.n_items)
    from benchmarks.epoch_speed import breakdown
    from benchmarks.floors import settings

    br = breakdown(model, data, epochs, settings=settings(model, dataset))
    return {"threads_used": chosen, "busy_seen": busy, "epoch_s": br["epoch_s"],
            "train_s": br["train_s"], "eval_s": br["eval_s"]}


def run_cell(args, threads: str, wait: str) -> dict:
    """One cell in a fresh process with its own OpenMP environment; its JSON result, or
    ``{"timed_out": ...}`` when it ran past ``args.cell_timeout`` seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    if wait.startswith("spin"):
        env["OMP_WAIT_POLICY"], env["GOMP_SPINCOUNT"] = "PASSIVE", wait[4:]
    elif wait != "gomp":
        env["OMP_WAIT_POLICY"] = wait
    cmd = [sys.executable, "-m", "benchmarks.contention", "--worker", threads, wait,
           "--dataset", args.dataset, "--model", args.model, "--epochs", str(args.epochs)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.cell_timeout)
    except subprocess.TimeoutExpired:
        return {"timed_out": args.cell_timeout, "epoch_s": None, "threads_used": None, "busy_seen": None}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"contention: the {threads}/{wait} cell of {args.model} on {args.dataset} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_competitor(nice: int) -> subprocess.Popen:
    """A pure-Python busy loop (one core), ``nice`` above this process; given a second to get going."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP],
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)
    time.sleep(1.0)
    return proc


def summarise(runs: list[dict]) -> dict:
    """Median of the rounds' epoch medians, their range, the threads used and the load seen
    (``epoch_s`` None when every round timed out; ``timed_out`` counts those that did)."""
    done = [r for r in runs if r.get("epoch_s")]
    meds = [statistics.median(r["epoch_s"]) for r in done]
    return {"epoch_s": statistics.median(meds) if meds else None, "min": min(meds, default=None),
            "max": max(meds, default=None), "rounds": meds, "timed_out": len(runs) - len(done),
            "threads_used": sorted({r["threads_used"] for r in done}),
            "load1": [r["load1"] for r in runs], "busy_seen": [round(r["busy_seen"], 2) for r in done]}


def _cell(c: dict, timeout: float) -> str:
    if c["epoch_s"] is None:
        return f"stopped (cell > {timeout:.0f} s)"
    note = f"; {c['timed_out']} round(s) stopped" if c["timed_out"] else ""
    return f"{c['epoch_s']:.2f} ({c['min']:.2f}-{c['max']:.2f}{note})"


def _ratio(a: dict, b: dict) -> str:
    return "-" if a["epoch_s"] is None or b["epoch_s"] is None else f"{a['epoch_s'] / b['epoch_s']:.1f}x"


def markdown(res: dict, args) -> str:
    conds = list(res["cells"])
    idle = res["cells"]["idle"]
    loads = [x for cond in res["cells"].values() for c in cond.values() for x in c["load1"]]
    head = "| threads | wait | " + " | ".join(f"{c} s (range)" for c in conds) + " | " + \
        " | ".join(f"{c} / idle" for c in conds[1:]) + " | threads used |"
    lines = [f"# Epoch time next to a competing process ({args.model}, {args.dataset})", "",
             f"{res['machine']}; {res['rounds']} interleaved round(s), each the median of {args.epochs} "
             f"epochs (training + one validation) after a warm-up, in a fresh process per cell; run "
             f"{res['date']}; 1-minute load average before the cells {min(loads):.2f}-{max(loads):.2f}.", ""]
    if res.get("note"):
        lines += [res["note"], ""]
    lines += [head, "|" + "---|" * (2 + 2 * len(conds))]
    for key in idle:
        threads, wait = key.split("/")
        cells = [_cell(res["cells"][c][key], args.cell_timeout) for c in conds]
        ratios = [_ratio(res["cells"][c][key], idle[key]) for c in conds[1:]]
        used = "; ".join(f"{c}: {res['cells'][c][key]['threads_used']}" for c in conds)
        lines.append(f"| {threads} | {wait} | " + " | ".join(cells + ratios) + f" | {used} |")
    default = idle.get("auto/PASSIVE")
    if default and default["epoch_s"]:
        finished = [v["epoch_s"] for v in idle.values() if v["epoch_s"]]
        summary = [f"prismrec's default (auto threads, PASSIVE) idle: {default['epoch_s']:.2f} s, "
                   f"{default['epoch_s'] / min(finished):.2f}x the fastest idle cell"]
        active = idle.get("2/ACTIVE")
        if active and active["epoch_s"]:
            summary.append(f"idle cost of the passive policy: {default['epoch_s'] / active['epoch_s']:.2f}x "
                           "the 2 spinning (ACTIVE) threads")
        for c in conds[1:]:
            summary.append(f"{c}: {_ratio(res['cells'][c]['auto/PASSIVE'], default)} its idle time")
        lines += ["", "; ".join(summary) + "."]
    lines += ["", "busy: one pure-Python busy loop at the timed process's priority, started and stopped by "
              "the script around each round's busy cells; niced: the same at nice 19. 'stopped': the cell's "
              "process (start-up, data loading, warm-up epoch and timed epochs) ran past the cell timeout "
              "and was killed; the range and median are over the rounds that finished. 'gomp' = torch "
              "imported before prismrec with no OMP_WAIT_POLICY (what a plain torch script gets). "
              "1-minute load average and busy cores seen before each cell: in the JSON."]
    return "\n".join(lines) + "\n"


def passive_pair(cells: dict) -> dict | None:
    """A run's passive cells by the threads they used: ``{1: cell, 2: cell}`` per condition
    (``{"idle": {1: ..., 2: ...}, ...}``), None unless the idle condition has both."""
    pairs = {}
    for cond, by_cell in cells.items():
        pairs[cond] = {}
        for key, c in by_cell.items():
            if key.endswith("/PASSIVE") and c["epoch_s"] and len(c["threads_used"]) == 1:
                pairs[cond].setdefault(c["threads_used"][0], c)
    return pairs if {1, 2} <= set(pairs.get("idle", {})) else None


def matrix_markdown(rows: list[dict]) -> str:
    """One line per (dataset, model) run with one and two passive threads: epoch seconds idle and
    busy, and what ``threads=auto`` picks for 2 cores on that graph today."""
    from prismrec.threads import SMALL_GRAPH_NODES, choose_threads

    lines = ["# One or two passive threads, by dataset and model (2 cores)", "",
             f"Epoch seconds (training + one validation; median of the rounds) with one / two passive threads, "
             f"idle and next to one competing process, from every `results/contention*.json` that has both "
             f"(their dates, loads and commands are in those files). 'auto picks': prismrec's `threads=auto` "
             f"on 2 usable cores today (one thread below {SMALL_GRAPH_NODES:,} users + items, "
             f"`prismrec.threads.SMALL_GRAPH_NODES`); a run's own 'auto' cell may predate that rule "
             f"(the threads it used decide its column here). Rebuild: `python -m benchmarks.contention --matrix`.", "",
             "| dataset | users + items | model | idle: 1 | 2 | 2 / 1 | busy: 1 | 2 | 2 / 1 | auto picks | run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["nodes"], r["model"])):
        idle, busy = r["pair"]["idle"], r["pair"].get("busy", {})
        b = [busy[n]["epoch_s"] if n in busy else None for n in (1, 2)]
        busy_cols = [f"{x:.2f}" if x else "-" for x in b] + [f"{b[1] / b[0]:.2f}" if all(b) else "-"]
        lines.append(f"| {r['dataset']} | {r['nodes']:,} | {r['model']} | {idle[1]['epoch_s']:.2f} | "
                     f"{idle[2]['epoch_s']:.2f} | {idle[2]['epoch_s'] / idle[1]['epoch_s']:.2f} | "
                     + " | ".join(busy_cols) + f" | {choose_threads(2, 0.0, nodes=r['nodes'])} | {r['date']} |")
    return "\n".join(lines) + "\n"


def matrix() -> None:
    """Write ``results/contention_matrix.{json,md}`` from the committed contention results."""
    from benchmarks.common import RESULTS, write
    from prismrec.data import load_dataset

    rows, nodes = [], {}
    for path in sorted(RESULTS.glob("contention*.json")):
        res = json.loads(path.read_text())
        pair = passive_pair(res.get("cells", {})) if "model" in res else None
        if pair is None:
            continue
        if res["dataset"] not in nodes:
            data = load_dataset(res["dataset"])
            nodes[res["dataset"]] = data.n_users + data.n_items
        rows.append({"dataset": res["dataset"], "model": res["model"], "nodes": nodes[res["dataset"]],
                     "date": res["date"], "file": path.name, "pair": pair})
    write("contention_matrix", {"rows": rows}, matrix_markdown(rows))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="lfm2k")
    parser.add_argument("--model", default="lightgcn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--niced", action="store_true", help="also time next to a nice-19 competitor")
    parser.add_argument("--cells", default=",".join(f"{t}/{w}" for t, w in CELLS),
                        help="threads/wait pairs, e.g. 1/PASSIVE,2/ACTIVE,auto/PASSIVE")
    parser.add_argument("--cell-timeout", type=float, default=300.0, help="seconds before a cell is stopped")
    parser.add_argument("--note", default="", help="a line on the run's conditions, kept in the results")
    parser.add_argument("--matrix", action="store_true",
                        help="only rebuild results/contention_matrix.md (one vs two passive threads) from the runs")
    parser.add_argument("--worker", nargs=2, metavar=("THREADS", "WAIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.matrix:
        matrix()
        return
    if args.worker:
        print(json.dumps(worker(args.dataset, args.model, *args.worker, args.epochs)))
        return
    conditions = {"idle": None, "busy": 0} | ({"niced": 19} if args.niced else {})
    try:
        cells = parse_cells(args.cells)
    except ValueError as e:
        parser.error(f"--cells: {e}")
    runs = {c: {f"{t}/{w}": [] for t, w in cells} for c in conditions}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped from outside: the competitor still ends
    from benchmarks.common import machine, write

    for r in range(args.rounds):
        for cond, nice in conditions.items():
            competitor = start_competitor(nice) if nice is not None else None
            try:
                for t, w in cells[r % len(cells):] + cells[: r % len(cells)]:  # rotate the order
                    load1 = os.getloadavg()[0]
                    row = run_cell(args, t, w) | {"load1": load1}
                    runs[cond][f"{t}/{w}"].append(row)
                    epoch = round(statistics.median(row["epoch_s"]), 3) if row["epoch_s"] else "timed out"
                    print(r, cond, t, w, epoch, row["threads_used"], f"load {load1:.2f}", flush=True)
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
        # after every round: a run stopped early keeps the rounds it finished
        res = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "dataset": args.dataset, "model": args.model, "epochs": args.epochs, "rounds": r + 1,
               "cell_timeout_s": args.cell_timeout, "note": args.note,
               "cells": {c: {k: summarise(v) for k, v in by_cell.items()} for c, by_cell in runs.items()}}
        write(result_name(args.dataset, args.model), res, markdown(res, args))


if __name__ == "__main__":
    main()
