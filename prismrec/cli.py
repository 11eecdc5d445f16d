"""The ``prismrec`` command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from prismrec.data import DatasetError, list_datasets, load_dataset, resolve_data_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True)

TABLE_KS = (10, 20)
TABLE_METRICS = ("recall", "ndcg", "precision", "map", "hit")


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _metrics_table(title: str, rows: dict[str, dict], std: dict[str, dict] | None = None,
                   label: str = "split", ks=TABLE_KS) -> Table:
    table = Table(title=title)
    table.add_column(label)
    for m in TABLE_METRICS:
        for k in ks:
            table.add_column(f"{m}@{k}", justify="right")
    for split, values in rows.items():
        cells = []
        for m in TABLE_METRICS:
            for k in ks:
                v = values.get(f"{m}@{k}", float("nan"))
                s = (std or {}).get(split, {}).get(f"{m}@{k}")
                cells.append(f"{v:.4f}" + (f" ± {s:.4f}" if s is not None else ""))
        table.add_row(split, *cells)
    return table


@app.command()
def train(
    model: str = typer.Option(..., help="Registered model name, e.g. lightgcn."),
    dataset: str = typer.Option(..., help="Dataset name in the data directory, or a folder path."),
    data_dir: Optional[Path] = typer.Option(None, help="Data directory (default $PRISMREC_DATA, then ../shared/data)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a setting: key=value (repeatable)."),
    config: Optional[Path] = typer.Option(None, help="YAML file of settings (applied before --set)."),
    seeds: str = typer.Option("999", help="Comma-separated seeds, e.g. 999,1,2."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<model>-<dataset>-<time>)."),
    quiet: bool = typer.Option(False, help="No progress display."),
) -> None:
    """Train MODEL on DATASET, select on validation, evaluate test once, write the run dir."""
    from prismrec.experiment.config import load_yaml_overrides, parse_assignments, resolve_config
    from prismrec.experiment.runs import run_experiment
    from prismrec.train import TrainingDiverged

    try:
        overrides = load_yaml_overrides(config) if config else {}
        overrides.update(parse_assignments(set_))
        cfg = resolve_config(model, dataset, overrides)
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        data = load_dataset(dataset, data_dir)
    except (ValueError, KeyError, DatasetError, OSError) as exc:
        _fail(str(exc).strip("'\""))
    out = out or Path("runs") / f"{cfg.model}-{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not quiet:
        console.print(f"[bold]{cfg.model}[/] on {data!r} -> {out}", highlight=False)
    try:
        metrics = run_experiment(cfg, seed_list, out, dataset=data, progress=not quiet)
    except (TrainingDiverged, ValueError, DatasetError) as exc:  # incl. a model's config checks
        _fail(str(exc))
    if not quiet:
        title = (
            f"{cfg.model} on {data.name}: best epoch {metrics['best_epoch']} of {metrics['epochs']}, "
            f"{metrics['seconds']:.0f}s"
        )
        std = metrics.get("std")
        console.print(_metrics_table(title, {"valid": metrics["valid"], "test": metrics["test"]}, std))
        console.print(f"run directory: {out}")


@app.command()
def datasets(
    data_dir: Optional[Path] = typer.Option(None, help="Data directory (default $PRISMREC_DATA, then ../shared/data)."),
) -> None:
    """List the datasets of the data directory with their counts and modalities."""
    try:
        root = resolve_data_dir(data_dir)
        folders = list_datasets(root)
    except DatasetError as exc:
        _fail(str(exc))
    table = Table(title=f"datasets in {root}")
    for col in ("name", "users", "items", "train", "valid", "test", "modalities"):
        table.add_column(col, justify="left" if col in ("name", "modalities") else "right")
    for folder in folders:
        try:
            s = load_dataset(folder).summary()
        except DatasetError as exc:
            table.add_row(folder.name, "", "", "", "", "", f"[red]invalid: {exc}[/]")
            continue
        mods = ", ".join(f"{m} ({d})" for m, d in s["modalities"].items()) or "-"
        table.add_row(s["name"], *(f"{s[c]:,}" for c in ("users", "items", "train", "valid", "test")), mods)
    console.print(table)


@app.command()
def compare(
    models: str = typer.Option(..., help="Comma-separated model names."),
    datasets: str = typer.Option(..., help="Comma-separated dataset names."),
    seeds: str = typer.Option("3", help="A count (first N of 999, 1000, ...) or a comma list (one seed: 1001,)."),
    out: Path = typer.Option(..., help="Output directory (resumable: finished cells are kept)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="key=value for all models, or MODEL.key=value."),
    data_dir: Optional[Path] = typer.Option(None, help="Data directory."),
    report_only: bool = typer.Option(False, help="Summarise finished cells only; train nothing."),
) -> None:
    """Train every model x dataset x seed and write results.json and results.md."""
    from prismrec.experiment.compare import parse_seeds, run_compare
    from prismrec.experiment.config import parse_assignments

    try:
        seed_list = parse_seeds(seeds)
        overrides = parse_assignments(set_)
        results = run_compare(
            [m.strip() for m in models.split(",") if m.strip()],
            [d.strip() for d in datasets.split(",") if d.strip()],
            seed_list,
            out,
            overrides,
            str(data_dir) if data_dir else None,
            log=lambda msg: console.print(msg, highlight=False),
            train=not report_only,
        )
    except (ValueError, KeyError, DatasetError) as exc:
        _fail(str(exc).strip("'\""))
    console.print((out / "results.md").read_text())
    if results["failures"] and not report_only:
        err.print(f"[red]{len(results['failures'])} cell(s) failed[/]: {results['failures']}")
        raise typer.Exit(1)


@app.command()
def build(
    interactions: Path = typer.Option(..., help="Raw interactions, CSV or TSV with a header row."),
    out: Path = typer.Option(..., help="Dataset folder to write; its name is the dataset's name."),
    user_col: str = typer.Option("user", help="User column."),
    item_col: str = typer.Option("item", help="Item column."),
    time_col: Optional[str] = typer.Option(None, help="Time column (needed by --split temporal)."),
    min_count: int = typer.Option(5, help="k of the k-core filter on users and items."),
    split: str = typer.Option("random", help="random (MMRec's rule, seeded) or temporal (latest rows held out)."),
    seed: int = typer.Option(999, help="Shuffle seed of the random split."),
    dedupe: bool = typer.Option(False, help="Keep the first row of a repeated (user, item) pair instead of failing."),
    item_text: Optional[Path] = typer.Option(None, help="Item text table -> text_feat.npy (all-MiniLM-L6-v2)."),
    text_cols: str = typer.Option("text", help="Comma-separated text columns, joined with spaces."),
    item_features: Optional[list[str]] = typer.Option(
        None, help="NAME=PATH: item vectors (.npz ids+vectors, or CSV/TSV: item column + one per dim) "
        "-> NAME_feat.npy; repeat per modality."),
    missing_features: str = typer.Option("error", help="A kept item without a vector: error, or mean (filled)."),
) -> None:
    """Build an MMRec-layout dataset folder from raw interactions (k-core, split, id maps, features)."""
    from prismrec.data.build import build_dataset

    features = {}
    for spec in item_features or []:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            _fail(f"--item-features {spec!r}: expected NAME=PATH, e.g. image=clip_vectors.npz")
        features[name.strip()] = Path(path.strip())
    try:
        folder = build_dataset(
            interactions, out, user_col, item_col, time_col, min_count, split, seed, dedupe,
            item_text, [c.strip() for c in text_cols.split(",") if c.strip()],
            item_features=features, missing_features=missing_features,
        )
    except (DatasetError, ValueError, ImportError) as exc:
        _fail(str(exc))
    data = load_dataset(folder)
    console.print(f"{folder}: {data.summary()}", highlight=False)


@app.command()
def tune(
    model: str = typer.Option(..., help="Registered model name."),
    dataset: str = typer.Option(..., help="Dataset name or folder."),
    space: list[str] = typer.Option(..., help="key=LOW..HIGH[:log] or key=A|B|C; repeat per setting."),
    trials: int = typer.Option(20, help="Finished trials wanted (a rerun with the same --out resumes)."),
    out: Path = typer.Option(..., help="Output directory (study.db, trial-<n>/, best/, tuning.md)."),
    seeds: str = typer.Option("3", help="Final seeds for the selected point: a count or a comma list."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Fixed key=value settings."),
    prune: bool = typer.Option(False, help="Stop trials below the median of earlier ones (after 5 trials, epoch 20)."),
    data_dir: Optional[Path] = typer.Option(None, help="Data directory."),
) -> None:
    """Search settings on validation (Optuna TPE, test never read), then train the best with seeds."""
    from prismrec.experiment.compare import parse_seeds
    from prismrec.experiment.config import parse_assignments
    from prismrec.experiment.search import tune as run_tune

    try:
        summary = run_tune(
            model, dataset, space, trials, out, parse_assignments(set_), data_dir,
            final_seeds=parse_seeds(seeds), prune=prune, log=lambda msg: console.print(msg, highlight=False),
        )
    except (ValueError, KeyError, DatasetError, RuntimeError) as exc:
        _fail(str(exc).strip("'\""))
    console.print((out / "tuning.md").read_text())
    console.print(f"selected: {summary['selected']['params']}", highlight=False)


@app.command()
def export(
    run: Path = typer.Option(..., help="Run directory written by `prismrec train` (single- or multi-seed)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default <run>/export)."),
    data_dir: Optional[Path] = typer.Option(None, help="Data directory (default $PRISMREC_DATA, then ../shared/data)."),
) -> None:
    """Write a run's eval-mode user/item representations (.npy) and representations.json."""
    from prismrec.experiment.export import export_representations

    try:
        path = export_representations(run, out, data_dir)
    except (ValueError, KeyError, DatasetError, OSError) as exc:
        _fail(str(exc).strip("'\""))
    console.print(f"representations written to {path}", highlight=False)


