"""The paper table of a comparison: datasets as column groups, models as rows, best in bold,
significance marks from paired per-user tests against a reference model; markdown, LaTeX, CSV.

Cells are test metrics at each run's best-validation epoch, mean over seeds. A mark says that
the model's per-user metric differs from the reference model's on the same users (each user's
value averaged over the seeds; paired t-test, or the Wilcoxon signed-rank test with
``test="wilcoxon"``, :func:`prismrec.experiment.significance.paired_p`):
``*`` p < 0.05, ``**`` p < 0.01, p adjusted by Holm's method over the table's comparisons
(every model but the reference, every dataset and metric: a table of 12 models on 2 datasets
and 2 metrics makes 44 tests, of which about 2 would reach p < 0.05 by chance uncorrected);
``correction="bh"`` adjusts by Benjamini-Hochberg instead (controls the false discovery rate, not
the chance of any false mark) and ``correction="none"`` marks the raw p. The reference row carries no mark; the sign of a
difference is read from the numbers. The best mean of each column is bold.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

PAPER_METRICS = ("recall@20", "ndcg@20")
CORRECTIONS = ("holm", "bh", "none")
LABELS = {"recall": "R", "ndcg": "N", "precision": "P", "map": "MAP", "hit": "HR"}


def _label(metric: str) -> str:
    name, _, k = metric.partition("@")
    return f"{LABELS.get(name, name)}@{k}"


def _marks(p: float | None) -> str:
    if p is None:
        return ""
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


def per_user_means(cells: list[Path], metrics: tuple[str, ...], data_dir=None, datasets=None) -> dict:
    """``{metric: (users, values)}``: each test user's metric averaged over the seed runs
    ``cells`` (finished single-seed run directories of one model on one dataset)."""
    from prismrec.experiment.significance import per_user_metric

    out = {}
    for metric in metrics:
        columns, users = [], None
        for cell in cells:
            users, values, _ = per_user_metric(cell, metric, "test", data_dir, datasets)
            columns.append(values)
        out[metric] = (users, np.mean(columns, axis=0))
    return out


def significance(results: dict, out_dir: Path, reference: str, metrics=PAPER_METRICS,
                 data_dir=None, test: str = "t") -> dict:
    """``{dataset: {model: {metric: p}}}``: p-values of the paired ``test`` (``t`` or
    ``wilcoxon``) of each model against ``reference`` on the per-user test metric (seeds averaged
    per user), for the cells of ``results`` (``compare``'s results.json content) that finished."""
    from prismrec.experiment.compare import cell_dir
    from prismrec.experiment.significance import paired_p

    out: dict = {}
    datasets: dict = {}
    for dataset, cells in results["cells"].items():
        seeds = lambda model: [cell_dir(out_dir, dataset, model, s) for s in cells[model].get("per_seed", {})]  # noqa: E731
        if reference not in cells or not seeds(reference):
            continue
        ref = per_user_means(seeds(reference), metrics, data_dir, datasets)
        for model in cells:
            if model == reference or not seeds(model):
                continue
            mine = per_user_means(seeds(model), metrics, data_dir, datasets)
            for metric in metrics:
                (users_a, a), (users_b, b) = mine[metric], ref[metric]
                if not np.array_equal(users_a, users_b):
                    continue  # evaluated on other users: no paired test
                out.setdefault(dataset, {}).setdefault(model, {})[metric] = paired_p(a, b, test)
    return out


def corrected(pvalues: dict, correction: str = "holm") -> dict:
    """``pvalues`` (``{dataset: {model: {metric: p}}}``) adjusted over all of them as one family:
    Holm's method (:func:`prismrec.experiment.significance.holm`), Benjamini-Hochberg (``bh``,
    scipy's ``false_discovery_control``) or ``none``."""
    from scipy.stats import false_discovery_control

    from prismrec.experiment.significance import holm

    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; use one of {', '.join(CORRECTIONS)}")
    keys = [(d, m, k) for d, models in pvalues.items() for m, metrics in models.items() for k in metrics]
    raw = [pvalues[d][m][k] for d, m, k in keys]
    out: dict = {}
    if correction == "holm":
        adjusted = holm(raw)
    elif correction == "bh" and raw:
        adjusted = false_discovery_control(raw, method="bh")
    else:
        adjusted = raw
    for (d, m, k), p in zip(keys, adjusted):
        out.setdefault(d, {}).setdefault(m, {})[k] = float(p)
    return out


def table_rows(results: dict, metrics=PAPER_METRICS, pvalues: dict | None = None):
    """``(datasets, models, cells)`` with ``cells[(dataset, model, metric)] =
    (mean, std, p, is_best)`` (None where the cell did not finish)."""
    pvalues = pvalues or {}
    datasets = list(results["cells"])
    models = list(dict.fromkeys(m for cells in results["cells"].values() for m in cells))
    cells = {}
    for dataset in datasets:
        for metric in metrics:
            values = {m: c["mean"]["test"][metric] for m, c in results["cells"][dataset].items()
                      if c.get("mean") and c["mean"].get("test")}
            best = max(values.values()) if values else None
            for model in models:
                if model not in values:
                    cells[(dataset, model, metric)] = None
                    continue
                std = results["cells"][dataset][model]["std"]["test"][metric]
                p = pvalues.get(dataset, {}).get(model, {}).get(metric)
                cells[(dataset, model, metric)] = (values[model], std, p, values[model] == best)
    return datasets, models, cells


def render_markdown(results: dict, reference: str | None, metrics=PAPER_METRICS,
                    pvalues: dict | None = None, correction: str = "holm", test: str = "t") -> str:
    """The paper table in markdown: a header row naming each dataset's columns; marks from
    ``pvalues`` (the ``test``'s, already adjusted by ``correction``; the legend names both)."""
    datasets, models, cells = table_rows(results, metrics, pvalues)
    head = ["model"] + [f"{d} {_label(m)}" for d in datasets for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for model in models:
        row = [model + (" (ref.)" if model == reference else "")]
        row += [_cell(cells[(d, model, m)], "-", "**{}**", "{}") for d in datasets for m in metrics]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n" + _legend(results, reference, correction, _tests(pvalues), test) + "\n"


def _cell(cell, empty: str, bold: str, marks: str) -> str:
    """One table cell of :func:`table_rows`: the mean to 4 places, ``bold`` (a format) where best,
    the significance marks through ``marks`` (a format) where any; ``empty`` where not run."""
    if cell is None:
        return empty
    mean, _, p, best = cell
    text = bold.format(f"{mean:.4f}") if best else f"{mean:.4f}"
    return text + (marks.format(_marks(p)) if _marks(p) else "")


def _legend(results: dict, reference: str | None, correction: str = "holm", tests: int = 0, test: str = "t") -> str:
    from prismrec.experiment.significance import PAIRED_TESTS

    seeds = len(results.get("seeds", []))
    text = (f"Test metrics at the best-validation epoch, mean over {seeds} seed(s); best per column "
            "in bold.")
    if reference:
        adjusted = {"holm": f"p Holm-adjusted over the table's {tests} comparisons",
                    "bh": f"p Benjamini-Hochberg-adjusted (false discovery rate) over the table's {tests} comparisons",
                    "none": "p not corrected for the table's multiple comparisons"}[correction]
        text += (f" Marks: {PAIRED_TESTS[test]} of per-user test metrics (seeds averaged per user) "
                 f"against {reference}, {adjusted}: * p < 0.05, ** p < 0.01.")
    return text


def _tests(pvalues: dict | None) -> int:
    return sum(len(metrics) for models in (pvalues or {}).values() for metrics in models.values())


def render_latex(results: dict, reference: str | None, metrics=PAPER_METRICS,
                 pvalues: dict | None = None, correction: str = "holm", test: str = "t") -> str:
    """The paper table as a LaTeX ``tabular`` (booktabs), datasets as ``\\multicolumn`` groups."""
    datasets, models, cells = table_rows(results, metrics, pvalues)
    n = len(metrics)
    lines = [
        "% " + _legend(results, reference, correction, _tests(pvalues), test),
        "\\begin{tabular}{l" + ("c" * n) * len(datasets) + "}",
        "\\toprule",
        " & " + " & ".join(f"\\multicolumn{{{n}}}{{c}}{{{_tex(d)}}}" for d in datasets) + " \\\\",
        "".join(f"\\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(datasets))),
        "Model & " + " & ".join(_label(m) for _ in datasets for m in metrics) + " \\\\",
        "\\midrule",
    ]
    for model in models:
        row = [_tex(model)] + [_cell(cells[(d, model, m)], "--", "\\textbf{{{}}}", "$^{{{}}}$")
                               for d in datasets for m in metrics]
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def render_csv(results: dict, reference: str | None, metrics=PAPER_METRICS,
               pvalues: dict | None = None, raw: dict | None = None, correction: str = "holm",
               test: str = "t") -> str:
    """One row per (dataset, model, metric): mean, std, the paired ``test``'s p against the
    reference (``raw``) and as the marks read it (``pvalues``, adjusted by ``correction``), best flag."""
    datasets, models, cells = table_rows(results, metrics, pvalues)
    raw = raw or {}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "model", "metric", "mean", "std", "reference", "test", "p", "correction",
                     "p_adjusted", "best"])
    for d in datasets:
        for model in models:
            for m in metrics:
                cell = cells[(d, model, m)]
                if cell is None:
                    continue
                mean, std, p, best = cell
                p_raw = raw.get(d, {}).get(model, {}).get(m)
                writer.writerow([d, model, m, f"{mean:.6f}", f"{std:.6f}", reference or "",
                                 test if p_raw is not None else "", "" if p_raw is None else f"{p_raw:.4g}",
                                 correction if p is not None else "",
                                 "" if p is None else f"{p:.4g}", int(best)])
    return buffer.getvalue()


def write_paper_tables(results: dict, out_dir: Path, reference: str | None, metrics=PAPER_METRICS,
                       data_dir=None, correction: str = "holm", test: str = "t") -> dict:
    """Write ``paper.md``, ``paper.tex`` and ``paper.csv`` into ``out_dir`` (each atomically: a
    killed process leaves the old file or the new one); return the p-values
    the marks read (the paired ``test``'s, adjusted by ``correction``).

    ``reference`` None (or a model not compared): no significance marks."""
    from prismrec.experiment.rundir import write_atomic

    out_dir = Path(out_dir)
    raw = significance(results, out_dir, reference, metrics, data_dir, test) if reference else {}
    pvalues = corrected(raw, correction)
    write_atomic(out_dir / "paper.md", render_markdown(results, reference, metrics, pvalues, correction, test))
    write_atomic(out_dir / "paper.tex", render_latex(results, reference, metrics, pvalues, correction, test))
    write_atomic(out_dir / "paper.csv", render_csv(results, reference, metrics, pvalues, raw, correction, test))
    return pvalues


def _tex(text: str) -> str:
    return str(text).replace("_", "\\_").replace("&", "\\&").replace("%", "\\%")
