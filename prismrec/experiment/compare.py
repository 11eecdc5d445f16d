"""The comparison runner: every model x dataset x seed, resumable, summarised honestly.

Every model name, dataset and setting is checked before anything is trained, each cell's settings
against its dataset too (:func:`check_cell`: ``knn_k`` above its items, a modality it lacks). Each
cell (dataset, model, seed) is then trained in its own subprocess (``prismrec train``), so a crash
cannot take the sweep down and each cell's peak memory is its own. Cells share the CPU cores
(:func:`plan_cells`): by default (``workers="auto"``) one 1-thread cell per core, as many side by
side as the memory allows; ``workers=N`` trains N at a time, the threads split between them.
Each cell is a run directory (:mod:`prismrec.experiment.rundir`): a finished cell with the same
resolved configuration is skipped, and a killed cell resumes from its last training checkpoint,
so an interrupted sweep resumes where it stopped, mid-training. A cell holding another configuration is retrained.
Results: ``results.json`` (per-seed metrics, mean, sample std, epochs, and from each cell's
``timing.json`` median seconds per training epoch and per evaluation, peak RSS) and
``results.md`` (test R@10/20, N@10/20 as mean ± std), and the paper table
(:mod:`prismrec.experiment.paper_table`: ``paper.md`` / ``paper.tex`` / ``paper.csv``, datasets
side by side, best bold, significance marks against a reference model).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prismrec.data.dataset import feature_files, find_dataset, load_dataset
from prismrec.errors import ConfigError, ModelRefused, RunError
from prismrec.experiment import children
from prismrec.experiment.config import resolve_config
from prismrec.experiment.rundir import RunDir, run_digest, write_atomic
from prismrec.experiment.runs import aggregate, require_splits
from prismrec.experiment.stages import check_model_dataset

TABLE_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def model_overrides(overrides: dict[str, Any], model: str, models: list[str]) -> dict[str, Any]:
    """Overrides for ``model``: plain keys apply to all models, ``MODEL.key`` to that one, and
    for that model it overrides a plain ``key`` whichever of the two came first (a plain key given
    after ``MODEL.key`` replaced the model's own value)."""
    out = {}
    for key, value in overrides.items():
        scope, dot, name = key.partition(".")
        if not dot:
            if f"{model}.{key}" not in overrides:
                out[key] = value
        elif scope not in models:
            raise ConfigError(f"--set {key}: {scope!r} is not one of the compared models {models}")
        elif name in ("seed", "seeds", "model", "dataset"):  # was a cell that trained, then failed
            what = "seeds with --seeds (a comma list) or --n-seeds N" if name.startswith("seed") else \
                f"the {name}s with the --{name}s option"
            raise ConfigError(f"--set {key}={value}: choose {what}, not --set")
        elif scope == model:
            out[name] = value
    return out


def _cell_done(cell: Path, digest: str) -> dict | None:
    """The cell's metrics if it finished (a verified run directory) with the same configuration,
    else None.

    The recorded settings are resolved again with today's code, so a setting added since (which
    takes its default, i.e. the old behaviour) does not invalidate finished cells.
    """
    run = RunDir(cell)
    if not run.is_finished():
        return None
    try:
        metrics, recorded = run.read_metrics(), run.read_config()
        settings = {**(recorded.get("train") or {}), **(recorded.get("params") or {})}
        same = resolve_config(recorded["model"], recorded["dataset"], settings).digest() == digest
    except (KeyError, ValueError, TypeError, RunError):
        return None
    if metrics.get("status") != "ok" or not same:
        return None
    return {**metrics, "timing": run.read_timing()}


def dataset_folder(dataset: str) -> str:
    """The folder of a dataset's cells under ``--out``: the dataset's name, or for a dataset given
    as a folder path that leads out of ``--out`` (absolute, or with ``..``) its folder's name, so no
    cell is written into (or read from) the data folder or beside it."""
    path = Path(dataset)
    return path.expanduser().resolve().name if path.is_absolute() or ".." in path.parts else dataset


def cell_dir(out_dir: Path, dataset: str, model: str, seed: int) -> Path:
    """The run directory of one cell: ``<out>/<dataset folder>/<model>/seed-<seed>``."""
    return Path(out_dir) / dataset_folder(dataset) / model / f"seed-{seed}"


def _clear_other_run(cell: Path, identity_digest: str, seed: int, log) -> None:
    """Remove a cell's run files unless they are this cell's run (finished or resumable)."""
    run = RunDir(cell)
    state = run.state()
    if state.kind in ("absent", "empty"):
        return
    ident = state.identity or {}
    if state.kind in ("running", "failed") and ident.get("config_digest") == identity_digest \
            and ident.get("seed") == seed:
        return  # the same run: training resumes it (or retries it, if it failed)
    log(f"[compare] {cell} holds another configuration ({state.kind}): retraining it")
    run.clear()


def check_inputs(models: list[str], datasets: list[str], seeds: list[int],
                 overrides: dict[str, Any], data_dir: str | None) -> dict[tuple[str, str], Any]:
    """Resolve every (dataset, model) configuration and find every dataset before any training;
    return the configurations. Raises a :class:`~prismrec.errors.PrismrecError` naming the first
    bad model, dataset or setting."""
    if not models or not datasets or not seeds:
        raise ConfigError("compare needs at least one model, one dataset and one seed")
    for name, values in (("model", models), ("dataset", datasets), ("seed", seeds)):
        twice = sorted({v for v in values if values.count(v) > 1}, key=str)
        if twice:
            raise ConfigError(f"{name} {', '.join(map(str, twice))} given twice: list each once")
    folders: dict[str, str] = {}
    for dataset in datasets:
        find_dataset(dataset, data_dir)
        folder = dataset_folder(dataset)
        if folder in folders:
            raise ConfigError(f"--datasets {folders[folder]} and {dataset} would share the cell folder "
                              f"{folder}: give dataset folders with different names")
        folders[folder] = dataset
    try:
        configs = {(dataset, model): resolve_config(model, dataset, model_overrides(overrides, model, models))
                   for dataset in datasets for model in models}
    except KeyError as exc:  # the model registry's "unknown model"
        raise ConfigError(f"--models: {exc.args[0]}") from None
    for config in configs.values():
        check_device = getattr(config.train, "check_device", None)  # a GPU that is not there
        if check_device is not None:
            check_device()
    return configs


def check_cell(config, data) -> None:
    """Raise a :class:`~prismrec.errors.ConfigError` where the cells of ``config`` (an
    :class:`~prismrec.experiment.config.ExperimentConfig`) could only fail on ``data``: a cut-off
    above its items, or (:class:`~prismrec.errors.ModelRefused`, naming the cell) a setting its model
    refuses on it: ``knn_k`` above its items, a modality it lacks, too few modalities
    (:func:`~prismrec.experiment.stages.check_model_dataset`). ``data`` needs no feature values:
    ``features`` may map each modality's name to None."""
    config.train.check_cut_offs(data.n_items, data.name)
    try:
        check_model_dataset(config, data)
    except ConfigError as exc:  # was found as the cell started, after the cells before it had trained
        model = config.model
        raise ModelRefused(f"compare cell {config.dataset} / {model}: {exc}; no cell was trained: --set "
                           f"{model}.<setting>=... changes a setting for {model} alone, or leave {model} out of "
                           "--models") from None


def run_compare(
    models: list[str],
    datasets: list[str],
    seeds: list[int],
    out_dir: Path,
    overrides: dict[str, Any] | None = None,
    data_dir: str | None = None,
    log=print,
    train: bool = True,
    reference: str | None = None,
    workers: int | str = "auto",
    correction: str = "holm",
    test: str = "t",
) -> dict:
    """Train every cell that is not already done, then write ``results.json`` / ``results.md``
    and the paper tables.

    Every model, dataset and setting is validated first (:func:`check_inputs`; when training,
    every dataset's valid and test splits too: not empty, and every cell's settings against its
    dataset: :func:`check_cell`). ``train=False``
    only summarises the finished cells (missing ones are listed as not run). ``reference``: the
    model the paper table's significance marks compare against (None: no marks), their p-values
    of the paired ``test`` (``t`` or ``wilcoxon``), adjusted over the table by ``correction``
    (``holm``, ``bh`` or ``none``).

    ``workers``: how cells share the CPU cores, each in its own process (:func:`plan_cells`,
    :func:`train_cells`): ``"auto"``, one 1-thread cell per core side by side, as many as the
    memory allows; a whole number N, N at a time with cores // N threads each unless ``--set
    threads=...`` fixes them. Threads are not part of a cell's configuration, so
    finished cells are reused either way, and a cell's result depends only on its settings and
    seed, not on the order or company it was trained in. The summary is written once, at the end.
    """
    overrides = overrides or {}
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"--out {out_dir} is a file: give a folder for the comparison")
    if workers != "auto" and not (isinstance(workers, int) and workers >= 1):
        raise ConfigError(f"--workers {workers}: give auto or a whole number >= 1 (cells trained at the same time)")
    configs = check_inputs(models, datasets, seeds, overrides, data_dir)
    if reference is not None and reference not in models:
        raise ConfigError(f"--reference {reference!r} is not one of the compared models {models}")
    from prismrec.experiment.paper_table import CORRECTIONS
    from prismrec.experiment.significance import PAIRED_TESTS

    if correction not in CORRECTIONS:
        raise ConfigError(f"--correction {correction!r}: use one of {', '.join(CORRECTIONS)}")
    if test not in PAIRED_TESTS:
        raise ConfigError(f"--test {test!r}: use one of {', '.join(PAIRED_TESTS)}")
    if not train and not out_dir.is_dir():  # was an --out folder made to hold an empty summary
        raise RunError(f"--out {out_dir} does not exist: --report-only summarises the finished cells of an "
                       "earlier comparison in that folder; check the path, or drop --report-only to train")
    data_bytes: dict[str, int] = {}  # each dataset's files, for the cells' memory estimate
    if train:  # a cell that could only fail, before anything is written or trained
        for dataset in datasets:
            data = load_dataset(dataset, data_dir, modalities=[])  # the interactions alone
            require_splits(data)
            data_bytes[dataset] = dataset_bytes(data)
            names = replace(data, features=dict.fromkeys(feature_files(data.path)))  # and its modalities' names
            for model in models:
                check_cell(configs[(dataset, model)], names)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"models": models, "datasets": datasets, "seeds": seeds, "overrides": overrides, "cells": {}}
    done: dict[tuple[str, str, int], dict] = {}
    failed: dict[tuple[str, str, int], str] = {}
    todo: list[Cell] = []
    for dataset in datasets:
        for model in models:
            config = configs[(dataset, model)]
            digest, identity_digest = config.digest(), run_digest(config)
            for seed in seeds:
                key, cell = (dataset, model, seed), cell_dir(out_dir, dataset, model, seed)
                previous = _cell_done(cell, digest)
                if previous is not None:
                    log(f"[compare] {dataset} / {model} / seed {seed}: done before, skipped")
                    done[key] = previous
                elif not train:
                    failed[key] = "not run"
                    log(f"[compare] {dataset} / {model} / seed {seed}: not run")
                else:
                    _clear_other_run(cell, identity_digest, seed, log)
                    todo.append(Cell(dataset, model, seed, cell, model_overrides(overrides, model, models), digest))
    todo, capacity, at_most = plan_cells(todo, workers, configs, data_bytes, "threads" in overrides, log)
    for key, outcome in train_cells(todo, capacity, at_most, data_dir, log).items():
        if isinstance(outcome, dict):
            done[key] = outcome
        else:
            failed[key] = outcome
    failures = [key for key in ((d, m, s) for d in datasets for m in models for s in seeds)
                if key in failed and failed[key] != "not run"]
    for dataset in datasets:
        for model in models:
            per_seed = {s: done[(dataset, model, s)] for s in seeds if (dataset, model, s) in done}
            why = {str(s): failed[(dataset, model, s)] for s in seeds if (dataset, model, s) in failed}
            results["cells"].setdefault(dataset, {})[model] = _summarise(
                per_seed, why, configs[(dataset, model)].digest())
    _write(results, out_dir)
    _write_paper(results, out_dir, reference, data_dir, log, correction, test)
    results["failures"] = failures
    return results


