"""Why a model trails (or beats) the ID-only LightGCN on a dataset of the headline study.

Two pieces of evidence, both from the headline protocol:

- **Variants on validation.** The model's headline-selected point with a setting (or a few)
  changed, each trained as a headline trial is (seed 999, the dataset without its test split, valid
  only), next to the selected point's own trial and the reference model's trials. Test is not read.
- **Where the gap is.** The recorded per-user test metrics of the two models' 5 headline seeds
  (seed-averaged), by quartile of the users' train degree (coinciding quartiles merged), and the
  paired difference per group.

    python -m benchmarks.diagnose --dataset lfm2k --model freedom --variants n_ui_layers=1 drop_ratio=0.0 [--commit]

Each variant is recorded as it finishes (``results/diagnose/<dataset>-<model>.json``; a rerun
skips it) and the markdown next to it is rebuilt from the record.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import headline
from benchmarks.common import RESULTS, atomic_write, git_commit

OUT = RESULTS / "diagnose"


def record_paths(name: str) -> tuple[Path, Path]:
    """The JSON record and its markdown, ``results/diagnose/<name>.{json,md}``."""
    return OUT / f"{name}.json", OUT / f"{name}.md"


def load_record(name: str, model: str, dataset: str, **settings) -> dict:
    """The record ``name`` (:func:`record_paths`) if it was made at ``settings`` (e.g.
    ``selected=...``), else a fresh one without variants."""
    record = headline._read_json(record_paths(name)[0]) or {}
    if any(record.get(k) != v for k, v in settings.items()):
        record = {"model": model, "dataset": dataset, **settings, "variants": {}}
    return record


def record_variants(record: dict, variants: list[str], settings: dict, folder: Callable[[str], Path], data,
                    write: Callable[[dict, object, bool], None], commit: bool = False) -> dict:
    """Train each of ``variants`` not yet in ``record``: ``settings`` with the variant's changes, as
    a headline trial on ``data`` without its test split (:func:`benchmarks.headline.blind_trial`,
    its run in ``folder(variant)``), recorded (``write(record, data, commit)``) as it finishes;
    then rebuild the markdown. Returns ``record``."""
    from prismrec.experiment.config import parse_assignments

    model, dataset = record["model"], record["dataset"]
    blind = dataclasses.replace(data, test=None)
    for variant in variants:
        if variant in record["variants"]:
            continue
        print(f"[{dataset}/{model}] variant {variant}", flush=True)
        trial = {**settings, **parse_assignments(variant.split())}
        record["variants"][variant] = headline.blind_trial(model, dataset, trial, folder(variant), blind)
        write(record, data, commit)
    write(record, data, commit)
    return record


def run_variants(model: str, dataset: str, variants: list[str], data, commit: bool = False) -> dict:
    """Train the variants not yet recorded (each recorded, and committed with ``commit``, as it
    finishes), then rebuild the markdown; return the record."""
    tuning = headline._read_json(headline.CELLS / dataset / model / "tuning.json")
    if tuning is None or "selected" not in tuning:
        raise SystemExit(f"{dataset}/{model} is not tuned yet: run benchmarks.headline --parts tune first")
    selected = {**tuning["spec"]["base"], **tuning["selected"]["point"]}
    record = load_record(f"{dataset}-{model}", model, dataset, selected=selected)
    return record_variants(record, variants, {**selected, **tuning["spec"]["trial_train"]},
                           lambda v: headline.RUNS / dataset / model / f"diagnose-{headline.slug([v])}",
                           data, write, commit)


def degree_groups(cells: dict[str, dict | None], data, metric: str = "recall@20") -> list[dict]:
    """Seed-averaged per-user test ``metric`` of two cells (``cells``: the model's, then the
    reference's, by name, in :func:`benchmarks.headline.collect`'s form) by quartile of the users'
    train degree (users both evaluated), with the mean paired difference per group; ``[]`` while
    either cell is missing (``None``)."""
    if any(c is None for c in cells.values()):
        return []
    model, reference = cells
    (users, a), (users_ref, b) = (headline.per_user_mean(c, metric) for c in cells.values())
    common, ia, ib = np.intersect1d(users, users_ref, return_indices=True)
    a, b = a[ia], b[ib]
    degree = np.asarray(data.train.tocsr()[common].sum(axis=1)).ravel()
    # Quartile edges; on a sparse dataset (tiktok: half the users have 1-2 training items) several
    # coincide, and the groups are the distinct ones, numbered in order.
    _, group = np.unique(np.searchsorted(np.quantile(degree, [0.25, 0.5, 0.75]), degree, side="right"),
                         return_inverse=True)
    return [{"group": g + 1, "users": int(m.sum()), "degree": [int(degree[m].min()), int(degree[m].max())],
             model: float(a[m].mean()), reference: float(b[m].mean()), "difference": float((a[m] - b[m]).mean())}
            for g in range(group.max() + 1) if (m := group == g).any()]


def write_record(record: dict, md: list[str], reference: str, name: str, commit: bool = False) -> None:
    """Write ``record`` and its markdown (``md``: the title and the variants' table, then the
    table of ``record["degree_groups"]`` against ``reference``) as ``name``
    (:func:`record_paths`); with ``commit``, git-commit the two files."""
    model, groups = record["model"], record["degree_groups"]
    if groups:
        md = [*md, "", "Test R@20 per user (mean over the recorded seeds), by quartile of train degree (coinciding "
              "quartiles merged):", "",
              f"| group | users | train degree | {model} | {reference} | difference |", "|---|---|---|---|---|---|"]
        md += [f"| {r['group']} | {r['users']} | {r['degree'][0]}-{r['degree'][1]} | {r[model]:.4f} | "
               f"{r[reference]:.4f} | {r['difference']:+.4f} |" for r in groups]
    paths = record_paths(name)
    atomic_write(paths[0], json.dumps(record, indent=1, default=str))
    atomic_write(paths[1], "\n".join(md) + "\n")
    if commit:
        git_commit(list(paths), f"benchmarks.diagnose: {name}")


def write(record: dict, data, commit: bool = False) -> None:
    """Rebuild the record's markdown (and JSON) from the record and the headline study's cells."""
    model, dataset, reference = record["model"], record["dataset"], headline.REFERENCE
    tuning = headline._read_json(headline.CELLS / dataset / model / "tuning.json")
    ref_tuning = headline._read_json(headline.CELLS / dataset / reference / "tuning.json") or {"trials": []}
    record["degree_groups"] = degree_groups({m: headline.collect(dataset, m) for m in (model, reference)}, data)
    own = tuning["trials"][tuning["selected"]["trial"]]
    md = [f"# Why {model} trails or beats {reference} on {dataset}", "",
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
            md.append(f"| {reference} {t['point'] or 'defaults'} | {t['valid']['recall@20']:.4f} | "
                      f"{t['valid']['ndcg@20']:.4f} | {t['epochs']} | |")
    write_record(record, md, reference, f"{dataset}-{model}", commit)


def main(doc: str = __doc__, run=run_variants, prefix: str = "",
         example: str = "n_ui_layers=1 or 'n_ui_layers=1 n_ii_layers=0'") -> None:
    """The command line of a diagnosis: ``run(model, dataset, variants, data, commit)`` records the
    variants and writes ``results/diagnose/<prefix><dataset>-<model>.md``, then printed."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--variants", nargs="*", default=[], help=f"settings changed per variant, e.g. {example}")
    parser.add_argument("--commit", action="store_true", help="git-commit the results after each variant")
    args = parser.parse_args()
    from prismrec.data import load_dataset

    run(args.model, args.dataset, args.variants, load_dataset(args.dataset), args.commit)
    print(record_paths(f"{prefix}{args.dataset}-{args.model}")[1].read_text())


if __name__ == "__main__":
    main()
