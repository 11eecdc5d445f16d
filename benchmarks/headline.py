"""The headline study: do EGRA, SIGER and RLMultimodalRec beat their baselines, tuned alike?

Every model is tuned on **validation** with the same budget, trained with 5 seeds at the selected
point and tested once per seed; the seed models' ablations run on the same seeds; each seed model
is compared with each baseline by paired per-user tests, Holm-corrected.

    python -m benchmarks.headline [--datasets lfm2k,tiktok] [--models a,b] [--parts tune,final,ablation,longtail]
                                  [--jobs 2] [--commit]   # runs in 2 processes; commit each result
                                  [--device cuda]         # train on a GPU (recorded per seed, not a setting)
    python -m benchmarks.headline --report-only     # rebuild every table from the committed cells

Protocol:

- **Search space**: every setting of the model's ``Config`` that declares a ``grid`` (the paper's
  or official code's), and the training settings its ``train_grid`` names (the learning rate of
  RLMultimodalRec, EGRA and LATTICE). **Budget**: ``TRIALS`` points per model and dataset: the defaults (the
  official settings) first, then points drawn without replacement from the grid's Cartesian
  product (seeded); a grid with fewer points is searched exhaustively. Each trial trains seed 999
  on a copy of the dataset **without its test split** (test cannot be read), at most
  ``TRIAL_EPOCHS`` epochs with patience ``TRIAL_PATIENCE``, never stopping before
  ``TRIAL_MIN_EPOCHS`` (a warm-up: with contrastive terms BPR can sit at ln 2 for 10-20 epochs
  while validation dips, and the short patience ended 9 of 13 MGCN/GUME/SIGER trials on lfm2k at
  epoch 12-14 before the rule was added; recorded trials that stopped early are rerun, the rest
  are what the rule gives); the point with the best valid Recall@20 is selected (ties: valid
  NDCG@20, then the earlier trial).
- **Final**: the selected point with seeds ``SEEDS`` under the default protocol (at most 1000
  epochs, patience 20, selection on valid Recall@20) with the trials' warm-up (never stopping
  before ``TRIAL_MIN_EPOCHS``: without it all 5 SMORE seeds on lfm2k stopped at epoch 22 with their
  best at epoch 0, valid R@20 .21 against its trials' .44), test evaluated once per seed.
- **Ablations** (``ABLATIONS`` of ``benchmarks/{rlmmrec,siger,egra}.py``): the selected point
  with the variant's switches changed, the same seeds, not re-tuned.
- **Tests**: per-user test metrics averaged over the 5 seeds; Wilcoxon signed-rank test of each
  seed model against each baseline (and each ablation against its full model) per dataset and
  metric; Holm's correction over each family, the family being every test the study plans (on
  every dataset), a test not measured yet counting as p = 1: adjusted p-values only fall as cells
  land, so a significant verdict read mid-study stands when the study completes. A claim's
  **holds** / **does not hold** stands too: it does not hold only where a test it needs can no
  longer pass (significantly worse, a difference of the wrong sign, a raw p at or above α, or
  its whole family measured, :func:`settled`); a test with a raw p below α that is not
  significant yet after Holm leaves the claim pending ("n.s. so far" in the tables).
- **Groups**: each seed also keeps its per-user test metrics over the long tail (the least
  popular ``TAIL_SHARE`` of items by training degree) and the head, and its users' training
  interactions (sparse users: the sparsest ``SPARSE_SHARE``); EGRA's long-tail claim (ALGORITHMS.md
  6.6) and RLMultimodalRec's sparsity claim compare relative gains on the two groups.
  ``--parts longtail`` adds them to seeds recorded before (the tail from their run folders where
  this machine has them).

Everything a later run needs is committed under ``results/headline/cells/<dataset>/<cell>/``
(``tuning.json``: the space and every trial's settings and validation metrics; ``seed-<s>.json``:
resolved config, metrics, timing; ``seed-<s>.npz``: per-user test metrics, overall, tail and
head); weights stay in
``runs/headline/`` (not committed). A rerun skips what is recorded, so the study continues on any
machine. Cells whose protocol or selection changed (a new grid, a new default) are redone.
Tables: ``results/headline.{md,tex,csv,json}``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import functools
import importlib
import io
import json
import math
import random
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import yaml

from benchmarks.common import RESULTS, atomic_npz, atomic_write, git_commit, worker_pool
from benchmarks.multimodal import MODALITIES, MODEL_SETTINGS
from prismrec.experiment import significance

SEED_MODELS = ["rlmmrec", "siger", "egra"]
BASELINES = ["bpr", "lightgcn", "vbpr", "mmgcn", "lattice", "bm3", "freedom", "mgcn", "lgmrec",
             "dragon", "smore", "damrs", "gume"]
DATASETS = ["lfm2k", "tiktok"]
TRIALS = 6
TRIAL_EPOCHS, TRIAL_PATIENCE, TRIAL_MIN_EPOCHS = 300, 10, 50
SEEDS = [999, 1000, 1001, 1002, 1003]
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
TESTED = ("recall@20", "ndcg@20")
REFERENCE = "lightgcn"  # the ID-only model every other one is also tested against
ALPHA = 0.05
# Each seed paper's claims (ALGORITHMS.md: "Confirms the claim if"), as this study can test them:
# "beats": better than each listed baseline on R@20 and N@20 (Holm-corrected paired tests);
# "lower": each listed ablation worse than the full model on both metrics; "elsewhere": measured by
# another benchmark, named here ("judged_in": the list of verdicts in ROBUSTNESS that holds its own).
CLAIMS = {
    "rlmmrec": [
        {"claim": "beats CF (BPR, LightGCN), visual-aware (VBPR) and multimodal-GNN (MMGCN) baselines "
                  "(GRCN, also named, is not implemented here)", "beats": ["bpr", "lightgcn", "vbpr", "mmgcn"]},
        {"claim": "gated fusion beats mean and concatenation fusion", "lower": ["concat fusion", "mean fusion"]},
        {"claim": "alleviates sparsity (ours: larger relative gains over LightGCN for the sparsest quarter of "
                  "users by training interactions than for the others)", "gains_over": "lightgcn",
         "on": ("sparse", "rest")},
        {"claim": "alleviates cold start", "judged_in": "cold_claims", "elsewhere": "the claim judged at the end of "
                  "results/robustness/robustness_e1000.md (cold items, against BPR, LightGCN, VBPR and MMGCN), "
                  "and results/coldstart/coldstart.md (every model's content paths, 20-epoch cap)"},
    ],
    "siger": [
        {"claim": "beats GUME and MGCN", "beats": ["gume", "mgcn"]},
        {"claim": "collaborative infusion, the perturbation, A-InfoNCE and the standard InfoNCE each help",
         "lower": ["w/o CI (beta = 0)", "w/o MPP (lambda_p = 0)", "w/o A-InfoNCE (lambda_a = 0)",
                   "w/o standard InfoNCE (lambda_b = 0)"]},
        {"claim": "the personalised (modulus) perturbation beats fixed noise and uniform relative noise",
         "lower": ["fixed-eps perturbation (GUME)", "uniform relative noise (gamma = 0)"]},
        {"claim": "robust to noise in the raw modality features", "judged_in": "claims",
         "elsewhere": "the claims judged at the end of "
                  "results/robustness/robustness_e1000.md (to early stopping) and robustness.md (20-epoch cap)"},
    ],
    "egra": [
        {"claim": "beats GUME, MGCN and the pretrained model it consumes (MGCN)", "beats": ["gume", "mgcn"]},
        {"claim": "links from pretrained representations, and both alignment levels, each help",
         "lower": ["w/o EBG (gamma = 0)", "EBG-raw (GUME's raw-feature links)", "w/o entity level", "w/o epoch level"]},
        {"claim": "larger relative gains over GUME on long-tail items than on head items", "gains_over": "gume",
         "on": ("tail", "head")},
        {"claim": "robust to modality noise", "judged_in": "claims", "elsewhere": "the claims judged at the end of "
                  "results/robustness/robustness_e1000.md (to early stopping) and robustness.md (20-epoch cap)"},
    ],
}
TAIL_SHARE = 0.8  # ALGORITHMS.md 6.6: the tail is the least popular 80 % of items by training degree
SPARSE_SHARE = 0.25  # ours: the sparsest quarter of the tested users by training interactions
GROUPS = ("tail", "head", "sparse", "rest")
NEEDS = {"tail": "tail_user", "head": "head_user", "sparse": "user_degree", "rest": "user_degree"}  # arrays a group reads
CELLS = RESULTS / "headline" / "cells"
ROBUSTNESS = RESULTS / "robustness" / "robustness_e1000.json"  # the robustness study to early stopping
RUNS = Path("runs/headline")
# Settings fixed per model and dataset, not searched: the benchmarks' per-dataset settings
# (benchmarks.multimodal.MODEL_SETTINGS: modality parts and weights where the names give none,
# RLMultimodalRec's feature scaling as validation chose it).
FIXED = MODEL_SETTINGS
COMMIT = False  # --commit: git-commit each recorded trial and seed (set in the worker processes too)
DEVICE = None  # --device: where runs train; how, not what: outside the settings a cell is recorded and matched by
LABEL = {"recall@10": "R@10", "recall@20": "R@20", "ndcg@10": "N@10", "ndcg@20": "N@20"}


# ----------------------------------------------------------------------------- protocol

def model_config_class(model: str):
    from prismrec.experiment.config import model_class

    return model_class(model).Config


def grid(model: str) -> dict[str, list]:
    """The model's declared search grid (its Config's ``grid`` fields, then its ``train_grid``)."""
    from prismrec.experiment.config import declared_grid

    return declared_grid(model)


def default_settings(model: str) -> dict:
    """Every setting's default for ``model``: the training settings' (with its ``train_defaults``),
    then its Config's."""
    from prismrec.experiment.config import model_class
    from prismrec.train.config import TrainConfig

    train = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    fields = {f.name: f.default for f in dataclasses.fields(model_config_class(model))}
    return {**train, **model_class(model).train_defaults, **fields}


