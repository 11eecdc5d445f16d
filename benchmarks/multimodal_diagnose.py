"""Why a model trails (or beats) the ID-only LightGCN in the multimodal benchmark (defaults, 3 seeds).

``benchmarks.diagnose`` reads the headline study's tuned cells; this is its counterpart for the
cells of ``benchmarks.multimodal`` (each model at its defaults, on datasets the headline study
has not reached). Two pieces of evidence:

- **Variants on validation.** The model's benchmark settings with a setting (or a few) changed,
  each trained with seed 999 on the dataset without its test split (valid only, the benchmark's
  training protocol), next to the seed-999 validation metrics of the model's and LightGCN's
  recorded cells (same seed, same protocol). Test is not read.
- **Where the gap is.** The recorded per-user test metrics of the two models' cells
  (seed-averaged), by quartile of the users' train degree, with the mean paired difference
  (``benchmarks.diagnose.degree_groups``).

    python -m benchmarks.multimodal_diagnose --dataset tiktok --model bm3 --variants 'modalities=[]' 'n_layers=2 dropout=0.3' [--commit]

Each variant is recorded as it finishes (``results/diagnose/multimodal-<dataset>-<model>.json``; a
rerun skips it) and the markdown next to it is rebuilt from the record.
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks import diagnose, headline, multimodal

REFERENCE = "lightgcn"
SEED = 999
PREFIX = "multimodal-"


def run_variants(model: str, dataset: str, variants: list[str], data, commit: bool = False) -> dict:
    """Train the variants not yet recorded (each recorded, and committed with ``commit``, as it
    finishes), then rebuild the markdown; return the record. A record made at other benchmark
    settings is started afresh."""
    base = multimodal.settings(model, dataset)
    record = diagnose.load_record(f"{PREFIX}{dataset}-{model}", model, dataset, settings=base)
    return diagnose.record_variants(record, variants, {**base, "threads": 1},
                                    lambda v: multimodal.RUNS / "diagnose" / dataset / model / headline.slug([v]),
                                    data, write, commit)


def seed_valid(dataset: str, model: str) -> dict | None:
    """The seed-999 validation metrics and epochs of the model's recorded cell, if current."""
    record = multimodal.read_cell(multimodal.CELLS, dataset, model, SEED)
    if record is None or not multimodal.is_current(record, model, dataset):
        return None
    return {"valid": record["metrics"]["valid"], "epochs": record["metrics"]["epochs"]}


def write(record: dict, data, commit: bool = False) -> None:
    """Rebuild the record's markdown (and JSON) from the record and the benchmark's cells."""
    model, dataset = record["model"], record["dataset"]
    record["degree_groups"] = diagnose.degree_groups({m: multimodal.per_user_cell(dataset, m) for m in (model, REFERENCE)}, data)
    own = seed_valid(dataset, model)
    md = [f"# Why {model} trails or beats {REFERENCE} on {dataset} (multimodal benchmark, defaults)", "",
          f"Benchmark settings: `{json.dumps(record['settings'])}`. Each variant changes the settings named and "
          f"trains seed {SEED} on {dataset} without its test split (valid only); the rows without a variant are "
          f"the seed-{SEED} cells of `benchmarks.multimodal` (same seed and protocol).", "",
          "| run | valid R@20 | valid N@20 | epochs | Δ R@20 vs defaults |", "|---|---|---|---|---|"]
    for label, trial in [(f"{model} defaults", own), (f"{REFERENCE} defaults", seed_valid(dataset, REFERENCE)),
                         *((f"{model} {v}", t) for v, t in record["variants"].items())]:
        if trial is None or trial.get("state", "ok") != "ok":
            md.append(f"| {label} | {'not recorded' if trial is None else trial['state']} | | | |")
            continue
        delta = f"{trial['valid']['recall@20'] - own['valid']['recall@20']:+.4f}" if own and trial is not own else ""
        md.append(f"| {label} | {trial['valid']['recall@20']:.4f} | {trial['valid']['ndcg@20']:.4f} | "
                  f"{trial['epochs']} | {delta} |")
    diagnose.write_record(record, md, REFERENCE, f"{PREFIX}{dataset}-{model}", commit)


if __name__ == "__main__":
    diagnose.main(__doc__, run_variants, PREFIX, "n_layers=2 or 'n_layers=2 dropout=0.3'")
