"""The demo: a multimodal model against LightGCN on a real multimodal dataset, in minutes.

Each model is trained once (seed 999) with a short epoch cap and patience, selected on
validation, and evaluated on test once at its best-validation epoch: the same protocol as every
run, only a shorter budget. The result is one table with the metrics as rows and the models as
columns, so it stays readable in an 80-column terminal or a log file. The numbers show the
pipeline and the direction of the comparison, not converged results: for those, run
``prismrec compare`` with the models' default budgets and several seeds.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from prismrec.data import load_dataset
from prismrec.errors import ConfigError
from prismrec.experiment.config import resolve_config
from prismrec.experiment.runs import run_experiment
from prismrec.experiment.stages import check_model_dataset
from prismrec.train.config import MAX_THREADS

DEMO_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


@dataclass
class DemoConfig:
    """What the demo trains (every field has a command-line option of ``prismrec demo``)."""

    dataset: str = "lfm2k"
    """A multimodal dataset of the data directory (Last.fm-2K: text and audio item features)."""
    models: list[str] = field(default_factory=lambda: ["mgcn", "lightgcn"])
    """Models to compare; the first is the multimodal one, the last the reference baseline."""
    epochs: int = 30
    """Epoch cap per model (short: the demo shows the pipeline, it does not converge)."""
    patience: int = 5
    """Early-stopping patience on the validation metric."""
    lr: float = 0.005
    """Learning rate for every model (above the papers' 0.001 so a few epochs move the metric)."""
    threads: int = 1
    """CPU threads (0: torch's default, every core). One thread: on a small machine that others
    also use, torch's extra threads wait on each other (an MGCN epoch on lfm2k took 75 s with
    two threads on a loaded 2-core machine, 15 s with one)."""
    seed: int = 999

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr {self.lr}: give a learning rate > 0, e.g. 0.005")  # not "--set lr=..."
        if not 0 <= self.threads <= MAX_THREADS:  # said "Fix it with --set threads=..."
            raise ConfigError(f"--threads {self.threads}: give a whole number from 0 to {MAX_THREADS:,} "
                              "(0: torch's default)")


def settings(cfg: DemoConfig) -> dict:
    """The ``--set`` overrides every demo model gets."""
    return {"epochs": cfg.epochs, "patience": cfg.patience, "lr": cfg.lr, "threads": cfg.threads}


def run_demo(cfg: DemoConfig, out: Path, data_dir=None, progress: bool = True, log=print) -> dict:
    """Train each model of ``cfg`` and return ``{model: metrics}``.

    The folder has ``prismrec compare``'s layout (``out/<dataset>/<model>/seed-<s>/`` resumable
    run directories, ``results.json`` and ``results.md``), so ``prismrec report out`` turns it into
    a page; ``demo.md`` holds :func:`render_table`'s table."""
    out = Path(out)
    configs = {m: resolve_config(m, cfg.dataset, settings(cfg)) for m in cfg.models}  # all checked first
    for config in configs.values():
        config.train.check_device()
    dataset = load_dataset(cfg.dataset, data_dir)
    for config in configs.values():  # each model on the data, before the first one trains
        check_model_dataset(config, dataset)
    results = {}
    for model, config in configs.items():
        log(f"[demo] {model} on {dataset.name}: at most {cfg.epochs} epochs, patience {cfg.patience}, "
            f"lr {cfg.lr}")
        t0 = time.perf_counter()
        run_dir = out / dataset.name / model / f"seed-{cfg.seed}"
        try:
            metrics = run_experiment(config, [cfg.seed], run_dir, dataset=dataset, progress=progress, log=log)
        except BaseException:  # a model refused on the data left out/<dataset>/<model>/ behind, empty
            for folder in (run_dir.parent, run_dir.parent.parent, out):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only an empty one
            raise
        metrics["wall_s"] = time.perf_counter() - t0
        results[model] = metrics
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.md").write_text(render_table(results, cfg, dataset.name, markdown=True))
    _write_compare_record(results, configs, cfg, dataset.name, out)
    return results


def _write_compare_record(results: dict, configs: dict, cfg: DemoConfig, dataset: str, out: Path) -> None:
    """``results.json`` / ``results.md`` as ``prismrec compare`` writes them (for ``report``)."""
    import json

    from prismrec.experiment.compare import _summarise, render_markdown

    record = {"models": list(results), "datasets": [dataset], "seeds": [cfg.seed], "overrides": settings(cfg),
              "cells": {dataset: {m: _summarise({cfg.seed: metrics}, {}, configs[m].digest())
                                  for m, metrics in results.items()}}}
    (out / "results.json").write_text(json.dumps(record, indent=2))
    (out / "results.md").write_text(render_markdown(record))


def render_table(results: dict[str, dict], cfg: DemoConfig, dataset: str, markdown: bool = False) -> str:
    """Metrics as rows, models as columns (test at the best-validation epoch), plus the
    selection metric, the epochs and the seconds: a table that fits 80 columns."""
    models = list(results)
    rows = [(f"test {m}", [f"{results[x]['test'][m]:.4f}" for x in models]) for m in DEMO_METRICS]
    rows.append(("valid recall@20 (selection)", [f"{results[x]['valid']['recall@20']:.4f}" for x in models]))
    rows.append(("best epoch / epochs run",
                 [f"{results[x]['best_epoch'] + 1} / {results[x]['epochs']}" for x in models]))
    rows.append(("training seconds", [f"{results[x].get('seconds') or 0:.0f}" for x in models]))
    if len(models) > 1:
        ref = models[-1]
        for x in models[:-1]:
            a, b = results[x]["test"]["recall@20"], results[ref]["test"]["recall@20"]
            rows.append((f"{x} vs {ref}, test R@20", [f"{(a - b) / b:+.1%}" if b else "-"] + [""] * (len(models) - 1)))
    head = ["", *models]
    title = f"{dataset}, seed {cfg.seed}: <= {cfg.epochs} epochs, patience {cfg.patience}, lr {cfg.lr}"
    protocol = "test metrics at the best-validation epoch (selected on valid, test read once)"
    if markdown:
        lines = [f"# Demo: {title}", "", protocol[0].upper() + protocol[1:] + ".", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join([name, *cells]) + " |" for name, cells in rows]
        return "\n".join(lines) + "\n"
    width = max(len(name) for name, _ in rows)
    cols = [max(len(m), 8) for m in models]
    out = [title, protocol, "", " " * width + "".join(f"  {m:>{w}}" for m, w in zip(models, cols))]
    out += [f"{name:<{width}}" + "".join(f"  {c:>{w}}" for c, w in zip(cells, cols)) for name, cells in rows]
    return "\n".join(out)