def base_settings(model: str, dataset: str) -> dict:
    """Settings every run of ``model`` on ``dataset`` gets: the benchmark's modality pair, one thread."""
    fields = {f.name for f in dataclasses.fields(model_config_class(model))}
    settings = {"threads": 1, "checkpoint_every_s": 60}
    if "modalities" in fields:
        settings["modalities"] = MODALITIES[dataset].strip("[]").split(",")
    return {**settings, **FIXED.get(model, {}).get(dataset, {})}


def trial_points(model: str) -> list[dict]:
    """The ``TRIALS`` settings searched: the defaults, then distinct grid points (seeded).

    A setting whose field declares ``only_with`` (``{other: value}``: it changes nothing unless
    those settings hold, e.g. MMGCN's ``reg_weight`` without trained tables) is set back to its
    default in a point where they do not hold, and a point that then repeats another is skipped,
    so that every trial trains a different model."""
    space = grid(model)
    if not space:
        return [{}]
    fields = dataclasses.fields(model_config_class(model))
    defaults = default_settings(model)
    needs = {f.name: f.metadata["only_with"] for f in fields if f.name in space and "only_with" in f.metadata}
    # The grid's points in a seeded order, the defaults' own point left out. Shuffling their indices
    # is shuffling the points (the order depends on the length alone), without building them all
    # (SIGER's grid has 2.1 million).
    keys, values = list(space), list(space.values())
    sizes = [len(v) for v in values]
    default = [v.index(defaults[k]) if defaults[k] in v else None for k, v in space.items()]
    skip = None if None in default else sum(d * math.prod(sizes[n + 1:]) for n, d in enumerate(default))
    order = [i for i in range(math.prod(sizes)) if i != skip]
    random.Random(f"{model}").shuffle(order)
    distinct = [{}]
    for index in order:
        if len(distinct) == TRIALS:
            break
        point = {}
        for key, options, size in zip(reversed(keys), reversed(values), reversed(sizes)):
            index, at = divmod(index, size)
            point[key] = options[at]
        point = {k: point[k] for k in keys}  # itertools.product's order: the last key varies fastest
        point = {k: v if all(point.get(o, defaults[o]) == w for o, w in needs.get(k, {}).items()) else defaults[k]
                 for k, v in point.items()}
        if any(point[k] != defaults[k] for k in point) and point not in distinct:
            distinct.append(point)
    return distinct


def spec(model: str, dataset: str) -> dict:
    """What the tuning of one cell depends on (a changed default included); a recorded cell with
    another spec is redone."""
    from prismrec.experiment.config import resolve_config

    base = base_settings(model, dataset)
    return {"model": model, "dataset": dataset, "grid": grid(model), "points": trial_points(model),
            "base": base, "defaults": dataclasses.asdict(resolve_config(model, dataset, base)),
            "trial_train": {"epochs": TRIAL_EPOCHS, "patience": TRIAL_PATIENCE, "min_epochs": TRIAL_MIN_EPOCHS,
                            "seed": SEEDS[0]},
            "selection": "valid recall@20, ties valid ndcg@20, then earlier trial"}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def same_protocol(recorded: dict, want: dict) -> bool:
    """Whether a recorded cell's spec still holds for ``want``: everything equal, except that a
    setting added to the model's Config since the record (absent from its ``defaults``) does not
    count. A new switch defaults to the previous behaviour (tests/test_equivalence.py's goldens pin
    it), so adding one must not redo hours of recorded cells; a changed default or grid does."""
    if recorded.keys() != want.keys():
        return False
    old, new = recorded["defaults"], want["defaults"]
    warm_up = {**recorded["trial_train"], "min_epochs": want["trial_train"].get("min_epochs")}
    return (all(recorded[k] == want[k] for k in want if k not in ("defaults", "trial_train"))
            and warm_up == want["trial_train"] and _contained(old, new))


RUN_ONLY = ("device", "threads", "checkpoint_every_s")  # where and how a run trains, not what


def same_config(recorded: dict, want: dict) -> bool:
    """Whether a recorded seed trained the model of the resolved config ``want``, whatever settings
    spelled it (a selected point that now names the learning rate it had by default): its config
    equal, where and how it ran aside, settings added since it ran at their (previous) defaults,
    and the warm-up as :func:`same_run` takes it."""
    def what(config: dict) -> dict:
        return {**config, "train": {k: v for k, v in config["train"].items() if k not in (*RUN_ONLY, "min_epochs")}}

    ran, floor = recorded["config"]["train"].get("min_epochs", 0), want["train"].get("min_epochs", 0)
    return _contained(what(recorded["config"]), what(want)) and (
        ran == floor or (ran < floor and recorded["metrics"]["epochs"] > floor))


def stale_trial(trial: dict, trial_train: dict) -> bool:
    """A recorded trial the warm-up rule (``min_epochs``, added after the study began) would have
    run on: it stopped before ``min_epochs`` without having run under it. Any trial that went past
    ``min_epochs`` is what the rule gives (it only suppresses earlier stops), so only these rerun."""
    floor = min(trial_train.get("min_epochs", 0), trial_train["epochs"])
    return (trial["state"] == "ok" and trial["epochs"] < floor
            and trial.get("min_epochs", 0) < trial_train.get("min_epochs", 0))


def same_run(recorded: dict, want: dict) -> bool:
    """Whether a recorded seed is what the settings ``want`` give: the same settings, or the same
    without the warm-up rule (``min_epochs``, added to the final runs after the study began) and a
    run that went past it (the rule only suppresses earlier stops, so such a run is unchanged)."""
    settings, floor = recorded["settings"], want.get("min_epochs", 0)
    return settings == want or ({**settings, "min_epochs": floor} == want and settings.get("min_epochs", 0) < floor
                                and recorded["metrics"]["epochs"] > floor)


def _contained(old, new) -> bool:
    if isinstance(old, dict) and isinstance(new, dict):
        return old.keys() <= new.keys() and all(_contained(v, new[k]) for k, v in old.items())
    return old == new


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=1, default=str))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _on_device() -> dict:
    """The ``device`` setting of ``--device`` (none: each model's default, the CPU). A seed's
    resolved config records where it ran; the settings it is matched by do not, so a cell's runs can
    come from different machines."""
    return {"device": DEVICE} if DEVICE else {}


def _commit(paths: list[Path], message: str) -> None:
    if COMMIT:
        git_commit(paths, message)


def _other_run(folder: Path, cfg) -> bool:
    """Whether ``folder`` holds a run of other settings (a stale cell's): it is replaced, while a
    killed run of the same settings resumes from its checkpoint."""
    from prismrec.experiment.rundir import RunDir, run_digest

    identity = RunDir(folder).state().identity or {}
    return bool(identity) and identity.get("config_digest") != run_digest(cfg)


def blind_trial(model: str, dataset: str, settings: dict, folder: Path, blind) -> dict:
    """One trial: ``settings`` trained with seed ``SEEDS[0]`` on ``blind`` (the dataset without its
    test split) in ``folder``; ``{"state", "valid", "epochs"}`` (a diverged run is recorded as such)."""
    from prismrec.errors import TrainingDiverged
    from prismrec.experiment.config import resolve_config
    from prismrec.experiment.runs import run_experiment

    cfg = resolve_config(model, dataset, {**settings, **_on_device()})
    try:
        metrics = run_experiment(cfg, [SEEDS[0]], folder, dataset=blind, progress=False, evaluate_test=False,
                                 overwrite=_other_run(folder, cfg), log=lambda m: None)
        return {"state": "ok", "valid": metrics["valid"], "epochs": metrics["epochs"]}
    except TrainingDiverged as exc:
        return {"state": "diverged", "valid": None, "error": str(exc)}


