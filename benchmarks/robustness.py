"""Robustness to missing and noisy modalities, and cold-item metrics (issue: beyond the anchors).

Two families of cells, each trained once per (dataset, model, seed) and written as a small JSON
file under ``results/robustness/cells/`` (with its per-user test R@20 / N@20 in an ``.npz`` beside
it, per mode for a cold cell, for the claims' paired tests) as soon as it finishes (weights and run directories
stay in ``--work``, never in the repository), so a rerun skips finished cells and an
interrupted study resumes where it stopped:

* **robustness** — for ``q`` in {0, 0.1, 0.2, 0.4}: (a) ``drop``: a fraction ``q`` of one
  modality's rows is marked missing (``<modality>_mask.npy``) and imputed at load (``--impute``,
  default mean; ``--impute zero`` runs the drop cells again as ``drop-zero``: zero-filled rows
  and mask-aware fusion, each model weighing only an item's present modalities; the clean, noise
  and cold cells do not depend on the imputation and are not rerun); (b) ``noise``: the same rows are replaced by Gaussian noise with that modality's
  per-dimension mean and standard deviation (seeded; larger ``q`` corrupts a superset of rows).
  Graphs are rebuilt from the corrupted features (every model builds them at construction).
  Reported: test R@20 / N@20 and their relative drop from ``q = 0`` for FREEDOM, MGCN, GUME,
  SIGER, EGRA and RLMultimodalRec (``prismrec.data.derive.corrupt_modality``).
* **cold** — each model trained on a cold-item copy (``prismrec split-cold``, 10 % of the items,
  seed 999); its test cold items ranked among the cold items (``cold``) and among all items
  (``all``), with cold rows scored ``native`` (as trained), ``knn`` and ``map``
  (:mod:`prismrec.coldstart`), next to popularity and random references. ID-only models (BPR,
  LightGCN) are the ``native`` reference: what a model without content can do.

The tables end with the seed papers' claims, each judged by per-user paired tests (Wilcoxon, Holm
over the claim family's planned tests): SIGER's and EGRA's robustness (``CLAIMS``: a smaller
relative drop than GUME's and MGCN's) and RLMultimodalRec's cold start (``COLD_CLAIMS``).

Training is capped (``--epochs``, recorded in every cell) so the grid fits a small machine; the
cap and the seeds are in the table header. A run with another cap trains its own cells (each cap
has its own cell files, ``<cell>__e<cap>.json``, and run directories; the tables show one cap, the
``--epochs`` given, never a mix). Each cell records the commit it was trained
at (``code``). Cells whose model code changed are retrained with ``--rerun PATTERN[,PATTERN]
--rerun-after REV`` (shell-style patterns over cell names, e.g. ``'lfm2k__gume__drop-zero-*'``;
``REV`` the commit of the change): a matching cell trained before ``REV`` (its ``code`` does not
contain it) loses its file, its run directory is replaced and its cached stage-1 runs (EGRA's
pretraining on that input) are retrained; an interrupted rerun resumes like
any unfinished cell, a repeated one skips the cells already retrained, and no other cell is
touched. Cells run in priority order, ``threads=1``, one at a time or in ``--jobs`` worker
processes (the derived data is made first, by the main process, which alone writes cells, tables
and commits).

    python -m benchmarks.robustness [--datasets lfm2k,tiktok] [--seeds 999] [--epochs 20]
        [--max-cells N] [--jobs 2] [--device cuda] [--commit] [--report-only] [--backfill]

``--backfill`` adds per-user metrics to cells recorded before they were kept, from their run
folders where this machine has them (checked against the recorded test metrics).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from benchmarks.common import RESULTS, atomic_npz, atomic_write, git_commit, worker_pool
from benchmarks.headline import TRIAL_MIN_EPOCHS as WARM_UP
from benchmarks.headline import fmt_p, holm, settled
from benchmarks.multimodal import MODALITIES, MODEL_SETTINGS

OUT = RESULTS / "robustness"
ROBUST_MODELS = ["freedom", "mgcn", "gume", "siger", "egra", "rlmmrec"]
COLD_MODELS = ["bpr", "lightgcn", "freedom", "mgcn", "gume", "siger", "egra", "rlmmrec",
               "vbpr", "lattice", "mmgcn", "bm3", "lgmrec", "dragon", "smore", "damrs"]
ID_ONLY = ("bpr", "lightgcn")
QS = (0.1, 0.2, 0.4)
KINDS = ("noise", "drop")
CORRUPTED = {"lfm2k": "text", "tiktok": "image"}  # the modality whose rows are dropped / noised
COLD_FRACTION, COLD_SEED = 0.1, 999
KS = (10, 20)
CAP = 20  # the default epoch cap (--epochs)
# The seed papers' robustness claims: the model's relative change under the corruption is above
# (a smaller drop than) each rival's, at every measured q, on R@20 and N@20, significantly (a
# per-user paired test on the seeds both ran, Holm over every planned test of the claims).
PER_USER = ("recall@20", "ndcg@20")  # kept per test user in each cell's .npz (cold cells: per mode)
CLAIMS = {
    "siger": {"claim": "under feature corruption its relative drop is smaller than GUME's and MGCN's "
                       "(ALGORITHMS.md §5)", "kinds": KINDS, "rivals": ("gume", "mgcn")},
    "egra": {"claim": "robust to modality noise (ours: its relative drop under noise is smaller than GUME's "
                      "and MGCN's)", "kinds": ("noise",), "rivals": ("gume", "mgcn")},
}
# RLMultimodalRec's cold-start claim (ours): on the cold items, ranked among them and among all items,
# its rows as trained score above those of the baselines its paper claims to beat (the ID-only BPR and
# LightGCN, VBPR, MMGCN), significantly, on R@20 and N@20.
COLD_CLAIMS = {
    "rlmmrec": {"claim": "alleviates cold start (ours: on the cold items, ranked among them and among all items, "
                         "above BPR, LightGCN, VBPR and MMGCN)", "rivals": ("bpr", "lightgcn", "vbpr", "mmgcn")},
}
COLD_MODES = ("cold", "all")
VERDICTS = ("A claim **holds** where every planned condition (rival) is measured on every planned seed and every "
            "difference is significantly positive; it **does not hold** where a test on every seed is significantly "
            "negative, has a difference of the wrong sign or a raw p at or above α (which Holm's correction can only "
            "raise); both stand as the study fills in. Otherwise it is pending: a test on fewer seeds (its p still "
            "moves as seeds land), or one not significant yet whose Holm-adjusted p still falls as the other planned "
            "tests land.")


def with_imputation(cells: list[dict], impute: str) -> list[dict]:
    """``cells`` with, after each ``drop`` cell, its copy imputed by ``impute`` (condition
    ``drop-<impute>-<q>``, its own derived folder and run directory); ``mean`` adds nothing."""
    out = []
    for c in cells:
        out.append(c)
        if impute != "mean" and c.get("kind") == "drop":
            out.append({**c, "impute": impute, "condition": f"drop-{impute}-{c['q']}"})
    return out


def cell_name(cell: dict) -> str:
    """Name of a cell: ``<dataset>__<model>__<condition>__seed-<s>``."""
    return f"{cell['dataset']}__{cell['model']}__{cell['condition']}__seed-{cell['seed']}"


def cell_file(cell: dict, epochs: int) -> Path:
    """A finished cell's record under the epoch cap it ran with: cells of different caps are
    different measurements, kept side by side and never mixed in one table."""
    return OUT / "cells" / f"{cell_name(cell)}__e{epochs}.json"


def per_user_file(cell: dict, epochs: int) -> Path:
    """A robustness cell's per-user test metrics (``PER_USER`` and ``user``), beside its record."""
    return cell_file(cell, epochs).with_suffix(".npz")