@dataclass(frozen=True)
class Cell:
    """One (dataset, model, seed) run of a comparison, trained by ``prismrec train`` into ``path``."""

    dataset: str
    model: str
    seed: int
    path: Path
    settings: dict
    digest: str
    cores: int = 1
    """The cores it occupies while it trains (:func:`plan_cells`)."""
    threads: int | None = None
    """The threads it is told to take (``--set threads=N``; None: its own setting)."""
    flags: tuple[str, ...] = ()
    """Further ``prismrec train`` options (``--keep-checkpoints``)."""

    def command(self, data_dir: str | None) -> list[str]:
        """The ``prismrec train`` command line of this cell."""
        cmd = [sys.executable, "-m", "prismrec", "train", "--model", self.model, "--dataset", self.dataset,
               "--seeds", str(self.seed), "--out", str(self.path), "--quiet", *self.flags]
        if data_dir:
            cmd += ["--data-dir", str(data_dir)]
        settings = dict(self.settings) if self.threads is None else {**self.settings, "threads": self.threads}
        for key, value in settings.items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]
        return cmd


CELL_MEMORY_BASE = 1 << 30
"""Bytes a training process takes beyond its dataset's files (Python, torch, graphs, evaluation
blocks): tiktok's and baby's cells peak at 0.6-2.0 GiB (``results/multimodal.md``, ``results/scale.md``)."""
CELL_MEMORY_PER_DATA_BYTE = 8
"""A cell's peak memory per byte of its dataset's files: at Electronics size 1.13 GB of features
peak at 3.8-9.0 GiB (``results/scale.md``: a second copy of trained features, Adam's moments)."""
MEMORY_SHARE = 0.5
"""Share of the memory available when a comparison starts that its side-by-side cells may take."""


