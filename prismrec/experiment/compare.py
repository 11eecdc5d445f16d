"""The comparison runner: every model x dataset x seed, resumable, summarised honestly.

Each cell (dataset, model, seed) is trained in its own subprocess (``prismrec train``), so a crash
cannot take the sweep down and each cell's peak memory is its own. A cell whose ``metrics.json``
says ``ok`` for the same resolved configuration is skipped, so an interrupted sweep resumes where
it stopped. Results: ``results.json`` (per-seed metrics, mean, sample std, epochs, median seconds
per training epoch and per evaluation, peak RSS) and ``results.md`` (test R@10/20, N@10/20 as
mean ± std).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from prismrec.experiment.config import resolve_config
from prismrec.experiment.runs import aggregate

DEFAULT_SEEDS = (999, 1000, 1001, 1002, 1003)
TABLE_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


MAX_SEED_COUNT = 100


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> the first 3 protocol seeds (999, 1000, 1001); ``"999,1,2"`` or ``"1001,"`` -> that list."""
    text = str(text).strip()
    if "," not in text:
        n = int(text)
        if not 1 <= n <= MAX_SEED_COUNT:
            raise ValueError(f"--seeds {text} is a count of seeds (1 to {MAX_SEED_COUNT}); "
                             f"for the single seed {text} write '{text},'")
        return [DEFAULT_SEEDS[0] + i for i in range(n)]
    return [int(s) for s in text.split(",") if s.strip()]


def model_overrides(overrides: dict[str, Any], model: str, models: list[str]) -> dict[str, Any]:
    """Overrides for ``model``: plain keys apply to all models, ``MODEL.key`` to that one."""
    out = {}
    for key, value in overrides.items():
        scope, dot, name = key.partition(".")
        if not dot:
            out[key] = value
        elif scope not in models:
            raise ValueError(f"--set {key}: {scope!r} is not one of the compared models {models}")
        elif scope == model:
            out[name] = value
    return out


def _cell_done(cell: Path, digest: str) -> dict | None:
    """The cell's metrics if it finished with the same configuration, else None.

    The recorded settings are resolved again with today's code, so a setting added since (which
    takes its default, i.e. the old behaviour) does not invalidate finished cells.
    """
    metrics_path, config_path = cell / "metrics.json", cell / "config.yaml"
    if not (metrics_path.is_file() and config_path.is_file()):
        return None
    metrics = json.loads(metrics_path.read_text())
    recorded = yaml.safe_load(config_path.read_text()) or {}
    if metrics.get("status") != "ok":
        return None
    try:
        settings = {**(recorded.get("train") or {}), **(recorded.get("params") or {})}
        same = resolve_config(recorded["model"], recorded["dataset"], settings).digest() == digest
    except (KeyError, ValueError, TypeError):
        return None
    return metrics if same else None


def run_compare(
    models: list[str],
    datasets: list[str],
    seeds: list[int],
    out_dir: Path,
    overrides: dict[str, Any] | None = None,
    data_dir: str | None = None,
    log=print,
    train: bool = True,
) -> dict:
    """Train every cell that is not already done, then write ``results.json`` / ``results.md``.

    ``train=False`` only summarises the finished cells (missing ones are listed as not run).
    """
    overrides = overrides or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"models": models, "datasets": datasets, "seeds": seeds, "overrides": overrides, "cells": {}}
    failures = []
    for dataset in datasets:
        for model in models:
            settings = model_overrides(overrides, model, models)
            digest = resolve_config(model, dataset, settings).digest()
            per_seed, failed = {}, {}
            for seed in seeds:
                cell = out_dir / dataset / model / f"seed-{seed}"
                done = _cell_done(cell, digest)
                if done is None and not train:
                    failed[str(seed)] = "not run"
                    log(f"[compare] {dataset} / {model} / seed {seed}: not run")
                    continue
                if done is None:
                    log(f"[compare] {dataset} / {model} / seed {seed}: training")
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
    results["failures"] = failures
    return results


def _summarise(per_seed: dict[int, dict], failed: dict, digest: str) -> dict:
    cell: dict = {"config_digest": digest, "failed": failed, "per_seed": {}}
    if not per_seed:
        return cell
    keep = ("valid", "test", "best_epoch", "epochs", "seconds", "median_train_s", "median_eval_s", "peak_rss_mb")
    cell["per_seed"] = {str(s): {k: m[k] for k in keep} for s, m in per_seed.items()}
    cell.update(aggregate(per_seed))
    runs = list(per_seed.values())
    cell["epochs"] = [m["epochs"] for m in runs]
    cell["median_train_s"] = statistics.median(m["median_train_s"] for m in runs)
    cell["median_eval_s"] = statistics.median(m["median_eval_s"] for m in runs)
    cell["peak_rss_mb"] = max(m["peak_rss_mb"] for m in runs)
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
                + f" | {statistics.fmean(cell['epochs']):.0f} | {cell['median_train_s']:.3f} | "
                f"{cell['median_eval_s']:.3f} | {cell['peak_rss_mb']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)
