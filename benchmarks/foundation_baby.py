"""Foundation benchmark on baby: BPR-MF and LightGCN quality, evaluation cost, epoch breakdown.

1. ``prismrec compare --models bpr,lightgcn --datasets baby --n-seeds 3`` (MMRec defaults;
   resumable, trained cells live in ``runs/bench-foundation-baby``) -> results/foundation_baby_compare.*
2. For the trained LightGCN (seed 999): one validation evaluation against its floor, the bare
   users x items GEMM + top-k on the same embeddings and user batches (median of 7 runs).
3. Where a LightGCN epoch goes: sampling, forward (propagation + loss), backward, optimiser,
   validation — medians over 7 epochs continued from the trained state. Comparisons with other
   frameworks come from ``benchmarks/peers.py`` (same invocation, same split), not from here.

    python -m benchmarks.foundation_baby
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine, median_time, write
from benchmarks.epoch_speed import breakdown
from prismrec.data import load_dataset
from prismrec.eval import Evaluator
from prismrec.experiment.config import resolve_config
from prismrec.experiment.rundir import load_weights
from prismrec.models import get_model
from prismrec.train.allocator import keep_freed_memory

RUNS = Path("runs/bench-foundation-baby")


def run_compare() -> dict:
    # one cell at a time, every core (its s/epoch columns as recorded before compare's side-by-side default)
    cmd = [sys.executable, "-m", "prismrec", "compare", "--models", "bpr,lightgcn",
           "--datasets", "baby", "--n-seeds", "3", "--out", str(RUNS), "--workers", "1"]
    subprocess.run(cmd, check=True)
    for ext in ("json", "md"):
        shutil.copy(RUNS / f"results.{ext}", RESULTS / f"foundation_baby_compare.{ext}")
    return json.loads((RUNS / "results.json").read_text())


def trained_lightgcn(data):
    cfg = resolve_config("lightgcn", "baby")
    model = get_model("lightgcn")(data, cfg.params)
    model.load_state_dict(load_weights(RUNS / "baby/lightgcn/seed-999/model.pt"))
    return model, cfg


def evaluation_vs_floor(model, data, cfg) -> dict:
    evaluator = Evaluator(data, ks=cfg.train.topk, batch_size=cfg.train.eval_batch_size)
    model.eval()
    with torch.no_grad():
        out = model()
    users = torch.from_numpy((data.valid.getnnz(axis=1) > 0).nonzero()[0])
    k = max(cfg.train.topk)

    def floor():
        for start in range(0, len(users), cfg.train.eval_batch_size):
            torch.topk(out.user[users[start : start + cfg.train.eval_batch_size]] @ out.item.T, k, dim=1)

    def full():
        evaluator.evaluate(model, "valid", out=out)

    def forward():
        with torch.no_grad():
            model()

    return {
        "users": int(len(users)),
        "evaluation_s": median_time(full),
        "floor_gemm_topk_s": median_time(floor),
        "eval_forward_s": median_time(forward),
    }


def main() -> None:
    keep_freed_memory()  # as `prismrec train` does
    torch.set_num_threads(2)
    results = run_compare()
    data = load_dataset("baby")
    model, cfg = trained_lightgcn(data)
    ev = evaluation_vs_floor(model, data, cfg)
    br = breakdown("lightgcn", data, epochs=7, model=model)
    ours = br["train_s"] + br["eval_s"]
    load = os.getloadavg()
    data_out = {
        "machine": machine(),
        "compare": results["cells"]["baby"],
        "evaluation": ev,
        "epoch_breakdown": br,
        "load_average": load,
    }
    ratio = ev["evaluation_s"]["median"] / ev["floor_gemm_topk_s"]["median"]
    md = [
        "# Foundation benchmark: baby", "", f"{machine()}; load average (1, 5, 15 min) after the "
        f"timings: {tuple(round(x, 2) for x in load)}", "",
        (RESULTS / "foundation_baby_compare.md").read_text(), "",
        "## One validation evaluation (LightGCN, seed 999), median of 7", "",
        "| what | seconds |", "|---|---|",
        f"| prismrec evaluation ({ev['users']} users, all metrics at K=5,10,20,50) | {ev['evaluation_s']['median']:.3f} |",
        f"| floor: bare GEMM + top-{max(cfg.train.topk)} on the same embeddings | {ev['floor_gemm_topk_s']['median']:.3f} |",
        f"| ratio evaluation / floor | {ratio:.2f} |",
        f"| eval-mode forward (once per evaluation, not in the floor) | {ev['eval_forward_s']['median']:.4f} |", "",
        f"## Where a LightGCN epoch goes (median of {br['epochs']} epochs)", "",
        "| part | seconds |", "|---|---|",
        *(f"| {k[:-2]} | {br[k]:.3f} |" for k in ("sample_s", "forward_s", "backward_s", "optim_s")),
        f"| training epoch (total) | {br['train_s']:.3f} |",
        f"| validation | {br['eval_s']:.3f} |",
        f"| **epoch (train + valid)** | **{ours:.3f}** |", "",
        "Against other frameworks: `python -m benchmarks.peers` (RecBole side by side, same split, "
        "same invocation; results/peers.md).", "",
    ]
    write("foundation_baby", data_out, "\n".join(md))


if __name__ == "__main__":
    main()
