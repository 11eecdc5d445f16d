"""Cold-start table: every multimodal model's own content path for new items, next to the
model-agnostic strategies and the references (issue: beyond the anchors).

Each cell trains one model once on a cold-item copy of a dataset (``prismrec split-cold``: 10 %
of the items, seed 999, all their rows in valid/test; the same copy as
``benchmarks/robustness.py``) and scores the **test** cold items with

* ``own``: the model's content path, :meth:`Recommender.content_item_embeddings` with its
  documented ID-row handling (``prismrec.nn.content``; the cell records which). BM3 and DA-MRS
  have none (``-``).
* ``map`` / ``knn``: ridge map / nearest warm items from content to the model's final item rows
  (:mod:`prismrec.coldstart`).
* ``native``: the rows as trained (for ID-only LightGCN: untrained ID rows, the no-content
  reference), and LightGCN + ``knn``: content added after an ID-only model's training.
* popularity and per-user random references (no training).

Two modes: ``cold`` ranks the cold items among the cold items, ``all`` among all items (training
items masked), over the users with a test cold positive; R@20 and N@20 (also @10 in the JSON).
Where the content path has ID rows to replace, both choices (``own:zero``, ``own:impute``,
``--id-rows``) are scored, on the test and on the **validation** cold items (which one a model
should default to is a validation question; the test column shows the documented default).

One seed, ``threads=1``, epochs capped (``--epochs``, recorded in every cell), one process.
Each finished cell is one small JSON under ``results/coldstart/cells/`` (weights and run
directories stay in ``--work``), so a rerun skips finished cells and an interrupted study
resumes; ``--commit`` commits each cell and the regenerated tables. A finished run of the same
cell in ``--reuse`` (the robustness benchmark's run directories, same settings) is loaded
instead of retrained.

    nice -n 5 python -m benchmarks.coldstart [--datasets lfm2k,tiktok] [--epochs 20]
        [--models ...] [--max-cells N] [--commit] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, atomic_write, git_commit
from benchmarks.robustness import COLD_FRACTION, COLD_SEED, derived_dataset
from benchmarks.robustness import settings as robustness_settings

OUT = RESULTS / "coldstart"
REFERENCE_MODEL = "lightgcn"
MODELS = ["lightgcn", "freedom", "rlmmrec", "dragon", "lattice", "lgmrec", "mmgcn", "vbpr", "smore",
          "mgcn", "gume", "siger", "egra", "bm3", "damrs"]
KS = (10, 20)
STRATEGIES = ("own", "map", "knn", "native")
CELL_VERSION = 2  # 2: own:zero / own:impute on test and valid; older cells are rescored (no retraining)
def settings(model: str, dataset: str, epochs: int) -> dict:
    """The robustness benchmark's settings of the cell: cap, threads, modalities and the
    per-dataset settings (benchmarks.multimodal.MODEL_SETTINGS)."""
    return robustness_settings(model, dataset, epochs)


def cell_name(dataset: str, model: str, seed: int) -> str:
    return f"{dataset}__{model}__seed-{seed}"


def own_rows(model, out, cold: torch.Tensor, id_rows: str | None = None) -> tuple[torch.Tensor | None, str, str | None]:
    """The model's content rows for ``cold``, where they come from, and the ID-row choice used
    (``id_rows`` overrides the path's default; ``None`` in the third place: no ID rows involved)."""
    from prismrec.nn import MultiViewEncoder
    from prismrec.nn.content import content_forward_rows, feature_knn, multiview_content_items

    rows = model.content_item_embeddings(cold, out, id_rows)
    if rows is not None:
        used = None if model.content_id_rows is None else id_rows or model.content_id_rows
        return rows, f"{model.name}.content_item_embeddings", used
    if isinstance(getattr(model, "encoder", None), MultiViewEncoder):
        return multiview_content_items(model, cold, id_rows), "nn.content.multiview_content_items", id_rows or "impute"
    if model.name == "vbpr":
        rows = content_forward_rows(model, model.item_emb.weight, cold, id_rows or "zero",
                                    lambda: feature_knn([model.content.features]))
        return rows, "nn.content.content_forward_rows on VBPR's e_i: z_c = [e_c; W f_c + b]", id_rows or "zero"
    return None, "none", None


def cold_metrics(run_dir: Path, data_dir: Path, dataset: str) -> dict:
    """``{mode: {strategy: metrics}}`` of the run's test cold items, plus ``own_path``."""
    from prismrec.coldstart import ColdStartConfig, cold_item_embeddings
    from prismrec.eval import Evaluator
    from prismrec.experiment.export import load_run
    from prismrec.recommender import Output

    from benchmarks.multimodal import MODALITIES

    run = load_run(run_dir, data_dir)
    data, model = run.dataset, run.model
    evaluator = Evaluator(data, ks=KS)
    with torch.no_grad():
        out = model()
    cold = torch.from_numpy(data.cold()).to(out.item.device)
    content = MODALITIES[dataset].strip("[]").split(",")
    scored = {"native": out}

    def with_rows(rows):
        item = out.item.clone()
        item[cold] = rows.to(item.device, item.dtype)
        return Output(out.user, item, out.aux)

    t0 = time.time()
    rows, path, default = own_rows(model, out, cold)
    own_seconds = round(time.time() - t0, 2)
    if rows is not None:
        scored["own"] = with_rows(rows)
    if default is not None:  # the path replaces ID rows: score both choices
        scored[f"own:{default}"] = scored["own"]
        other = "impute" if default == "zero" else "zero"
        scored[f"own:{other}"] = with_rows(own_rows(model, out, cold, other)[0])
    for strategy in ("map", "knn"):
        scored[strategy], _ = cold_item_embeddings(model, out, data, ColdStartConfig(strategy=strategy, modalities=content))
    result = {"version": CELL_VERSION, "own_path": path, "own_id_rows": default, "own_seconds": own_seconds}
    for mode in ("cold", "all"):
        result[mode] = {s: evaluator.evaluate_cold(model, "test", o, mode) for s, o in scored.items()}
    result["valid_cold"] = {s: evaluator.evaluate_cold(model, "valid", o, "cold") for s, o in scored.items()}
    return result


def references(dataset: str, work: Path, record: dict | None = None, draws: int = 100) -> dict:
    """Popularity and random references on the dataset's cold copy (no training), and the spread
    of one fixed item order over ``draws`` draws (``fixed_order``: what untrained ID rows amount to,
    :func:`prismrec.coldstart.fixed_order_spread`); entries already in ``record`` are kept."""
    from prismrec.coldstart import fixed_order_spread, reference_scores
    from prismrec.data import load_dataset
    from prismrec.eval import Evaluator, evaluate_cold

    name, data_dir = derived_dataset({"family": "cold", "dataset": dataset}, work, "mean")
    data = load_dataset(name, data_dir)
    exclude = Evaluator(data, ks=KS).exclude("test")
    record = dict(record or {})
    for mode in ("cold", "all"):
        if mode not in record:
            record[mode] = {kind: evaluate_cold(reference_scores(kind, data), data.test, exclude, data.cold("test"),
                                                mode, ks=KS) for kind in ("popularity", "random")}
    if "fixed_order" not in record:
        record["fixed_order"] = {mode: fixed_order_spread(data, "test", mode, draws, KS) for mode in ("cold", "all")}
    return record


def train(dataset: str, model: str, seed: int, epochs: int, work: Path, reuse: Path | None) -> tuple[Path, Path, dict]:
    """Train (or load) the cell's run; ``(run dir, data dir, metrics)``."""
    from prismrec.errors import PrismrecError
    from prismrec.experiment.config import resolve_config
    from prismrec.experiment.runs import run_experiment

    name, data_dir = derived_dataset({"family": "cold", "dataset": dataset}, work, "mean")
    overrides = settings(model, dataset, epochs)
    config = resolve_config(model, name, overrides)
    candidates = []
    if reuse is not None and (reuse / f"{dataset}__{model}__cold__seed-{seed}").is_dir():
        candidates.append(reuse / f"{dataset}__{model}__cold__seed-{seed}")
    candidates.append(work / "runs" / f"{cell_name(dataset, model, seed)}__e{epochs}")
    # the same cell with other settings (e.g. weights now required by name): its own directory
    candidates.append(candidates[-1].with_name(f"{candidates[-1].name}__{config.digest()[:8]}"))
    for i, run_dir in enumerate(candidates):
        try:
            metrics = run_experiment(config, [seed], run_dir, data_dir, progress=False)
            return run_dir, data_dir, {**metrics, "settings": overrides, "input": name}
        except PrismrecError as exc:  # a directory holding other settings: try the next one
            if i == len(candidates) - 1:
                raise
            print(f"[coldstart] not reusing {run_dir}: {exc}", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def run_cell(dataset: str, model: str, seed: int, epochs: int, work: Path, reuse: Path | None) -> dict:
    """Train (or load) one cell's run and score its cold items."""
    t0 = time.time()
    run_dir, data_dir, metrics = train(dataset, model, seed, epochs, work, reuse)
    trained = time.time() - t0
    record = {"dataset": dataset, "model": model, "seed": seed, "epochs_cap": epochs, "input": metrics["input"],
              "cold_fraction": COLD_FRACTION, "cold_seed": COLD_SEED, "settings": metrics["settings"],
              "run": str(run_dir), "train_seconds": round(trained, 1),
              "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs"),
              "test": {k: v for k, v in (metrics.get("test") or {}).items() if "@" in k}}
    record.update(cold_metrics(run_dir, data_dir, dataset))
    return record


# --------------------------------------------------------------------------- report


def _fmt(m: dict | None) -> str:
    return "-" if m is None else f"{m['recall@20']:.4f} / {m['ndcg@20']:.4f}"


def report(cells: list[dict], refs: dict, planned: list[str]) -> tuple[dict, str]:
    done = {cell_name(c["dataset"], c["model"], c["seed"]) for c in cells}
    left = [p for p in planned if p not in done]
    caps = sorted({c["epochs_cap"] for c in cells})
    lines = ["# Cold items: each multimodal model's own content path", "",
             f"Cold-item copies: {int(COLD_FRACTION * 100)} % of the items (seed {COLD_SEED}), all their rows in "
             "valid/test; test cold items scored. One seed, threads=1, epochs capped at "
             f"{caps or '-'} (recorded per cell), default settings plus the per-dataset settings of "
             "benchmarks/multimodal.py. R@20 / N@20 over the users with a test cold positive. `cold`: ranked "
             "among the cold items; `all`: among all items (training items masked). `own`: the model's content "
             "path (prismrec.nn.content; the path of each cell is in its JSON); `map`, `knn`: content-to-embedding "
             "strategies of prismrec.coldstart on the model's final rows; `native`: the rows as trained. "
             f"Cells finished: {len(cells)}; left: {len(left)}.", ""]
    summary = {"cells": len(cells), "left": left, "epochs_cap": caps, "tables": {}}
    for dataset in sorted({c["dataset"] for c in cells}, key=lambda d: ["lfm2k", "tiktok"].index(d)
                          if d in ("lfm2k", "tiktok") else 9):
        rows = {c["model"]: c for c in cells if c["dataset"] == dataset}
        lines += [f"## {dataset}", "",
                  "| model | cold: own | cold: map | cold: knn | cold: native | all: own | all: map | all: knn | "
                  "all: native | best epoch / cap |", "|---" * 10 + "|"]
        table = summary["tables"][dataset] = {}
        for model in [m for m in MODELS if m in rows]:
            c = rows[model]
            label = f"{model} (ID only)" if model == REFERENCE_MODEL else model
            cells_ = [_fmt(c[mode].get(s)) for mode in ("cold", "all") for s in STRATEGIES]
            if model == REFERENCE_MODEL:
                cells_[0] = cells_[4] = "(no content)"
            lines.append(f"| {label} | " + " | ".join(cells_) + f" | {c['best_epoch']} / {c['epochs_cap']} |")
            table[model] = {f"{mode}/{s}": {k: c[mode][s][k] for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")}
                            for mode in ("cold", "all") for s in STRATEGIES if s in c[mode]}
        alt = [m for m in MODELS if m in rows and rows[m].get("own_id_rows")]
        if alt:
            id_lines = ["", "Content path's ID rows (`--id-rows`): R@20 among the cold items, on the validation and "
                        "the test cold items; `default` is the path's documented choice (the `own` column above).", "",
                        "| model | default | valid: zero | valid: impute | test: zero | test: impute |",
                        "|---|---|---|---|---|---|"]
            for model in alt:
                c = rows[model]
                vals = [f"{c[where][f'own:{k}']['recall@20']:.4f}" for where in ("valid_cold", "cold")
                        for k in ("zero", "impute")]
                id_lines.append(f"| {model} | {c['own_id_rows']} | " + " | ".join(vals) + " |")
                table[model]["id_rows"] = {where: {k: c[where][f"own:{k}"]["recall@20"] for k in ("zero", "impute")}
                                           for where in ("valid_cold", "cold")}
        else:
            id_lines = []
        if dataset in refs:
            for kind in ("popularity", "random"):
                lines.append(f"| {kind} reference | {_fmt(refs[dataset]['cold'][kind])} | | | | "
                             f"{_fmt(refs[dataset]['all'][kind])} | | | | |")
            order = refs[dataset].get("fixed_order")
            if order:
                spread = [f"{order[mode]['recall@20']['median']:.4f} [{order[mode]['recall@20']['q05']:.4f}, "
                          f"{order[mode]['recall@20']['q95']:.4f}]" for mode in ("cold", "all")]
                lines.append(f"| one fixed item order: R@20 median [5 %, 95 %] of {order['cold']['draws']} draws "
                             f"| {spread[0]} | | | | {spread[1]} | | | | |")
            summary["tables"][dataset]["references"] = refs[dataset]
            r = refs[dataset]["cold"]["random"]
            lines += ["", f"Users with a test cold positive: {r['users']}; test cold items: {r['items']}. "
                      "Among cold items popularity is a tie (all have degree 0), broken at random."]
        lines += id_lines + [""]
    note = OUT / "closing_note.md"
    if note.is_file():
        lines += [note.read_text().strip(), ""]
    if left:
        lines += ["## Not run yet", "", f"{len(left)} planned cells (rerun the script to continue): " + ", ".join(left), ""]
    return summary, "\n".join(lines) + "\n"


def write_report(planned: list[str]) -> list[Path]:
    cells = [json.loads(p.read_text()) for p in sorted((OUT / "cells").glob("*.json"))]
    refs = {p.stem: json.loads(p.read_text()) for p in sorted((OUT / "references").glob("*.json"))}
    summary, md = report(cells, refs, planned)
    paths = [OUT / "coldstart.json", OUT / "coldstart.md"]
    atomic_write(paths[0], json.dumps(summary, indent=2))
    atomic_write(paths[1], md)
    return paths


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="lfm2k,tiktok", help="in the order they run")
    parser.add_argument("--models", default=",".join(MODELS), help="in the order they run")
    parser.add_argument("--seed", type=int, default=999)
    parser.add_argument("--epochs", type=int, default=20, help="epoch cap of every run (recorded)")
    parser.add_argument("--work", type=Path, default=Path("runs/coldstart"), help="derived data and run dirs")
    parser.add_argument("--reuse", type=Path, default=Path("runs/robustness/runs"),
                        help="finished robustness cold runs to load instead of retraining (same settings only)")
    parser.add_argument("--results", type=Path, default=OUT)
    parser.add_argument("--max-cells", type=int, default=0, help="stop after this many new cells (0: all)")
    parser.add_argument("--commit", action="store_true", help="git-commit each finished cell and the tables")
    parser.add_argument("--report-only", action="store_true", help="train nothing, rewrite the tables")
    args = parser.parse_args()
    OUT = args.results
    torch.set_num_threads(1)
    datasets, models = args.datasets.split(","), args.models.split(",")
    planned = [cell_name(d, m, args.seed) for d in datasets for m in models]
    done = 0
    for dataset in ([] if args.report_only else datasets):
        ref_path = OUT / "references" / f"{dataset}.json"
        old_refs = json.loads(ref_path.read_text()) if ref_path.is_file() else None
        if old_refs is None or "fixed_order" not in old_refs:
            atomic_write(ref_path, json.dumps(references(dataset, args.work, old_refs), indent=2, default=float))
            if args.commit:
                git_commit([ref_path], f"coldstart benchmark: popularity/random references on {dataset}'s cold copy")
        for model in models:
            path = OUT / "cells" / f"{cell_name(dataset, model, args.seed)}.json"
            old = json.loads(path.read_text()) if path.is_file() else {}
            if old.get("settings") == settings(model, dataset, args.epochs) and old.get("version") == CELL_VERSION:
                continue  # finished with these settings (the cap included); other settings retrain it
            if args.max_cells and done >= args.max_cells:
                break
            print(f"[coldstart] {dataset} {model} (epochs<={args.epochs})", flush=True)
            try:
                record = run_cell(dataset, model, args.seed, args.epochs, args.work, args.reuse)
                if old.get("settings") == record["settings"]:  # rescored: keep the training time it took
                    record["train_seconds"] = old.get("train_seconds", record["train_seconds"])
            except Exception as exc:  # one failing model must not stop the table: recorded, retried next run
                print(f"[coldstart] {dataset} {model} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                continue
            atomic_write(path, json.dumps(record, indent=2, default=float))
            done += 1
            tables = write_report(planned)
            own = record["cold"].get("own")
            print(f"[coldstart] done {dataset} {model}: cold R@20 own {own['recall@20'] if own else '-'} "
                  f"knn {record['cold']['knn']['recall@20']:.4f} (train {record['train_seconds']} s)", flush=True)
            if args.commit:
                git_commit([path, *tables], f"coldstart benchmark: cell {dataset} {model} (epochs<={args.epochs}, "
                           f"seed {args.seed}); tables regenerated")
    write_report(planned)
    print((OUT / "coldstart.md").read_text())


if __name__ == "__main__":
    main()
