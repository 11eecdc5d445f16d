"""Epoch / floor of two versions of the code, side by side in one invocation.

The package as of two commits (``--before``, ``--after``, default ``HEAD``; each extracted with
``git archive`` into a temporary folder, so that uncommitted edits in the checkout take no part)
(``--paths``: the ``before`` package with only these files taken from ``--after``, so that other
changes committed in between take no part) each measure a model's epoch against its floor with
this checkout's
:func:`benchmarks.floors.measure` (the same script on both sides), each in a fresh process
(``python -c``, the version's ``prismrec`` first on the import path), in
alternating order: round ``r`` runs before then after for even ``r``, after then before for odd
``r``, model by model, so that both sides meet the same machine load. Per model and side:
medians over the rounds of the wall and CPU-time ratios (and the train / validation seconds
behind them), every round kept, the 1-minute load at each run. Writes
``results/floors_ab.{json,md}`` (rows keyed ``dataset/model``; a rerun replaces its rows).

``--per-batch``: a change of a few per cent per batch is below what separate processes resolve on
a busy machine, so both packages are imported into one process instead (each with its own copy of
:mod:`benchmarks.floors`), a model built by each with the same seeds, and their training batches
(the same batches: equal samplers) alternate one by one, each as that version's ``train_epoch``
runs it (its loop body: zero_grad, forward, backward, the divergence guard and logging, the
optimiser step; :class:`Turns`), timed in thread CPU time; the median paired difference per batch
is reported, after a warm-up epoch each. Writes ``results/floors_ab_batches.{json,md}``. (Before
2026-12-04 a batch was timed as forward, backward and step only, called by this script.)

    python -m benchmarks.floors_ab --before <commit> [--after HEAD] [--paths prismrec/losses.py,...] [--dataset lfm2k] [--models bpr,vbpr] [--epochs 3] [--rounds 2] [--per-batch]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import torch

from benchmarks.common import RESULTS, interleaved_rounds, machine, table_head, write

ROOT = Path(__file__).resolve().parent.parent
NAME = "floors_ab"
MEASURE = """
import json, sys
sys.path[:0] = [{tree!r}, {root!r}]
import prismrec
assert prismrec.__file__.startswith({tree!r}), prismrec.__file__
import torch
from benchmarks.floors import measure
from prismrec.data import load_dataset
from prismrec.train.allocator import keep_freed_memory
keep_freed_memory()
torch.set_num_threads(1)
print("RESULT " + json.dumps(measure({model!r}, load_dataset({dataset!r}), {epochs})))
"""
PAIRED = """
import json, sys
sys.path[:0] = [{root!r}]
import torch
from benchmarks.floors_ab import paired_batches
from prismrec.train.allocator import keep_freed_memory
keep_freed_memory()  # process-wide, as each side's process above
torch.set_num_threads(1)
print("RESULT " + json.dumps(paired_batches({trees!r}, {model!r}, {dataset!r}, {epochs})))
"""
KEPT = ("ratio", "ratio_cpu", "ratio_train", "ratio_valid", "train_s", "floor_train_s", "valid_s", "floor_valid_s",
        "train_cpu_s", "floor_train_cpu_s", "valid_cpu_s", "floor_valid_cpu_s", "load1")


def extract(commit: str, into: Path, paths: tuple[str, ...] = ("prismrec",)) -> Path:
    """``paths`` (default: the ``prismrec`` package) as of ``commit``, under ``into`` (returned: the
    folder to import from); files already there are replaced."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, *paths], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_side(tree: Path, model: str, dataset: str, epochs: int) -> dict:
    """One :func:`benchmarks.floors.measure` of ``model`` with the package under ``tree``, in a fresh process."""
    code = MEASURE.format(tree=str(tree), root=str(ROOT), model=model, dataset=dataset, epochs=epochs)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{model} with {tree} failed: {done.stderr.strip()[-2000:]}")
    row = json.loads(lines[-1][len("RESULT "):])
    return {k: row[k] for k in KEPT}


