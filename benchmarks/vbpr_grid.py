"""Why VBPR trails LightGCN on tiktok and lfm2k: a grid of its regulariser and feature scaling,
selected on validation only, then the chosen setting with 3 seeds (test evaluated once per run).

Grid: ``reg_weight`` ∈ {1e-4 (default), 1e-2, 1e-1, 1, 10} × ``feature_norm`` ∈ {none (MMRec's raw
features), standardize}, one seed per point; selection on valid Recall@20.

    python -m benchmarks.vbpr_grid [--datasets tiktok,lfm2k] [--threads 1] [--report-only]

Writes ``results/vbpr_grid.{json,md}``; cells in ``runs/bench-vbpr-grid/<dataset>/<point>``
(the 3-seed runs of the default point are the main comparison's, ``runs/bench-multimodal``).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from benchmarks.common import write
from benchmarks.multimodal import compare
from benchmarks.study import row, slug, HEADER

GRID = {"reg_weight": ["1e-4", "1e-2", "1e-1", "1", "10"], "feature_norm": ["none", "standardize"]}
DEFAULT = ["reg_weight=1e-4", "feature_norm=none"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", default="tiktok,lfm2k")
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = default)")
    args = parser.parse_args()
    extra = [f"threads={args.threads}"] if args.threads else []
    points = [[f"{k}={v}" for k, v in zip(GRID, values)] for values in itertools.product(*GRID.values())]
    md = ["# VBPR: regulariser x feature scaling, selected on validation", "",
          "One seed (999) per grid point; the point with the best valid Recall@20 is then run with "
          "3 seeds. Test metrics shown for every point, but only validation selects.", ""]
    data: dict = {}
    for dataset in args.datasets.split(","):
        cells = {}
        for point in points:
            out = Path("runs/bench-vbpr-grid") / dataset / slug(point)
            cells[slug(point)] = compare(["vbpr"], dataset, out, extra + [f"vbpr.{s}" for s in point], 1)["cells"][dataset]["vbpr"]
        finished = {k: c for k, c in cells.items() if c.get("per_seed")}
        best = max(finished, key=lambda k: finished[k]["mean"]["valid"]["recall@20"]) if finished else None
        md += [f"## {dataset}", "", "| point | valid R@20 | test R@20 | test N@20 | epochs |", "|---|---|---|---|---|"]
        for key, cell in cells.items():
            if cell.get("per_seed"):
                mean = cell["mean"]
                md.append(f"| {key}{' **(selected)**' if key == best else ''} | {mean['valid']['recall@20']:.4f} | "
                          f"{mean['test']['recall@20']:.4f} | {mean['test']['ndcg@20']:.4f} | {cell['epochs'][0]} |")
            else:
                md.append(f"| {key} | not run yet | | | |")
        data[dataset] = {"grid": cells, "selected": best}
        if best is not None:
            chosen = next(p for p in points if slug(p) == best)
            out = Path("runs/bench-multimodal") / dataset if chosen == DEFAULT else Path("runs/bench-vbpr-grid") / dataset / best
            final = compare(["vbpr"], dataset, out, extra + [f"vbpr.{s}" for s in chosen], 3)["cells"][dataset]["vbpr"]
            data[dataset]["selected_3_seeds"] = final
            md += ["", *HEADER, row(f"vbpr {best}", final)]
        md.append("")
    write("vbpr_grid", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