def per_user_arrays(run_dir: Path, data_dir: Path | None, test: dict) -> dict[str, np.ndarray]:
    """Each test user's ``PER_USER`` metrics in the finished run ``run_dir``, checked against the
    run's recorded ``test`` metrics (their mean over users)."""
    from prismrec.eval import Evaluator
    from prismrec.experiment.export import load_run

    run = load_run(run_dir, data_dir)
    per_user = Evaluator(run.dataset, ks=(20,), mask_valid_at_test=run.config.train.mask_valid_at_test).evaluate(
        run.model, "test", per_user=True)["per_user"]
    arrays = _per_user(per_user)
    _check(arrays, test, run_dir)
    return arrays


def _check(arrays: dict[str, np.ndarray], recorded: dict, run_dir: Path, prefix: str = "") -> None:
    """Per-user metrics must average to the ones the cell recorded: else they are another run's."""
    for m in PER_USER:
        mean = float(np.mean(arrays[prefix + m]))
        if abs(mean - recorded[m]) > 1e-5:
            raise ValueError(f"{run_dir}: per-user {prefix}{m} averages {mean:.6f}, but the cell recorded "
                             f"{recorded[m]:.6f}: not the run this cell recorded")


def plan(datasets: list[str], seeds: list[int]) -> list[dict]:
    """Every cell, in the order they are run, stage by stage, each stage over every seed (so the
    claims, judged on the seeds every compared model has, firm up before the gentler conditions
    run): the clean and q = 0.4 cells of MGCN and FREEDOM, then of the other models; the cold cells
    of those models, the ID-only references and the cold claim's rivals; q = 0.2 and 0.1; the other
    models' cold cells."""
    first, rest = ["mgcn", "freedom"], [m for m in ROBUST_MODELS if m not in ("mgcn", "freedom")]
    claimed = [m for c in COLD_CLAIMS.values() for m in c["rivals"] if m not in ROBUST_MODELS and m not in ID_ONLY]
    stages = [("robust", first + rest, (0, 0.4)), ("cold", first + list(ID_ONLY) + rest + claimed, None),
              ("robust", ROBUST_MODELS, (0.2, 0.1)),
              ("cold", [m for m in COLD_MODELS if m not in ROBUST_MODELS + claimed and m not in ID_ONLY], None)]
    cells = []
    for family, models, qs in stages:
        for seed in seeds:
            for dataset in datasets:
                if family == "cold":
                    cells += [{"family": "cold", "dataset": dataset, "model": m, "seed": seed, "condition": "cold"}
                              for m in models]
                    continue
                cells += [{"family": "robustness", "dataset": dataset, "model": m, "seed": seed,
                           "condition": "clean" if q == 0 else f"{kind}-{q}", "kind": kind if q else None, "q": q}
                          for m in models for q in qs for kind in (KINDS if q else (None,))]
    return cells


def settings(model: str, dataset: str, epochs: int) -> dict:
    """The run's settings: the epoch cap, one thread, the benchmark's modality pair and the
    per-dataset settings of ``benchmarks.multimodal`` (FREEDOM's equal graph weights). A cap above
    the headline study's warm-up (``--epochs 1000``: trained to early stopping) brings that
    warm-up: no stop before ``WARM_UP`` epochs, since with contrastive terms BPR can sit at ln 2
    for 10-20 epochs while validation dips and patience would end the run there."""
    s = {"epochs": epochs, "threads": 1}
    warm_up = {"min_epochs": WARM_UP} if epochs > WARM_UP else {}
    s.update(warm_up)
    if model not in ID_ONLY:
        s["modalities"] = MODALITIES[dataset].strip("[]").split(",")
    s.update(MODEL_SETTINGS.get(model, {}).get(dataset, {}))
    if model == "egra":  # its stage-1 (MGCN) pretraining gets the same cap, warm-up and thread count
        s.update({"pretrain_epochs": epochs, "pretrain_settings": {"threads": 1, **warm_up}})
    return s


def derived_dataset(cell: dict, work: Path, impute: str) -> tuple[str, Path | None]:
    """``(dataset name, data dir)`` of the cell's input, derived into ``work/data`` if needed."""
    from prismrec.data.derive import corrupt_modality, split_cold

    source = cell["dataset"]
    data = work / "data"
    if cell["family"] == "cold":
        name = f"{source}-cold{int(COLD_FRACTION * 100)}"
        if not (data / name).is_dir():
            split_cold(source, data / name, COLD_FRACTION, COLD_SEED)
        return name, data
    if cell["q"] == 0:
        return source, None
    name = f"{source}-{CORRUPTED[source]}-{cell['kind']}-{cell['q']}-s{cell['seed']}"
    if cell.get("impute", "mean") != "mean":  # the folder records its imputation: one per choice
        impute, name = cell["impute"], f"{name}-{cell['impute']}"
    if not (data / name).is_dir():
        corrupt_modality(source, data / name, CORRUPTED[source], cell["kind"], cell["q"], seed=cell["seed"],
                         impute=impute if cell["kind"] == "drop" else None)
    return name, data