def load_version(tree: str) -> dict:
    """The ``prismrec`` package under ``tree`` with this checkout's :mod:`benchmarks.floors` bound
    to it, imported and then taken out of ``sys.modules`` (returned by name), so that another
    version can be imported next to it in the same process."""
    ours = [k for k in sys.modules if k.split(".")[0] in ("prismrec", "benchmarks")]
    for k in ours:  # whatever this process imported before (kept alive by whoever refers to it)
        del sys.modules[k]
    sys.path.insert(0, tree)
    try:
        import benchmarks.floors  # noqa: F401  (imports the package it binds to)
        import prismrec.train.trainer  # noqa: F401
        assert sys.modules["prismrec"].__file__.startswith(tree), sys.modules["prismrec"].__file__
        return {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in ("prismrec", "benchmarks")}
    finally:
        sys.path.remove(tree)


class Turns:
    """Two trainers' epochs (``before`` and ``after``), each in its own thread, taking turns batch
    by batch: batch ``n`` runs on ``before`` then ``after`` for even ``n``, the other way round for
    odd ``n``. Each side's sampler (:meth:`sampler`) serves the epoch's batches, waits for its
    side's turn before handing one over and times, in its thread's CPU time, what the trainer does
    with it until it asks for the next: the whole loop body of ``train_epoch`` (zero_grad, forward,
    backward, the divergence guard and logging, the optimiser step), the sampler's draws excluded
    (made before, once per epoch). One thread runs at a time, the other waits for its turn."""

    SIDES = ("before", "after")

    def __init__(self, n_batches: int) -> None:
        self.order = [s for n in range(n_batches) for s in (self.SIDES if n % 2 == 0 else self.SIDES[::-1])]
        self.pos, self.failed = 0, False
        self.cond = threading.Condition()
        self.ms: dict[str, list[float]] = {s: [] for s in self.SIDES}

    def sampler(self, side: str, batches: list):
        """A stand-in for ``side``'s sampler whose one epoch is ``batches``, in turns."""
        turns = self

        class Sampler:
            def epoch(self, device=None):
                for batch in batches:
                    with turns.cond:
                        turns.cond.wait_for(lambda: turns.failed or turns.order[turns.pos] == side)
                        if turns.failed:
                            raise RuntimeError("the other side failed")
                    c0 = time.thread_time()
                    yield batch
                    turns.ms[side].append(1000 * (time.thread_time() - c0))
                    turns.advance()
        return Sampler()

    def advance(self, failed: bool = False) -> None:
        with self.cond:
            self.pos += 1
            self.failed |= failed
            self.cond.notify_all()

    def run(self, epochs: dict) -> None:
        """``epochs[side]()`` (a ``train_epoch`` call on :meth:`sampler`) in one thread per side."""
        errors = []

        def target(side):
            torch.set_num_threads(1)
            try:
                epochs[side]()
            except BaseException as exc:  # noqa: BLE001  (re-raised below)
                errors.append(exc)
                self.advance(failed=True)

        threads = [threading.Thread(target=target, args=(side,)) for side in self.SIDES]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]


def paired_batches(trees: dict[str, str], model: str, dataset: str, epochs: int) -> dict:
    """``--per-batch``: thread CPU ms of each training batch of ``model`` as each version's
    ``train_epoch`` runs it (``trees``: side -> folder), the two alternated batch by batch
    (:class:`Turns`) after a warm-up epoch each; medians and the median paired difference, per batch
    and per epoch (the sum of its batches: what a change to an epoch's first batch alone shows in)."""
    versions = {side: load_version(tree) for side, tree in trees.items()}
    data = versions["before"]["prismrec.data"].load_dataset(dataset)
    runs = {}
    for side, v in versions.items():
        net, _, sampler, optimizer = v["benchmarks.floors"].training_setup(model, data)
        train_epoch = v["prismrec.train.trainer"].train_epoch
        net.on_epoch_start(0)
        train_epoch(net, sampler, optimizer, 0, net.device)
        runs[side] = (net, sampler, optimizer, train_epoch)
    ms = {side: [] for side in runs}
    epoch_ms = {side: [] for side in runs}
    for epoch in range(1, epochs + 1):
        batches = {}
        for side, (net, sampler, _, _) in runs.items():
            net.on_epoch_start(epoch)
            batches[side] = list(sampler.epoch())  # the same batches: equal samplers
        turns = Turns(len(batches["before"]))
        turns.run({side: partial(train_epoch, net, turns.sampler(side, batches[side]), optimizer, epoch, net.device)
                   for side, (net, _, optimizer, train_epoch) in runs.items()})
        for side in ms:
            ms[side] += turns.ms[side]
            epoch_ms[side].append(sum(turns.ms[side]))
    diff = [a - b for a, b in zip(ms["after"], ms["before"])]
    return {"before_ms": statistics.median(ms["before"]), "after_ms": statistics.median(ms["after"]),
            "diff_ms": statistics.median(diff), "diff_iqr_ms": statistics.quantiles(diff, n=4)[::2],
            "epoch_before_ms": statistics.median(epoch_ms["before"]), "epoch_after_ms": statistics.median(epoch_ms["after"]),
            "epoch_diff_ms": statistics.median(a - b for a, b in zip(epoch_ms["after"], epoch_ms["before"])),
            "batches": len(diff), "load1": os.getloadavg()[0]}


