"""The comparison runner: every model x dataset x seed, resumable, summarised honestly.

Every model name, dataset and setting is checked before anything is trained. Each cell (dataset,
model, seed) is then trained in its own subprocess (``prismrec train``), so a crash cannot take
the sweep down and each cell's peak memory is its own. Each cell is a run directory
(:mod:`prismrec.experiment.rundir`): a finished cell with the same resolved configuration is
skipped, and a killed cell resumes from its last training checkpoint, so an interrupted sweep
resumes where it stopped, mid-training. A cell holding another configuration is retrained.
Results: ``results.json`` (per-seed metrics, mean, sample std, epochs, and from each cell's
``timing.json`` median seconds per training epoch and per evaluation, peak RSS) and
``results.md`` (test R@10/20, N@10/20 as mean ± std), and the paper table
(:mod:`prismrec.experiment.paper_table`: ``paper.md`` / ``paper.tex`` / ``paper.csv``, datasets
side by side, best bold, significance marks against a reference model).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from prismrec.data.dataset import find_dataset
from prismrec.errors import ConfigError, RunError
from prismrec.experiment.config import resolve_config
from prismrec.experiment.rundir import RunDir, run_digest
from prismrec.experiment.runs import aggregate

TABLE_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def model_overrides(overrides: dict[str, Any], model: str, models: list[str]) -> dict[str, Any]:
    """Overrides for ``model``: plain keys apply to all models, ``MODEL.key`` to that one."""
    out = {}
    for key, value in overrides.items():
        scope, dot, name = key.partition(".")
        if not dot:
            out[key] = value
        elif scope not in models:
            raise ConfigError(f"--set {key}: {scope!r} is not one of the compared models {models}")
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
    for dataset in datasets:
        find_dataset(dataset, data_dir)
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
) -> dict:
    """Train every cell that is not already done, then write ``results.json`` / ``results.md``
    and the paper tables.

    Every model, dataset and setting is validated first (:func:`check_inputs`). ``train=False``
    only summarises the finished cells (missing ones are listed as not run). ``reference``: the
    model the paper table's significance marks compare against (None: no marks).
    """
    overrides = overrides or {}
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"--out {out_dir} is a file: give a folder for the comparison")
    configs = check_inputs(models, datasets, seeds, overrides, data_dir)
    if reference is not None and reference not in models:
        raise ConfigError(f"--reference {reference!r} is not one of the compared models {models}")
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"models": models, "datasets": datasets, "seeds": seeds, "overrides": overrides, "cells": {}}
    failures = []
    for dataset in datasets:
        for model in models:
            settings = model_overrides(overrides, model, models)
            config = configs[(dataset, model)]
            digest, identity_digest = config.digest(), run_digest(config)
            per_seed, failed = {}, {}
            for seed in seeds:
                cell = out_dir / dataset / model / f"seed-{seed}"
                done = _cell_done(cell, digest)
                if done is None and not train:
                    failed[str(seed)] = "not run"
                    log(f"[compare] {dataset} / {model} / seed {seed}: not run")
                    continue
                if done is None:
                    _clear_other_run(cell, identity_digest, seed, log)
                    resuming = RunDir(cell).state().kind == "running"
                    log(f"[compare] {dataset} / {model} / seed {seed}: "
                        + ("resuming" if resuming else "training"))
                    cmd = [sys.executable, "-m", "prismrec", "train", "--model", model,
                           "--dataset", dataset, "--seeds", str(seed), "--out", str(cell),
                           "--quiet"]
                    if data_dir:
                        cmd += ["--data-dir", str(data_dir)]
                    for key, value in settings.items():
                        cmd += ["--set", f"{key}={json.dumps(value)}"]
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    done = _cell_done(cell, digest)
                    if proc.returncode != 0 or done is None:
                        error = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                        failed[str(seed)] = "\n".join(error)
                        failures.append((dataset, model, seed))
                        log(f"[compare] {dataset} / {model} / seed {seed}: FAILED\n" + "\n".join(error))
                        continue
                else:
                    log(f"[compare] {dataset} / {model} / seed {seed}: done before, skipped")
                per_seed[seed] = done
            results["cells"].setdefault(dataset, {})[model] = _summarise(per_seed, failed, digest)
            _write(results, out_dir)
    _write(results, out_dir)
    _write_paper(results, out_dir, reference, data_dir, log)
    results["failures"] = failures
    return results


def _write_paper(results: dict, out_dir: Path, reference: str | None, data_dir, log) -> None:
    """The paper tables; a significance test that cannot run leaves the tables without marks."""
    from prismrec.experiment.paper_table import write_paper_tables

    try:
        write_paper_tables(results, out_dir, reference, data_dir=data_dir)
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
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(render_markdown(results))


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
