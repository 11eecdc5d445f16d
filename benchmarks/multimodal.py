"""Every registered model on the real two-modality datasets, 3 seeds, default settings.

``prismrec compare`` of each model on tiktok (image + audio) and lfm2k (text + audio), seeds 999,
1000 and 1001, at its defaults plus the benchmarks' per-dataset settings (``MODEL_SETTINGS``).
The models are the registry's (a new model cannot be left out); a model whose Config has
``modalities`` gets the dataset's pair, an ID-only one nothing.

Resumable across sessions and machines, like ``benchmarks.headline``: each finished (dataset,
model, seed) cell's small outputs are recorded under ``results/multimodal/<dataset>/<model>/``
(``seed-<s>.json``: settings, resolved config, metrics, epochs, timing, peak RSS;
``seed-<s>.npz``: per-user test metrics) and, with ``--commit``, committed as each finishes; the
weights stay in ``prismrec compare``'s run folders, ``runs/bench-multimodal/<dataset>/<dataset>/<model>/seed-<s>``
(not committed; ``benchmarks.study``, ``egra`` and ``significance`` read them). A rerun skips every
recorded cell whose settings resolve to the configuration they resolve to today; ``--report-only``
rebuilds ``results/multimodal.{md,json}`` from the recorded cells alone.

    python -m benchmarks.multimodal [--models bpr,bm3] [--datasets tiktok] [--threads 1] [--commit]
    python -m benchmarks.multimodal --report-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, atomic_write, git_commit

SEEDS = [999, 1000, 1001]
CELLS = RESULTS / "multimodal"
RUNS = Path("runs/bench-multimodal")
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
# Table order: ID-only references, then the baselines roughly by year, then the seed models; a
# registered model not named here comes last (it is still run).
ORDER = ["bpr", "lightgcn", "vbpr", "mmgcn", "lattice", "bm3", "freedom", "mgcn", "lgmrec", "dragon",
         "smore", "damrs", "gume", "rlmmrec", "siger", "egra"]
PER_USER = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
TIMING = ("seconds", "median_train_s", "median_eval_s", "peak_rss_mb")
LEGACY = "†"  # a cell converted from the first version's results (old code, no run folder, no per-user metrics)
STALE = "‡"  # a cell recorded at settings that no longer resolve to the benchmark's configuration

REPORT_ONLY = "--report-only" in sys.argv  # compare(): summarise finished run folders, train nothing


def registered_models() -> list[str]:
    """Every registered model, in table order (``ORDER``, then any other, alphabetically)."""
    from prismrec.models import MODELS

    return [m for m in ORDER if m in MODELS] + sorted(set(MODELS) - set(ORDER))


def settings(model: str, dataset: str) -> dict:
    """The settings every run of ``model`` on ``dataset`` gets here: the dataset's modality pair
    (models with modalities only) and the model's ``MODEL_SETTINGS``."""
    from prismrec.experiment.config import model_class

    fields = {f.name for f in dataclasses.fields(model_class(model).Config)}
    pair = {"modalities": MODALITIES[dataset].strip("[]").split(",")} if "modalities" in fields else {}
    return {**pair, **MODEL_SETTINGS.get(model, {}).get(dataset, {})}


def merged(*groups: list[str]) -> list[str]:
    """``key=value`` settings of ``groups``, each key once: a key of a later group replaces the
    earlier value in its place (on purpose: a grid point or an ablation changes a fixed setting),
    since ``--set`` refuses a key given twice."""
    out: dict[str, str] = {}
    for group in groups:
        for item in group:
            out[item.partition("=")[0].strip()] = item
    return list(out.values())


def compare(models: list[str], dataset: str, out: Path, extra: list[str] = (), seeds: int | list[int] = 3) -> dict:
    """Run ``prismrec compare`` of ``models`` on one dataset with each model's :func:`settings`,
    ``extra`` (``key=value`` or ``MODEL.key=value``) replacing any of them it names (``seeds``: a
    count of protocol seeds or the seeds themselves); returns its results.json."""
    cmd = [sys.executable, "-m", "prismrec", "compare", "--models", ",".join(models), "--datasets", dataset,
           "--out", str(out)]
    cmd += ["--n-seeds", str(seeds)] if isinstance(seeds, int) else ["--seeds", ",".join(map(str, seeds))]
    if REPORT_ONLY:
        cmd.append("--report-only")
    fixed = [f"{model}.{key}={json.dumps(value).replace(' ', '')}"
             for model in models for key, value in settings(model, dataset).items()]
    for item in merged(fixed, extra):
        cmd += ["--set", item]
    subprocess.run(cmd, check=True)
    return json.loads((out / "results.json").read_text())


