"""Baselines that trail LightGCN, tuned on validation only: a small grid per model, one seed (999)
per point, then the point with the best valid Recall@20 with 3 seeds (test evaluated once per run).

- ``vbpr`` on tiktok and lfm2k: ``reg_weight`` ∈ {1e-4 (default), 1e-2, 1e-1, 1, 10} ×
  ``feature_norm`` ∈ {none (MMRec's raw features), standardize}. BPR-MF (VBPR without its content
  part, default settings, 3 seeds) is the reference for what the features add.
- ``freedom`` on lfm2k: ``mm_weights`` ∈ {(0.1, 0.9) (default, the reference's image/text split:
  the second modality, here raw VGGish audio, gets 0.9), (0.5, 0.5), (0.9, 0.1)} for (text, audio).

    python -m benchmarks.grid [--models vbpr,freedom] [--threads 1] [--report-only]

Writes ``results/<model>_grid.{json,md}``; cells in ``runs/bench-<model>-grid/<dataset>/<point>``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from benchmarks.common import write
from benchmarks.multimodal import compare
from benchmarks.study import HEADER, row, slug

# model: (axes of the grid, datasets, reference model or None)
GRIDS = {
    "vbpr": ({"reg_weight": ["1e-4", "1e-2", "1e-1", "1", "10"], "feature_norm": ["none", "standardize"]},
             ["tiktok", "lfm2k"], "bpr"),
    "freedom": ({"mm_weights": ["[0.1,0.9]", "[0.5,0.5]", "[0.9,0.1]"]}, ["lfm2k"], None),
}


def grid(model: str, extra: list[str]) -> tuple[dict, list[str]]:
    axes, datasets, reference = GRIDS[model]
    points = [[f"{k}={v}" for k, v in zip(axes, values)] for values in itertools.product(*axes.values())]
    runs = Path(f"runs/bench-{model}-grid")
    md = [f"# {model}: {' x '.join(axes)}, selected on validation", "",
          "One seed (999) per grid point; the point with the best valid Recall@20 is then run with "
          "3 seeds. Test metrics shown for every point, but only validation selects.", ""]
    data: dict = {}
    for dataset in datasets:
        cells = {slug(p): compare([model], dataset, runs / dataset / slug(p), extra + [f"{model}.{s}" for s in p], 1)
                 ["cells"][dataset][model] for p in points}
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
        md += ["", *HEADER]
        if best is not None:
            chosen = next(p for p in points if slug(p) == best)
            final = compare([model], dataset, runs / dataset / best, extra + [f"{model}.{s}" for s in chosen], 3)
            data[dataset]["selected_3_seeds"] = final["cells"][dataset][model]
            md.append(row(f"{model} {best}", data[dataset]["selected_3_seeds"]))
        if reference:
            cell = compare([reference], dataset, runs / dataset / reference, extra, 3)["cells"][dataset][reference]
            data[dataset][reference] = cell
            md.append(row(f"{reference} (default settings)", cell))
        md.append("")
    return data, md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(GRIDS))
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = default)")
    args = parser.parse_args()
    extra = [f"threads={args.threads}"] if args.threads else []
    for model in args.models.split(","):
        data, md = grid(model, extra)
        write(f"{model}_grid", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