def batches_markdown(res: dict) -> str:
    lines = table_head("Per-batch CPU time before and after, batch by batch in one process",
                       f"{res['machine']}; 1 thread; {res['date']}.",
                       ["dataset/model", "before (commit)", "after", "before ms", "after ms",
                        "paired difference ms (quartiles)", "change", "epoch ms: before / after, paired difference",
                        "batches", "1-min load"])
    for key, r in res["rows"].items():
        epoch = (f"{r['epoch_before_ms']:.1f} / {r['epoch_after_ms']:.1f}, **{r['epoch_diff_ms']:+.1f}** "
                 f"({100 * r['epoch_diff_ms'] / r['epoch_before_ms']:+.1f} %)" if "epoch_diff_ms" in r else "-")
        lines.append(f"| {key} | {r['before_commit']} | {r['after_commit']} | {r['before_ms']:.2f} | {r['after_ms']:.2f} | "
                     f"**{r['diff_ms']:+.2f}** ({r['diff_iqr_ms'][0]:+.2f} / {r['diff_iqr_ms'][1]:+.2f}) | "
                     f"{100 * r['diff_ms'] / r['before_ms']:+.1f} % | {epoch} | {r['batches']} | {r['load1']:.1f} |")
    lines += ["", "Both packages imported into one process (each with this checkout's `benchmarks.floors` bound to "
              "it), a model built by each with the same seeds and settings (`benchmarks.floors.training_setup`), "
              "a warm-up epoch each, then their training batches (the same batches) alternated one by one, each "
              "timed in thread CPU time as that version's `train_epoch` runs it (its loop body: zero_grad, forward, "
              "backward, guard and logging, fused-Adam step; rows before 2026-12-04: forward, backward and step "
              "only). Median per side and "
              "median of the per-batch differences (after - before; quartiles in brackets); per epoch, the sum of "
              "its batches, median per side and median paired difference over the epochs ('-': rows measured "
              "before it was recorded). "
              "`python -m benchmarks.floors_ab --before <commit> --after <commit> --dataset <d> --models <m,...> "
              "--epochs <n> --per-batch`."]
    if res.get("notes"):  # kept in the JSON, so that a rerun keeps them
        lines += ["", res["notes"].rstrip("\n")]
    return "\n".join(lines) + "\n"


def summary(rounds: list[dict]) -> dict:
    """Medians of the kept values over the rounds."""
    return {k: statistics.median(r[k] for r in rounds) for k in KEPT}


