"""Helpers shared by the benchmark scripts: timing medians and result files.

torch is imported only by the helpers that use it, so a worker pool (:func:`worker_pool`) whose
workers unpickle a function from here starts without it."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

RESULTS = Path(__file__).resolve().parent / "results"
T = TypeVar("T")


def median_time(fn, repeats: int = 7, warmup: int = 1) -> dict:
    """Median / min / max wall seconds of ``fn()`` over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "runs": repeats}


def interleaved_rounds(runs: dict[str, Callable[[], T]], rounds: int, warmup: int = 0,
                       progress: Callable[[int, str, T], None] | None = None) -> dict[str, list[T]]:
    """Each of ``runs`` once per round, side by side in one invocation: in their order in even
    rounds and the reverse in odd ones, so that every run meets the same machine load. The first
    ``warmup`` rounds (counted in the alternation) warm up and are not kept. Returns each run's
    results, round by round; ``progress(round, name, result)`` after each kept one."""
    results: dict[str, list[T]] = {name: [] for name in runs}
    for r in range(warmup + rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            result = runs[name]()
            if r >= warmup:
                results[name].append(result)
                if progress is not None:
                    progress(r - warmup, name, result)
    return results


def machine() -> dict:
    import torch

    from prismrec.train.allocator import keep_freed_memory

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "freed_memory_kept": keep_freed_memory(),  # PRISMREC_SYSTEM_MALLOC=1 to compare
    }


def write(name: str, data: dict, markdown: str) -> None:
    """Write ``results/<name>.json`` and ``.md``, each whole or not at all (a later run that adds
    rows reads the JSON back)."""
    atomic_write(RESULTS / f"{name}.json", json.dumps(data, indent=2))
    atomic_write(RESULTS / f"{name}.md", markdown)
    print(markdown)


def table_head(title: str, note: str, columns: list[str]) -> list[str]:
    """The top of a results page, as lines: ``# title``, ``note`` (machine, date, settings), then
    the header of a markdown table of ``columns``."""
    return [f"# {title}", "", note, "", f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]


def _die_with_parent() -> None:
    """In a worker: ask Linux to end this process when its parent ends (``PR_SET_PDEATHSIG``), so a
    killed study leaves no worker training on, unsupervised, into run folders its rerun resumes."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def worker_pool(jobs: int) -> concurrent.futures.ProcessPoolExecutor:
    """``jobs`` fresh worker processes (spawned: no state shared with this one) that end with it."""
    return concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_die_with_parent)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_npz(path: Path, arrays: dict) -> None:
    """Write ``arrays`` to ``path`` as a compressed ``.npz``, whole or not at all."""
    import os

    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def git_commit(paths: list[Path], message: str) -> None:
    """Commit exactly ``paths`` (retrying while another commit holds the index lock); a long study
    that commits its finished cells survives the end of a session or machine."""
    import os
    import subprocess
    import sys

    rel = [os.path.relpath(p) for p in paths]
    for _ in range(20):
        add = subprocess.run(["git", "add", *rel], capture_output=True, text=True)
        if add.returncode == 0:
            if subprocess.run(["git", "diff", "--cached", "--quiet", "--", *rel]).returncode == 0:
                return  # these paths hold nothing new
            done = subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel], capture_output=True, text=True)
            if done.returncode == 0 or "nothing to commit" in done.stdout + done.stderr:
                return
            err = done.stderr
        else:
            err = add.stderr
        if "index.lock" not in err:
            print(f"git commit failed: {err.strip()}", file=sys.stderr)
            return
        time.sleep(3)


def per_model_main(name: str, measure, markdown, models: str, describe) -> None:
    """The ``main`` of a per-batch benchmark over datasets x models: ``measure(model, data, epochs)``
    gives a row, ``describe(row)`` its progress line; results/``name``.{json,md} are rewritten
    after every row (``markdown(results)``), so an interrupted run keeps what it measured. Rows
    of other datasets and models already there (same thread count) are kept: a run of some
    models adds or replaces their rows only."""
    import argparse

    import torch

    from prismrec.data import load_dataset
    from prismrec.train.allocator import keep_freed_memory

    keep_freed_memory()  # as `prismrec train` does
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default="tiktok,lfm2k")
    parser.add_argument("--models", default=models)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / f"{name}.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    if res.get("threads") != args.threads:
        res = {"rows": {}}
    res.update(machine=machine(), threads=args.threads)
    for dataset in args.datasets.split(","):
        data = load_dataset(dataset)
        for model in args.models.split(","):
            r = measure(model, data, args.epochs)
            res["rows"][f"{dataset}/{model}"] = r
            res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            print(f"{dataset}/{model}: {describe(r)}, load {r['load1']}", flush=True)
            write(name, res, markdown(res))