@app.command()
def evaluate(
    run: Path = typer.Option(..., help="A finished single-seed run directory."),
    split: str = typer.Option("test", help="valid or test."),
    groups: str = typer.Option("popularity", help="Item groups: popularity (tail/head) or none."),
    tail_share: float = typer.Option(0.8, help="Share of items (least popular first) in the tail."),
    ks: str = typer.Option("10,20", help="Comma-separated cut-offs."),
    mask_valid: bool = typer.Option(False, help="At test, also mask the validation items."),
    data_dir: Optional[Path] = typer.Option(None, help="Data directory."),
) -> None:
    """Re-evaluate a finished run, overall and per item group; writes <run>/evaluation-<split>.json."""
    from prismrec.experiment.evaluate import evaluate_run
    from prismrec.errors import RunError

    try:
        cutoffs = [int(k) for k in ks.split(",")]
        result = evaluate_run(run, split, groups, tail_share, cutoffs, mask_valid, data_dir)
    except (RunError, DatasetError, ValueError) as exc:
        _fail(str(exc))
    rows = {f"{name} ({m['users']} users)": m for name, m in result.items() if name != "meta"}
    title = f"{result['meta']['model']} on {result['meta']['dataset']} / {split}"
    console.print(_metrics_table(title, rows, label="items", ks=sorted(set(cutoffs))))


