"""SIGER against LightGCN, FREEDOM, MGCN and GUME (tiktok, lfm2k), and its ablations (§5.5).

    python -m benchmarks.siger [--ablation-seeds 3] [--threads 1] [--report-only]

Writes ``results/siger.{json,md}``; trained cells: ``runs/bench-multimodal``, ``runs/bench-siger-ablation``.
"""

from __future__ import annotations

from benchmarks.common import write
from benchmarks.study import arguments, study

# label -> SIGER's changed settings (``[]`` = the full model); read by benchmarks/headline.py.
ABLATIONS: dict[str, list[str]] = {
    "SIGER (full model)": [],
    "w/o CI (beta = 0)": ["beta=0"],
    "w/o MPP (lambda_p = 0)": ["lambda_p=0"],
    "fixed-eps perturbation (GUME)": ["perturb_mode=fixed"],
    "uniform relative noise (gamma = 0)": ["gamma=0"],
    "w/o A-InfoNCE (lambda_a = 0)": ["lambda_a=0"],
    "w/o standard InfoNCE (lambda_b = 0)": ["lambda_b=0"],
    "A-InfoNCE -> cross-modal InfoNCE": ["anchor_form=A3", "anchor_gate=false"],
    "CI only (beta = 1)": ["beta=1"],
}


def main() -> None:
    args = arguments(__doc__)
    data, md = study("siger", ["lightgcn", "freedom", "mgcn", "gume"], ABLATIONS, args, title="SIGER")
    write("siger", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
