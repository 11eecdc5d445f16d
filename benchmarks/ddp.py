"""Data-parallel training on CPU: what splitting each global batch over K gloo ranks saves.

Each round runs, back to back, one process and K ranks (``torchrun``) of the same model on the
same data, the same global batches (the first ``--max-batches`` of each epoch), one thread per
process, and records per epoch and rank the wall seconds, the **CPU seconds** (the process's own,
``time.process_time``; far less sensitive to a shared machine's load than wall time) and the
trainer's phases. Every rank propagates the full graph (replicated) and computes the loss on its
share of the batch (split), so:

- ``CPU speed-up`` = one process's CPU s per epoch / a rank's (the mean over ranks): the speed-up
  to expect when each rank has a core (or GPU) of its own and the ranks wait little for each
  other;
- ``wall speed-up`` is the same ratio of wall seconds, as this machine gave it (its load is
  recorded: on a machine with fewer free cores than ranks it says nothing about K free cores).

The first epoch is a warm-up; medians over the later epochs, then over rounds. Results:
``results/ddp.{json,md}``.

    nice -n 5 python -m benchmarks.ddp [--models lightgcn,mgcn] [--dataset tiktok] [--ranks 2]
        [--epochs 3] [--max-batches 12] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

from benchmarks.common import RESULTS, atomic_write
from benchmarks.multimodal import MODEL_SETTINGS

PHASES = ("sample_s", "forward_s", "backward_s", "optim_s")


class _Capped:
    """The first ``n`` batches of each epoch of a sampler (all of them if ``n`` is 0)."""

    def __init__(self, sampler, n: int) -> None:
        self.sampler, self.n = sampler, n

    def epoch(self):
        for k, batch in enumerate(self.sampler.epoch()):
            if self.n and k >= self.n:
                return
            yield batch


def child(model_name: str, dataset: str, epochs: int, max_batches: int) -> None:
    """Train ``epochs`` epochs (one process, or this rank's share under torchrun); rank 0 prints
    every rank's per-epoch seconds as one JSON line."""
    import prismrec  # noqa: F401  (sets the OpenMP wait policy before torch loads)
    import torch
    import torch.distributed as dist

    from prismrec.data import BPRSampler, load_dataset
    from prismrec.experiment.config import resolve_config
    from prismrec.models import get_model
    from prismrec.train import distributed
    from prismrec.train.trainer import seed_everything, train_epoch

    torch.set_num_threads(1)
    env = distributed.from_env()
    distributed.init(env, "cpu")
    data = load_dataset(dataset)
    cfg = resolve_config(model_name, data.name, MODEL_SETTINGS.get(model_name, {}).get(data.name, {}))
    seed_everything(cfg.train.seed)
    model = get_model(model_name)(data, cfg.params)
    distributed.broadcast_parameters(model, env)
    sampler = _Capped(BPRSampler(data.train, cfg.train.batch_size, cfg.train.negative_pool, cfg.train.seed),
                      max_batches)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)
    rows = []
    for epoch in range(epochs):
        model.train()
        model.on_epoch_start(epoch)
        distributed.barrier(env)
        wall, cpu = time.perf_counter(), time.process_time()
        row = train_epoch(model, sampler, optimizer, epoch, "cpu", None, env)
        rows.append({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                     "loss": row["loss"], **{k: row[k] for k in PHASES}})
    every = [rows]
    if env.active:
        every = [None] * env.world_size
        dist.all_gather_object(every, rows)
    if env.is_main:
        print(json.dumps({"ranks": every, "batch_size": cfg.train.batch_size}))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(model: str, dataset: str, ranks: int, epochs: int, max_batches: int) -> dict:
    """One measurement: ``ranks`` = 1 runs a plain process, more run under torchrun."""
    args = ["--child", model, dataset, str(epochs), str(max_batches)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    launcher = [sys.executable, "-m", "benchmarks.ddp"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port",
        str(_port()), "-m", "benchmarks.ddp"]
    load = os.getloadavg()[0]
    done = subprocess.run(launcher + args, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{model} on {ranks} rank(s) failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    later = lambda rows, key: statistics.median(r[key] for r in rows[1:] or rows)  # noqa: E731
    per_rank = [{k: later(rows, k) for k in ("wall_s", "cpu_s", *PHASES)} for rows in out["ranks"]]
    return {"ranks": ranks, "load": load, "batch_size": out["batch_size"],
            "wall_s": max(r["wall_s"] for r in per_rank),  # the step waits for the slowest rank
            "cpu_s": statistics.mean(r["cpu_s"] for r in per_rank),
            **{k: statistics.mean(r[k] for r in per_rank) for k in PHASES},
            "losses": [[r["loss"] for r in rows] for rows in out["ranks"]][0]}


def render(results: dict) -> str:
    """The markdown table of ``results``."""
    k = results["ranks"]
    lines = [
        "# Data-parallel training on CPU (gloo): one process against "
        f"{k} ranks, the same global batches",
        "",
        f"{results['dataset']}, {results['max_batches']} batches per epoch, {results['epochs']} epochs "
        f"(the first a warm-up), 1 thread per process, {results['rounds']} rounds (one process and "
        f"{k} ranks back to back in each); medians. CPU s: a process's own CPU seconds per epoch (mean "
        "over ranks); wall s: the slowest rank's. forward/backward: the trainer's phases per epoch "
        "(wall, mean over ranks). Load: 1-minute load average when each run started (the machine "
        f"has {os.cpu_count()} cores).",
        "",
        f"| model | batch | CPU s (1) | CPU s ({k} ranks) | CPU speed-up | forward s (1 / {k}) | "
        f"backward s (1 / {k}) | wall s (1 / {k}) | wall speed-up | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, cell in results["models"].items():
        one, many = cell["one"], cell["many"]
        lines.append(
            f"| {model} | {one['batch_size']} | {one['cpu_s']:.2f} | {many['cpu_s']:.2f} | "
            f"{one['cpu_s'] / many['cpu_s']:.2f} | {one['forward_s']:.2f} / {many['forward_s']:.2f} | "
            f"{one['backward_s']:.2f} / {many['backward_s']:.2f} | {one['wall_s']:.2f} / {many['wall_s']:.2f} | "
            f"{one['wall_s'] / many['wall_s']:.2f} | {cell['load']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        model, dataset, epochs, max_batches = argv[1:5]
        child(model, dataset, int(epochs), int(max_batches))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lightgcn,mgcn")
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-batches", type=int, default=12, help="global batches per epoch (0: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="ddp", help="results/<name>.{json,md}")
    args = parser.parse_args(argv)
    runs: dict[str, dict[int, list]] = {m: {1: [], args.ranks: []} for m in args.models.split(",")}
    for r in range(args.rounds):
        for model in runs:
            for ranks in (1, args.ranks) if r % 2 == 0 else (args.ranks, 1):  # alternate which goes first
                runs[model][ranks].append(run(model, args.dataset, ranks, args.epochs, args.max_batches))
                print(f"[ddp] round {r + 1}: {model} on {ranks} rank(s): "
                      f"{runs[model][ranks][-1]['cpu_s']:.2f} CPU s/epoch", flush=True)

    def median(cells: list[dict]) -> dict:
        keys = ("wall_s", "cpu_s", *PHASES)
        return {"batch_size": cells[0]["batch_size"], **{k: statistics.median(c[k] for c in cells) for k in keys}}

    results = {"dataset": args.dataset, "ranks": args.ranks, "epochs": args.epochs,
               "max_batches": args.max_batches, "rounds": args.rounds, "cpus": os.cpu_count(),
               "models": {m: {"one": median(c[1]), "many": median(c[args.ranks]),
                              "load": f"{min(x['load'] for x in c[1] + c[args.ranks]):.1f}-"
                                      f"{max(x['load'] for x in c[1] + c[args.ranks]):.1f}",
                              "runs": c} for m, c in runs.items()}}
    atomic_write(RESULTS / f"{args.name}.json", json.dumps(results, indent=2))
    atomic_write(RESULTS / f"{args.name}.md", render(results))
    print(render(results))


if __name__ == "__main__":
    main()