def tune_cell(model: str, dataset: str, data) -> dict:
    """Run the trials not yet recorded; return ``tuning.json`` with the selection."""
    path = CELLS / dataset / model / "tuning.json"
    want = _jsonable(spec(model, dataset))
    record = _read_json(path)
    if record is None or not same_protocol(record["spec"], want):
        if record is not None:
            print(f"[{dataset}/{model}] protocol changed: tuning again", flush=True)
        record = {"spec": want, "trials": []}
    record["spec"] = {**record["spec"], "trial_train": want["trial_train"]}  # the warm-up rule, if it is new
    want = record["spec"]  # the recorded protocol, when it still holds
    blind = dataclasses.replace(data, test=None)
    for n, point in enumerate(want["points"]):
        if (n < len(record["trials"]) and record["trials"][n]["point"] == point
                and not stale_trial(record["trials"][n], want["trial_train"])):
            continue
        print(f"[{dataset}/{model}] trial {n}: {point or 'defaults'}", flush=True)
        trial = {"point": point, "min_epochs": want["trial_train"]["min_epochs"],
                 **blind_trial(model, dataset, {**want["base"], **want["trial_train"], **point},
                               RUNS / dataset / model / f"trial-{n}", blind)}
        record["trials"][n:n + 1] = [trial]
        _write_json(path, record)
        _commit([path], f"Headline study: {dataset}/{model} trial {n} ({trial['state']})")
    ok = [(n, t) for n, t in enumerate(record["trials"]) if t["state"] == "ok"]
    n, best = max(ok, key=lambda nt: (nt[1]["valid"]["recall@20"], nt[1]["valid"]["ndcg@20"], -nt[0]))
    if record.get("selected") != {"trial": n, "point": best["point"], "valid": best["valid"]}:
        record["selected"] = {"trial": n, "point": best["point"], "valid": best["valid"]}
        _write_json(path, record)
        _commit([path], f"Headline study: {dataset}/{model} tuned, trial {n} selected")
    return record


def seed_cell(cell: str, model: str, dataset: str, settings: dict, data, seed: int) -> dict:
    """Train and test one seed at ``settings`` (recorded: skipped); per-user test metrics saved."""
    from prismrec.eval import Evaluator
    from prismrec.experiment.config import resolve_config
    from prismrec.experiment.export import load_run
    from prismrec.experiment.runs import run_experiment

    done = recorded_seed(cell, model, dataset, settings, seed)
    if done is not None:
        return done
    folder, want = CELLS / dataset / cell, _jsonable(settings)
    cfg = resolve_config(model, dataset, {**settings, "seed": seed, **_on_device()})
    print(f"[{dataset}/{cell}] seed {seed}: {settings}", flush=True)
    run_dir = RUNS / dataset / cell / f"seed-{seed}"
    metrics = run_experiment(cfg, [seed], run_dir, dataset=data, progress=False,
                             overwrite=_other_run(run_dir, cfg), log=lambda m: None)
    run = load_run(run_dir, datasets={(data.name, str(None)): data})
    per_user = Evaluator(data, ks=(10, 20)).evaluate(run.model, "test", per_user=True)["per_user"]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_npz(folder / f"seed-{seed}.npz", {**_arrays(per_user), "user_degree": user_degrees(data, per_user["user"]),
                                             **group_arrays(run.model, data)})
    result = {"settings": want, "config": _jsonable(dataclasses.asdict(cfg)),
              "metrics": {k: metrics.get(k) for k in ("status", "valid", "test", "best_epoch", "epochs", "stop_reason")},
              "timing": {k: metrics["timing"].get(k) for k in ("seconds", "median_train_s", "median_eval_s", "peak_rss_mb")}}
    _write_json(folder / f"seed-{seed}.json", result)
    _commit([folder / f"seed-{seed}.json", folder / f"seed-{seed}.npz"], f"Headline study: {dataset}/{cell} seed {seed}")
    return result


def recorded_seed(cell: str, model: str, dataset: str, settings: dict, seed: int) -> dict | None:
    """The recorded result of one seed run at ``settings`` (None: not recorded, or at other settings)."""
    from prismrec.experiment.config import resolve_config

    folder = CELLS / dataset / cell
    done = _read_json(folder / f"seed-{seed}.json")
    if done is None or not (folder / f"seed-{seed}.npz").is_file():
        return None
    cfg = resolve_config(model, dataset, {**settings, "seed": seed, **_on_device()})
    return done if same_run(done, _jsonable(settings)) or same_config(done, _jsonable(dataclasses.asdict(cfg))) else None


def _arrays(per_user: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Per-user test metrics as the arrays a cell's ``seed-N.npz`` keeps (``prefix``: a group's)."""
    return {f"{prefix}user": per_user["user"], **{f"{prefix}{m}": np.asarray(per_user[m], dtype=np.float32)
                                                  for m in METRICS}}


def user_degrees(data, users: np.ndarray) -> np.ndarray:
    """Training interactions of ``users`` (the sparse/rest split)."""
    return np.asarray(data.train.getnnz(axis=1), dtype=np.int32)[users]


def group_arrays(model, data) -> dict[str, np.ndarray]:
    """Per-user test metrics over each popularity group's positives (``tail_*``, ``head_*``: the
    users with at least one positive in the group; every item is still ranked)."""
    from prismrec.eval import Evaluator
    from prismrec.eval.groups import popularity_groups

    evaluator, out = Evaluator(data, ks=(10, 20)), None
    arrays = {}
    for group, items in popularity_groups(data.train, TAIL_SHARE).items():
        model.eval()
        out = out if out is not None else model()
        per_user = evaluator.evaluate(model, "test", out, per_user=True, items=items)["per_user"]
        arrays.update(_arrays(per_user, f"{group}_"))
    return arrays


def add_groups(model: str, dataset: str, data) -> None:
    """The group arrays of ``model``'s recorded seeds (its ablations' too) recorded without them:
    the users' training interactions from the data, the long-tail and head metrics from their run
    folders where this machine still has them (a run whose per-user test metrics are not the
    recorded ones is not used)."""
    from prismrec.eval import Evaluator
    from prismrec.experiment.export import load_run
    from prismrec.experiment.rundir import RunDir

    for path in sorted([*(CELLS / dataset).glob(f"{model}/seed-*.npz"), *(CELLS / dataset).glob(f"{model}~*/seed-*.npz")]):
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        run_dir = RUNS / dataset / path.parent.name / path.stem
        added = {} if "user_degree" in arrays else {"user_degree": user_degrees(data, arrays["user"])}
        if "tail_user" not in arrays and RunDir(run_dir).is_finished():
            run = load_run(run_dir, datasets={(data.name, str(None)): data})
            again = _arrays(Evaluator(data, ks=(10, 20)).evaluate(run.model, "test", per_user=True)["per_user"])
            if all(np.array_equal(again[k], arrays[k]) for k in again):
                added.update(group_arrays(run.model, data))
            else:
                print(f"[{dataset}/{path.parent.name}] {path.stem}: its run folder is not the recorded run", flush=True)
        if added:
            atomic_npz(path, {**arrays, **added})
            _commit([path], f"Headline study: {dataset}/{path.parent.name} {path.stem}: {', '.join(sorted(added))[:60]}")


def ablations(model: str) -> dict[str, list[str]]:
    """The seed model's ablation variants (label -> changed settings), full model excluded."""
    module = importlib.import_module(f"benchmarks.{model}")
    return {label: changed for label, changed in getattr(module, "ABLATIONS", {}).items() if changed}


def tuned(tuning: dict | None) -> bool:
    """Whether a cell's tuning is final: every point recorded, none stale, a selection made."""
    return bool(tuning) and "selected" in tuning and len(tuning["trials"]) == len(tuning["spec"]["points"]) \
        and not any(stale_trial(t, tuning["spec"]["trial_train"]) for t in tuning["trials"])


def identical_variant(changed: dict, tuning: dict) -> bool:
    """Whether an ablation's changed settings (:func:`variant_settings`) are what the selected point
    already has (validation chose the variant's setting): the variant is the full model, so it is
    neither trained nor tested."""
    defaults = tuning["spec"]["defaults"]
    chosen = {**defaults["train"], **defaults["params"], **tuning["spec"]["base"], **tuning["selected"]["point"]}
    return all(k in chosen and chosen[k] == v for k, v in _jsonable(changed).items())


def slug(changed: list[str]) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "+".join(changed))


def variant_settings(changed: list[str], dataset: str) -> dict:
    """An ablation's changed settings on ``dataset``: ``{dataset}`` is its name and ``{tuned:M}``
    the settings this study selected for model ``M`` there (:func:`tuned_settings`; EGRA's
    pretrained-model swaps train their stage 1 at them). ``LookupError`` while ``M`` is not tuned."""
    from prismrec.experiment.config import parse_assignments

    def tuned_of(match: re.Match) -> str:  # YAML that reads back as written (1e-06 is a string to YAML 1.1)
        return yaml.safe_dump(tuned_settings(match[1], dataset), default_flow_style=True, width=10**6).strip()

    return parse_assignments([re.sub(r"\{tuned:(\w+)\}", tuned_of, s.replace("{dataset}", dataset)) for s in changed])