def run_cell(cell: dict, work: Path, epochs: int, impute: str, overwrite: bool = False,
             code: str | None = None, device: str | None = None) -> dict:
    """Train one cell (resumable run dir under ``work/runs``; ``overwrite``: replace the run it
    holds) and return its record (``code``: the commit the script's code was loaded at;
    ``device``: where it trains, e.g. ``cuda``, recorded; None: the CPU)."""
    from prismrec.experiment.config import resolve_config
    from prismrec.experiment.runs import run_experiment

    name, data_dir = derived_dataset(cell, work, impute)
    overrides = settings(cell["model"], cell["dataset"], epochs)
    config = resolve_config(cell["model"], name, {**overrides, **({"device": device} if device else {})})
    run_dir = work / "runs" / f"{cell_name(cell)}__e{epochs}"
    t0, c0 = time.time(), time.process_time()
    metrics = run_experiment(config, [cell["seed"]], run_dir, data_dir, progress=False, overwrite=overwrite)
    record = {**cell, "input": name, "settings": overrides, "code": code,
              "seconds": round(time.time() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1),
              "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs"),
              "stop_reason": metrics.get("stop_reason"), **({"device": device} if device else {}),
              "test": {k: v for k, v in (metrics.get("test") or {}).items() if "@" in k},
              "valid": {k: v for k, v in (metrics.get("valid") or {}).items() if "@" in k}}
    if cell["family"] == "cold":  # per-user metrics written beside the record by the caller
        record["cold"], record["per_user"] = cold_rows(run_dir, data_dir, cell)
    else:
        record["per_user"] = per_user_arrays(run_dir, data_dir, record["test"])
    return record


def forget_stage_one(cell: dict, work: Path, epochs: int, impute: str) -> list[Path]:
    """Remove the cached stage-1 runs and selections of ``cell``'s input (EGRA's pretrained
    ``P``), so that a rerun retrains them with the current code too: their cache keys hold the
    data and the settings, not the code. Returns what was removed (nothing for a model without a
    stage 0)."""
    import shutil

    from prismrec.experiment.config import resolve_config
    from prismrec.experiment.pretrained import _cache_root
    from prismrec.models import get_model

    name, _ = derived_dataset(cell, work, impute)
    config = resolve_config(cell["model"], name, settings(cell["model"], cell["dataset"], epochs))
    if "pretrained_items" not in get_model(cell["model"]).required_inputs(config.params):
        return []
    gone = sorted(_cache_root(config.params).glob(f"*-{name}-train*"))
    for path in gone:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return gone


def code_version() -> str | None:
    """The commit the working tree is at (``None`` outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def rerun_matches(cell: dict, patterns: list[str]) -> bool:
    """Whether ``cell``'s name matches one of the shell-style ``patterns`` (``--rerun``)."""
    return any(fnmatch.fnmatchcase(cell_name(cell), p) for p in patterns)


def trained_before(record: dict, rev: str) -> bool:
    """Whether a finished cell's ``record`` was trained at a commit that does not contain ``rev``
    (or records none): it predates the change ``rev`` made."""
    code = record.get("code")
    if not code:
        return True
    return subprocess.run(["git", "merge-base", "--is-ancestor", rev, code], capture_output=True).returncode != 0


def cold_rows(run_dir: Path, data_dir: Path, cell: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """``{mode: {scoring: metrics}}`` of the run's test cold items, and the per-user metrics of its
    own rows (``native``) in each mode (``<mode>_user``, ``<mode>_recall@20`` ...)."""
    from prismrec.coldstart import ColdStartConfig, cold_item_embeddings, reference_scores
    from prismrec.eval import Evaluator, evaluate_cold
    from prismrec.experiment.export import load_run

    run = load_run(run_dir, data_dir)
    data, model = run.dataset, run.model
    evaluator = Evaluator(data, ks=KS)
    out = model()
    content = MODALITIES[cell["dataset"]].strip("[]").split(",")
    rows, per_user = {}, {}
    for mode in COLD_MODES:
        native = evaluator.evaluate_cold(model, "test", out, mode, per_user=True)
        per_user |= _per_user(native.pop("per_user"), f"{mode}_")
        rows[mode] = {"native": native}
        for strategy in ("knn", "map"):
            scored, _ = cold_item_embeddings(model, out, data, ColdStartConfig(strategy=strategy, modalities=content))
            rows[mode][strategy] = evaluator.evaluate_cold(model, "test", scored, mode)
        for kind in ("popularity", "random"):
            rows[mode][kind] = evaluate_cold(reference_scores(kind, data), data.test, evaluator.exclude("test"),
                                             data.cold("test"), mode, ks=KS)
    return rows, per_user


def _per_user(per_user: dict, prefix: str = "") -> dict[str, np.ndarray]:
    return {f"{prefix}user": np.asarray(per_user["user"]),
            **{f"{prefix}{m}": np.asarray(per_user[m], dtype=np.float32) for m in PER_USER}}


def order_reference(dataset: str, work: Path) -> Path:
    """``references/<dataset>.json``: the spread of the fixed-item-order reference on the cold
    copy (no training; :func:`prismrec.coldstart.fixed_order_spread`), computed once."""
    from prismrec.coldstart import fixed_order_spread
    from prismrec.data import load_dataset

    path = OUT / "references" / f"{dataset}.json"
    if not path.is_file():
        name, data_dir = derived_dataset({"family": "cold", "dataset": dataset}, work, "mean")
        data = load_dataset(name, data_dir)
        record = {"dataset": name, "split": "test",
                  "order": {mode: fixed_order_spread(data, "test", mode, 100, KS) for mode in ("cold", "all")}}
        atomic_write(path, json.dumps(record, indent=2))
    return path


def train_cell(cell: dict, work: Path, epochs: int, impute: str, fresh: bool, code: str | None, path: Path,
               device: str | None = None) -> dict:
    """:func:`run_cell`; a ``fresh`` cell (``--rerun``) first loses its record ``path`` and its cached
    stage-1 runs, as it starts and not before: a rerun killed midway leaves the cells it had not
    reached as they were (finished, old), and the one it was training unfinished, so that the next
    run resumes it instead of reading its old run folder as the new result."""
    if fresh:
        path.unlink(missing_ok=True)
        forget_stage_one(cell, work, epochs, impute)
    return run_cell(cell, work, epochs, impute, overwrite=fresh, code=code, device=device)


def trained_cells(tasks: list[tuple[dict, bool]], work: Path, epochs: int, impute: str, code: str | None,
                  jobs: int = 1, device: str | None = None):
    """``(cell, record or the exception it raised)`` for each ``(cell, fresh)`` task as it
    finishes: one after another here, or shared out to ``jobs`` worker processes (one thread each;
    each takes the next cell in priority order when it finishes one). The caller writes the
    records, so that only one process writes cells, tables and commits."""
    if jobs <= 1:
        for cell, fresh in tasks:
            print(f"[robustness] {cell_name(cell)} (epochs<={epochs}{', rerun' if fresh else ''})", flush=True)
            try:
                yield cell, train_cell(cell, work, epochs, impute, fresh, code, cell_file(cell, epochs), device)
            except Exception as exc:
                yield cell, exc
        return
    with worker_pool(jobs) as pool:
        futures = {pool.submit(train_cell, cell, work, epochs, impute, fresh, code, cell_file(cell, epochs), device): cell
                   for cell, fresh in tasks}
        print(f"[robustness] {len(futures)} cells (epochs<={epochs}) in {jobs} worker processes", flush=True)
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], future.exception() or future.result()