# ----------------------------------------------------------------------------- cells

def cell_file(cells: Path, dataset: str, model: str, seed: int, ext: str = "json") -> Path:
    return cells / dataset / model / f"seed-{seed}.{ext}"


def read_cell(cells: Path, dataset: str, model: str, seed: int) -> dict | None:
    """The recorded cell, or None (absent or unreadable)."""
    try:
        return json.loads(cell_file(cells, dataset, model, seed).read_text())
    except (OSError, ValueError):
        return None


def same_settings(record: dict, model: str, dataset: str) -> bool:
    """Whether a recorded cell is at the configuration the benchmark's settings resolve to today:
    its settings resolve to the same, and every value of its recorded config (seed, threads and
    device aside) is today's. A setting added since (absent from the record) takes its default,
    the old behaviour, so it does not invalidate the cell; a changed default or benchmark setting
    does. A record without its config (a legacy cell) is judged by its settings alone."""
    from prismrec.errors import ConfigError
    from prismrec.experiment.config import resolve_config

    try:
        want = resolve_config(model, dataset, settings(model, dataset))
        if resolve_config(model, dataset, record["settings"]).digest() != want.digest():
            return False
    except (ConfigError, KeyError):
        return False
    now, recorded = want.to_dict(), record.get("config") or {"train": {}, "params": {}}
    return all(k in now[part] and now[part][k] == v for part in ("train", "params")
               for k, v in recorded[part].items() if k not in ("seed", "threads", "device"))


def is_current(record: dict, model: str, dataset: str) -> bool:
    """Whether a recorded cell counts as done: at the benchmark's settings and not a legacy cell
    (those ran 2026-11-23's code, and some models changed since, VBPR among them)."""
    return not record.get("legacy") and same_settings(record, model, dataset)


