"""Memory of ``train_features`` (issue #22): peak resident memory of the MGCN family and FREEDOM
with their raw feature matrices fine-tuned (the default, as the reference code) or frozen
(``train_features=False``), on the synthetic Electronics-size folder of ``benchmarks/scale.py``.

Each cell runs in its own subprocess (its peak RSS is its own, the kernel's ``ru_maxrss``): load the
folder, build the model (kNN graphs from the graph cache beside the data, as ``benchmarks.scale``
leaves them), then train the first ``--batches`` batches of an epoch exactly as the trainer does
(fused Adam over ``parameters()``, ``train_epoch``); no validation (it does not depend on the
switch). Both settings of a model run back to back in each round, their order alternating; the
table gives medians over the rounds and the load average around each cell.

    nice -n 5 python -m benchmarks.train_features [--models mgcn,freedom] [--size electronics]
        [--batches 3] [--rounds 2] [--data-root runs/scale-data]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, atomic_write

OUT = RESULTS / "train_features"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(model_name: str, folder: str, train_features: bool, batches: int) -> dict:
    """Load, build, train ``batches`` batches; peak RSS (MiB) after each phase and the bytes the
    optimiser holds."""
    import itertools

    import torch

    from prismrec.data import BPRSampler, load_dataset
    from prismrec.experiment.config import resolve_config
    from prismrec.models import get_model
    from prismrec.train.trainer import seed_everything, train_epoch

    torch.set_num_threads(1)
    data = load_dataset(folder)
    out = {"model": model_name, "train_features": train_features, "items": data.n_items,
           "feature_dims": {m: int(f.shape[1]) for m, f in data.features.items()},
           "rss_after_load_mb": _rss_mb()}
    cfg = resolve_config(model_name, data.name, {"threads": 1, "train_features": train_features})
    seed_everything(cfg.train.seed)
    model = get_model(model_name)(data, cfg.params)
    out["rss_after_build_mb"] = _rss_mb()
    sampler = BPRSampler(data.train, cfg.train.batch_size, cfg.train.negative_pool, cfg.train.seed)

    class Capped:  # the first `batches` batches of an epoch
        def epoch(self):
            return itertools.islice(sampler.epoch(), batches)

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)
    model.train()
    model.on_epoch_start(0)
    row = train_epoch(model, Capped(), optimizer, 0, model.device)
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    out.update(batches=batches, train_s=row["train_s"], loss=row["loss"], rss_after_train_mb=_rss_mb(),
               parameter_mb=sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
               adam_state_mb=sum(t.numel() * t.element_size() for t in state) / 2**20)
    return out


def run_cell(model: str, folder: Path, train_features: bool, batches: int) -> dict:
    """The child's report (its own peak RSS after each phase) and the load average around it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.setdefault("PRISMREC_GRAPH_CACHE", str(folder.parent / "graphs"))
    cmd = [sys.executable, "-m", "benchmarks.train_features", "--child", model, str(folder),
           str(int(train_features)), str(batches)]
    load_before, started = os.getloadavg(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = proc.communicate()
    result = {"model": model, "train_features": train_features, "wall_s": time.perf_counter() - started,
              "load_before": load_before, "load_after": os.getloadavg()}
    if proc.returncode != 0:
        raise RuntimeError(f"{model} train_features={train_features} failed:\n{stderr.strip()[-2000:]}")
    result.update(json.loads(stdout.strip().splitlines()[-1]))
    return result


def render(cells: list[dict]) -> str:
    lines = ["# train_features: peak memory with the raw features fine-tuned or frozen", "",
             "Synthetic Electronics-size folder (`benchmarks/scale.py`), 1 thread, the first "
             f"{cells[0]['batches']} training batches as the trainer runs them, one subprocess per cell; "
             "medians over the rounds (GiB). `python -m benchmarks.train_features`.", "",
             "| model | train_features | peak RSS after build | peak RSS after training | parameters | Adam state "
             "| rounds | load average |", "|---|---|---|---|---|---|---|---|"]
    saved = []
    for model in dict.fromkeys(c["model"] for c in cells):
        peak = {}
        for flag in (True, False):
            runs = [c for c in cells if c["model"] == model and c["train_features"] is flag]
            med = {k: statistics.median(c[k] for c in runs) / 1024 for k in
                   ("rss_after_build_mb", "rss_after_train_mb", "parameter_mb", "adam_state_mb")}
            loads = [x for c in runs for x in (c["load_before"][0], c["load_after"][0])]
            lines.append(f"| {model} | {flag} | {med['rss_after_build_mb']:.2f} | {med['rss_after_train_mb']:.2f} | "
                         f"{med['parameter_mb']:.2f} | {med['adam_state_mb']:.2f} | {len(runs)} | "
                         f"{min(loads):.1f}-{max(loads):.1f} |")
            peak[flag] = med["rss_after_train_mb"]
        saved.append(f"{model} {peak[True] - peak[False]:.2f} GiB ({1 - peak[False] / peak[True]:.0%})")
    lines += ["", "Frozen features lower the training peak by " + ", ".join(saved) + ": the features' "
              "gradient and Adam's two moments are never allocated (the frozen copy itself stays)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        model, folder, flag, batches = argv[1:5]
        print(json.dumps(child(model, folder, bool(int(flag)), int(batches))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mgcn,freedom")
    parser.add_argument("--size", default="electronics")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=Path("runs/scale-data"))
    args = parser.parse_args(argv)
    folder = args.data_root / args.size
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: write it first (python -m benchmarks.scale --sizes {args.size})")
    cells = []
    for r in range(args.rounds):
        for model in args.models.split(","):
            for flag in ((True, False) if r % 2 == 0 else (False, True)):
                cell = run_cell(model, folder, flag, args.batches)
                cell["round"] = r
                cells.append(cell)
                print(f"[train_features] round {r} {model} train_features={flag}: peak "
                      f"{cell['rss_after_train_mb'] / 1024:.2f} GiB", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write(OUT / "train_features.json", json.dumps({"size": args.size, "cells": cells}, indent=2))
    atomic_write(OUT / "train_features.md", render(cells))
    print(render(cells))


if __name__ == "__main__":
    main()