# --------------------------------------------------------------------------- report


def _cap_suffix(epochs: int) -> str:
    """Tables and closing note of the default cap are ``robustness.md`` and ``closing_note.md``;
    another cap's carry ``_e<cap>``."""
    return "" if epochs == CAP else f"_e{epochs}"


def load_cells(epochs: int) -> list[dict]:
    """The finished cells of one epoch cap, with their per-user test metrics where kept."""
    cells = []
    for path in sorted((OUT / "cells").glob(f"*__e{epochs}.json")):
        cell = json.loads(path.read_text())
        if path.with_suffix(".npz").is_file():
            with np.load(path.with_suffix(".npz")) as z:
                cell["per_user"] = {k: z[k] for k in z.files}
        cells.append(cell)
    return cells


def write_cell(cell: dict, record: dict, epochs: int) -> list[Path]:
    """Write a finished cell: its per-user metrics, then its record."""
    paths = []
    per_user = record.pop("per_user", None)
    if per_user is not None:
        atomic_npz(per_user_file(cell, epochs), per_user)
        paths.append(per_user_file(cell, epochs))
    atomic_write(cell_file(cell, epochs), json.dumps(record, indent=2, default=float))
    return [cell_file(cell, epochs), *paths]


def backfill_per_user(planned: list[dict], work: Path, epochs: int, impute: str) -> list[Path]:
    """Per-user metrics for finished cells recorded without them, from their run folders where
    this machine has them (each checked against the cell's recorded metrics)."""
    written = []
    for cell in planned:
        path = cell_file(cell, epochs)
        run_dir = work / "runs" / f"{cell_name(cell)}__e{epochs}"
        if not path.is_file() or per_user_file(cell, epochs).is_file():
            continue
        if not (run_dir / "metrics.json").is_file():
            print(f"[robustness] {cell_name(cell)}: no run folder here, per-user metrics left out", flush=True)
            continue
        record = json.loads(path.read_text())
        data_dir = derived_dataset(cell, work, impute)[1]
        if cell["family"] == "cold":
            arrays = cold_rows(run_dir, data_dir, cell)[1]
            for mode in COLD_MODES:
                _check(arrays, record["cold"][mode]["native"], run_dir, f"{mode}_")
        else:
            arrays = per_user_arrays(run_dir, data_dir, record["test"])
        atomic_npz(per_user_file(cell, epochs), arrays)
        written.append(per_user_file(cell, epochs))
    return written


def _pct(new: float, base: float) -> str:
    return "-" if not base else f"{100 * (new - base) / base:+.1f}%"