@app.command()
def significance(
    a: Path = typer.Option(..., help="Run directory of model A (single- or multi-seed)."),
    b: Path = typer.Option(..., help="Run directory of model B, same dataset."),
    metric: str = typer.Option("recall@20", help="Per-user metric, e.g. recall@20, ndcg@10."),
    split: str = typer.Option("test", help="valid or test."),
    data_dir: Optional[Path] = typer.Option(None, help="Data directory."),
) -> None:
    """Paired per-user test of A - B (t-test, Wilcoxon, bootstrap 95 % CI); seeds averaged per user."""
    from prismrec.errors import RunError
    from prismrec.experiment.significance import paired_test

    try:
        r = paired_test(a, b, metric, split, data_dir)
    except (RunError, DatasetError, ValueError) as exc:
        _fail(str(exc))
    low, high = r["bootstrap_95"]
    console.print(
        f"{split} {metric} over {r['users']} users: A {r['a']['model']} ({r['a']['seeds']} seeds) "
        f"{r['a']['mean']:.4f}, B {r['b']['model']} ({r['b']['seeds']} seeds) {r['b']['mean']:.4f}\n"
        f"A - B = {r['mean_difference']:+.4f}, 95 % bootstrap CI [{low:+.4f}, {high:+.4f}]; "
        f"p = {r['p_paired_t']:.3g} (paired t), {r['p_wilcoxon']:.3g} (Wilcoxon); "
        f"{r['users_differing']} users differ",
        highlight=False,
    )