def plan_cells(cells: list[Cell], workers: int | str, configs: dict, data_bytes: dict[str, int],
               threads_set: bool, log, prefix: str = "[compare]") -> tuple[list[Cell], int, int]:
    """How ``cells`` share this process's usable cores: the cells, each with the ``cores`` it
    occupies and the ``threads`` it is told to take (None: its own ``threads`` setting), the
    capacity in cores :func:`train_cells` fills with them, and how many may run at once.

    ``workers="auto"``: one process per usable core (:func:`prismrec.threads.usable_cpus`), each
    with one thread, as many side by side as the cores, the cells and the memory allow (each
    cell estimated at :data:`CELL_MEMORY_BASE` + :data:`CELL_MEMORY_PER_DATA_BYTE` x its dataset's
    files, within :data:`MEMORY_SHARE` of the memory available now): on 2 cores two 1-thread cells
    trained 1.78x (tiktok) and 2.14x (lfm2k) the cells per hour of one cell at a time
    (``benchmarks/throughput.py``; ``results/contention_matrix.md``: next to another CPU-bound
    process a 1-thread epoch took 0.95-1.20x its idle time).
    A cell that trains alone (a single cell, or memory for one only) takes the threads its run
    would (``threads=auto``); a cell with ``--set threads=N`` occupies N cores, and one on a GPU
    trains alone. ``workers=N``: N cells at a time, each told to take cores // N threads when
    N > 1 and ``threads_set`` is false (no ``--set threads``)."""
    from prismrec.threads import resolve_threads, usable_cpus

    cpus = usable_cpus()
    if workers != "auto":
        threads = max(1, cpus // workers) if workers > 1 and not threads_set else None
        return [replace(cell, threads=threads) for cell in cells], workers, workers
    if not cells:
        return cells, cpus, 1
    per_cell = max(CELL_MEMORY_BASE + CELL_MEMORY_PER_DATA_BYTE * data_bytes[cell.dataset] for cell in cells)
    available = available_memory()
    fit = len(cells) if available is None else max(1, int(MEMORY_SHARE * available // per_cell))
    side = min(cpus, len(cells), fit)
    planned = []
    for cell in cells:
        train = configs[(cell.dataset, cell.model)].train
        if not on_cpu(configs[(cell.dataset, cell.model)]):
            cores, threads = cpus, None
        elif train.threads != "auto":
            cores, threads = max(1, min(cpus, resolve_threads(train.threads)[0])), None
        elif side > 1:
            cores = threads = max(1, cpus // side)
        else:
            cores, threads = cpus, None
        planned.append(replace(cell, cores=cores, threads=threads))
    if any(cell.cores < cpus for cell in planned):
        memory = "" if fit >= min(cpus, len(cells)) else (
            f", no more for memory: ~{per_cell / 2**30:.1f} GiB a cell of {available / 2**30:.1f} GiB available")
        log(f"{prefix} {len(cells)} cells, up to {side} at a time on {cpus} cores{memory} "
            "(--workers N: N at a time)")
    return planned, cpus, min(fit, len(cells))


def available_memory() -> int | None:
    """Bytes of memory available to new processes now: ``MemAvailable`` (Linux), within a cgroup
    v2 limit if one is set; None where neither can be read."""
    values = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                values.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            values.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(values) if values else None


def train_cells(cells: list[Cell], capacity: int, at_most: int, data_dir: str | None,
                log, prefix: str = "[compare]") -> dict[tuple[str, str, int], dict | str]:
    """Train ``cells``, each in its own ``prismrec train`` process, at most ``at_most`` at a time
    and as many as their ``cores`` fit in ``capacity`` (the first pending cell that fits starts
    next; one that needs more than the capacity trains alone);
    return each cell's metrics (a dict) or the reason it failed (the last lines of its output).

    A cell's process is independent of the others (its own run directory, seed and settings), so
    the results do not depend on which cells train together. Ctrl-C or SIGTERM stops the running
    cells with SIGINT, so each leaves its last checkpoint (a rerun resumes them) and the interrupt
    is raised again; the cells are also told to stop should this process die without that chance
    (Linux; :mod:`prismrec.experiment.children`).
    """
    outcomes: dict[tuple[str, str, int], dict | str] = {}
    pending, running = list(cells), []
    procs: list = []  # the running cells' processes, stopped cleanly on an interrupt
    with children.supervised(procs):
        while pending or running:
            while len(running) < at_most and (
                    cell := _next_cell(pending, capacity - sum(r[0].cores for r in running), running)) is not None:
                pending.remove(cell)
                resuming = RunDir(cell.path).state().kind == "running"
                log(f"{prefix} {cell.dataset} / {cell.model} / seed {cell.seed}: "
                    + ("resuming" if resuming else "training"))
                output = tempfile.TemporaryFile(mode="w+")
                proc = children.start(cell.command(data_dir), output)
                procs.append(proc)
                running.append((cell, proc, output))
            time.sleep(0.2)
            for item in [r for r in running if r[1].poll() is not None]:
                running.remove(item)
                cell, proc, output = item
                procs.remove(proc)
                output.seek(0)
                text = output.read()
                output.close()
                key = (cell.dataset, cell.model, cell.seed)
                metrics = _cell_done(cell.path, cell.digest)
                if proc.returncode == 0 and metrics is not None:
                    outcomes[key] = metrics
                    continue
                error = "\n".join(text.strip().splitlines()[-5:])
                outcomes[key] = error
                log(f"{prefix} {cell.dataset} / {cell.model} / seed {cell.seed}: FAILED\n" + error)
    return outcomes


def on_cpu(config) -> bool:
    """Whether a configuration trains on the CPU (``cpu`` or ``cpu:0``)."""
    return str(config.train.device).partition(":")[0] == "cpu"


def dataset_bytes(data) -> int:
    """Bytes of a dataset's files, from which :func:`plan_cells` estimates a training process's memory."""
    return sum(f.stat().st_size for f in Path(data.path).iterdir() if f.is_file())


def seeds_aside(model: str, dataset: str, config, settings: dict[str, Any], data, workers: int | str,
                data_dir: str | None, log, flags: tuple[str, ...] = ()):
    """What :func:`~prismrec.experiment.runs.run_experiment` takes as ``train_aside`` to train one
    configuration's seeds as compare trains its cells, each in its own ``prismrec train`` process,
    side by side as :func:`plan_cells` allows (``workers``): ``prismrec train --seeds`` and tune's
    final seeds on a CPU. ``dataset`` is the name or folder the processes load (``data``, its
    :class:`Dataset`, must be what that loads), ``settings`` their ``--set`` settings. None (train in
    the calling process) on a GPU or with ``workers=1``. A seed's run is the one it would have been
    in the calling process (threads are not part of it); a failed seed raises :class:`RunError`
    naming the seeds that failed, with the last lines of the first one's output."""
    if workers == 1 or not on_cpu(config):
        return None
    digest, data_bytes = config.digest(), dataset_bytes(data)

    def train(paths: dict[int, Path]) -> None:
        cells = [Cell(dataset, model, seed, path, settings, digest, flags=flags) for seed, path in paths.items()]
        cells, capacity, at_most = plan_cells(cells, workers, {(dataset, model): config}, {dataset: data_bytes},
                                              "threads" in settings, log, prefix="[train]")
        log(f"[train] each seed's epochs: {next(iter(paths.values())).parent}/seed-<seed>/run.log")
        outcomes = train_cells(cells, capacity, at_most, data_dir, log, prefix="[train]")
        failed = {key[2]: why for key, why in outcomes.items() if isinstance(why, str)}
        if failed:
            first = next(iter(failed))
            raise RunError(f"seed{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))} failed "
                           f"(seed {first}'s output ends):\n{failed[first]}")

    return train


def _next_cell(pending: list[Cell], free: int, running: list) -> Cell | None:
    """The first pending cell whose cores fit in ``free``; with nothing running, the first one."""
    if pending and not running:
        return pending[0]
    return next((cell for cell in pending if cell.cores <= free), None)


def _write_paper(results: dict, out_dir: Path, reference: str | None, data_dir, log, correction: str = "holm",
                 test: str = "t") -> None:
    """The paper tables; a significance test that cannot run leaves the tables without marks."""
    from prismrec.experiment.paper_table import write_paper_tables

    try:
        write_paper_tables(results, out_dir, reference, data_dir=data_dir, correction=correction, test=test)
    except (RunError, ValueError) as exc:
        log(f"[compare] significance against {reference} not computed ({exc}); paper tables unmarked")
        write_paper_tables(results, out_dir, None, data_dir=data_dir)


def _summarise(per_seed: dict[int, dict], failed: dict, digest: str) -> dict:
    cell: dict = {"config_digest": digest, "failed": failed, "per_seed": {}}
    if not per_seed:
        return cell
    keep = ("valid", "test", "best_epoch", "epochs")
    timed = ("seconds", "median_train_s", "median_eval_s", "peak_rss_mb")  # from timing.json
    cell["per_seed"] = {str(s): {k: m[k] for k in keep} | {k: m["timing"].get(k) for k in timed}
                        for s, m in per_seed.items()}
    cell.update(aggregate(per_seed))
    runs = list(per_seed.values())
    cell["epochs"] = [m["epochs"] for m in runs]
    for key, combine in (("median_train_s", statistics.median), ("median_eval_s", statistics.median),
                         ("peak_rss_mb", max)):
        values = [m["timing"][key] for m in runs if m["timing"].get(key) is not None]
        cell[key] = combine(values) if values else None
    return cell


def _write(results: dict, out_dir: Path) -> None:
    write_atomic(out_dir / "results.json", json.dumps(results, indent=2))  # a kill leaves the old file or the new
    write_atomic(out_dir / "results.md", render_markdown(results))


def render_markdown(results: dict) -> str:
    """Tables of test metrics (mean ± sample std over seeds), cost and memory per dataset."""
    lines = [
        "# Comparison",
        "",
        f"Seeds: {', '.join(map(str, results['seeds']))}. Test metrics at the best-validation epoch "
        "(selected on valid Recall@20; test evaluated once per run), mean ± sample std over seeds.",
        "",
    ]
    if results.get("overrides"):
        lines += [f"Overrides: `{json.dumps(results['overrides'])}`", ""]
    header = ["model", "seeds", "R@10", "R@20", "N@10", "N@20", "epochs", "s/epoch (train)", "s/eval", "peak RSS MiB"]
    for dataset, cells in results["cells"].items():
        lines += [f"## {dataset}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for model, cell in cells.items():
            if "mean" not in cell:
                lines.append(f"| {model} | 0 | not run or failed | | | | | | | |")
                continue
            mean, std = cell["mean"]["test"], cell["std"]["test"]
            metrics = [f"{mean[m]:.4f} ± {std[m]:.4f}" for m in TABLE_METRICS]
            lines.append(
                f"| {model} | {len(cell['per_seed'])} | " + " | ".join(metrics)
                + f" | {statistics.fmean(cell['epochs']):.0f} | {_num(cell['median_train_s'], '.3f')} | "
                f"{_num(cell['median_eval_s'], '.3f')} | {_num(cell['peak_rss_mb'], '.0f')} |"
            )
        lines.append("")
    return "\n".join(lines)


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