def report(cells: list[dict], planned: list[dict], epochs: int) -> tuple[dict, str]:
    """The summary JSON and markdown of the finished cells (mean over the seeds that ran)."""
    done = {cell_name(c) for c in cells}
    left = [cell_name(c) for c in planned if cell_name(c) not in done]
    by = {}
    for c in cells:
        by.setdefault((c["family"], c["dataset"], c["model"], c["condition"]), []).append(c)

    def mean(family, dataset, model, condition, key, where="test"):
        runs = by.get((family, dataset, model, condition), [])
        values = [r[where][key] for r in runs if r.get(where) and key in r[where]]
        return float(np.mean(values)) if values else None

    def change(dataset, model, condition, key) -> str:
        """The relative change from the clean cell on the seeds both ran; ± over seeds (2 or more)."""
        clean = {c["seed"]: c["test"][key] for c in by.get(("robustness", dataset, model, "clean"), [])}
        corrupted = {c["seed"]: c["test"][key] for c in by.get(("robustness", dataset, model, condition), [])}
        seeds = sorted(set(clean) & set(corrupted))
        if not seeds:
            return "-"
        text = _pct(np.mean([corrupted[s] for s in seeds]), np.mean([clean[s] for s in seeds]))
        if len(seeds) > 1:
            text += f" ± {100 * np.std([corrupted[s] / clean[s] - 1 for s in seeds], ddof=1):.1f}"
        return text

    lines = ["# Robustness to missing / noisy modalities, and cold items", "",
             f"Every cell: one training run, epochs capped at the value recorded in the cell (this table: "
             f"{sorted({c['settings']['epochs'] for c in cells}) or [epochs]}), threads=1, default settings, "
             f"modalities of benchmarks/multimodal.py; seeds that ran: {sorted({c['seed'] for c in cells})}. "
             f"Test metrics at the best validation epoch. Cells finished: {len(cells)}; left: {len(left)}. "
             "Δ: the relative change of the mean from the clean cells, over the seeds both ran; ± the sample "
             "standard deviation of the per-seed changes (with 2 or more seeds).", ""]
    summary = {"finished": len(cells), "left": left, "robustness": {}, "cold": {}}
    datasets = sorted({c["dataset"] for c in cells}, key=lambda d: list(CORRUPTED).index(d) if d in CORRUPTED else 9)
    imputations = sorted({c["impute"] for c in cells if c.get("impute", "mean") != "mean"})
    described = {"noise": "rows replaced by N(mean_d, std_d)", "drop": "rows masked, imputed by mean",
                 **{f"drop-{i}": f"rows masked, imputed by {i}" for i in imputations}}
    described["drop-zero"] = "rows masked, zero-filled, mask-aware fusion"
    for dataset in datasets:
        for kind in [*KINDS, *(f"drop-{i}" for i in imputations)]:
            models = [m for m in ROBUST_MODELS if (("robustness", dataset, m, "clean") in by)]
            if not models or (kind not in KINDS and not any(by.get(("robustness", dataset, m, f"{kind}-{q}"))
                                                            for m in models for q in QS)):
                continue
            lines += [f"## {dataset}: {kind} on {CORRUPTED[dataset]} ({described[kind]})",
                      "", "| model | R@20 q=0 | " + " | ".join(f"ΔR@20 q={q}" for q in QS) + " | N@20 q=0 | "
                      + " | ".join(f"ΔN@20 q={q}" for q in QS) + " |", "|---" * 9 + "|"]
            for m in models:
                row = [m]
                for key in ("recall@20", "ndcg@20"):
                    base = mean("robustness", dataset, m, "clean", key)
                    row.append(f"{base:.4f}")
                    for q in QS:
                        v = mean("robustness", dataset, m, f"{kind}-{q}", key)
                        row.append(change(dataset, m, f"{kind}-{q}", key))
                        summary["robustness"].setdefault(dataset, {}).setdefault(kind, {}).setdefault(m, {})[
                            f"{key}@q={q}"] = v
                    summary["robustness"][dataset][kind][m][f"{key}@q=0"] = base
                lines.append("| " + " | ".join(row[:1] + row[1:5] + row[5:]) + " |")
            lines.append("")
        cold_models = [m for m in COLD_MODELS if ("cold", dataset, m, "cold") in by]
        if cold_models:
            lines += [f"## {dataset}: cold items (10 % of items, test half), R@20 / N@20", "",
                      "`cold`: ranked among the cold items; `all`: among all items. `native`: the model's own "
                      "rows as trained; `knn` / `map`: rows from content (prismrec.coldstart). ID-only models' "
                      "`native` is the no-content reference: their untrained cold rows rank the cold items in "
                      "nearly one order for every user, so compare them with the fixed-item-order spread, not "
                      "only with per-user random. Among cold items popularity is a tie (all have degree 0), "
                      "broken at random: it equals the random reference there.", "",
                      "| model | cold native | cold knn | cold map | all native | all knn | all map |",
                      "|---|---|---|---|---|---|---|"]
            refs = None
            for m in cold_models:
                run = by[("cold", dataset, m, "cold")][0]
                cells_ = []
                for mode in ("cold", "all"):
                    for s in ("native", "knn", "map"):
                        values = [r["cold"][mode][s] for r in by[("cold", dataset, m, "cold")]]
                        r20 = float(np.mean([v["recall@20"] for v in values]))
                        n20 = float(np.mean([v["ndcg@20"] for v in values]))
                        cells_.append(f"{r20:.4f} / {n20:.4f}")
                        summary["cold"].setdefault(dataset, {}).setdefault(m, {})[f"{mode}/{s}"] = {
                            "recall@20": r20, "ndcg@20": n20}
                lines.append(f"| {m}{' (ID only)' if m in ID_ONLY else ''} | " + " | ".join(cells_) + " |")
                refs = run["cold"]
            for kind in ("popularity", "random"):
                cells_ = [f"{refs[mode][kind]['recall@20']:.4f} / {refs[mode][kind]['ndcg@20']:.4f}"
                          for mode in ("cold", "all")]
                lines.append(f"| {kind} reference | {cells_[0]} | | | {cells_[1]} | | |")
                summary["cold"][dataset][kind] = {mode: refs[mode][kind] for mode in ("cold", "all")}
            ref_path = OUT / "references" / f"{dataset}.json"
            if ref_path.is_file():
                order = json.loads(ref_path.read_text())["order"]
                cells_ = [f"{order[mode]['recall@20']['median']:.4f} [{order[mode]['recall@20']['q05']:.4f}, "
                          f"{order[mode]['recall@20']['q95']:.4f}]" for mode in ("cold", "all")]
                lines.append(f"| fixed item order, R@20 median [5 %, 95 %] of {order['cold']['draws']} draws | "
                             f"{cells_[0]} | | | {cells_[1]} | | |")
                summary["cold"][dataset]["fixed_order"] = order
            lines += ["", f"Users with a test cold positive: {refs['cold']['native']['users']}; "
                      f"test cold items: {refs['cold']['native']['items']}.", ""]
    seeds = {d: len({c["seed"] for c in planned if c["dataset"] == d}) for d in datasets}
    tests, verdicts = judged(by, datasets, CLAIMS, claim_tests, planned_claim_tests(), seeds)
    if verdicts:
        lines += ["## The seed papers' robustness claims", "",
                  "Relative change of the seed-mean test metric from the clean cells, on the seeds where the model "
                  "and its rivals all ran the condition and the clean cell; each with a paired test: per test "
                  "user, the model's change from its clean cell divided by its clean mean, minus the rival's "
                  "likewise (seeds averaged per user; its mean is the difference of the two relative changes), "
                  f"Wilcoxon signed-rank, Holm over the claims' {planned_claim_tests()} planned tests "
                  f"({sum(t['final'] for t in tests)} measured on every planned seed; one not measured yet counts as "
                  f"p = 1). {VERDICTS}", "", *(v["text"] for v in verdicts), ""]
        summary["claims"] = verdicts
        summary["claim_tests"] = tests
    cold_datasets = [d for d in datasets if any(k[:2] == ("cold", d) for k in by)]
    cold_tests, cold_verdicts = judged(by, cold_datasets, COLD_CLAIMS, cold_claim_tests, planned_cold_tests(), seeds,
                                       cold=True)
    if cold_verdicts:
        lines += ["## The seed papers' cold-start claim", "",
                  "Cold items, each model's own rows as trained (`native`), ranked among the cold items and among "
                  "all items; per test user with a cold positive, the model's metric against each rival's on the "
                  f"same seeds (seed-averaged), Wilcoxon signed-rank, Holm over the claim's {planned_cold_tests()} "
                  f"planned tests ({sum(t['final'] for t in cold_tests)} measured on every planned seed; one not "
                  f"measured yet counts as p = 1). {VERDICTS}", "", *(v["text"] for v in cold_verdicts), ""]
        summary["cold_claims"] = cold_verdicts
        summary["cold_claim_tests"] = cold_tests
    note = OUT / f"closing_note{_cap_suffix(epochs)}.md"  # by hand from the tables: what they say of each claim
    if note.is_file():
        lines += [note.read_text().strip(), ""]
    if left:
        hours = hours_left([c for c in planned if cell_name(c) not in done], cells, epochs)
        lines += ["## Not run yet", "", f"{len(left)} planned cells (rerun the script to continue), about "
                  + ", ".join(f"{h:.0f} core-hours on {d}" for d, h in hours.items()) + " (est.: "
                  + HOURS_LEFT + "): " + ", ".join(left[:12]) + (", ..." if len(left) > 12 else ""), ""]
        summary["core_hours_left"] = hours
    return summary, "\n".join(lines) + "\n"


