"""EGRA against LightGCN, FREEDOM, MGCN and GUME (tiktok, lfm2k), its ablations (§6.6) and the
long-tail split of the main comparison.

Stage 1 is the main comparison's MGCN cell (``runs/bench-multimodal/<dataset>/<dataset>/mgcn``,
trained on the train split, selected on validation): with ``pretrain_per_seed`` every EGRA seed
reads the MGCN run of the same seed, so MGCN must have finished its seeds first.

    python -m benchmarks.egra [--ablation-seeds 3] [--threads 1] [--report-only]

Writes ``results/egra.{json,md}``; trained cells: ``runs/bench-multimodal``, ``runs/bench-egra-ablation``.
"""

from __future__ import annotations

from benchmarks.common import write
from benchmarks.study import arguments, long_tail, study

BASELINES = ["lightgcn", "freedom", "mgcn", "gume"]
PRETRAINED = "runs/bench-multimodal/{dataset}/{dataset}/{model}"
ABLATIONS = {
    "EGRA (full model, MGCN links)": [],
    "w/o EBG (gamma = 0)": ["gamma=0"],
    "EBG-raw (GUME's raw-feature links)": ["item_links=raw"],
    "w/o entity level": ["entity_weighting=none"],
    "w/o epoch level": ["schedule=constant"],
    "FREEDOM as pretrained model": ["pretrained=" + PRETRAINED.replace("{model}", "freedom")],
    "w/o both levels": ["entity_weighting=none", "schedule=constant"],
    "entity sign +1": ["entity_sign=1"],
}


def main() -> None:
    args = arguments(__doc__)
    data, md = study("egra", BASELINES, ABLATIONS, args, title="EGRA",
                     settings=lambda ds: ["egra.pretrained=" + PRETRAINED.format(dataset=ds, model="mgcn")])
    if "main" not in args.skip:
        data["long_tail"] = {}
        for dataset in args.datasets.split(","):
            data["long_tail"][dataset], lines = long_tail([*BASELINES, "egra"], dataset)
            md += lines
    write("egra", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
