"""Why a model trails (or beats) the ID-only LightGCN in the multimodal benchmark (defaults, 3 seeds).

``benchmarks.diagnose`` reads the headline study's tuned cells; this is its counterpart for the
cells of ``benchmarks.multimodal`` (each model at its defaults, on datasets the headline study
has not reached). Two pieces of evidence:

- **Variants on validation.** The model's benchmark settings with a setting (or a few) changed,
  each trained with seed 999 on the dataset without its test split (valid only, the benchmark's
  training protocol), next to the seed-999 validation metrics of the model's and LightGCN's
  recorded cells (same seed, same protocol). Test is not read.
- **Where the gap is.** The recorded per-user test metrics of the two models' cells
  (seed-averaged), by quartile of the users' train degree, with the mean paired difference.

    python -m benchmarks.multimodal_diagnose --dataset tiktok --model bm3 --variants 'modalities=[]' 'n_layers=2 dropout=0.3' [--commit]

Each variant is recorded as it finishes (``results/diagnose/multimodal-<dataset>-<model>.json``; a
rerun skips it) and the markdown next to it is rebuilt from the record.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from pathlib import Path

import numpy as np

from benchmarks import headline, multimodal
from benchmarks.common import atomic_write, git_commit
from benchmarks.diagnose import OUT

REFERENCE = "lightgcn"
SEED = 999


def record_path(dataset: str, model: str, ext: str = "json") -> Path:
    return OUT / f"multimodal-{dataset}-{model}.{ext}"


def run_variants(model: str, dataset: str, variants: list[str], data, commit: bool = False) -> dict:
    """Train the variants not yet recorded (each recorded, and committed with ``commit``, as it
    finishes); return the record. A record made at other benchmark settings is started afresh."""
    from prismrec.experiment.config import parse_assignments

    base = multimodal.settings(model, dataset)
    record = headline._read_json(record_path(dataset, model)) or {}
    if record.get("settings") != base:
        record = {"model": model, "dataset": dataset, "settings": base, "variants": {}}
    blind = dataclasses.replace(data, test=None)
    for variant in variants:
        if variant in record["variants"]:
            continue
        print(f"[{dataset}/{model}] variant {variant}", flush=True)
        settings = {**base, "threads": 1, **parse_assignments(variant.split())}
        folder = multimodal.RUNS / "diagnose" / dataset / model / headline.slug([variant])
        record["variants"][variant] = headline.blind_trial(model, dataset, settings, folder, blind)
        write(record, data, commit)
    return record


def per_user(dataset: str, model: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Users and their seed-averaged test R@20 from the model's current cells (those with per-user
    metrics), or None."""
    seeds = {}
    for seed in multimodal.SEEDS:
        cell = multimodal.read_cell(multimodal.CELLS, dataset, model, seed)
        npz = multimodal.cell_file(multimodal.CELLS, dataset, model, seed, "npz")
        if cell is not None and multimodal.is_current(cell, model, dataset) and npz.is_file():
            with np.load(npz) as z:
                seeds[seed] = {"per_user": {k: z[k] for k in z.files}}
    return headline.per_user_mean({"seeds": seeds}, "recall@20") if seeds else None


def degree_groups(model: str, dataset: str, data) -> list[dict]:
    """Per-user test R@20 of ``model`` and LightGCN by quartile of the users' train degree (users
    both evaluated), with the mean paired difference per group; [] while either lacks cells."""
    both = [per_user(dataset, m) for m in (model, REFERENCE)]
    if any(b is None for b in both):
        return []
    (users, a), (users_ref, b) = both
    common, ia, ib = np.intersect1d(users, users_ref, return_indices=True)
    a, b = a[ia], b[ib]
    degree = np.asarray(data.train.tocsr()[common].sum(axis=1)).ravel()
    # Quartile edges; on a sparse dataset (tiktok: half the users have 1-2 training items) several
    # coincide, and the groups are the distinct ones, numbered in order.
    _, group = np.unique(np.searchsorted(np.quantile(degree, [0.25, 0.5, 0.75]), degree, side="right"),
                         return_inverse=True)
    return [{"group": g + 1, "users": int(m.sum()), "degree": [int(degree[m].min()), int(degree[m].max())],
             model: float(a[m].mean()), REFERENCE: float(b[m].mean()), "difference": float((a[m] - b[m]).mean())}
            for g in range(group.max() + 1) if (m := group == g).any()]


def seed_valid(dataset: str, model: str) -> dict | None:
    """The seed-999 validation metrics and epochs of the model's recorded cell, if current."""
    cell = multimodal.read_cell(multimodal.CELLS, dataset, model, SEED)
    if cell is None or not multimodal.is_current(cell, model, dataset):
        return None
    return {"valid": cell["metrics"]["valid"], "epochs": cell["metrics"]["epochs"]}


def write(record: dict, data, commit: bool = False) -> None:
    """Rebuild the record's markdown (and JSON) from the record and the benchmark's cells."""
    model, dataset = record["model"], record["dataset"]
    record["degree_groups"] = degree_groups(model, dataset, data)
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
    if record["degree_groups"]:
        md += ["", "Test R@20 per user (mean over the recorded seeds), by quartile of train degree (coinciding "
               "quartiles merged):", "",
               f"| group | users | train degree | {model} | {REFERENCE} | difference |", "|---|---|---|---|---|---|"]
        md += [f"| {r['group']} | {r['users']} | {r['degree'][0]}-{r['degree'][1]} | {r[model]:.4f} | "
               f"{r[REFERENCE]:.4f} | {r['difference']:+.4f} |" for r in record["degree_groups"]]
    paths = [record_path(dataset, model), record_path(dataset, model, "md")]
    atomic_write(paths[0], json.dumps(record, indent=1, default=str))
    atomic_write(paths[1], "\n".join(md) + "\n")
    if commit:
        git_commit(paths, f"benchmarks.multimodal_diagnose: {dataset}/{model}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--variants", nargs="*", default=[],
                        help="settings changed per variant, e.g. n_layers=2 or 'n_layers=2 dropout=0.3'")
    parser.add_argument("--commit", action="store_true", help="git-commit the results after each variant")
    args = parser.parse_args()
    from prismrec.data import load_dataset

    data = load_dataset(args.dataset)
    write(run_variants(args.model, args.dataset, args.variants, data, args.commit), data, args.commit)
    print(record_path(args.dataset, args.model, "md").read_text())


if __name__ == "__main__":
    main()