def markdown(res: dict) -> str:
    lines = table_head("Epoch / floor before and after, side by side", f"{res['machine']}; 1 thread; {res['date']}.",
                       ["dataset/model", "before (commit)", "after", "wall ratio: before -> after",
                        "CPU-time ratio: before -> after", "train CPU s: before -> after (floor)",
                        "valid CPU s: before -> after (floor)", "rounds", "1-min load"])
    for key, r in res["rows"].items():
        b, a = r["before"], r["after"]
        loads = [x["load1"] for side in ("before_rounds", "after_rounds") for x in r[side]]
        lines.append(
            f"| {key} | {r['before_commit']} | {r['after_commit']} | {b['ratio']:.2f} -> **{a['ratio']:.2f}** | "
            f"{b['ratio_cpu']:.2f} -> **{a['ratio_cpu']:.2f}** | {b['train_cpu_s']:.3f} -> {a['train_cpu_s']:.3f} "
            f"({a['floor_train_cpu_s']:.3f}) | {b['valid_cpu_s']:.3f} -> {a['valid_cpu_s']:.3f} "
            f"({a['floor_valid_cpu_s']:.3f}) | {len(r['after_rounds'])} | {min(loads):.1f}-{max(loads):.1f} |")
    lines += ["", "Each side: `benchmarks.floors.measure` (this checkout's script) in a fresh process with that "
              "side's package, `--epochs` measured epochs after a warm-up; sides alternate run by run (before "
              "first in even rounds, after first in odd ones); medians over the rounds. Ratios are epoch / floor "
              "(training + validation) in wall and in thread CPU time (which preemptions on a busy machine do "
              "not inflate); floors as in results/floors*.md. Each side is the package as committed (`git archive`); "
              "where a row's `after_paths` (JSON) lists files, `after` is the `before` package with those files "
              "from the `after` commit (the speed work alone, without other changes committed in between). "
              "`python -m benchmarks.floors_ab --before <commit> --after <commit> --dataset <d> --models <m,...>`."]
    if res.get("notes"):
        lines += ["", res["notes"].rstrip("\n")]
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)  # as each side's process (machine() records it)
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="commit whose prismrec package is the 'before' side")
    parser.add_argument("--after", default="HEAD", help="commit whose prismrec package is the 'after' side")
    parser.add_argument("--paths", default="", help="files taken from --after into the 'before' package (default: all)")
    parser.add_argument("--dataset", default="lfm2k")
    parser.add_argument("--models", default="bpr,vbpr")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-batch", action="store_true", help="batch by batch in one process (module docstring)")
    args = parser.parse_args()
    commits = {side: subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True,
                                    text=True).stdout.strip() for side, rev in (("before", args.before), ("after", args.after))}
    name = f"{NAME}_batches" if args.per_batch else NAME
    path = RESULTS / f"{name}.json"
    res = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": extract(commits["before"], Path(tmp) / "before")}
        if args.paths:  # before's package with these files from after
            trees["after"] = extract(commits["after"], extract(commits["before"], Path(tmp) / "after"),
                                     tuple(args.paths.split(",")))
        else:
            trees["after"] = extract(commits["after"], Path(tmp) / "after")
        for model in args.models.split(","):
            if args.per_batch:
                code = PAIRED.format(root=str(ROOT), trees={k: str(v) for k, v in trees.items()}, model=model,
                                     dataset=args.dataset, epochs=args.epochs)
                done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    raise RuntimeError(f"{model}: {done.stderr.strip()[-2000:]}")
                res["rows"][f"{args.dataset}/{model}"] = {"before_commit": commits["before"], "after_commit": commits["after"],
                                                          "epochs": args.epochs, **json.loads(lines[-1][len("RESULT "):])}
                res.update(machine=machine(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
                write(name, res, batches_markdown(res))
                continue
            sides = {side: partial(run_side, tree, model, args.dataset, args.epochs) for side, tree in trees.items()}
            runs = interleaved_rounds(sides, args.rounds, progress=lambda r, side, row: print(
                f"{args.dataset}/{model} round {r} {side}: ratio {row['ratio']:.2f}, CPU {row['ratio_cpu']:.2f}, "
                f"load {row['load1']:.2f}", flush=True))
            res["rows"][f"{args.dataset}/{model}"] = {
                "before_commit": commits["before"], "after_commit": commits["after"], "epochs": args.epochs,
                "after_paths": args.paths.split(",") if args.paths else "all",
                "before": summary(runs["before"]), "after": summary(runs["after"]),
                "before_rounds": runs["before"], "after_rounds": runs["after"]}
            res.update(machine=machine(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
            write(NAME, res, markdown(res))


if __name__ == "__main__":
    main()
