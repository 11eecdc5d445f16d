"""A seed model against its baselines, and one-switch ablations of it (RLMMRec, SIGER, EGRA).

The main comparison shares its trained cells with ``benchmarks/multimodal.py``
(``runs/bench-multimodal/<dataset>``; ``prismrec compare`` is resumable, so nothing is trained
twice). Each ablation is a ``prismrec compare`` of the model with its switches changed, in
``runs/bench-<model>-ablation/<dataset>/<variant>``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from benchmarks.multimodal import compare
from prismrec.experiment.rundir import RunDir

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
HEADER = ["| variant | seeds | R@10 | R@20 | N@10 | N@20 | epochs |", "|---|---|---|---|---|---|---|"]


def row(label: str, cell: dict) -> str:
    """One table row: test metrics mean ± sample std (std only with more than one seed)."""
    if not cell.get("per_seed"):
        return f"| {label} | 0 | not run yet | | | | |"
    mean, std, n = cell["mean"]["test"], cell["std"]["test"], len(cell["per_seed"])
    values = [f"{mean[m]:.4f}" + (f" ± {std[m]:.4f}" if n > 1 else "") for m in METRICS]
    return f"| {label} | {n} | " + " | ".join(values) + f" | {', '.join(map(str, cell['epochs']))} |"


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--datasets", default="tiktok,lfm2k", help="main comparison datasets")
    parser.add_argument("--ablation-datasets", default="tiktok")
    parser.add_argument("--ablation-seeds", type=int, default=3, help="seeds per ablation variant")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: main, ablation")
    parser.add_argument("--variants", default="", help="comma-separated ablation variants to run, by the "
                        "folder name of their cells (e.g. gamma=0,schedule=constant; the full model is "
                        "'default'); default all")
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = default)")
    return parser.parse_args()


def slug(settings: list[str]) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "+".join(settings)) or "default"


def study(model: str, baselines: list[str], ablations: dict, args, *, title: str,
          settings=lambda dataset: [], ablation_title: str = "Ablations on {dataset}") -> tuple[dict, list[str]]:
    """Train (or collect) the main comparison and the ablations; returns (data, markdown lines).

    ``ablations`` maps a label to the model's changed settings (``[]`` = the full model, whose
    cells are the main comparison's; ``{dataset}`` in a setting is replaced by the dataset's
    name); ``settings(dataset)`` gives ``MODEL.key=value`` settings
    every run of ``model`` on that dataset gets (e.g. EGRA's pretrained run).
    """
    extra = [f"threads={args.threads}"] if args.threads else []
    skip = set(args.skip.split(","))
    md = [f"# {title}", "", "Test metrics, mean ± sample std over seeds (999, 1000, 1001, ...); "
          "selection on valid Recall@20; `epochs` = epochs run per seed (best + patience 20).", ""]
    data: dict = {"main": {}, "ablation": {}}
    models = [*baselines, model]
    for dataset in args.datasets.split(",") if "main" not in skip else []:
        out = Path("runs/bench-multimodal") / dataset
        cells = compare(models, dataset, out, extra + settings(dataset))["cells"][dataset]
        data["main"][dataset] = cells
        md += [f"## {dataset}", "", *HEADER, *(row(m, cells[m]) for m in models if m in cells), ""]
    for dataset in args.ablation_datasets.split(",") if "ablation" not in skip else []:
        md += [f"## {ablation_title.replace('{dataset}', dataset)}", "", *HEADER]
        for label, changed in ablations.items():
            if args.variants and slug(changed) not in args.variants.split(","):
                continue
            if any("{tuned:" in s for s in changed):  # the headline study's tuned settings: run there
                continue
            if changed:
                out, seeds = Path(f"runs/bench-{model}-ablation") / dataset / slug(changed), args.ablation_seeds
            else:
                out, seeds = Path("runs/bench-multimodal") / dataset, 3
            scoped = [f"{model}.{s.replace('{dataset}', dataset)}" for s in changed]
            cell = compare([model], dataset, out, extra + settings(dataset) + scoped, seeds)["cells"][dataset][model]
            data["ablation"].setdefault(dataset, {})[label] = cell
            md.append(row(label, cell))
        md.append("")
    return data, md


def long_tail(models: list[str], dataset: str, runs: Path = Path("runs/bench-multimodal"),
              tail_share: float = 0.8) -> tuple[dict, list[str]]:
    """Test Recall@20 / NDCG@20 on the tail (least popular ``tail_share`` of items by training
    degree) and head items, per finished seed of each model's main cells (ALGORITHMS.md 6.6)."""
    import statistics

    from prismrec.experiment.evaluate import evaluate_run

    data, cache = {}, {}
    lines = [f"## Long tail on {dataset} (tail = least popular {tail_share:.0%} of items by training degree)", "",
             "| model | seeds | tail R@20 | tail N@20 | head R@20 | head N@20 |", "|---|---|---|---|---|---|"]
    for model in models:
        seeds = [d for d in RunDir(runs / dataset / dataset / model).seed_dirs() if d.is_finished()]
        per_seed = [evaluate_run(d.path, "test", tail_share=tail_share, ks=(20,), datasets=cache) for d in seeds]
        if not per_seed:
            continue
        data[model] = per_seed

        def cell(group: str, metric: str) -> str:
            values = [s[group][metric] for s in per_seed]
            return f"{statistics.mean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")

        lines.append(f"| {model} | {len(per_seed)} | " + " | ".join(
            cell(g, m) for g in ("tail", "head") for m in ("recall@20", "ndcg@20")) + " |")
    return data, lines + [""]
