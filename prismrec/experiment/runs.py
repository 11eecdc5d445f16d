"""Run directories: train a configured model over one or more seeds and record everything.

A single-seed run writes into its directory::

    config.yaml    fully resolved settings + protocol (split fingerprints, masking, seed)
    metrics.json   {"valid": {...}, "test": {...}, "best_epoch", "epochs", "seconds", ...}
    history.csv    one row per epoch: each loss term, valid metrics, timings
    model.pt       the best-validation state dict

With several seeds each seed gets ``seed-<s>/`` with those files, and the top level holds the
config and an aggregated ``metrics.json`` (per-seed entries, ``mean``, sample ``std``).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import yaml

from prismrec.data import Dataset, load_dataset
from prismrec.eval import Evaluator
from prismrec.experiment.config import ExperimentConfig
from prismrec.experiment.stages import build_model
from prismrec.train.allocator import keep_freed_memory
from prismrec.train.trainer import TrainingDiverged, fit, seed_everything


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def protocol(config: ExperimentConfig, dataset: Dataset) -> dict:
    """What a reader needs to know to trust a number: data identity and evaluation settings."""
    return {
        "dataset": dataset.name,
        "users": dataset.n_users,
        "items": dataset.n_items,
        "split_fingerprints": dataset.manifest.get("fingerprints", {}),
        "mask_valid_at_test": config.train.mask_valid_at_test,
        "selection": f"best valid {config.train.valid_metric}; test evaluated once",
        "config_digest": config.digest(),
    }


def write_config(config: ExperimentConfig, dataset: Dataset, path: Path, seeds: list[int]) -> None:
    data = config.to_dict()
    data["seeds"] = seeds
    data["protocol"] = protocol(config, dataset)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def train_one_seed(
    config: ExperimentConfig,
    dataset: Dataset,
    out_dir: Path | None,
    progress: bool = True,
    evaluate_test: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> dict:
    """Train with ``config.train.seed``, evaluate test once, write the run files; return metrics.

    ``evaluate_test=False`` never reads the test split (e.g. a nested pretraining run whose
    output feeds another model): ``metrics["test"]`` is then ``None``. ``on_epoch_end`` sees
    every epoch's history row (e.g. to prune a search trial by raising).
    """
    cfg = config.train
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    model = build_model(config, dataset).to(cfg.device)
    evaluator = Evaluator(
        dataset, ks=cfg.topk, batch_size=cfg.eval_batch_size, mask_valid_at_test=cfg.mask_valid_at_test
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_config(config, dataset, out_dir / "config.yaml", [cfg.seed])
    history_path = out_dir / "history.csv" if out_dir is not None else None

    def epoch_end(row: dict) -> None:  # history written every epoch, so a killed run keeps its log
        if history_path is not None:
            first = row["epoch"] == 0
            pd.DataFrame([row]).to_csv(history_path, mode="w" if first else "a", header=first, index=False)
        if on_epoch_end is not None:
            on_epoch_end(row)

    try:
        result = fit(model, dataset, cfg, evaluator=evaluator, progress=progress, on_epoch_end=epoch_end)
    except TrainingDiverged as exc:
        if out_dir is not None:
            failed = {"status": "failed", "error": str(exc), "seed": cfg.seed}
            (out_dir / "metrics.json").write_text(json.dumps(failed, indent=2))
        raise
    # The only time the test split is read (and never when evaluate_test is False).
    test = evaluator.evaluate(model, "test") if evaluate_test else None
    history = pd.DataFrame(result.history)
    metrics = {
        "status": "ok",
        "seed": cfg.seed,
        "valid": _strip(result.best_valid),
        "test": _strip(test) if test is not None else None,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "seconds": round(result.seconds, 3),
        "stop_reason": result.stop_reason,
        "median_train_s": float(history["train_s"].median()),
        "median_eval_s": float(history["eval_s"].median()),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "users_evaluated": {"valid": result.best_valid.get("users"), "test": test.get("users") if test is not None else None},
    }
    if out_dir is not None:
        history.to_csv(history_path, index=False)
        torch.save(model.state_dict(), out_dir / "model.pt")
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _strip(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("users", "per_user")}


def aggregate(per_seed: dict[int, dict]) -> dict:
    """Mean and sample standard deviation (ddof 1; 0 for one seed) of every metric."""
    out: dict = {"mean": {}, "std": {}}
    for part in ("valid", "test"):
        if any(m[part] is None for m in per_seed.values()):  # test not evaluated
            out["mean"][part] = out["std"][part] = None
            continue
        names = next(iter(per_seed.values()))[part].keys()
        values = {k: [m[part][k] for m in per_seed.values()] for k in names}
        out["mean"][part] = {k: statistics.fmean(v) for k, v in values.items()}
        out["std"][part] = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()}
    return out


def run_experiment(
    config: ExperimentConfig,
    seeds: list[int],
    out_dir: str | Path | None,
    data_dir: str | Path | None = None,
    dataset: Dataset | None = None,
    progress: bool = True,
    evaluate_test: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> dict:
    """Train ``config`` once per seed; return (and write) the metrics, aggregated over seeds.

    ``evaluate_test=False``: the test split is never read and every ``"test"`` entry is ``None``.
    ``on_epoch_end``: called with every epoch's history row (of every seed).
    """
    if not seeds:
        raise ValueError("at least one seed is needed")
    keep_freed_memory()
    out_dir = Path(out_dir) if out_dir is not None else None
    dataset = dataset or load_dataset(config.dataset, data_dir)
    if len(seeds) == 1:
        config.train.seed = seeds[0]
        return train_one_seed(config, dataset, out_dir, progress, evaluate_test, on_epoch_end)
    per_seed = {}
    for seed in seeds:
        config.train.seed = seed
        sub = out_dir / f"seed-{seed}" if out_dir is not None else None
        per_seed[seed] = train_one_seed(config, dataset, sub, progress, evaluate_test, on_epoch_end)
    summary = aggregate(per_seed)
    metrics = {
        "status": "ok",
        "seeds": seeds,
        "valid": summary["mean"]["valid"],
        "test": summary["mean"]["test"],
        "mean": summary["mean"],
        "std": summary["std"],
        "best_epoch": [m["best_epoch"] for m in per_seed.values()],
        "epochs": [m["epochs"] for m in per_seed.values()],
        "seconds": round(sum(m["seconds"] for m in per_seed.values()), 3),
        "per_seed": {str(s): m for s, m in per_seed.items()},
    }
    if out_dir is not None:
        config.train.seed = seeds[0]
        write_config(config, dataset, out_dir / "config.yaml", seeds)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
