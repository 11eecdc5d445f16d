"""``prismrec report DIR``: one page (markdown + PNG) for a run, a multi-seed run or a comparison.

- a single-seed run: its metrics (metrics as rows) and its training curves;
- a multi-seed run: mean ± sample std over the seeds, and the curves of every seed;
- a comparison folder (``results.json`` of ``prismrec compare``): the comparison table, the
  paper table when written, a point plot of mean ± std per model and dataset, and the training
  curves of each (dataset, model) cell's first seed.

Everything goes to ``DIR/report/``: ``report.md`` and the pictures it shows. Only finished runs
are read (through :class:`~prismrec.experiment.rundir.RunDir`); the report trains nothing and
reads no split.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from prismrec.errors import RunError
from prismrec.experiment.curves import _pyplot, draw_curves
from prismrec.experiment.rundir import RunDir

REPORT_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
REPORT = "report"


def build_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``path`` into ``out`` (default ``path/report``); return ``report.md``.

    Raises :class:`RunError` when ``path`` is none of a finished run, a finished multi-seed run
    or a comparison folder."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a folder: give a run directory or a `prismrec compare` --out folder")
    out = Path(out) if out is not None else path / REPORT
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        if (path / "results.json").is_file():
            lines = _compare_page(path, out)
        else:
            runs = RunDir(path).finished_runs()  # a clear RunError for anything unfinished
            lines = _run_page(path, runs, out)
    except BaseException:
        if created:  # nothing half-written is left behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    page = out / "report.md"
    page.write_text("\n".join(lines) + "\n")
    return page


# ---- single and multi-seed runs -----------------------------------------------------------------

def _run_page(path: Path, runs: list[RunDir], out: Path) -> list[str]:
    config = RunDir(path).read_config()
    metrics = RunDir(path).read_metrics()
    model, dataset = config.get("model", "?"), config.get("dataset", "?")
    metric = (config.get("train") or {}).get("valid_metric", "recall@20")
    seeds = [r.read_metrics().get("seed") for r in runs]
    lines = [f"# {model} on {dataset}", "",
             f"Run directory `{path}`; seed(s) {', '.join(map(str, seeds))}. Selection on valid {metric}; "
             "test evaluated once, at the best-validation epoch.", ""]
    std = metrics.get("std") or {}
    head = ["metric", "valid", "test"]
    lines += ["| " + " | ".join(head) + " |", "|---|---:|---:|"]
    for m in REPORT_METRICS:
        cells = []
        for split in ("valid", "test"):
            value = (metrics.get(split) or {}).get(m)
            s = ((std.get(split) or {}) if isinstance(std, dict) else {}).get(m)
            cells.append("-" if value is None else f"{value:.4f}" + (f" ± {s:.4f}" if s is not None else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    best = metrics.get("best_epoch")
    best_text = ", ".join(str(b + 1) for b in best) if isinstance(best, list) else str(best + 1)
    lines += ["", f"Best epoch (1-based): {best_text}; epochs run: {metrics.get('epochs')}.", ""]
    picture = _curves_grid([(f"seed {r.read_metrics().get('seed')}", r) for r in runs], metric,
                           out / "curves.png")
    if picture:
        lines += ["## Training curves", "", f"![training curves]({picture.name})", ""]
    return lines


def _curves_grid(entries: list[tuple[str, RunDir]], metric: str, path: Path) -> Path | None:
    """One row of (loss, validation) panels per entry; None when no run has a history."""
    drawn = [(title, run, run.read_history()) for title, run in entries]
    drawn = [d for d in drawn if d[2]]
    if not drawn:
        return None
    column = f"valid_{metric}"
    for _, run, history in drawn:
        if column not in history[0]:  # was an empty validation panel, 'best: nan'
            raise RunError(f"{run.path / 'history.csv'} is damaged (no column {column!r}, the validation metric "
                           "the run selected on): restore it, or delete it to go without training curves")
    plt = _pyplot()
    fig, axes = plt.subplots(len(drawn), 2, figsize=(10, 3.4 * len(drawn)), squeeze=False)
    try:
        for row, (title, run, history) in zip(axes, drawn):
            best = run.read_metrics().get("best_epoch", -1)
            draw_curves(row, history, metric, best if isinstance(best, int) else -1, title)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path


# ---- comparison folders -------------------------------------------------------------------------

def _compare_page(path: Path, out: Path) -> list[str]:
    from prismrec.experiment.compare import cell_dir

    try:
        results = json.loads((path / "results.json").read_text())
        cells = results["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{path / 'results.json'} is not a comparison record ({exc}): rerun "
                       "`prismrec compare` with the same --out") from None
    lines = ["# Comparison", "", f"Folder `{path}`; seeds {', '.join(map(str, results.get('seeds', [])))}.", ""]
    if (path / "paper.md").is_file():
        lines += ["## Paper table", "", (path / "paper.md").read_text().strip(), ""]
    body = (path / "results.md").read_text().split("\n", 1)[-1].strip() if (path / "results.md").is_file() else ""
    if body:
        lines += ["## All cells", "", body.replace("\n## ", "\n### "), ""]
    points = _point_plot(results, out / "points.png")
    if points:
        lines += ["## Mean ± std over seeds (test)", "", f"![mean and std per model and dataset]({points.name})", ""]
    entries = []
    for dataset, models in cells.items():
        for model, cell in models.items():
            seeds = list(cell.get("per_seed", {}))
            if seeds:
                entries.append((f"{model} on {dataset}, seed {seeds[0]}",
                                RunDir(cell_dir(path, dataset, model, seeds[0]))))
    curves = _curves_grid([e for e in entries if e[1].is_finished()], "recall@20", out / "curves.png")
    if curves:
        lines += ["## Training curves (first seed of each cell)", "", f"![training curves]({curves.name})", ""]
    return lines


def _point_plot(results: dict, path: Path, metrics=("recall@20", "ndcg@20")) -> Path | None:
    """Mean ± sample std over seeds of each model's test metric, one panel per (dataset, metric)."""
    panels = [(d, m) for d in results["cells"] for m in metrics]
    if not any(c.get("mean") for cells in results["cells"].values() for c in cells.values()):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    try:
        for ax, (dataset, metric) in zip(axes[0], panels):
            cells = results["cells"][dataset]
            names = [m for m, c in cells.items() if c.get("mean") and c["mean"].get("test")]
            means = [cells[m]["mean"]["test"][metric] for m in names]
            stds = [cells[m]["std"]["test"][metric] for m in names]
            ax.errorbar(means, range(len(names)), xerr=stds, fmt="o", capsize=4, color="tab:blue")
            for y, (mean, std) in enumerate(zip(means, stds)):
                ax.annotate(f"{mean:.4f}", (mean, y), textcoords="offset points", xytext=(0, 7),
                            ha="center", fontsize=7)
            ax.set_yticks(range(len(names)), names)
            ax.set_ylim(-0.6, len(names) - 0.4)
            ax.set_title(f"{dataset}: test {metric}", fontsize=10)
            ax.grid(axis="x", alpha=0.3)
            if means and all(math.isfinite(v) for v in means):
                low = min(m - s for m, s in zip(means, stds))
                high = max(m + s for m, s in zip(means, stds))
                pad = max(high - low, 1e-3) * 0.25
                ax.set_xlim(low - pad, high + pad)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path
