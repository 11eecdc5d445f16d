"""RLMultimodalRec against LightGCN and VBPR (tiktok, lfm2k), and its ablations on tiktok.

The main comparison shares its trained cells with ``benchmarks/multimodal.py``
(``runs/bench-multimodal``; resumable, so nothing is trained twice). Each ablation is a
``prismrec compare`` of rlmmrec with one switch changed (``runs/bench-rlmmrec-ablation``).
Writes ``results/rlmmrec.{json,md}``.

    python -m benchmarks.rlmmrec
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import RESULTS
from benchmarks.multimodal import compare

ABLATIONS = {
    "gate (full model)": [],
    "concat fusion": ["fusion=concat"],
    "mean fusion": ["fusion=mean"],
    "image only": ["fusion=visual_only"],
    "audio only": ["fusion=text_only"],
    "1 layer": ["n_layers=1"],
    "3 layers": ["n_layers=3"],
    "no item ID embedding": ["item_input=content_only"],
    "scalar gate": ["gate=scalar"],
}
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def row(label: str, cell: dict) -> str:
    mean, std = cell["mean"]["test"], cell["std"]["test"]
    n = len(cell["per_seed"])
    return f"| {label} | " + " | ".join(f"{mean[m]:.4f}" + (f" ± {std[m]:.4f}" if n > 1 else "") for m in METRICS) + " |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = default)")
    parser.add_argument("--ablation-seeds", type=int, default=3, help="seeds per ablation variant")
    args = parser.parse_args()
    extra = [f"threads={args.threads}"] if args.threads else []
    header = ["| variant | R@10 | R@20 | N@10 | N@20 |", "|---|---|---|---|---|"]
    md, data = ["# RLMultimodalRec", "", "Test metrics, mean ± sample std over seeds 999, 1000, 1001; "
                "selection on valid Recall@20.", ""], {"main": {}, "ablation": {}}
    for dataset in ("tiktok", "lfm2k"):
        res = compare(["lightgcn", "vbpr", "rlmmrec"], dataset, Path("runs/bench-multimodal") / dataset, extra)
        cells = res["cells"][dataset]
        data["main"][dataset] = cells
        md += [f"## {dataset}", "", *header, *(row(m, cells[m]) for m in ("lightgcn", "vbpr", "rlmmrec")), ""]
    md += ["## Ablations on tiktok", "", f"Seeds per variant: {args.ablation_seeds} (the full model: 3).", "", *header]
    for label, settings in ABLATIONS.items():
        out = Path("runs/bench-multimodal/tiktok") if not settings else Path("runs/bench-rlmmrec-ablation") / settings[0]
        seeds = args.ablation_seeds if settings else 3
        res = compare(["rlmmrec"], "tiktok", out, extra + [f"rlmmrec.{s}" for s in settings], seeds)
        cell = res["cells"]["tiktok"]["rlmmrec"]
        data["ablation"][label] = cell
        md.append(row(label, cell))
    md += ["", "## Feature scaling on lfm2k (raw VGGish audio has row norms ~1500, text 1)", "",
           f"Seeds per variant: {args.ablation_seeds} (raw: 3).", "", *header,
           row("raw features (default)", data["main"]["lfm2k"]["rlmmrec"])]
    for norm in ("l2", "standardize"):
        out = Path("runs/bench-rlmmrec-featnorm") / norm
        res = compare(["rlmmrec"], "lfm2k", out, extra + [f"rlmmrec.feature_norm={norm}"], args.ablation_seeds)
        cell = res["cells"]["lfm2k"]["rlmmrec"]
        data.setdefault("feature_norm", {})[norm] = cell
        md.append(row(f"feature_norm={norm}", cell))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rlmmrec.json").write_text(json.dumps(data, indent=2))
    (RESULTS / "rlmmrec.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
