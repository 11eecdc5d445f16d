"""LightGCN epochs in prismrec and RecBole, side by side in one invocation, on the same split.

1. A virtualenv of its own (``runs/peers-venv``, not tracked) gets RecBole and the torch version
   prismrec runs on, the first time (``--venv`` elsewhere; RecBole 1.2.1 by default).
2. The dataset's split, as prismrec loads it, is written as RecBole atomic files
   (``runs/peers-data/<name>/<name>.{train,valid,test}.inter``), so both frameworks train on the
   same interactions and validate on the same users (RecBole's ``benchmark_filename`` mode).
3. Rounds alternate the frameworks (order flipped every round), each a fresh process pinned to
   one core (``taskset`` when present) with one thread: 1 warm-up + N epochs, the training pass
   and the validation (full ranking, all metrics at K = 5, 10, 20, 50) timed apart. Same
   settings on both sides: embedding 64, ``--layers`` layers, batch 2048, lr 1e-3, reg 1e-4,
   4096 users per validation batch.

Reports per framework the median over rounds of each round's median epoch, the range over
rounds, RecBole / prismrec ratios, and the 1-minute load average before every process. Writes
``results/peers.{json,md}``.

    python -m benchmarks.peers [--dataset baby] [--epochs 3] [--rounds 3] [--layers 3] [--core 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECBOLE = "recbole==1.2.1"


def ensure_venv(venv: Path, torch_version: str, log=print) -> Path:
    """The peers virtualenv's python, creating it with RecBole and ``torch_version`` if absent."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import recbole"], capture_output=True).returncode == 0:
        return python
    log(f"creating {venv} with {RECBOLE} and torch=={torch_version} (minutes, once)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", f"torch=={torch_version}", RECBOLE], check=True)
    return python


def write_atomic_files(dataset, folder: Path) -> Path:
    """Write ``dataset``'s train/valid/test splits as RecBole atomic files; returns their parent folder."""
    out = folder / dataset.name
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        m = getattr(dataset, split).tocoo()
        path = out / f"{dataset.name}.{split}.inter"
        tmp = path.with_suffix(".tmp")
        lines = "".join(f"{u}\t{i}\n" for u, i in zip(m.row.tolist(), m.col.tolist()))
        tmp.write_text("user_id:token\titem_id:token\n" + lines)
        tmp.replace(path)
    return folder


def prismrec_worker(args: dict) -> dict:
    """prismrec side (run in a fresh process): the same epochs through prismrec's trainer pieces."""
    import torch

    torch.set_num_threads(args["threads"])
    from benchmarks.epoch_speed import breakdown
    from prismrec.data import load_dataset
    from prismrec.experiment.config import resolve_config
    from prismrec.models import get_model
    from prismrec.train.allocator import keep_freed_memory
    from prismrec.train.trainer import seed_everything

    keep_freed_memory()  # as `prismrec train` does
    settings = {"embedding_size": args["dim"], "n_layers": args["n_layers"], "reg_weight": args["reg_weight"],
                "lr": args["lr"], "batch_size": args["batch_size"], "eval_batch_size": args["eval_users"],
                "topk": args["topk"]}
    t0 = time.perf_counter()
    data = load_dataset(args["dataset"])
    cfg = resolve_config("lightgcn", data.name, settings)
    seed_everything(cfg.train.seed)
    model = get_model("lightgcn")(data, cfg.params)
    setup_s = time.perf_counter() - t0  # as RecBole's: the data read and the model built
    br = breakdown("lightgcn", data, args["epochs"], model=model, settings=settings)
    import prismrec

    return {"framework": f"prismrec {prismrec.__version__}", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "setup_s": setup_s, "train_s": br["train_s_runs"],
            "valid_s": br["eval_s_runs"], "sizes": {"users": data.n_users, "items": data.n_items,
                                                    "train": int(data.train.nnz)}}


def run_worker(framework: str, python: Path, args: dict, core: int | None, scratch: Path) -> dict:
    """One framework's epochs in a fresh, pinned, one-thread process; its JSON result."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    if framework == "prismrec":
        cmd = [sys.executable, "-m", "benchmarks.peers", "--worker", json.dumps(args)]
        cwd = HERE.parent
    else:
        cmd = [str(python), str(HERE / "peers_recbole.py"), json.dumps(args)]
        cwd = scratch
    if core is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(core)] + cmd
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{framework} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    """Median over rounds of each round's median train / valid / epoch seconds, and their ranges."""
    out = {}
    for part in ("train_s", "valid_s", "epoch_s"):
        per_round = [statistics.median(r[part]) for r in runs]
        out[part] = {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round),
                     "rounds": per_round}
    out["setup_s"] = statistics.median(r["setup_s"] for r in runs)
    out["load1"] = [r["load1"] for r in runs]
    first = runs[0]
    out.update(framework=first["framework"], torch=first["torch"], threads=first["threads"],
               sizes=first["sizes"], shim=first.get("shim", []))
    return out


