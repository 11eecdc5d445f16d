"""RLMultimodalRec against LightGCN and VBPR (tiktok, lfm2k), its ablations on tiktok, and the
feature-scaling study on lfm2k (raw VGGish audio has row norms ~1500, text 1).

    python -m benchmarks.rlmmrec [--ablation-seeds 3] [--threads 1] [--report-only]

Writes ``results/rlmmrec.{json,md}``; trained cells: ``runs/bench-multimodal``,
``runs/bench-rlmmrec-ablation``.
"""

from __future__ import annotations

from benchmarks.common import write
from benchmarks.study import arguments, study

ABLATIONS = {
    "gate (full model)": [],
    "concat fusion": ["fusion=concat"],
    "mean fusion": ["fusion=mean"],
    "first modality only": ["fusion=first_only"],  # tiktok: image; lfm2k: text
    "second modality only": ["fusion=second_only"],  # audio on both
    "1 layer": ["n_layers=1"],
    "3 layers": ["n_layers=3"],
    "no item ID embedding": ["item_input=content_only"],
    "scalar gate": ["gate=scalar"],
}
FEATURE_SCALING = {  # on lfm2k the main cell is standardize (benchmarks.multimodal.MODEL_SETTINGS)
    "standardize (default; validation's choice on lfm2k)": [],
    "raw features (feature_norm=none)": ["feature_norm=none"],
    "feature_norm=l2": ["feature_norm=l2"],
}


def main() -> None:
    args = arguments(__doc__)
    data, md = study("rlmmrec", ["lightgcn", "vbpr"], ABLATIONS, args, title="RLMultimodalRec")
    args.skip, args.ablation_datasets = "main", "lfm2k"
    scaling, lines = study("rlmmrec", [], FEATURE_SCALING, args, title="",
                           ablation_title="Feature scaling on lfm2k (raw VGGish audio: row norms ~1500; text: 1)")
    data["feature_scaling"] = scaling["ablation"]
    write("rlmmrec", data, "\n".join(md + lines[4:]) + "\n")


if __name__ == "__main__":
    main()