def tuned_settings(model: str, dataset: str) -> dict:
    """What the final runs of ``model`` on ``dataset`` train with, less this study's run settings
    (modalities, thread count, checkpoints): its fixed settings, the point validation selected
    and the warm-up. ``LookupError`` while its tuning is not finished."""
    tuning = _read_json(CELLS / dataset / model / "tuning.json")
    if not tuned(tuning) or not same_protocol(tuning["spec"], _jsonable(spec(model, dataset))):
        raise LookupError(f"{model} is not tuned on {dataset} yet")
    return {**FIXED.get(model, {}).get(dataset, {}), **tuning["selected"]["point"], "min_epochs": TRIAL_MIN_EPOCHS}


def seed_runs(model: str, dataset: str, parts: set[str], data) -> list[tuple[str, dict, int]]:
    """Tune one (model, dataset) cell (``tune`` in ``parts``: the trials not recorded) and add the
    groups to its older seeds (``longtail``); return the seed runs ``(cell, settings, seed)`` its
    ``final`` and ``ablation`` parts want (recorded ones included), none before it is tuned."""
    tuning = tune_cell(model, dataset, data) if "tune" in parts else _read_json(CELLS / dataset / model / "tuning.json")
    if tuning is None or "selected" not in tuning or not same_protocol(tuning["spec"], _jsonable(spec(model, dataset))):
        return []
    selected = {**tuning["spec"]["base"], **tuning["selected"]["point"], "min_epochs": TRIAL_MIN_EPOCHS}
    runs = [(model, selected, seed) for seed in SEEDS] if "final" in parts else []
    if "longtail" in parts:
        add_groups(model, dataset, data)
    if "ablation" in parts and model in SEED_MODELS:
        for changed in ablations(model).values():
            try:
                variant = variant_settings(changed, dataset)
            except LookupError as exc:  # reads another model's tuning, not finished yet
                print(f"[{dataset}/{model}~{slug(changed)}] waits: {exc}", flush=True)
                continue
            if not identical_variant(variant, tuning):
                runs += [(f"{model}~{slug(changed)}", {**selected, **variant}, seed) for seed in SEEDS]
    return runs


def _options(commit: bool, device: str | None) -> None:
    global COMMIT, DEVICE
    COMMIT, DEVICE = commit, device


def run_cell(model: str, dataset: str, parts: set[str], data=None, commit: bool = False,
             device: str | None = None) -> None:
    """Tune, train the seeds and the ablations of one (model, dataset) cell, skipping what is recorded."""
    from prismrec.data import load_dataset

    _options(commit, device)
    data = data if data is not None else load_dataset(dataset)
    for cell, settings, seed in seed_runs(model, dataset, parts, data):
        seed_cell(cell, model, dataset, settings, data, seed)


@functools.lru_cache(maxsize=None)
def _dataset(name: str):
    """A worker's datasets, each loaded once per process."""
    from prismrec.data import load_dataset

    return load_dataset(name)


def _prepare(model: str, dataset: str, parts: set[str], commit: bool, device: str | None) -> list[tuple[str, dict, int]]:
    """In a worker: :func:`seed_runs` less the recorded ones."""
    _options(commit, device)
    return [(cell, settings, seed) for cell, settings, seed in seed_runs(model, dataset, parts, _dataset(dataset))
            if recorded_seed(cell, model, dataset, settings, seed) is None]


def _train_seed(cell: str, model: str, dataset: str, settings: dict, seed: int, commit: bool,
                device: str | None) -> None:
    """In a worker: one seed run (:func:`seed_cell`)."""
    _options(commit, device)
    seed_cell(cell, model, dataset, settings, _dataset(dataset), seed)