@app.command()
def recommend(
    run: Path = typer.Option(..., help="A finished single-seed run directory."),
    users: str = typer.Option(..., help="Comma-separated user ids, or 'all'."),
    k: int = typer.Option(10, help="Items per user."),
    exclude: str = typer.Option("seen", help="Items never recommended: seen (train+valid+test), train, none."),
    out: Optional[Path] = typer.Option(None, help="Write a CSV (user,rank,item,score) instead of printing."),
    data_dir: Optional[Path] = typer.Option(None, help="Data directory."),
) -> None:
    """Top-k items per user from a run's best model (known items masked; -1 pads short lists)."""
    import numpy as np
    import pandas as pd

    from prismrec.errors import RunError
    from prismrec.serve import RunRecommender

    try:
        every = users.strip() == "all"
        try:
            ids = [] if every else [int(u) for u in users.split(",") if u.strip()]
        except ValueError:
            raise ValueError(f"--users must be comma-separated integer ids or 'all', got {users!r}") from None
        recommender = RunRecommender(run, data_dir, exclude)
        ids = list(range(recommender.n_users)) if every else ids
        items, scores = recommender.recommend(ids, k)
    except (RunError, DatasetError, ValueError) as exc:
        _fail(str(exc))
    if out is not None:
        rank = np.tile(np.arange(1, items.shape[1] + 1), len(ids))
        frame = pd.DataFrame({"user": np.repeat(ids, items.shape[1]), "rank": rank,
                              "item": items.ravel(), "score": scores.ravel()})
        frame.to_csv(out, index=False)
        console.print(f"{len(frame)} recommendations for {len(ids)} users written to {out}", highlight=False)
        return
    table = Table(title=f"{recommender.run.config.model}: top {k}, {exclude} items excluded")
    table.add_column("user")
    table.add_column("items (best first)")
    for user, row in zip(ids, items):
        table.add_row(str(user), " ".join(str(i) for i in row))
    console.print(table)


@app.command()
def serve(
    run: Path = typer.Option(..., help="A finished single-seed run directory."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port."),
    exclude: str = typer.Option("seen", help="Items never recommended: seen (train+valid+test), train, none."),
    data_dir: Optional[Path] = typer.Option(None, help="Data directory."),
) -> None:
    """Serve a run's recommendations over HTTP (GET /recommend/{user}?k=, POST /recommend, GET /health)."""
    from prismrec.errors import RunError
    from prismrec.serve import RunRecommender

    try:
        from prismrec.serve.app import create_app
        import uvicorn
    except ImportError:
        _fail("serving needs FastAPI and uvicorn: pip install 'prismrec[serve]'")
    try:
        recommender = RunRecommender(run, data_dir, exclude)
    except (RunError, DatasetError, ValueError) as exc:
        _fail(str(exc))
    uvicorn.run(create_app(recommender), host=host, port=port)


@app.command()
def gates(
    run: Path = typer.Option(..., help="A finished single-seed run directory of a gated model (rlmmrec)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default <run>/gates)."),
    data_dir: Optional[Path] = typer.Option(None, help="Data directory."),
    buckets: int = typer.Option(4, help="Item-popularity buckets."),
) -> None:
    """Gate analysis: per-item modality weights (.npy), summary (.json) and histograms (.png)."""
    from prismrec.errors import RunError
    from prismrec.experiment.gates import gate_analysis

    try:
        summary = gate_analysis(run, out, data_dir, buckets)
    except (RunError, DatasetError) as exc:
        _fail(str(exc))
    console.print_json(data=summary)


def main() -> None:
    """Entry point for ``python -m prismrec``."""
    app(prog_name="prismrec")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