HOURS_LEFT = ("each cell as long as the median of the model's finished cells of its family on its dataset, "
              "in CPU seconds (wall seconds for cells recorded before 2026-12-05, which count the time a "
              "paused or crowded run waited), EGRA's stage 1 included; where none finished, its epochs "
              "elsewhere (else 200, within the cap) times its 1-thread epoch in results/floors*.md, EGRA plus one MGCN run "
              "per point of its λ_cl grid")


def hours_left(left: list[dict], cells: list[dict], cap: int) -> dict[str, float]:
    """Per dataset, the core-hours the ``left`` cells take (est.: :data:`HOURS_LEFT`)."""
    from benchmarks.headline import floor_epoch_s, grid

    def median(values, default):
        return float(np.median(values)) if values else default

    def run_s(dataset, model):
        epochs = min(cap, median([c["epochs_run"] for c in cells if c["model"] == model and "epochs_run" in c], 200))
        return epochs * (floor_epoch_s(model, dataset) or 0.0)

    out = {}
    for cell in left:
        dataset, model = cell["dataset"], cell["model"]
        seconds = median([c.get("cpu_seconds", c["seconds"]) for c in cells
                          if "seconds" in c and "device" not in c  # CPU runs
                          and (c["dataset"], c["model"], c["family"]) == (dataset, model, cell["family"])], None)
        if seconds is None:
            seconds = run_s(dataset, model)
            if model == "egra":
                seconds += len(grid("mgcn").get("cl_weight", [None])) * run_s(dataset, "mgcn")
        out[dataset] = out.get(dataset, 0.0) + seconds / 3600
    return out


def planned_cold_tests() -> int:
    """The cold-start claim's tests on the benchmark's whole plan (every dataset, rival, mode and
    metric): Holm's family."""
    return len(CORRUPTED) * sum(len(c["rivals"]) for c in COLD_CLAIMS.values()) * len(COLD_MODES) * len(PER_USER)


def planned_claim_tests() -> int:
    """The claims' tests on the benchmark's whole plan (every dataset, kind, q, rival and metric),
    whichever ``--datasets`` run now: Holm's family."""
    return len(CORRUPTED) * sum(len(c["kinds"]) * len(QS) * len(c["rivals"]) * len(PER_USER) for c in CLAIMS.values())


def claim_tests(by: dict, dataset: str, model: str, claim: dict) -> tuple[list[dict], list[str]]:
    """The claim's paired tests on ``dataset``, one per condition of its kinds, rival and metric,
    on the seeds where ``model`` and every rival ran the condition and the clean cell with
    per-user metrics; and the conditions still pending (no such seed)."""
    def per_user(m, condition, key, seeds):  # (users, metric averaged over the seeds)
        cells = [c for c in by.get(("robustness", dataset, m, condition), []) if c["seed"] in seeds]
        users = cells[0]["per_user"]["user"]
        if any(not np.array_equal(users, c["per_user"]["user"]) for c in cells):
            raise ValueError(f"{dataset}/{m}/{condition}: seeds evaluate different test users")
        return users, np.mean([c["per_user"][key] for c in cells], axis=0)

    def change(m, condition, key, seeds):  # per user: the change from the clean cell, over the clean mean
        users, clean = per_user(m, "clean", key, seeds)
        users_c, corrupted = per_user(m, condition, key, seeds)
        if not np.array_equal(users, users_c):
            raise ValueError(f"{dataset}/{m}: {condition} and clean evaluate different test users")
        return users, (corrupted - clean) / clean.mean()

    tests, pending = [], []
    for condition in (f"{kind}-{q}" for kind in claim["kinds"] for q in QS):
        seeds = _shared_seeds(by, [("robustness", dataset, m, c) for m in (model, *claim["rivals"])
                                   for c in ("clean", condition)])
        if not seeds:
            pending.append(condition)
            continue
        for rival in claim["rivals"]:
            for key in PER_USER:
                users, mine = change(model, condition, key, seeds)
                users_r, theirs = change(rival, condition, key, seeds)
                if not np.array_equal(users, users_r):
                    raise ValueError(f"{dataset}: {model} and {rival} evaluate different test users")
                z = mine - theirs  # its mean: the difference of the two relative changes of the mean
                p = float(stats.wilcoxon(z, zero_method="wilcox").pvalue) if np.count_nonzero(z) else 1.0
                tests.append({"dataset": dataset, "model": model, "rival": rival, "condition": condition,
                              "metric": key, "mine": float(mine.mean()), "theirs": float(theirs.mean()),
                              "diff": float(z.mean()), "p": p, "seeds": len(seeds), "users": int(len(z))})
    return tests, pending


