"""Which raw-feature scaling does validation select, for models that add projected raw features to
ID embeddings? One seed (999) per point, the benchmark's modality pair (``MODALITIES``), every
other setting at its default; each run trains on a copy of the dataset **without its test split**
(``evaluate_test=False``): the selection cannot read test, and no test metric is produced.

    python -m benchmarks.feature_scaling [--models rlmmrec] [--datasets tiktok,lfm2k] [--report-only]

Writes ``results/feature_scaling.{json,md}``; trained cells: ``runs/bench-feature-scaling/<model>/
<dataset>/<norm>`` (a rerun reuses finished cells). VBPR's comparison is in ``results/vbpr_grid.md``
(``feature_norm`` × ``reg_weight``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from benchmarks.common import write
from benchmarks.multimodal import MODALITIES

NORMS = ["none", "standardize", "l2"]
SEED = 999
RUNS = Path("runs/bench-feature-scaling")


def cell(model: str, dataset: str, norm: str, data, report_only: bool) -> dict | None:
    """Valid metrics of one point (None when not trained and ``report_only``)."""
    from prismrec.experiment.config import resolve_config
    from prismrec.experiment.runs import run_experiment

    out = RUNS / model / dataset / norm
    metrics = out / "metrics.json"
    if report_only:
        return json.loads(metrics.read_text()) if metrics.exists() else None
    settings = {"feature_norm": norm, "modalities": MODALITIES[dataset].strip("[]").split(","), "threads": 1}
    cfg = resolve_config(model, dataset, settings)
    blind = dataclasses.replace(data, test=None)  # what the selection sees: no test split
    return run_experiment(cfg, [SEED], out, dataset=blind, progress=False, evaluate_test=False)


def study(models: list[str], datasets: list[str], report_only: bool) -> tuple[dict, list[str]]:
    from prismrec.data import load_dataset

    md = ["# Raw-feature scaling selected on validation", "",
          f"One seed ({SEED}) per point; trained on a copy without the test split (test never read). "
          "Selection: best valid Recall@20.", ""]
    data: dict = {}
    for model in models:
        for dataset in datasets:
            loaded = None if report_only else load_dataset(dataset)
            cells = {norm: cell(model, dataset, norm, loaded, report_only) for norm in NORMS}
            done = {n: c for n, c in cells.items() if c and c.get("valid")}
            best = max(done, key=lambda n: done[n]["valid"]["recall@20"]) if done else None
            data.setdefault(model, {})[dataset] = {
                "modalities": MODALITIES[dataset], "seed": SEED, "selected": best,
                "points": {n: (None if c is None else {k: c.get(k) for k in ("valid", "best_epoch", "epochs", "test")})
                           for n, c in cells.items()},
            }
            md += [f"## {model} on {dataset} (modalities {MODALITIES[dataset]})", "",
                   "| feature_norm | valid R@20 | valid N@20 | best epoch (1-based) |", "|---|---|---|---|"]
            for norm, c in cells.items():
                if c and c.get("valid"):
                    mark = " **(selected)**" if norm == best else ""
                    md.append(f"| {norm}{mark} | {c['valid']['recall@20']:.4f} | {c['valid']['ndcg@20']:.4f} | "
                              f"{c['best_epoch'] + 1} |")
                else:
                    md.append(f"| {norm} | not run yet | | |")
            md.append("")
        md += decision(data[model])
    return data, md


def decision(cells: dict) -> list[str]:
    """The default where validation selects one scaling on every dataset; otherwise the scaling
    with the smallest worst-case relative loss of valid Recall@20 against each dataset's best."""
    valid = {ds: {n: p["valid"]["recall@20"] for n, p in c["points"].items() if p and p.get("valid")}
             for ds, c in cells.items()}
    if not valid or any(len(v) < len(NORMS) for v in valid.values()):
        return ["Decision: not every point has run yet.", ""]
    loss = {n: max(1 - v[n] / max(v.values()) for v in valid.values()) for n in NORMS}
    chosen = min(NORMS, key=lambda n: loss[n])
    lines = ["| feature_norm | worst relative loss vs each dataset's valid-best |", "|---|---|"]
    lines += [f"| {n}{' **(default)**' if n == chosen else ''} | {loss[n]:.1%} |" for n in NORMS]
    return ["## Decision", "", "Validation selects "
            + ", ".join(f"`{c['selected']}` on {ds}" for ds, c in cells.items())
            + ". The default is the scaling with the smallest worst-case loss:", "", *lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="rlmmrec")
    parser.add_argument("--datasets", default="lfm2k,tiktok")
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    args = parser.parse_args()
    data, md = study(args.models.split(","), args.datasets.split(","), args.report_only)
    write("feature_scaling", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