def run(models: list[str], datasets: list[str], parts: set[str], jobs: int = 1, commit: bool = False,
        device: str | None = None, pool=None) -> None:
    """Every (dataset, model) cell in this order. With ``jobs`` > 1, ``jobs`` worker processes (one
    thread each; ``pool``: another executor) take tasks in turn: first each cell's tuning (its
    trials one after another: ``tuning.json`` is the cell's one record), then, as a cell is tuned,
    each of its seed runs, final and ablation, as a task of its own, so one model's seeds and
    ablations fill every worker (on a GPU, every process sharing it)."""
    from prismrec.data import load_dataset

    if jobs <= 1 and pool is None:
        for dataset in datasets:
            data = load_dataset(dataset)
            for model in models:
                run_cell(model, dataset, parts, data, commit, device)
        return
    with pool or worker_pool(jobs) as executor:
        tasks = {executor.submit(_prepare, model, dataset, parts, commit, device): (dataset, model, None)
                 for dataset in datasets for model in models}
        while tasks:
            done, _ = concurrent.futures.wait(tasks, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                dataset, model, seed_run = tasks.pop(future)
                if future.exception() is not None:
                    what = model if seed_run is None else f"{seed_run[0]} seed {seed_run[1]}"
                    print(f"[{dataset}/{what}] failed: {future.exception()!r}", flush=True)
                    continue
                for cell, settings, seed in future.result() if seed_run is None else ():
                    task = executor.submit(_train_seed, cell, model, dataset, settings, seed, commit, device)
                    tasks[task] = (dataset, model, (cell, seed))


# ----------------------------------------------------------------------------- report

def collect(dataset: str, cell: str) -> dict | None:
    """The recorded seeds of one cell: metrics, per-user arrays, timing."""
    folder = CELLS / dataset / cell
    seeds = {}
    for seed in SEEDS:
        record = _read_json(folder / f"seed-{seed}.json")
        if record is not None and (folder / f"seed-{seed}.npz").is_file():
            with np.load(folder / f"seed-{seed}.npz") as z:
                record["per_user"] = {k: z[k] for k in z.files}
            seeds[seed] = record
    return {"seeds": seeds} if seeds else None


def summary(cell: dict) -> dict:
    tests = [s["metrics"]["test"] for s in cell["seeds"].values()]
    out = {"n": len(tests), "mean": {m: statistics.mean(t[m] for t in tests) for m in METRICS},
           "std": {m: statistics.stdev(t[m] for t in tests) if len(tests) > 1 else 0.0 for m in METRICS},
           "epochs": statistics.mean(s["metrics"]["epochs"] for s in cell["seeds"].values()),
           "s_epoch": statistics.median(s["timing"]["median_train_s"] for s in cell["seeds"].values()),
           "peak_rss_mb": max(s["timing"]["peak_rss_mb"] for s in cell["seeds"].values()),
           "devices": sorted({s["config"]["train"]["device"] for s in cell["seeds"].values()})}
    return out


def per_user_mean(cell: dict, metric: str, group: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The users and their seed-averaged ``metric``; with a ``group``, over an item group's
    positives (``tail``, ``head``) or for a user group (``sparse``, ``rest``)."""
    if group in ("sparse", "rest"):
        users, mean = per_user_mean(cell, metric)
        from prismrec.eval.groups import sparsest_users

        sparse = sparsest_users(next(iter(cell["seeds"].values()))["per_user"]["user_degree"], SPARSE_SHARE)
        keep = sparse if group == "sparse" else ~sparse
        return users[keep], mean[keep]
    prefix = f"{group}_" if group else ""
    users = [s["per_user"][f"{prefix}user"] for s in cell["seeds"].values()]
    if any(not np.array_equal(users[0], u) for u in users):
        raise ValueError("seeds of one cell evaluate different users")
    return users[0], np.mean([s["per_user"][prefix + metric] for s in cell["seeds"].values()], axis=0)


def paired(a: dict, b: dict, metric: str, group: str = "") -> dict:
    """Wilcoxon signed-rank test of per-user ``metric`` (seed-averaged) of cells ``a`` and ``b``."""
    users_a, x = per_user_mean(a, metric, group)
    users_b, y = per_user_mean(b, metric, group)
    if not np.array_equal(users_a, users_b):
        raise ValueError("cells evaluate different users")
    return {"diff": float((x - y).mean()), "p": significance.paired_p(x, y, "wilcoxon"), "users": int(len(x))}


def holm(tests: list[dict], planned: int = 0) -> None:
    """Holm's step-down adjustment, in place: ``p_holm`` for each test of the family. The family is
    the ``planned`` tests (the whole study's), of which ``tests`` are measured so far; a test not
    measured yet counts as p = 1, so an adjusted p can only fall as the study fills in: a verdict
    "better" or "worse" read now stands when the study completes
    (:func:`prismrec.experiment.significance.holm`)."""
    adjusted = significance.holm([t["p"] for t in tests], max(len(tests), planned))
    for test, p in zip(tests, adjusted):
        test["p_holm"] = float(p)


def verdict(test: dict) -> str:
    if test["p_holm"] >= ALPHA:
        return "n.s."
    return "better" if test["diff"] > 0 else "worse"


def fmt_p(p: float) -> str:
    """A p-value for the tables: two significant digits; one that underflowed to 0 (the normal
    approximation of a very large effect) as below the smallest double."""
    return f"{p:.2g}" if p > 0 else "< 1e-300"


def settled(test: dict, family_complete: bool) -> str:
    """Whether a measured test can still change its claim: ``better``; ``not better``, which it
    stays whatever else lands (significantly worse, a difference of the wrong sign, a raw p at or
    above α, which Holm can only raise, or a family with every planned test measured); or
    ``open``: not significant yet, but its Holm-adjusted p falls as the rest of the family lands
    (each test not measured yet counts as p = 1) and may still pass α."""
    v = verdict(test)
    if v == "better":
        return "better"
    if v == "worse" or family_complete or test["diff"] <= 0 or test["p"] >= ALPHA:
        return "not better"
    return "open"


def shown_verdict(test: dict, family_complete: bool) -> str:
    """A table's verdict: better, worse, n.s., or "n.s. so far" where the family's remaining tests
    can still make it significant (either way; raw p below α)."""
    v = verdict(test)
    return "n.s. so far" if v == "n.s." and test["p"] < ALPHA and not family_complete else v


def report(models: list[str], datasets: list[str]) -> dict:
    cells = {ds: {m: collect(ds, m) for m in models} for ds in datasets}
    complete = {ds: {m: c for m, c in row.items() if c and len(c["seeds"]) == len(SEEDS)} for ds, row in cells.items()}
    summaries = {ds: {m: summary(c) for m, c in row.items() if c} for ds, row in cells.items()}

    seed_models = [s for s in SEED_MODELS if s in models]
    planned = {"comparisons": len(datasets) * len(seed_models) * len([m for m in models if m not in SEED_MODELS]),
               "versus_lightgcn": len(datasets) * (len(models) - 1) if REFERENCE in models else 0,
               "ablation_tests": 0,
               "group_tests": len(datasets) * sum("gains_over" in c for s in seed_models for c in CLAIMS[s])}
    planned = {family: n * len(TESTED) for family, n in planned.items()}
    comparisons = []  # seed model vs baseline
    for ds in datasets:
        for s in SEED_MODELS:
            for b in [m for m in models if m not in SEED_MODELS]:
                if s in complete[ds] and b in complete[ds]:
                    for metric in TESTED:
                        comparisons.append({"dataset": ds, "model": s, "baseline": b, "metric": metric,
                                            **paired(complete[ds][s], complete[ds][b], metric)})
    holm(comparisons, planned["comparisons"])

    versus_id = []  # does content help: each other model against the ID-only LightGCN
    for ds in datasets:
        for m in models:
            if m != REFERENCE and m in complete[ds] and REFERENCE in complete[ds]:
                for metric in TESTED:
                    versus_id.append({"dataset": ds, "model": m, "baseline": REFERENCE, "metric": metric,
                                      **paired(complete[ds][m], complete[ds][REFERENCE], metric)})
    holm(versus_id, planned["versus_lightgcn"])

    ablation_rows, ablation_tests, identical = {}, [], {}
    for ds in datasets:
        for s in seed_models:
            tuning = _read_json(CELLS / ds / s / "tuning.json")
            for label, changed in ablations(s).items():
                try:
                    same = tuned(tuning) and identical_variant(variant_settings(changed, ds), tuning)
                except LookupError:  # its settings are not known yet: pending
                    same = False
                if same:
                    identical.setdefault(ds, {}).setdefault(s, []).append(label)
                    continue
                planned["ablation_tests"] += len(TESTED)
                cell = collect(ds, f"{s}~{slug(changed)}")
                if cell is None:
                    continue
                ablation_rows.setdefault(ds, {}).setdefault(s, {})[label] = summary(cell)
                if len(cell["seeds"]) == len(SEEDS) and s in complete[ds]:
                    for metric in TESTED:
                        ablation_tests.append({"dataset": ds, "model": s, "variant": label, "metric": metric,
                                               **paired(cell, complete[ds][s], metric)})
    holm(ablation_tests, planned["ablation_tests"])

    groups, group_tests = {}, []  # per group, every model whose seeds all have it; the seed models' group claims
    for ds in datasets:
        for m, cell in complete[ds].items():
            have = [g for g in GROUPS if all(NEEDS[g] in seed["per_user"] for seed in cell["seeds"].values())]
            if have:
                groups.setdefault(ds, {})[m] = {f"{g}_{metric}": float(per_user_mean(cell, metric, g)[1].mean())
                                                for g in have for metric in TESTED}
        for s in SEED_MODELS:
            for claim in (c for c in CLAIMS[s] if "gains_over" in c):
                rival, group = claim["gains_over"], claim["on"][0]
                if all(f"{group}_recall@20" in groups.get(ds, {}).get(m, {}) for m in (s, rival)):
                    for metric in TESTED:
                        group_tests.append({"dataset": ds, "model": s, "baseline": rival, "group": group, "metric": metric,
                                            **paired(complete[ds][s], complete[ds][rival], metric, group)})
    holm(group_tests, planned["group_tests"])

    tunings = {ds: {m: _read_json(CELLS / ds / m / "tuning.json") for m in models} for ds in datasets}
    data = {"protocol": {"trials": TRIALS, "trial_epochs": TRIAL_EPOCHS, "trial_patience": TRIAL_PATIENCE,
                         "trial_min_epochs": TRIAL_MIN_EPOCHS, "seeds": SEEDS, "alpha": ALPHA, "test": "Wilcoxon signed-rank, Holm"},
            "summaries": summaries, "comparisons": comparisons, "versus_lightgcn": versus_id,
            "ablations": ablation_rows,
            "ablation_tests": ablation_tests, "identical_ablations": identical,
            "groups": groups, "group_tests": group_tests, "planned": planned,
            "tuned": {ds: {m: t.get("selected") for m, t in row.items() if t} for ds, row in tunings.items()},
            "retuning": {ds: [m for m, t in row.items() if t and not same_protocol(t["spec"], _jsonable(spec(m, ds)))]
                         for ds, row in tunings.items()}}
    data["elsewhere"] = elsewhere()
    data["progress"] = progress(data, cells, tunings, models, datasets)
    _write_json(RESULTS / "headline.json", data)
    atomic_write(RESULTS / "headline.md", render_markdown(data, models, datasets, tunings))
    atomic_write(RESULTS / "headline.tex", render_latex(data, models, datasets))
    atomic_write(RESULTS / "headline.csv", render_csv(data))
    atomic_write(RESULTS / "headline_ablations.csv", render_ablations_csv(data))
    atomic_write(RESULTS / "headline_tuned.csv", render_tuned_csv(data, tunings))
    return data


def elsewhere() -> dict:
    """The robustness study's verdicts on the claims judged there (``judged_in`` of :data:`CLAIMS`),
    by list, dataset and model (``verdict``, ``evidence``, ``text``); empty before it has judged any."""
    recorded = _read_json(ROBUSTNESS) or {}
    out = {}
    for key in ("claims", "cold_claims"):
        for v in recorded.get(key, []):
            if isinstance(v, dict):  # verdicts recorded before they had fields are read as not judged
                out.setdefault(key, {}).setdefault(v["dataset"], {})[v["model"]] = v
    return out


def progress(data: dict, cells: dict, tunings: dict, models: list[str], datasets: list[str]) -> dict:
    """Runs recorded and planned per dataset and model (trials, final seeds, ablation seeds) and
    the core-hours the rest will take (:func:`hours_left`)."""
    out = {}
    for ds in datasets:
        for m in models:
            t = tunings[ds].get(m)
            current = t is not None and m not in data["retuning"].get(ds, [])
            row = {"trials": [len(t["trials"]) if current else 0, len(trial_points(m))],
                   "seeds": [len((cells[ds][m] or {"seeds": {}})["seeds"]), len(SEEDS)]}
            swaps = 0  # EGRA's ablation seeds that pretrain another model (its stage 1)
            if m in SEED_MODELS:
                variants = [c for label, c in ablations(m).items()
                            if label not in data["identical_ablations"].get(ds, {}).get(m, [])]
                done = {slug(c): len((collect(ds, f"{m}~{slug(c)}") or {"seeds": {}})["seeds"]) for c in variants}
                row["ablation seeds"] = [sum(done.values()), len(variants) * len(SEEDS)]
                swaps = sum(len(SEEDS) - done[slug(c)] for c in variants if any(x.startswith("pre_model=") for x in c))
            row["core-hours left"] = hours_left(m, ds, row, tunings, swaps)
            out.setdefault(ds, {})[m] = row
    return out


FLOORS = {"tiktok": RESULTS / "floors.json", "lfm2k": RESULTS / "floors_lfm2k.json"}
"""Per dataset, the floors benchmark's per-model epochs (one thread, default settings)."""


def floor_epoch_s(model: str, dataset: str) -> float | None:
    """A training epoch plus a validation of ``model`` on ``dataset`` in the floors benchmark, in
    the thread's CPU seconds (wall seconds for rows measured before it was recorded); ``None``
    where it has no such row."""
    rows = (_read_json(FLOORS[dataset]) or {}).get("models", {}) if dataset in FLOORS else {}
    r = rows.get(model)
    return None if r is None else r.get("train_cpu_s", r["train_s"]) + r.get("valid_cpu_s", r["valid_s"])


def hours_left(model: str, dataset: str, row: dict, tunings: dict, swaps: int = 0) -> float | None:
    """An estimate of the core-hours (one thread each) that ``model``'s runs still to come on
    ``dataset`` take: the runs left times the epochs its recorded runs took (its trials', its
    seeds'; on the other dataset where none ran here; else half the trial cap and 200) times its
    epoch's thread CPU seconds in the floors benchmark (default settings: a tuned point with more
    layers or neighbours costs more); EGRA adds its stage 1 (each seed pretrains MGCN at every
    point of its λ_cl grid; a swap variant pretrains its model once per seed). ``None`` where the
    floors benchmark has no epoch of the model on the dataset."""
    def epochs(m: str) -> tuple[float, float]:  # (a trial's, a seed's)
        order = [dataset, *(d for d in tunings if d != dataset)]
        trials = next(([t["epochs"] for t in tunings[d][m]["trials"]] for d in order
                       if (tunings[d].get(m) or {}).get("trials")), [TRIAL_EPOCHS / 2])
        seeds = next(([s["metrics"]["epochs"] for s in c["seeds"].values()] for d in order
                      if (c := collect(d, m))), [200])
        return statistics.median(trials), statistics.median(seeds)

    e = floor_epoch_s(model, dataset)
    if e is None:
        return None
    trial, seed = epochs(model)
    left = lambda part: row[part][1] - row[part][0] if part in row else 0  # noqa: E731
    seconds = (left("trials") * trial + (left("seeds") + left("ablation seeds")) * seed) * e
    if model == "egra" and floor_epoch_s("mgcn", dataset) is not None:
        mgcn = epochs("mgcn")[1] * floor_epoch_s("mgcn", dataset)
        seconds += (left("seeds") * len(grid("mgcn").get("cl_weight", [None])) + swaps) * mgcn
    return seconds / 3600


def _family(data: dict, family: str) -> str:
    planned, measured = data["planned"][family], len(data[family])
    if measured >= planned:
        return f"its {measured} tests"
    return (f"the study's {planned} planned tests, {measured} measured so far (each test not measured yet "
            "counts as p = 1, so a significant verdict stands as the study fills in)")


def _fmt(s: dict, metric: str) -> str:
    return f"{s['mean'][metric]:.4f} ± {s['std'][metric]:.4f}"


def _best(summaries: dict, metric: str) -> str | None:
    full = {m: s for m, s in summaries.items() if s["n"] == len(SEEDS)}
    return max(full, key=lambda m: full[m]["mean"][metric]) if full else None


def _beats_all(data: dict, ds: str, model: str, metric: str, baselines: list[str]) -> bool:
    tests = [t for t in data["comparisons"] if t["dataset"] == ds and t["model"] == model and t["metric"] == metric]
    return bool(tests) and len(tests) == len(baselines) and all(verdict(t) == "better" for t in tests)


def _complete(data: dict, family: str) -> bool:
    """Whether every planned test of ``family`` is measured."""
    return len(data[family]) >= data["planned"][family]


def _evidence(tests: list[dict]) -> str:
    return "; ".join(f"{t['rival']} {LABEL[t['metric']]} {t['diff']:+.4f} (p {fmt_p(t['p'])}, p_Holm {fmt_p(t['p_holm'])})"
                     for t in tests)


def judge(data: dict, ds: str, model: str, claim: dict) -> str:
    """One claim's verdict on ``ds`` with the evidence: **holds**, **does not hold** (neither can
    change as the study fills in) or pending (not measured, or not significant yet where the
    family's remaining tests can still make it so: :func:`settled`; or a model of the claim being
    tuned again, whose seeds may be replaced)."""
    if "elsewhere" in claim:
        there = _there(data, ds, model, claim)
        return f"not tested by this study; see {claim['elsewhere']}. There: {there['evidence'] if there else 'not judged yet.'}"
    involved = [model, *claim.get("beats", []), *filter(None, [claim.get("gains_over")])]
    again = [m for m in involved if m in data.get("retuning", {}).get(ds, [])]
    if again:
        return (f"pending ({', '.join(again)} being tuned again; on the seeds of the previous search: "
                f"{_judge(data, ds, model, claim)})")
    return _judge(data, ds, model, claim)


def _judge(data: dict, ds: str, model: str, claim: dict) -> str:
    if "gains_over" in claim:
        return judge_gains(data, ds, model, claim["gains_over"], claim["on"])
    chosen = []  # ablations whose setting validation selected: the tuned model is that variant
    if "beats" in claim:
        rivals, rival, family = claim["beats"], "baseline", "comparisons"
        tests = [{**t, "rival": t["baseline"]} for t in data["comparisons"]
                 if t["dataset"] == ds and t["model"] == model and t["baseline"] in rivals]
    else:
        rivals, rival, family = claim["lower"], "variant", "ablation_tests"
        chosen = [v for v in data.get("identical_ablations", {}).get(ds, {}).get(model, []) if v in rivals]
        tests = [{**t, "rival": t["variant"], "diff": -t["diff"]} for t in data["ablation_tests"]
                 if t["dataset"] == ds and t["model"] == model and t["variant"] in rivals]
    complete = _complete(data, family)
    missing = [r for r in rivals if r not in chosen and not any(t["rival"] == r for t in tests)]
    failed = [t for t in tests if settled(t, complete) == "not better"]
    still = [t for t in tests if settled(t, complete) == "open"]
    why = []
    if failed:
        why.append(f"not significantly better than the {rival}(s) {', '.join(sorted({t['rival'] for t in failed}))}: "
                   + _evidence(failed))
    if chosen:
        why.append(f"validation selected the setting of {', '.join(chosen)}, so the tuned model is that variant")
    open_ = ([f"not measured: {', '.join(missing)}"] if missing else []) + \
        ([f"not significant yet, {len(data[family])} of the {data['planned'][family]} planned tests measured: "
          f"{_evidence(still)}"] if still else [])
    if why:
        return "**does not hold**: " + "; ".join(why) + (f" (also {'; '.join(open_)})" if open_ else "") + "."
    if open_:
        return "pending (" + "; ".join(open_) + ")."
    return f"**holds** (better on R@20 and N@20 than {', '.join(rivals)})."


def judge_gains(data: dict, ds: str, model: str, rival: str, on: tuple[str, str]) -> str:
    """Whether the relative gain over ``rival`` is larger on the group ``on[0]`` than on ``on[1]``
    (R@20 and N@20; EGRA's long tail, ALGORITHMS.md 6.6), with the model significantly better than
    the rival on the first group (its difference's Holm-corrected test, given with it; pending
    while that test is :func:`settled` open)."""
    group, other = on
    rows = data.get("groups", {}).get(ds, {})
    missing = [m for m in (model, rival) if f"{group}_recall@20" not in rows.get(m, {})]
    if missing:
        return f"pending (no {group}/{other} metrics yet: {', '.join(missing)})."
    complete = _complete(data, "group_tests")
    parts, outcomes = [], set()
    for metric in TESTED:
        gain = {g: rows[model][f"{g}_{metric}"] / rows[rival][f"{g}_{metric}"] - 1 for g in on}
        test = next(t for t in data["group_tests"] if t["dataset"] == ds and t["model"] == model
                    and t["group"] == group and t["metric"] == metric)
        outcomes.add("not better" if gain[group] <= gain[other] else settled(test, complete))
        parts.append(f"{LABEL[metric]} {group} {gain[group]:+.1%}, {other} {gain[other]:+.1%} "
                     f"({group} difference {test['diff']:+.4f}, p_Holm {fmt_p(test['p_holm'])}, "
                     f"{shown_verdict(test, complete)})")
    head = ("**does not hold**" if "not better" in outcomes else "pending" if "open" in outcomes else "**holds**")
    return head + f" (relative gain over {rival}: " + "; ".join(parts) + ")."


def _there(data: dict, ds: str, model: str, claim: dict) -> dict | None:
    """The robustness study's verdict on a claim judged there, if it has judged it."""
    return data.get("elsewhere", {}).get(claim.get("judged_in"), {}).get(ds, {}).get(model)


def glance(data: dict, ds: str, model: str, claim: dict) -> str:
    """A claim's verdict in a word or three: **holds**, **does not hold** or pending; for a claim
    judged by the robustness study, its verdict there."""
    if "elsewhere" in claim:
        there = _there(data, ds, model, claim)
        verdict = there["verdict"] if there else "pending"
        return (verdict if verdict == "pending" else f"**{verdict}**") + " (robustness study)"
    return _glance(judge(data, ds, model, claim))


def _glance(text: str) -> str:
    """A verdict's first words: holds, does not hold, pending or elsewhere."""
    if text.startswith("not tested by this study"):
        return "elsewhere"
    for short in ("**holds**", "**does not hold**", "pending"):
        if text.startswith(short):
            return short
    return text.split(":")[0]


def render_markdown(data: dict, models: list[str], datasets: list[str], tunings: dict) -> str:
    p = data["protocol"]
    md = ["# Headline study: seed models against tuned baselines", "",
          f"Every model tuned on validation with the same budget ({p['trials']} points: the defaults, then "
          f"its declared grid; trials ≤ {p['trial_epochs']} epochs, patience {p['trial_patience']} after "
          f"{p.get('trial_min_epochs', 0)} epochs, test "
          f"never read), then {len(SEEDS)} seeds ({', '.join(map(str, SEEDS))}) at the selected point "
          f"(at most 1000 epochs, patience 20, the same {p.get('trial_min_epochs', 0)}-epoch warm-up), "
          "test evaluated once per seed. Cells: test metrics mean ± sample std over seeds; **bold** = "
          f"best complete row of the column; † = the seed model is better than every baseline of the "
          f"table on that metric (per-user Wilcoxon signed-rank, seeds averaged per user, Holm over "
          f"{_family(data, 'comparisons')}, α = {p['alpha']}). A row with fewer than {len(SEEDS)} seeds "
          "is still running and takes no part in marks or tests; ‡ = its search space changed since these "
          "seeds ran (it is being tuned again; its seeds are kept if the same point is selected). s/epoch (median over seeds of each run's median "
          "training epoch, one thread) and peak RSS are as each cell ran, on a shared 2-core machine with the "
          "code of its day (speed-ups that landed during the study shorten later cells' epochs; SIGER's seeds, "
          "2026-12-02 13:00-19:00 UTC, ran 8-33 s per lfm2k epoch with that day's code on a machine loaded by "
          "other jobs, its ablations from 2026-12-03 1.5-2 s); "
          "a cell with seeds trained on a GPU (`--device cuda`) says so after its s/epoch.",
          "", "`python -m benchmarks.headline --report-only` rebuilds this page from the committed cells.", ""]
    md += ["## The claims at a glance", "", "Each seed paper's claims, as judged at the end of this page (with the "
           "evidence there).", "", "| model | claim | " + " | ".join(datasets) + " |", "|---|---|" + "---|" * len(datasets)]
    for s in SEED_MODELS:
        for claim in CLAIMS[s]:
            md.append(f"| {s} | {claim['claim']} | " + " | ".join(glance(data, ds, s, claim) for ds in datasets) + " |")
    md.append("")
    for ds in datasets:
        rows = data["summaries"][ds]
        baselines = [m for m in models if m not in SEED_MODELS and m in rows and rows[m]["n"] == len(SEEDS)]
        md += [f"## {ds}", "", "| model | seeds | " + " | ".join(LABEL[m] for m in METRICS)
               + " | epochs | s/epoch | peak RSS MiB |", "|---" * (len(METRICS) + 5) + "|"]
        best = {m: _best(rows, m) for m in METRICS}
        for model in models:
            if model not in rows:
                md.append(f"| {model} | 0 | " + " | ".join("—" for _ in METRICS) + " | | | |")
                continue
            s = rows[model]
            cells = []
            for metric in METRICS:
                text = _fmt(s, metric)
                if best[metric] == model:
                    text = f"**{text}**"
                if model in SEED_MODELS and metric in TESTED and _beats_all(data, ds, model, metric, baselines):
                    text += " †"
                cells.append(text)
            stale = " ‡" if model in data.get("retuning", {}).get(ds, []) else ""
            md.append(f"| {model}{stale} | {s['n']} | " + " | ".join(cells)
                      + f" | {s['epochs']:.0f} | {s['s_epoch']:.2f}{_off_cpu(s)} | {s['peak_rss_mb']:.0f} |")
        md.append("")
    md += ["## Seed models against each baseline", "",
           "Mean per-user difference (seed model − baseline), Wilcoxon p, Holm-adjusted p, verdict at α.", "",
           "| dataset | model | baseline | metric | diff | p | p (Holm) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for t in data["comparisons"]:
        md.append(f"| {t['dataset']} | {t['model']} | {t['baseline']} | {LABEL[t['metric']]} | {t['diff']:+.4f} | "
                  f"{fmt_p(t['p'])} | {fmt_p(t['p_holm'])} | {shown_verdict(t, _complete(data, 'comparisons'))} |")
    md += ["", f"## Every model against {REFERENCE}", "",
           f"Does content help? Each model against the ID-only {REFERENCE} (mean per-user difference, Wilcoxon, "
           f"Holm over {_family(data, 'versus_lightgcn')}).", "",
           "| dataset | model | metric | diff | p | p (Holm) | verdict |", "|---|---|---|---|---|---|---|"]
    for t in data["versus_lightgcn"]:
        md.append(f"| {t['dataset']} | {t['model']} | {LABEL[t['metric']]} | {t['diff']:+.4f} | {fmt_p(t['p'])} | "
                  f"{fmt_p(t['p_holm'])} | {shown_verdict(t, _complete(data, 'versus_lightgcn'))} |")
    md += ["", "## Groups: long tail and head, sparse users and the rest", "",
           f"tail / head: test metrics over each item group's positives (tail: the least popular {TAIL_SHARE:.0%} "
           "of items by training degree; users with at least one such positive; every item ranked). sparse / "
           f"rest: the sparsest {SPARSE_SHARE:.0%} of the tested users by training interactions and the others. "
           "Seed-averaged per user, then averaged over users; — where a seed lacks the group (recorded before "
           "groups were kept, its run folder not on the machine that added them).", "",
           "| dataset | model | " + " | ".join(f"{g} {LABEL[m]}" for g in GROUPS for m in TESTED) + " |",
           "|---|---|" + "---|" * (len(GROUPS) * len(TESTED))]
    for ds, rows in data.get("groups", {}).items():
        for model in [m for m in models if m in rows]:
            md.append(f"| {ds} | {model} | " + " | ".join(f"{rows[model][f'{g}_{m}']:.4f}" if f"{g}_{m}" in rows[model]
                                                           else "—" for g in GROUPS for m in TESTED) + " |")
    md += ["", "## What holds, claim by claim", "",
           "Each seed paper's claims as ALGORITHMS.md states when they are confirmed, judged on the finished "
           "cells (Holm-corrected tests above). A verdict **holds** or **does not hold** stands as the study "
           "fills in: a claim does not hold where a test it needs is significantly worse, has a difference of "
           f"the wrong sign or a raw p at or above α = {ALPHA} (which Holm's correction can only raise), or where "
           "its whole family is measured. *Pending* names what is not measured yet, and the tests not "
           "significant yet whose Holm-adjusted p still falls as the family's other tests land (\"n.s. so far\" in "
           "the tables).", ""]
    for s in SEED_MODELS:
        for ds in datasets:
            for claim in CLAIMS[s]:
                md.append(f"- {s} on {ds}: \"{claim['claim']}\": {judge(data, ds, s, claim)}")
    md += ["", "## Ablations", "",
           "Variant settings on top of the tuned point, same seeds; tests against the full model (Holm over "
           f"{_family(data, 'ablation_tests')}).", ""]
    for ds, by_model in data["ablations"].items():
        for s, variants in by_model.items():
            full = data["summaries"][ds].get(s)
            md += [f"### {s} on {ds}", "", "| variant | seeds | " + " | ".join(LABEL[m] for m in METRICS)
                   + " | vs full (R@20, Holm p) |", "|---" * (len(METRICS) + 3) + "|"]
            if full:
                md.append(f"| full model | {full['n']} | " + " | ".join(_fmt(full, m) for m in METRICS) + " | |")
            for label, s_ in variants.items():
                test = next((t for t in data["ablation_tests"] if t["dataset"] == ds and t["model"] == s
                             and t["variant"] == label and t["metric"] == "recall@20"), None)
                mark = f"{test['diff']:+.4f}, {fmt_p(test['p_holm'])} ({shown_verdict(test, _complete(data, 'ablation_tests'))})" if test else ""
                md.append(f"| {label} | {s_['n']} | " + " | ".join(_fmt(s_, m) for m in METRICS) + f" | {mark} |")
            md.append("")
    md += ["## Progress", "", "Runs recorded / planned (trials of the current search space; final seeds; the "
           "seed models' ablation seeds). `python -m benchmarks.headline` continues from here.", "",
           "| dataset | model | trials | seeds | ablation seeds | core-hours left (est.) |", "|---|---|---|---|---|---|"]
    for ds, rows in data["progress"].items():
        for model, row in rows.items():
            hours = row.get("core-hours left")
            md.append(f"| {ds} | {model} | " + " | ".join("/".join(map(str, row[k])) if k in row else ""
                                                         for k in ("trials", "seeds", "ablation seeds"))
                      + f" | {'?' if hours is None else f'{hours:.1f}' if hours else ''} |")
        total = sum(r.get("core-hours left") or 0 for r in rows.values())
        md.append(f"| {ds} | all | | | | {total:.1f} |")
    md += ["", "Core-hours left: the runs still to come times the epochs the model's recorded runs took "
           "(trials', seeds'; the other dataset's where none ran here) times its 1-thread epoch in "
           "`results/floors*.md` (CPU time, default settings), EGRA's stage-1 pretraining included; "
           "a rough guide: `--jobs 2` on two otherwise idle cores does about two core-hours per hour."]
    md += ["", "## Tuned settings", "", "| dataset | model | trials | selected (changed from defaults) | valid R@20 |",
           "|---|---|---|---|---|"]
    for ds in datasets:
        for model in models:
            t = tunings[ds].get(model)
            if t and "selected" in t:
                chosen = t["selected"]["point"] or "defaults"
                md.append(f"| {ds} | {model} | {len(t['trials'])}/{len(t['spec']['points'])} | {chosen} | "
                          f"{t['selected']['valid']['recall@20']:.4f} |")
    return "\n".join(md) + "\n"


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%")


def _tex_cell(summary: dict | None, metric: str, best: bool = False, mark: str = "") -> str:
    if summary is None:
        return "--"
    mean = f"{summary['mean'][metric]:.4f}"
    return (rf"\textbf{{{mean}}}" if best else mean) + rf"$\pm${summary['std'][metric]:.4f}" + mark


def _tabular(datasets: list[str], rows: list[tuple[str, list[str]]], notes: list[str], first_seed_row: int = -1) -> list[str]:
    """A booktabs tabular: datasets as column groups of ``METRICS``, one line per ``(label, cells)``."""
    n = len(METRICS)
    lines = [f"% {note}" for note in notes] + [
        r"\begin{tabular}{l" + "c" * (n * len(datasets)) + "}", r"\toprule",
        " & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_tex(ds)}}}" for ds in datasets) + r" \\",
        "".join(rf"\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(datasets))),
        "Model & " + " & ".join(LABEL[m] for _ in datasets for m in METRICS) + r" \\", r"\midrule"]
    for k, (label, cells) in enumerate(rows):
        if k == first_seed_row:
            lines.append(r"\midrule")
        lines.append(_tex(label) + " & " + " & ".join(cells) + r" \\")
    return lines + [r"\bottomrule", r"\end{tabular}"]


def render_latex(data: dict, models: list[str], datasets: list[str]) -> str:
    """The headline table (mean ± std over seeds, best mean bold, † as in the markdown), then one
    table per seed model's ablations (↓ / ↑: the variant is significantly below / above the full
    model on that metric, Holm-corrected)."""
    rows = []
    for model in models:
        label, cells = model, []
        for ds in datasets:
            summaries = data["summaries"][ds]
            baselines = [m for m in models if m not in SEED_MODELS and m in summaries and summaries[m]["n"] == len(SEEDS)]
            s = summaries.get(model)
            if s is not None and s["n"] < len(SEEDS):
                label = f"{model} ({s['n']}/{len(SEEDS)} seeds on {ds})"
            if model in data.get("retuning", {}).get(ds, []):
                label += f" (being tuned again on {ds})"
            for metric in METRICS:
                beats = model in SEED_MODELS and metric in TESTED and _beats_all(data, ds, model, metric, baselines)
                cells.append(_tex_cell(s, metric, _best(summaries, metric) == model, r"$^\dagger$" if beats else ""))
        rows.append((label, cells))
    seeds = f"{len(SEEDS)} seeds"
    lines = _tabular(datasets, rows, [f"Test metrics, mean $\\pm$ std over {seeds}; bold: best complete row; "
                                      "dagger: better than every baseline (Wilcoxon, Holm)."],
                     next((k for k, m in enumerate(models) if m in SEED_MODELS), -1))
    marks = {"worse": r"$^\downarrow$", "better": r"$^\uparrow$"}
    for s in [m for m in SEED_MODELS if m in models]:
        variants = [label for label in ablations(s)
                    if any(label in data["ablations"].get(ds, {}).get(s, {}) or
                           label in data["identical_ablations"].get(ds, {}).get(s, []) for ds in datasets)]
        if not variants:
            continue
        rows = [("full model", [_tex_cell(data["summaries"][ds].get(s), m) for ds in datasets for m in METRICS])]
        for label in variants:
            cells, row = [], label
            for ds in datasets:
                summary = data["ablations"].get(ds, {}).get(s, {}).get(label)
                if summary is not None and summary["n"] < len(SEEDS):
                    row = f"{label} ({summary['n']}/{len(SEEDS)} seeds on {ds})"
                if label in data["identical_ablations"].get(ds, {}).get(s, []):
                    cells += [rf"\multicolumn{{{len(METRICS)}}}{{c}}{{= full model (selected on validation)}}"]
                    continue
                for metric in METRICS:
                    test = next((t for t in data["ablation_tests"] if t["dataset"] == ds and t["model"] == s
                                 and t["variant"] == label and t["metric"] == metric), None)
                    cells.append(_tex_cell(summary, metric, mark=marks.get(verdict(test), "") if test else ""))
            rows.append((row, cells))
        lines += ["", *_tabular(datasets, rows, [f"Ablations of {s}: the tuned point with the variant's settings, the "
                                                 f"same {seeds}; down/up arrow: significantly below/above the full "
                                                 "model (Wilcoxon, Holm)."])]
    return "\n".join(lines) + "\n"


def _off_cpu(summary: dict) -> str:
    """`` (cuda)`` after a cell's s/epoch when any of its seeds trained off the CPU."""
    other = [d for d in summary["devices"] if d != "cpu"]
    return f" ({', '.join(other)})" if other else ""


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _means(s: dict) -> list[str]:
    return [f"{s[k][m]:.6f}" for m in METRICS for k in ("mean", "std")]


def render_csv(data: dict) -> str:
    return _csv(["dataset", "model", "seeds", *(f"{m}_{k}" for m in METRICS for k in ("mean", "std")),
                 "epochs", "s_per_epoch", "peak_rss_mb"],
                [[ds, model, s["n"], *_means(s), f"{s['epochs']:.1f}", f"{s['s_epoch']:.4f}", f"{s['peak_rss_mb']:.0f}"]
                 for ds, rows in data["summaries"].items() for model, s in rows.items()])


def render_tuned_csv(data: dict, tunings: dict) -> str:
    """One row per tuned (dataset, model): its trials, the selected point (JSON, changed from its
    defaults), its valid R@20 / N@20, and whether its search space changed since (being tuned again)."""
    rows = [[ds, model, len(t["trials"]), len(t["spec"]["points"]), json.dumps(t["selected"]["point"], sort_keys=True),
             f"{t['selected']['valid']['recall@20']:.6f}", f"{t['selected']['valid'].get('ndcg@20', float('nan')):.6f}",
             int(model in data["retuning"].get(ds, []))]
            for ds, row in tunings.items() for model, t in row.items() if t and "selected" in t]
    return _csv(["dataset", "model", "trials", "points", "selected", "valid_recall@20", "valid_ndcg@20", "retuning"], rows)


def render_ablations_csv(data: dict) -> str:
    """One row per (dataset, seed model, variant): metrics, and per tested metric the mean per-user
    difference to the full model, its Wilcoxon p, Holm p and verdict; a variant validation selected
    is the full model (``note``)."""
    tested = [f"{m}_{k}" for m in TESTED for k in ("diff", "p", "p_holm", "verdict")]
    rows, complete = [], _complete(data, "ablation_tests")
    for ds, by_model in data["ablations"].items():
        for s, variants in by_model.items():
            for label, summary in variants.items():
                tests = {t["metric"]: t for t in data["ablation_tests"]
                         if t["dataset"] == ds and t["model"] == s and t["variant"] == label}
                rows.append([ds, s, label, summary["n"], *_means(summary), ""]
                            + [x for m in TESTED for x in ((f"{tests[m]['diff']:+.6f}", f"{tests[m]['p']:.4g}",
                                                            f"{tests[m]['p_holm']:.4g}", shown_verdict(tests[m], complete))
                                                           if m in tests else ("",) * 4)])
    for ds, by_model in data["identical_ablations"].items():
        for s, labels in by_model.items():
            rows += [[ds, s, label, "", *[""] * (2 * len(METRICS)), "selected on validation: the full model",
                      *[""] * len(tested)] for label in labels]
    return _csv(["dataset", "model", "variant", "seeds", *(f"{m}_{k}" for m in METRICS for k in ("mean", "std")),
                 "note", *tested], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join([*BASELINES, *SEED_MODELS]))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--parts", default="tune,final,ablation")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, in worker processes: each cell's tuning, then its seed and ablation runs one by one")
    parser.add_argument("--commit", action="store_true", help="git-commit each recorded trial and seed")
    parser.add_argument("--device", default=None, help="train on this device, e.g. cuda (default: the CPU)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; rebuild the tables")
    args = parser.parse_args()
    models, datasets = args.models.split(","), args.datasets.split(",")
    if not args.report_only:
        run(models, datasets, set(args.parts.split(",")), args.jobs, args.commit, args.device)
    report([*BASELINES, *SEED_MODELS], DATASETS)
    print((RESULTS / "headline.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