def _shared_seeds(by: dict, keys: list[tuple]) -> set[int]:
    """The seeds every one of the cells ``keys`` ran, with per-user metrics."""
    return set.intersection(*({c["seed"] for c in by.get(key, []) if "per_user" in c} for key in keys))


def judged(by: dict, datasets: list[str], claims: dict, tester, planned: int, seeds: dict[str, int],
           cold: bool = False) -> tuple[list[dict], list[dict]]:
    """The ``claims``' tests on ``datasets`` (``tester``: :func:`claim_tests` or :func:`cold_claim_tests`)
    and a verdict per claim and dataset (``dataset``, ``model``, ``verdict``: holds, does not hold
    or pending; ``evidence``: the verdict with its tests; ``text``: the claim's line).

    A test is final once it runs on every planned seed of its dataset (``seeds``: how many); one on
    fewer is provisional: its per-user means, and so its p, still move as seeds land. Holm's family
    is the ``planned`` tests, of which the final ones are measured (the others count as p = 1), so
    adjusted p-values only fall as the study fills in and a verdict **holds** or **does not hold**
    stands (:func:`benchmarks.headline.settled`)."""
    tests, pending = [], {}
    for dataset in datasets:
        for model, claim in claims.items():
            found, pending[dataset, model] = tester(by, dataset, model, claim)
            tests += [{**t, "planned_seeds": seeds[dataset], "final": t["seeds"] >= seeds[dataset]} for t in found]
    final = [t for t in tests if t["final"]]
    holm(final, planned)
    for t in tests:
        t.setdefault("p_holm", None)
    complete = len(final) >= planned
    verdicts = []
    for dataset in datasets:
        for model, claim in claims.items():
            mine = [t for t in tests if (t["dataset"], t["model"]) == (dataset, model)]
            verdict, text = judge(mine, pending[dataset, model], model, cold, complete)
            verdicts.append({"dataset": dataset, "model": model, "verdict": verdict, "evidence": text,
                             "text": f"- {model} on {dataset}: \"{claim['claim']}\": {text}"})
    return tests, verdicts


def judge(tests: list[dict], pending: list[str], model: str, cold: bool = False,
          family_complete: bool = False) -> tuple[str, str]:
    """A claim's verdict and its line from its tests (:func:`judged`): **holds** where every
    condition (rival) is measured on every seed and every difference is significantly positive,
    **does not hold** where a final test can no longer be (:func:`benchmarks.headline.settled`),
    pending otherwise: what is not measured, what is measured on fewer seeds, what is not
    significant yet."""
    def text(t):
        metric = f"{t['metric'][0].upper()}@20"
        stat = (f"p_Holm {fmt_p(t['p_holm'])}, {t['seeds']} seeds" if t["final"] else
                f"p {fmt_p(t['p'])} on {t['seeds']} of {t['planned_seeds']} seeds")
        if cold:
            return f"{t['mode']} {metric} {t['mine']:.4f} vs {t['rival']} {t['theirs']:.4f} ({stat})"
        return (f"{t['condition']} {metric} {t['mine']:+.1%} vs {t['rival']} {t['theirs']:+.1%} "
                f"(difference {t['diff']:+.2%}, {stat})")

    outcome = {id(t): settled(t, family_complete) if t["final"] else "open" for t in tests}
    failed = [t for t in tests if outcome[id(t)] == "not better"]
    unsettled = [t for t in tests if outcome[id(t)] == "open"]
    rest = []
    if pending:
        rest.append(f"not measured: {', '.join(pending)}")
    provisional = [t for t in unsettled if not t["final"]]
    if provisional:
        rest.append("so far, on fewer seeds than planned: " + "; ".join(map(text, provisional)))
    if len(provisional) < len(unsettled):
        rest.append("not significant yet: " + "; ".join(text(t) for t in unsettled if t["final"]))
    if failed:
        what = "not significantly above" if cold else "not a significantly smaller drop at"
        return "does not hold", (f"**does not hold**: {what} " + "; ".join(map(text, failed))
                                 + (f" (also {'; '.join(rest)})" if rest else "") + ".")
    if not tests:
        return "pending", f"pending (no {'rival' if cold else 'condition'} with {model} on the same seeds, with per-user metrics)."
    if rest:
        better = [t for t in tests if outcome[id(t)] == "better"]
        return "pending", "pending (" + "; ".join(rest + ([f"significant: {'; '.join(map(text, better))}"] if better else [])) + ")."
    return "holds", "**holds**: " + "; ".join(map(text, tests)) + "."


def cold_claim_tests(by: dict, dataset: str, model: str, claim: dict) -> tuple[list[dict], list[str]]:
    """The cold-start claim's paired tests on ``dataset``: per rival, on the seeds it and ``model``
    ran the cold cell with per-user metrics, per mode and metric, the per-user (seed-averaged)
    metric of the model's own rows against the rival's; and the rivals still pending."""
    def per_user(m, mode, metric, seeds):  # (users, seed-averaged metric) of one mode
        cells = [c for c in by.get(("cold", dataset, m, "cold"), []) if c["seed"] in seeds]
        users = cells[0]["per_user"][f"{mode}_user"]
        if any(not np.array_equal(users, c["per_user"][f"{mode}_user"]) for c in cells):
            raise ValueError(f"{dataset}/{m}: cold cells of different seeds evaluate different users")
        return users, np.mean([c["per_user"][f"{mode}_{metric}"] for c in cells], axis=0)

    tests, pending = [], []
    for rival in claim["rivals"]:
        seeds = _shared_seeds(by, [("cold", dataset, m, "cold") for m in (model, rival)])
        if not seeds:
            pending.append(rival)
            continue
        for mode in COLD_MODES:
            for metric in PER_USER:
                users, mine = per_user(model, mode, metric, seeds)
                users_r, theirs = per_user(rival, mode, metric, seeds)
                if not np.array_equal(users, users_r):
                    raise ValueError(f"{dataset}: {model} and {rival} evaluate different cold users")
                z = mine - theirs
                p = float(stats.wilcoxon(z, zero_method="wilcox").pvalue) if np.count_nonzero(z) else 1.0
                tests.append({"dataset": dataset, "model": model, "rival": rival, "mode": mode, "metric": metric,
                              "mine": float(mine.mean()), "theirs": float(theirs.mean()), "diff": float(z.mean()),
                              "p": p, "seeds": len(seeds), "users": int(len(z))})
    return tests, pending


