"""Why a model trails (or beats) the ID-only LightGCN on a dataset of the headline study.

Two pieces of evidence, both from the headline protocol:

- **Variants on validation.** The model's headline-selected point with a setting (or a few)
  changed, each trained as a headline trial is (seed 999, the dataset without its test split, valid
  only), next to the selected point's own trial and the reference model's trials. Test is not read.
- **Where the gap is.** The recorded per-user test metrics of the two models' 5 headline seeds
  (seed-averaged), by quartile of the users' train degree, and the paired difference per group.

    python -m benchmarks.diagnose --dataset lfm2k --model freedom --variants n_ui_layers=1 drop_ratio=0.0 [--commit]

Each variant is recorded as it finishes (``results/diagnose/<dataset>-<model>.json``; a rerun
skips it) and the markdown next to it is rebuilt from the record.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from benchmarks import headline
from benchmarks.common import RESULTS, atomic_write, git_commit

OUT = RESULTS / "diagnose"


def run_variants(model: str, dataset: str, variants: list[str], data, commit: bool = False) -> dict:
    """Train the variants not yet recorded (each recorded, and committed with ``commit``, as it
    finishes); return the record."""
    from prismrec.experiment.config import parse_assignments

    path = OUT / f"{dataset}-{model}.json"
    tuning = headline._read_json(headline.CELLS / dataset / model / "tuning.json")
    if tuning is None or "selected" not in tuning:
        raise SystemExit(f"{dataset}/{model} is not tuned yet: run benchmarks.headline --parts tune first")
    selected = {**tuning["spec"]["base"], **tuning["selected"]["point"]}
    record = headline._read_json(path) or {}
    if record.get("selected") != selected:
        record = {"model": model, "dataset": dataset, "selected": selected, "variants": {}}
    blind = dataclasses.replace(data, test=None)
    for variant in variants:
        if variant in record["variants"]:
            continue
        print(f"[{dataset}/{model}] variant {variant}", flush=True)
        settings = {**selected, **tuning["spec"]["trial_train"], **parse_assignments(variant.split())}
        record["variants"][variant] = headline.blind_trial(
            model, dataset, settings, headline.RUNS / dataset / model / f"diagnose-{headline.slug([variant])}", blind)
        write(record, data, commit)
    return record


def degree_groups(model: str, dataset: str, data, reference: str = headline.REFERENCE, metric: str = "recall@20") -> list[dict]:
    """Seed-averaged per-user test ``metric`` of ``model`` and ``reference`` by quartile of the
    users' train degree (users both evaluated), with the mean paired difference per group."""
    cells = [headline.collect(dataset, m) for m in (model, reference)]
    if any(c is None for c in cells):
        return []
    (users, a), (users_b, b) = (headline.per_user_mean(c, metric) for c in cells)
    common, ia, ib = np.intersect1d(users, users_b, return_indices=True)
    a, b = a[ia], b[ib]
    degree = np.asarray(data.train.tocsr()[common].sum(axis=1)).ravel()
    edges = np.quantile(degree, [0.25, 0.5, 0.75])
    group = np.searchsorted(edges, degree, side="right")
    rows = []
    for g in range(4):
        mask = group == g
        rows.append({"group": g + 1, "users": int(mask.sum()), "degree": [int(degree[mask].min()), int(degree[mask].max())],
                     model: float(a[mask].mean()), reference: float(b[mask].mean()),
                     "difference": float((a[mask] - b[mask]).mean())})
    return rows


def write(record: dict, data, commit: bool = False) -> None:
    model, dataset = record["model"], record["dataset"]
    tuning = headline._read_json(headline.CELLS / dataset / model / "tuning.json")
    ref_tuning = headline._read_json(headline.CELLS / dataset / headline.REFERENCE / "tuning.json") or {"trials": []}
    record["degree_groups"] = degree_groups(model, dataset, data)
    own = tuning["trials"][tuning["selected"]["trial"]]
    md = [f"# Why {model} trails or beats {headline.REFERENCE} on {dataset}", "",
          f"Selected point (headline tuning): `{tuning['selected']['point'] or 'defaults'}`. "
          "Variants change the settings named; each is a headline trial (seed 999, no test split, valid only).", "",
          "| run | valid R@20 | valid N@20 | epochs | Δ R@20 vs selected |", "|---|---|---|---|---|",
          f"| {model} selected | {own['valid']['recall@20']:.4f} | {own['valid']['ndcg@20']:.4f} | {own['epochs']} | |"]
    for variant, t in record["variants"].items():
        if t["state"] != "ok":
            md.append(f"| {model} {variant} | {t['state']} | | | |")
            continue
        md.append(f"| {model} {variant} | {t['valid']['recall@20']:.4f} | {t['valid']['ndcg@20']:.4f} | {t['epochs']} | "
                  f"{t['valid']['recall@20'] - own['valid']['recall@20']:+.4f} |")
    for t in ref_tuning["trials"]:
        if t["state"] == "ok":
            md.append(f"| {headline.REFERENCE} {t['point'] or 'defaults'} | {t['valid']['recall@20']:.4f} | "
                      f"{t['valid']['ndcg@20']:.4f} | {t['epochs']} | |")
    if record["degree_groups"]:
        md += ["", "Test R@20 per user (mean over the recorded headline seeds), by quartile of train degree:", "",
               f"| quartile | users | train degree | {model} | {headline.REFERENCE} | difference |", "|---|---|---|---|---|---|"]
        md += [f"| {r['group']} | {r['users']} | {r['degree'][0]}-{r['degree'][1]} | {r[model]:.4f} | "
               f"{r[headline.REFERENCE]:.4f} | {r['difference']:+.4f} |" for r in record["degree_groups"]]
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write(OUT / f"{dataset}-{model}.json", json.dumps(record, indent=1, default=str))
    atomic_write(OUT / f"{dataset}-{model}.md", "\n".join(md) + "\n")
    if commit:
        git_commit([OUT / f"{dataset}-{model}.{ext}" for ext in ("json", "md")], f"benchmarks.diagnose: {dataset}/{model}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--variants", nargs="*", default=[],
                        help="settings changed per variant, e.g. n_ui_layers=1 or 'n_ui_layers=1 n_ii_layers=0'")
    parser.add_argument("--commit", action="store_true", help="git-commit the results after each variant")
    args = parser.parse_args()
    from prismrec.data import load_dataset

    data = load_dataset(args.dataset)
    write(run_variants(args.model, args.dataset, args.variants, data, args.commit), data, args.commit)
    print((OUT / f"{args.dataset}-{args.model}.md").read_text())


if __name__ == "__main__":
    main()