def code_version() -> str:
    """The commit of the prismrec code this process runs (a checkout of its own can train while the
    working tree changes), marked when its files differ from that commit."""
    import prismrec

    package = Path(prismrec.__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"prismrec at {head}" + (" with uncommitted changes" if git("status", "--porcelain", "--", ".") else "")


def record_cell(run_dir: Path, cells: Path, model: str, dataset: str, seed: int) -> list[Path]:
    """Record the finished run in ``run_dir`` as a cell (its per-user test metrics recomputed from
    the saved weights); return the files written."""
    from prismrec.eval import Evaluator
    from prismrec.experiment.export import load_run
    from prismrec.experiment.rundir import RunDir

    run = RunDir(run_dir)
    loaded = load_run(run_dir)
    per_user = Evaluator(loaded.dataset, ks=(10, 20)).evaluate(loaded.model, "test", per_user=True)["per_user"]
    npz = cell_file(cells, dataset, model, seed, "npz")
    npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(f".{npz.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, user=per_user["user"], **{m: np.asarray(per_user[m], dtype=np.float32) for m in PER_USER})
    os.replace(tmp, npz)
    metrics, timing = run.read_metrics(), run.read_timing()
    record = {"model": model, "dataset": dataset, "seed": seed, "settings": settings(model, dataset),
              "config": loaded.config.to_dict(), "digest": loaded.config.digest(),
              "metrics": {k: metrics.get(k) for k in ("status", "valid", "test", "best_epoch", "epochs", "stop_reason")},
              "timing": {k: timing.get(k) for k in TIMING},
              "source": f"prismrec compare, {code_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"}
    path = cell_file(cells, dataset, model, seed)
    atomic_write(path, json.dumps(record, indent=1))
    return [path, npz]


def run_cells(models: list[str], datasets: list[str], seeds: list[int] = SEEDS, runs: Path = RUNS,
              cells: Path = CELLS, threads: int = 0, commit: bool = False) -> list[tuple[str, str, int]]:
    """Train and record every (dataset, model, seed) cell not recorded at today's configuration,
    one ``prismrec compare`` per cell, in the order given (datasets outer), with ``threads`` torch
    threads (0: the default; not part of a cell's configuration); with ``commit`` each recorded
    cell and the rebuilt tables are committed as it finishes. Returns the cells trained."""
    trained = []
    for dataset in datasets:
        for model in models:
            for seed in seeds:
                record = read_cell(cells, dataset, model, seed)
                if record is not None and is_current(record, model, dataset):
                    continue
                print(f"[multimodal] {dataset} / {model} / seed {seed}: training", flush=True)
                out = runs / dataset
                try:
                    compare([model], dataset, out, [f"threads={threads}"] if threads else [], [seed])
                except subprocess.CalledProcessError:  # compare printed why; the next cells still run
                    print(f"[multimodal] {dataset} / {model} / seed {seed}: FAILED", flush=True)
                    continue
                written = record_cell(out / dataset / model / f"seed-{seed}", cells, model, dataset, seed)
                trained.append((dataset, model, seed))
                if commit:
                    metrics = read_cell(cells, dataset, model, seed)["metrics"]
                    written += write_report(cells)
                    git_commit(written, f"multimodal benchmark: cell {dataset}/{model}/seed-{seed} (test R@20 "
                                        f"{metrics['test']['recall@20']:.4f}, {metrics['epochs']} epochs); tables rebuilt")
    return trained


# ----------------------------------------------------------------------------- report

def summarise(model: str, dataset: str, cells: Path, seeds: list[int] = SEEDS) -> dict:
    """One table cell from the recorded seeds (``prismrec compare``'s summary): the cells at
    today's configuration, else (marked ``stale``) the ones recorded at other settings."""
    from prismrec.experiment.compare import _summarise

    records = {s: r for s in seeds if (r := read_cell(cells, dataset, model, s)) is not None}
    current = {s: r for s, r in records.items() if is_current(r, model, dataset)}
    chosen = current or records
    cell = _summarise({s: {**r["metrics"], "timing": r["timing"]} for s, r in chosen.items()}, {},
                      next(iter(chosen.values()))["digest"] if chosen else "")
    cell["source"] = sorted({r["source"] for r in chosen.values()})
    cell["legacy"] = any(r.get("legacy") for r in chosen.values())
    other = {json.dumps(r["settings"]) for r in chosen.values() if not same_settings(r, model, dataset)}
    if other:
        cell["stale"] = sorted(other)
    return cell


def per_user_cell(dataset: str, model: str, cells: Path | None = None) -> dict | None:
    """The per-user test metrics of the model's current cells (those that have them), in
    :func:`benchmarks.headline.collect`'s form, or None."""
    cells = CELLS if cells is None else cells
    seeds = {}
    for seed in SEEDS:
        record = read_cell(cells, dataset, model, seed)
        npz = cell_file(cells, dataset, model, seed, "npz")
        if record is not None and is_current(record, model, dataset) and npz.is_file():
            with np.load(npz) as z:
                seeds[seed] = {"per_user": {k: z[k] for k in z.files}}
    return {"seeds": seeds} if seeds else None


def versus_reference(models: list[str], dataset: str, cells: Path | None = None) -> list[dict]:
    """Each model whose every seed has current per-user metrics against LightGCN's: Wilcoxon
    signed-rank of the seed-averaged per-user test metrics (the headline study's test), Holm over
    the dataset's tests; [] while LightGCN's cells are incomplete."""
    from benchmarks.headline import REFERENCE, TESTED, holm, paired

    complete = {m: c for m in models if (c := per_user_cell(dataset, m, cells)) and len(c["seeds"]) == len(SEEDS)}
    if REFERENCE not in complete:
        return []
    tests = [{"model": m, "metric": metric, **paired(cell, complete[REFERENCE], metric)}
             for m, cell in complete.items() if m != REFERENCE for metric in TESTED]
    holm(tests)
    return tests


def report(models: list[str], datasets: list[str], cells: Path = CELLS) -> tuple[dict, str]:
    """``multimodal.{json,md}`` from the recorded cells alone (every model listed; one not run yet
    gets an empty row)."""
    from prismrec.experiment.compare import render_markdown

    md = ["# Multimodal baselines", "",
          f"Every registered model at its defaults (plus the settings listed), seeds {', '.join(map(str, SEEDS))}, "
          "`prismrec compare`'s protocol (at most 1000 epochs, patience 20, selection on valid Recall@20, test "
          "evaluated once per seed). Test metrics mean ± sample std over seeds; `epochs` = mean epochs run; "
          "s/epoch and s/eval = median over seeds of each run's median (one thread; the machine was shared, so "
          "seconds vary with its load); peak RSS = the largest over seeds.", "",
          "`python -m benchmarks.multimodal --report-only` rebuilds this page from the recorded cells "
          "(`results/multimodal/<dataset>/<model>/seed-<s>.json`). Tuned rows (5 seeds, every model searched "
          "alike): results/headline.md; why a model trails LightGCN here: results/multimodal_notes.md.", ""]
    data = {}
    for dataset in datasets:
        rows, notes = {}, []
        for model in models:
            cell = summarise(model, dataset, cells)
            mark = (LEGACY if cell["legacy"] else "") + (STALE if "stale" in cell else "")
            rows[model + (f" {mark}" if mark else "")] = cell
            if "stale" in cell:
                notes.append(f"{STALE} {model}: recorded at {', '.join(cell['stale'])}; the benchmark's settings "
                             f"are now `{json.dumps(settings(model, dataset))}` (rerun it to replace the row).")
        overrides = {f"{m}.{k}": v for m in models for k, v in settings(m, dataset).items()}
        data[dataset] = {"models": models, "datasets": [dataset], "seeds": SEEDS, "overrides": overrides,
                         "cells": {dataset: {m.split(" ")[0]: c for m, c in rows.items()}}}
        table = render_markdown({"seeds": SEEDS, "cells": {dataset: rows}}).split("\n", 4)[-1]
        md += [table.rstrip(), "", f"Settings: `{json.dumps(overrides)}`", ""]
        tests = data[dataset]["versus_lightgcn"] = versus_reference(models, dataset, cells)
        if tests:
            md += [f"Per user against lightgcn (test metrics averaged over the {len(SEEDS)} seeds; Wilcoxon "
                   f"signed-rank, Holm over these {len(tests)} tests; rows whose every seed has per-user metrics):",
                   "", "| model | metric | diff | p | p (Holm) |", "|---|---|---|---|---|",
                   *(f"| {t['model']} | {t['metric']} | {t['diff']:+.4f} | {t['p']:.2g} | {t['p_holm']:.2g} |"
                     for t in tests), ""]
        if any(c["legacy"] for c in rows.values()):
            md += [f"{LEGACY} recorded by the first version of this benchmark with the code of 2026-11-23 (run folders "
                   "not kept, no per-user metrics); a rerun of the model replaces the row.", ""]
        md += [line for note in notes for line in (note, "")]
    return data, "\n".join(md).rstrip() + "\n"


def write_report(cells: Path = CELLS, models: list[str] | None = None, datasets: list[str] = ("tiktok", "lfm2k"),
                 out: Path = RESULTS) -> list[Path]:
    """Rebuild ``multimodal.{json,md}`` in ``out`` from the cells; return their paths."""
    data, md = report(models or registered_models(), list(datasets), cells)
    paths = [out / "multimodal.json", out / "multimodal.md"]
    atomic_write(paths[0], json.dumps(data, indent=1))
    atomic_write(paths[1], md)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="", help="comma-separated, in the order to train (default: all registered)")
    parser.add_argument("--datasets", default="tiktok,lfm2k")
    parser.add_argument("--runs", default=str(RUNS), help="prismrec compare's run folders (weights; not committed)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; rebuild the tables from the cells")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = default)")
    parser.add_argument("--commit", action="store_true", help="git-commit each recorded cell and the rebuilt tables")
    args = parser.parse_args()
    models = args.models.split(",") if args.models else registered_models()
    if not args.report_only:
        run_cells(models, args.datasets.split(","), runs=Path(args.runs), threads=args.threads, commit=args.commit)
    paths = write_report()
    print(paths[1].read_text())


if __name__ == "__main__":
    main()