def write_report(planned: list[dict], epochs: int) -> list[Path]:
    summary, md = report(load_cells(epochs), planned, epochs)
    paths = [OUT / f"robustness{_cap_suffix(epochs)}.{ext}" for ext in ("json", "md")]
    atomic_write(paths[0], json.dumps(summary, indent=2))
    atomic_write(paths[1], md)
    return paths


def cells_to_train(planned: list[dict], epochs: int, impute: str, only: set[str], conditions: set[str],
                   rerun: list[str], rerun_after: str) -> list[tuple[dict, bool]]:
    """``(cell, fresh)`` of the planned cells to train, in the plan's order: those not finished
    with this cap, of the models ``only`` and the conditions ``conditions`` (empty: all), or with
    ``rerun`` the finished ones matching it and trained before ``rerun_after`` (``fresh``: its
    old run is replaced)."""
    tasks = []
    for cell in planned:
        if (only and cell["model"] not in only) or (conditions and cell["condition"] not in conditions):
            continue
        if impute != "mean" and cell.get("impute") != impute:
            continue  # --impute X runs its drop cells only: the others do not depend on it
        if rerun and not rerun_matches(cell, rerun):
            continue  # --rerun trains the matching cells only
        path = cell_file(cell, epochs)
        fresh = bool(rerun) and path.is_file() and trained_before(json.loads(path.read_text()), rerun_after)
        if fresh or not path.is_file():  # else finished with this cap
            tasks.append((cell, fresh))
    return tasks


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="lfm2k,tiktok")
    parser.add_argument("--seeds", default="999", help="comma-separated (the issue asks 999,1000,1001)")
    parser.add_argument("--epochs", type=int, default=CAP, help="epoch cap of every run (recorded)")
    parser.add_argument("--impute", default="mean", help="imputation of dropped rows: mean, zero, neighbour")
    parser.add_argument("--work", type=Path, default=Path("runs/robustness"), help="derived data and run dirs")
    parser.add_argument("--results", type=Path, default=OUT, help="cells and tables (default results/robustness)")
    parser.add_argument("--max-cells", type=int, default=0, help="stop after training this many cells (0: all)")
    parser.add_argument("--only", default="", help="comma-separated models to run (default: all)")
    parser.add_argument("--conditions", default="", help="comma-separated conditions to run, e.g. "
                        "'cold,clean,noise-0.4' (default: all)")
    parser.add_argument("--rerun", default="", help="comma-separated shell patterns of finished cells to "
                        "retrain from scratch (their code changed), e.g. 'lfm2k__gume__drop-zero-*'")
    parser.add_argument("--rerun-after", default="", help="with --rerun: the commit of the change; cells "
                        "trained at or after it are kept")
    parser.add_argument("--jobs", type=int, default=1, help="cells trained at once, in worker processes")
    parser.add_argument("--commit", action="store_true", help="git-commit each finished cell and the tables")
    parser.add_argument("--device", default=None, help="train on this device, e.g. cuda (default: the CPU; "
                        "recorded in each cell)")
    parser.add_argument("--report-only", action="store_true", help="train nothing, rewrite the tables")
    parser.add_argument("--backfill", action="store_true", help="train nothing; add per-user test metrics to "
                        "robustness cells recorded without them, from their run folders in --work")
    args = parser.parse_args()
    OUT = args.results
    seeds = [int(s) for s in args.seeds.split(",")]
    planned = with_imputation(plan(args.datasets.split(","), seeds), args.impute)
    only = set(filter(None, args.only.split(",")))
    conditions = set(filter(None, args.conditions.split(",")))
    if unknown := conditions - {c["condition"] for c in planned}:
        parser.error(f"--conditions {','.join(sorted(unknown))}: no planned cell has it (planned: "
                     f"{', '.join(sorted({c['condition'] for c in planned}))})")
    rerun = list(filter(None, args.rerun.split(",")))
    if rerun and not args.rerun_after:
        parser.error("--rerun needs --rerun-after REV (the commit whose change the cells must be retrained with)")
    if args.backfill:
        written = backfill_per_user(planned, args.work, args.epochs, args.impute)
        tables = write_report(planned, args.epochs)
        if args.commit and written:
            git_commit([*written, *tables], f"robustness benchmark: per-user test metrics of {len(written)} "
                       f"cells recorded before they were kept (epochs<={args.epochs})")
        return
    code = code_version()  # the commit this process's code was loaded at (the cells' provenance)
    tasks = [] if args.report_only else cells_to_train(planned, args.epochs, args.impute, only, conditions, rerun,
                                                       args.rerun_after)
    if args.max_cells:
        tasks = tasks[:args.max_cells]
    for cell, fresh in tasks:  # here, before any worker starts: no two processes derive one folder
        if cell["family"] == "cold" and not (OUT / "references" / f"{cell['dataset']}.json").is_file():
            reference = order_reference(cell["dataset"], args.work)  # once per dataset, before its first cold cell
            if args.commit:
                git_commit([reference], f"robustness benchmark: fixed-item-order reference on {cell['dataset']}'s cold copy")
        derived_dataset(cell, args.work, args.impute)
    for cell, record in trained_cells(tasks, args.work, args.epochs, args.impute, code, args.jobs, args.device):
        if isinstance(record, Exception):  # one failing model must not stop the grid: retried next run
            print(f"[robustness] {cell_name(cell)} failed: {type(record).__name__}: {record}", file=sys.stderr, flush=True)
            continue
        paths = write_cell(cell, record, args.epochs)
        tables = write_report(planned, args.epochs)
        print(f"[robustness] done {cell_name(cell)}: test R@20 {record['test'].get('recall@20')} "
              f"in {record['seconds']} s", flush=True)
        if args.commit:
            git_commit([*paths, *tables], f"robustness benchmark: cell {cell_name(cell)} (epochs<={args.epochs}, "
                       f"seed {cell['seed']}); tables regenerated")
    write_report(planned, args.epochs)
    print((OUT / f"robustness{_cap_suffix(args.epochs)}.md").read_text())


if __name__ == "__main__":
    main()