def markdown(res: dict) -> str:
    p, r = res["frameworks"]["prismrec"], res["frameworks"]["recbole"]
    a = res["settings"]

    def cell(x, part):
        return f"{x[part]['median']:.2f} ({x[part]['min']:.2f}-{x[part]['max']:.2f})"

    lines = [f"# LightGCN on {a['dataset']}: prismrec and RecBole in one invocation", "",
             f"Run {res['date']}; 1 thread each, pinned to core {res['core']}; {a['rounds']} rounds "
             f"alternating the frameworks, each a fresh process: 1 warm-up + {a['epochs']} epochs; "
             f"embedding {a['dim']}, {a['n_layers']} layers, batch {a['batch_size']}, lr {a['lr']}, "
             f"reg {a['reg_weight']}, {a['eval_users']} users per validation batch, full ranking, "
             f"all metrics at K = {', '.join(map(str, a['topk']))}. Median over rounds of each round's "
             "median (range over rounds).", "",
             "| framework | train s/epoch | valid s | epoch s | setup s | 1-min load before each round |",
             "|---|---|---|---|---|---|"]
    for x in (p, r):
        lines.append(f"| {x['framework']} (torch {x['torch']}) | {cell(x, 'train_s')} | {cell(x, 'valid_s')} | "
                     f"**{cell(x, 'epoch_s')}** | {x['setup_s']:.1f} | {', '.join(f'{v:.2f}' for v in x['load1'])} |")
    ratio = res["ratios"]
    lines += ["", f"RecBole / prismrec: training **{ratio['train_s']:.1f}x**, validation "
              f"**{ratio['valid_s']:.1f}x**, epoch **{ratio['epoch_s']:.1f}x**.", "",
              f"Same split: {p['sizes']['users']} users, {p['sizes']['items']} items, {p['sizes']['train']} "
              f"training interactions (RecBole read {r['sizes']['users']} / {r['sizes']['items']} / "
              f"{r['sizes']['train']}). Setup = reading the data and building the model, not in the epoch.",
              "RecBole compatibility shim (ours, applied only where the installed NumPy / SciPy lack what RecBole "
              f"calls): {', '.join(r['shim']) or 'none needed'}.",
              "", "For reference only, not measured in this invocation: MMRec's LightGCN on baby, timed "
              "with MMRec's own code on this machine kind for issue 19 (1 thread, pinned): 13.84 s "
              "training + 3.50 s validation + 3.62 s test per epoch (MMRec evaluates test every epoch)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="baby")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--core", type=int, default=0, help="core to pin both frameworks to (-1: no pinning)")
    parser.add_argument("--venv", type=Path, default=Path("runs/peers-venv"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(prismrec_worker(json.loads(args.worker))))
        return
    import torch

    from prismrec.data import load_dataset

    python = ensure_venv(args.venv.resolve(), torch.__version__.split("+")[0])
    data = load_dataset(args.dataset)
    data_path = write_atomic_files(data, Path("runs/peers-data").resolve())
    scratch = Path("runs/peers-work").resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    settings = {"dataset": args.dataset, "data_path": str(data_path), "epochs": args.epochs, "dim": 64,
                "n_layers": args.layers, "reg_weight": 1e-4, "lr": 1e-3, "batch_size": 2048, "eval_users": 4096,
                "topk": [5, 10, 20, 50], "threads": 1, "n_items": data.n_items, "rounds": args.rounds}
    core = None if args.core < 0 else args.core
    runs = {"prismrec": [], "recbole": []}
    for rnd in range(args.rounds):
        order = ["prismrec", "recbole"] if rnd % 2 == 0 else ["recbole", "prismrec"]
        for framework in order:
            load1 = os.getloadavg()[0]
            row = run_worker(framework, python, settings, core, scratch)
            row["epoch_s"] = [t + v for t, v in zip(row["train_s"], row["valid_s"])]
            row["load1"] = load1
            runs[framework].append(row)
            print(rnd, framework, f"train {statistics.median(row['train_s']):.2f}",
                  f"valid {statistics.median(row['valid_s']):.2f}", f"load {load1:.2f}", flush=True)
    frameworks = {k: summarise(v) for k, v in runs.items()}
    ratios = {part: frameworks["recbole"][part]["median"] / frameworks["prismrec"][part]["median"]
              for part in ("train_s", "valid_s", "epoch_s")}
    from benchmarks.common import machine, write

    res = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "core": core,
           "settings": settings, "frameworks": frameworks, "ratios": ratios,
           "runs": {k: [{p: v[p] for p in ("train_s", "valid_s", "setup_s", "load1")} for v in rs]
                    for k, rs in runs.items()}}
    res["settings"].pop("data_path")
    write("peers", res, markdown(res))


if __name__ == "__main__":
    main()
