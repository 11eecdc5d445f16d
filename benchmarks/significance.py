"""Paired per-user tests behind the papers' claims, on the 3-seed cells of ``benchmarks.multimodal``
(and of the ablation variants in ``VARIANTS`` that have three seeds).

For each pair (A, B) and dataset: test Recall@20 and NDCG@20 per user, averaged over the three
seeds of each model, then A - B with a bootstrap 95 % interval and paired t / Wilcoxon p-values
(``prismrec significance``). Cells that are not trained yet are listed as missing.

    python -m benchmarks.significance [--datasets tiktok,lfm2k] [--threads 2]

Writes ``results/significance.{json,md}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import write
from prismrec.experiment.rundir import RunDir
from prismrec.experiment.significance import paired_test

PAIRS = [  # (A, B), reported as A - B: the claim (or the ablation's question) is "A beats B"
    ("mgcn", "lightgcn"),
    ("siger", "mgcn"),
    ("siger", "gume"),
    ("egra", "gume"),
    ("egra", "mgcn"),
    ("gume", "mgcn"),
    ("egra w/o epoch level", "egra"),
    ("egra w/o epoch level", "mgcn"),
    ("egra w/o EBG", "egra"),
]
VARIANTS = {  # ablation cells of benchmarks.egra, by label
    "egra w/o epoch level": "runs/bench-egra-ablation/{dataset}/schedule=constant/{dataset}/egra",
    "egra w/o EBG": "runs/bench-egra-ablation/{dataset}/gamma=0/{dataset}/egra",
}
METRICS = ("recall@20", "ndcg@20")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="tiktok,lfm2k")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {}
    md = ["# Paired per-user tests (test split, 3 seeds per model averaged per user)", "",
          "A - B with a 95 % bootstrap interval of the mean over users; p from the paired t-test and the "
          "Wilcoxon signed-rank test. The table's seed-level ± says how much a mean moves with the seed; "
          "this says whether the users' gains could be chance.", ""]
    for dataset in args.datasets.split(","):
        md += [f"## {dataset}", "", "| A vs B | metric | A | B | A - B [95 % CI] | p (t) | p (Wilcoxon) |",
               "|---|---|---|---|---|---|---|"]
        for a, b in PAIRS:
            folders = [Path(VARIANTS[m].format(dataset=dataset)) if m in VARIANTS else
                       Path("runs/bench-multimodal") / dataset / dataset / m for m in (a, b)]
            if not all(sum(d.is_finished() for d in RunDir(f).seed_dirs()) >= 3 for f in folders):
                md.append(f"| {a} vs {b} | | cells missing or fewer than 3 seeds | | | | |")
                continue
            for metric in METRICS:
                r = paired_test(*folders, metric)
                results.setdefault(dataset, {})[f"{a} vs {b} {metric}"] = r
                low, high = r["bootstrap_95"]
                md.append(f"| {a} vs {b} | {metric} | {r['a']['mean']:.4f} | {r['b']['mean']:.4f} | "
                          f"{r['mean_difference']:+.4f} [{low:+.4f}, {high:+.4f}] | {r['p_paired_t']:.2g} | "
                          f"{r['p_wilcoxon']:.2g} |")
                print(md[-1], flush=True)
        md.append("")
    write("significance", results, "\n".join(md))


if __name__ == "__main__":
    main()
