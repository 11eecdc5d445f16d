"""Multimodal baselines on the real two-modality datasets (issue: multimodal substrate).

``prismrec compare`` of LightGCN, VBPR, FREEDOM, MGCN, GUME and RLMultimodalRec on tiktok (image + audio) and
lfm2k (text + audio), 3 seeds, default settings. Trained cells live in ``runs/bench-multimodal``
(resumable); the summary goes to ``results/multimodal.{json,md}``.

    python -m benchmarks.multimodal [--models lightgcn,vbpr,...] [--datasets tiktok,lfm2k]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import RESULTS, atomic_write

MODELS = ["lightgcn", "vbpr", "freedom", "mgcn", "gume", "rlmmrec"]
MULTIMODAL = ["vbpr", "freedom", "mgcn", "gume", "rlmmrec", "siger", "egra"]
# lfm2k also ships audio_whisper; the benchmark uses the text + audio pair the issue names.
MODALITIES = {"tiktok": "[image,audio]", "lfm2k": "[text,audio]"}
# Settings a model needs on a dataset whose modalities are not one image-like and one text-like
# (prismrec.nn.roles hands the papers' image/text parts out by name; lfm2k is text+audio, tiktok
# image+audio), one place for every benchmark (multimodal, headline, floors, robustness, coldstart,
# ddp). FREEDOM's and DRAGON's graph weights: equal, the neutral choice and the one validation
# selected on lfm2k (results/freedom_grid.md). SMORE's and MMGCN's parts and LGMRec's contrastive
# order: the first modality in the image part, which is what the positional rule did before parts
# went by name (so recorded cells keep their meaning). RLMultimodalRec's feature scaling: the one
# validation selected per dataset (results/feature_scaling.md: raw on tiktok, standardised on lfm2k).
PARTS = {"tiktok": {"modality_roles": ["image", "text"]}, "lfm2k": {"modality_roles": ["image", "text"]}}
EQUAL = {"tiktok": {"mm_weights": [0.5, 0.5]}, "lfm2k": {"mm_weights": [0.5, 0.5]}}
MODEL_SETTINGS = {
    "freedom": EQUAL,
    "dragon": EQUAL,
    "smore": PARTS,
    "mmgcn": PARTS,
    "lgmrec": {"tiktok": {"hcl_order": ["image", "audio"]}, "lfm2k": {"hcl_order": ["text", "audio"]}},
    "rlmmrec": {"tiktok": {"feature_norm": "none"}, "lfm2k": {"feature_norm": "standardize"}},
}


REPORT_ONLY = "--report-only" in sys.argv  # summarise finished cells, train nothing


def compare(models: list[str], dataset: str, out: Path, extra: list[str] = (), seeds: int = 3) -> dict:
    """Run ``prismrec compare`` for one dataset; returns its results.json."""
    cmd = [sys.executable, "-m", "prismrec", "compare", "--models", ",".join(models),
           "--datasets", dataset, "--n-seeds", str(seeds), "--out", str(out)]
    if REPORT_ONLY:
        cmd.append("--report-only")
    for model in models:
        if model in MULTIMODAL:
            cmd += ["--set", f"{model}.modalities={MODALITIES[dataset]}"]
        for key, value in MODEL_SETTINGS.get(model, {}).get(dataset, {}).items():
            cmd += ["--set", f"{model}.{key}={json.dumps(value).replace(' ', '')}"]
    for item in extra:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True)
    return json.loads((out / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--datasets", default="tiktok,lfm2k")
    parser.add_argument("--runs", default="runs/bench-multimodal")
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = default)")
    args = parser.parse_args()
    extra = [f"threads={args.threads}"] if args.threads else []
    md = ["# Multimodal baselines", ""]
    merged = {}
    for dataset in args.datasets.split(","):
        out = Path(args.runs) / dataset
        merged[dataset] = compare(args.models.split(","), dataset, out, extra)
        md.append((out / "results.md").read_text().split("\n", 4)[-1])  # drop the per-file title
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS / "multimodal.json", json.dumps(merged, indent=2))
    atomic_write(RESULTS / "multimodal.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
