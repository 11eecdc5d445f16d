"""prismrec trains, evaluates, compares and serves graph-based multimodal recommenders.

Datasets are folders in MMRec layout; `prismrec datasets` lists them.

Example: `prismrec train --model lightgcn --dataset ml100k`, then `prismrec evaluate --run DIR`.

An input error is one line (what, where, how to fix) with exit code 2; `--debug` shows its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

try:  # typer vendors click (typer._click) since 0.26: its usage errors are the ones raised
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer on plain click
    from click import UsageError

from prismrec.data import list_datasets, load_dataset, resolve_data_dir
from prismrec.errors import ConfigError, PrismrecError
from prismrec.eval.metrics import METRIC_NAMES
from prismrec.train.config import MAX_CUT_OFF

console = Console()

TABLE_KS = (10, 20)

# OS errors a user causes (a path that is missing, unwritable, a folder for a file, a full disk):
# one line like any other input error. Other OS errors keep their traceback.
USER_OS_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST,
                  errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG, errno.EADDRINUSE, errno.EADDRNOTAVAIL}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _print_error(message: str) -> None:
    typer.echo(f"{typer.style('error:', fg='red', bold=True)} {_one_line(message)}", err=True)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: one line, no source excerpt."""
    typer.echo(f"{typer.style('warning:', fg='yellow', bold=True)} {_one_line(message)}", err=True)


class PrismrecGroup(TyperGroup):
    """The ``prismrec`` command group: the one place where errors become what the user sees.

    A :class:`~prismrec.errors.PrismrecError` (and an OS error about a path the user gave) is
    printed as one line and exits with code 2; so is a usage error (a missing or ill-typed option).
    Anything else is a bug in prismrec and keeps its traceback. ``--debug`` re-raises everything.
    """

    def invoke(self, ctx: typer.Context):
        debug = bool(ctx.params.get("debug"))
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _print_warning
            try:
                return super().invoke(ctx)
            except UsageError as exc:
                if debug:
                    raise
                where = exc.ctx.command_path if exc.ctx is not None else "prismrec"
                _print_error(f"{exc.format_message()} (see '{where} --help')")
            except PrismrecError as exc:
                if debug:
                    raise
                _print_error(str(exc))
            except OSError as exc:
                if debug or exc.errno not in USER_OS_ERRNOS:
                    raise
                where = f"{exc.filename}: " if exc.filename else ""
                _print_error(f"{where}{exc.strerror or exc}{_file_in_the_way(exc)}")
        raise typer.Exit(2)


def _file_in_the_way(exc: OSError) -> str:
    """For a folder that could not be made or entered (``--out results.csv/run``): the file in
    the way and the fix (it was the bare line 'results.csv/run: Not a directory')."""
    if exc.errno not in (errno.ENOTDIR, errno.EEXIST) or not exc.filename:
        return ""
    path = Path(os.fsdecode(exc.filename)).absolute()
    found = next((p for p in (path, *path.parents) if p.exists()), None)
    if found is None or found.is_dir():
        return ""
    return f" ({found} is a file, not a folder: give a path that is a folder or under one)"


app = typer.Typer(cls=PrismrecGroup, add_completion=False, no_args_is_help=True, help=__doc__,
                  pretty_exceptions_show_locals=False)

DataDir = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Data directory (default $PRISMREC_DATA, then ../shared/data).")]
"""The ``--data-dir`` option, declared once for every command that reads a dataset."""


def _version(value: bool) -> None:
    if value:
        from prismrec import __version__

        typer.echo(f"prismrec {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print prismrec's version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an input error (for bug reports)."),
) -> None:
    pass


def _cut_offs(text: str, option: str) -> list[int]:
    """``"10,20"`` -> ``[10, 20]`` for an option of cut-offs; anything else is a ConfigError."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= MAX_CUT_OFF:
            raise ConfigError(f"{option} {text!r}: {part!r} is not a cut-off; give whole numbers from 1 to "
                              f"{MAX_CUT_OFF:,} separated by commas, e.g. 10,20")
        values.append(int(part))
    if not values:
        raise ConfigError(f"{option} {text!r} holds no cut-off; give e.g. 10,20")
    return values


def _names(text: str, option: str) -> list[str]:
    """A comma list of names (models, datasets); empty entries dropped, an empty list an error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{option} {text!r} names nothing; give a comma-separated list, e.g. bpr,lightgcn")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{option} {text!r} repeats {', '.join(repeated)}; name each once")
    return names


def _output_file(path: Path, option: str) -> None:
    """Refuse an output file whose folder is missing, or that is a folder, before any work."""
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; give a file path, e.g. {path / 'out.csv'}")
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: the folder {path.parent} does not exist; create it first "
                          "or write somewhere else")


def _output_folder(path: Path | None, option: str, what: str) -> None:
    """Refuse an output folder that is empty text / the current directory, or an existing file."""
    if path is None:
        return
    if str(path) in ("", "."):
        raise ConfigError(f"{option} {str(path)!r}: give a folder path for the {what}, e.g. runs/my-run")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is an existing file, not a folder; give a folder path for the {what}")
    above = next((p for p in path.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ConfigError(f"{option} {path}: {above} is a file, not a folder; give a folder path for the {what}")


def _workers(value: str) -> int | str:
    """``--workers``: ``auto`` or a whole number >= 1, else one line saying so."""
    value = value.strip().lower()
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"--workers {value}: give auto or a whole number >= 1 (runs trained at the same time)")
    return int(value)


def _check_device_override(overrides: dict) -> None:
    """A ``--set device=...`` (or ``pretrain_settings={device: ...}``) that is malformed or absent
    on this machine, refused before training."""
    from prismrec.train.config import check_override_devices

    check_override_devices(overrides)


def _metrics_table(title: str, rows: dict[str, dict], std: dict[str, dict] | None = None,
                   label: str = "split", ks=TABLE_KS) -> Table:
    """Metrics as rows (``recall@10``, ...), one column per entry of ``rows`` (splits, item
    groups): a handful of columns, so the table stays readable at 80 columns or in a log."""
    table = Table(title=title)
    table.add_column(f"metric \\ {label}")
    for name in rows:
        table.add_column(name, justify="right")
    for m in METRIC_NAMES:
        for k in ks:
            cells = []
            for name, values in rows.items():
                v = (values or {}).get(f"{m}@{k}")
                s = (std or {}).get(name, {}) or {}
                s = s.get(f"{m}@{k}") if isinstance(s, dict) else None
                cell = "-" if v is None else f"{v:.4f}"
                cells.append(cell + (f" ± {s:.4f}" if s is not None and v is not None else ""))
            table.add_row(f"{m}@{k}", *cells)
    return table


def _epoch_text(value) -> str:
    """Best epoch(s) as a reader counts them (1-based; ``metrics.json`` stores 0-based)."""
    if isinstance(value, list):
        return ", ".join(str(v + 1) for v in value)
    return str(value + 1)


def _counted(n: int, noun: str) -> str:
    """``1 seed``, ``3 seeds``: a count and its noun, singular for one."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _count_text(value) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


@app.command()
def train(
    model: str = typer.Option(..., help="Registered model name, e.g. lightgcn."),
    dataset: str = typer.Option(..., help="Dataset name in the data directory, or a folder path."),
    data_dir: DataDir = None,
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a setting: key=value (repeatable)."),
    config: Optional[Path] = typer.Option(None, help="YAML file of settings (applied before --set)."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds, e.g. 999 or 999,1000,7 (default 999)."),
    n_seeds: Optional[int] = typer.Option(None, help="Train the first N protocol seeds 999, 1000, ... instead."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<model>-<dataset>-<time>)."),
    quiet: bool = typer.Option(False, help="No progress display; print only the run directory."),
    overwrite: bool = typer.Option(False, help="Replace a finished or different run in --out instead of refusing."),
    keep_checkpoints: bool = typer.Option(False, help="Keep the training checkpoints once the run has finished."),
    track: Optional[str] = typer.Option(
        None, help="Also log to MLflow (a tracking URI, or a folder for a local store; needs mlflow) "
                   "or to TensorBoard (tensorboard:FOLDER; needs tensorboard)."),
    workers: str = typer.Option(
        "auto", help="With several seeds on a CPU, seeds trained at the same time, each in its own process: auto "
        "(one 1-thread seed per core, as many as memory allows) or N; 1: one after another in this process."),
) -> None:
    """Train MODEL on DATASET, select on validation, evaluate test once, write the run dir.

    Rerunning the same command after an interruption resumes from the last checkpoint.
    """
    from prismrec.experiment.config import load_yaml_overrides, parse_assignments, resolve_config
    from prismrec.experiment.rundir import RunDir
    from prismrec.experiment.runs import run_experiment
    from prismrec.experiment.seeds import resolve_seeds
    from prismrec.train.distributed import quiet_follower

    follower = quiet_follower()  # under torchrun, ranks other than 0 print errors only
    # Everything the user gave is checked before any data is read or any training starts.
    n_workers = _workers(workers)
    seed_list = resolve_seeds(seeds, n_seeds, default_n=1)
    overrides = load_yaml_overrides(config) if config else {}
    overrides.update(parse_assignments(set_))
    cfg = resolve_config(model, dataset, overrides)
    from prismrec.train.config import check_run_devices

    check_run_devices(cfg)  # the training device and an earlier stage's
    _output_folder(out, "--out", "run directory")
    data = load_dataset(dataset, data_dir)
    cfg.train.check_cut_offs(data.n_items, data.name)  # a --set topk above the items, before the banner
    out = out or Path("runs") / f"{cfg.model}-{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not quiet and not follower:
        console.print(f"[bold]{cfg.model}[/] on {data!r} -> {out}", highlight=False)
    new_dirs = [d for d in (out, *out.parents) if not d.exists()]  # the run's folder and any above it
    tracker = None
    if track is not None and not follower:
        from prismrec.experiment.tracking import make_tracker

        tracker = make_tracker(track)
        tracker.start({**cfg.to_dict(), "seeds": seed_list}, out.name)
    aside = None  # with several seeds on a CPU: side by side, each in its own process (epochs in its run.log)
    if len(seed_list) > 1 and tracker is None:
        from prismrec.experiment.compare import seeds_aside

        aside = seeds_aside(cfg.model, dataset, cfg, overrides, data, n_workers, str(data_dir) if data_dir else None,
                            lambda msg: typer.echo(msg, err=quiet), ("--keep-checkpoints",) if keep_checkpoints else ())
    try:
        metrics = run_experiment(cfg, seed_list, out, dataset=data, progress=not quiet, overwrite=overwrite,
                                 keep_checkpoints=keep_checkpoints,
                                 on_epoch_end=tracker.epoch if tracker is not None else None, train_aside=aside)
    except BaseException as exc:
        if tracker is not None:
            tracker.finish({}, None, status="FAILED")
        refused = isinstance(exc, PrismrecError) and new_dirs and not follower  # rank 0 owns --out
        if refused and RunDir(out).state().kind in ("absent", "empty"):  # refused before training
            shutil.rmtree(out, ignore_errors=True)
            for folder in new_dirs[1:]:  # the folders made for it, innermost first, while empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
    if tracker is not None:
        tracker.finish(metrics, out if len(seed_list) == 1 else out / f"seed-{seed_list[0]}")
        typer.echo(f"tracked in {tracker.describe()}", err=quiet)
    if follower:
        return
    if quiet:
        typer.echo(f"run directory: {out}")
        return
    title = (
        f"{cfg.model} on {data.name}: best epoch {_epoch_text(metrics['best_epoch'])} of "
        f"{_count_text(metrics['epochs'])}, {metrics['seconds']:.0f}s"
    )
    std = metrics.get("std")
    console.print(_metrics_table(title, {"valid": metrics["valid"], "test": metrics["test"]}, std))
    console.print(f"run directory: {out}", highlight=False, soft_wrap=True)


@app.command()
def demo(
    dataset: str = typer.Option("lfm2k", help="A multimodal dataset of the data directory."),
    models: str = typer.Option("mgcn,lightgcn", help="Comma-separated models; the last is the reference."),
    epochs: int = typer.Option(30, min=1, help="Epoch cap per model."),
    patience: int = typer.Option(5, min=0, help="Early-stopping patience on validation."),
    lr: float = typer.Option(0.005, help="Learning rate of every model."),
    threads: int = typer.Option(1, min=0, help="CPU threads per model (the README's demo time is for 1; 0: torch's default)."),
    out: Path = typer.Option(Path("runs/demo"), help="Folder of the demo's run directories."),
    quiet: bool = typer.Option(False, help="No progress display; print only the table and where it went."),
    data_dir: DataDir = None,
) -> None:
    """Train a multimodal model and LightGCN briefly on a real multimodal dataset and compare them.

    Each model is selected on validation and tested once; the table has the metrics as rows.
    A rerun reuses the finished runs in --out (--out elsewhere, or delete it, to retrain).
    """
    from prismrec.experiment.demo import DemoConfig, render_table, run_demo

    cfg = DemoConfig(dataset=dataset, models=_names(models, "--models"), epochs=epochs, patience=patience,
                     lr=lr, threads=threads)
    _output_folder(out, "--out", "demo runs")
    started = time.perf_counter()
    results = run_demo(cfg, out, data_dir, progress=not quiet,
                       log=(lambda msg: None) if quiet else (lambda msg: typer.echo(msg, err=True)))
    typer.echo("")
    typer.echo(render_table(results, cfg, dataset))
    typer.echo(f"\n{time.perf_counter() - started:.0f}s in all. Runs (run.log, curves.png) and this table "
               f"(demo.md):\n  {out}\nA page with pictures: prismrec report {out}")


@app.command()
def datasets(data_dir: DataDir = None) -> None:
    """List the datasets of the data directory with their counts and modalities."""
    root = resolve_data_dir(data_dir)
    folders = list_datasets(root)
    if not folders:  # was an empty table: nothing said what a dataset folder is or how to add one
        others = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        without = f" ({'; '.join(f'{n}/ holds no {n}.inter' for n in others[:5])}{'; ...' * (len(others) > 5)})" \
            if others else ""
        typer.echo(f"no datasets found in {root}{without}. A dataset is a folder <name>/ holding <name>.inter "
                   "(MMRec layout, see README); add one there, build one from raw interactions with "
                   f"`prismrec build --interactions FILE --out {root / 'NAME'}`, or give another --data-dir.")
        return
    table = Table(title=f"datasets in {root}")
    for col in ("name", "users", "items", "train", "valid", "test", "modalities"):
        table.add_column(col, justify="left" if col in ("name", "modalities") else "right")
    for folder in folders:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # listing only; `train` shows a dataset's warnings
                s = load_dataset(folder).summary()
        except PrismrecError as exc:
            table.add_row(folder.name, "", "", "", "", "", f"[red]invalid: {exc}[/]")
            continue
        mods = ", ".join(f"{m} ({d})" for m, d in s["modalities"].items()) or "-"
        table.add_row(s["name"], *(f"{s[c]:,}" for c in ("users", "items", "train", "valid", "test")), mods)
    console.print(table)


@app.command()
def compare(
    models: str = typer.Option(..., help="Comma-separated model names."),
    datasets: str = typer.Option(..., help="Comma-separated dataset names."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds, e.g. 999,1000,1001."),
    n_seeds: Optional[int] = typer.Option(None, help="The first N protocol seeds 999, 1000, ... (default 3)."),
    out: Path = typer.Option(..., help="Output directory (resumable: finished cells are kept)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="key=value for all models, or MODEL.key=value."),
    data_dir: DataDir = None,
    report_only: bool = typer.Option(False, help="Summarise finished cells only; train nothing."),
    reference: Optional[str] = typer.Option(
        None, help="Model the paper table's significance marks test against (default lightgcn when compared)."),
    correction: str = typer.Option(
        "holm", help="Multiple-comparison correction of the marks' p-values over the table: holm, bh "
        "(Benjamini-Hochberg) or none."),
    test: str = typer.Option(
        "t", help="The marks' paired per-user test: t (paired t-test) or wilcoxon (signed-rank)."),
    workers: str = typer.Option(
        "auto", help="Cells trained at the same time, each in its own process: auto (one 1-thread cell per core, "
        "as many as memory allows; a single cell takes every core) or N (N at a time, the cores split between them)."),
) -> None:
    """Train every model x dataset x seed; write results.json, results.md and the paper table.

    The paper table (paper.md, paper.tex, paper.csv) puts the datasets side by side, the best in
    bold, with marks from paired per-user tests against --reference (--test t or wilcoxon),
    Holm-adjusted over the table's comparisons (--correction bh: Benjamini-Hochberg; none: raw p).
    """
    from prismrec.experiment.compare import run_compare
    from prismrec.experiment.config import model_class, parse_assignments
    from prismrec.experiment.seeds import resolve_seeds

    n_workers = _workers(workers)
    seed_list = resolve_seeds(seeds, n_seeds, default_n=3)
    model_list, dataset_list = _names(models, "--models"), _names(datasets, "--datasets")
    for name in model_list:
        model_class(name)
    overrides = parse_assignments(set_)
    _check_device_override(overrides)
    _output_folder(out, "--out", "comparison")
    if reference is None and "lightgcn" in model_list and len(model_list) > 1:
        reference = "lightgcn"
    results = run_compare(
        model_list, dataset_list, seed_list, out, overrides, str(data_dir) if data_dir else None,
        log=lambda msg: typer.echo(msg), train=not report_only, reference=reference, workers=n_workers,
        correction=correction, test=test,
    )
    console.print((out / "results.md").read_text())
    typer.echo(f"paper table (markdown, LaTeX, CSV): {out / 'paper.md'}, paper.tex, paper.csv")
    if results["failures"] and not report_only:
        console.print(f"[red]{len(results['failures'])} cell(s) failed[/]: {results['failures']}", highlight=False)
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
    missing_features: str = typer.Option(
        "error", help="A kept item without a vector: error, or mean (filled, and marked in NAME_mask.npy)."),
    impute: str = typer.Option("mean", help="Default filling of masked rows at load: mean, zero or neighbour."),
    cold_items: float = typer.Option(0.0, help="Share of items made cold (all rows to valid/test), e.g. 0.1."),
    item_images: Optional[Path] = typer.Option(
        None, help="Folder of <item id>.jpg/.png files, or CSV/TSV with the item column and an image column "
        "-> image_feat.npy (needs --image-encoder)."),
    image_encoder: Optional[str] = typer.Option(
        None, help="Exported (.pt2) or TorchScript file of an image backbone, or torchvision:NAME (e.g. resnet50)."),
    image_weights: Optional[Path] = typer.Option(None, help="State-dict file for a torchvision:NAME encoder."),
    image_size: int = typer.Option(224, min=8, help="Side of the centre crop fed to the image encoder."),
    overwrite: bool = typer.Option(False, help="Replace an existing, non-empty --out folder."),
) -> None:
    """Build an MMRec-layout dataset folder from raw interactions (k-core, split, id maps, features).

    The folder is written under a temporary name beside --out and renamed at the end, so an
    interrupted build never leaves a folder that looks like a dataset.
    """
    from prismrec.data.build import build_dataset

    features = {}
    for spec in item_features or []:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--item-features {spec!r}: expected NAME=PATH, e.g. image=clip_vectors.npz")
        if name.strip() in features:  # the later one silently replaced the earlier
            raise ConfigError(f"--item-features names {name.strip()!r} twice ({features[name.strip()]} and "
                              f"{path.strip()}); give each modality once, under its own name")
        features[name.strip()] = Path(path.strip())
    columns = [c.strip() for c in text_cols.split(",") if c.strip()]
    if not columns:
        raise ConfigError(f"--text-cols {text_cols!r} names no column; give e.g. title,description")
    folder = build_dataset(
        interactions, out, user_col, item_col, time_col, min_count, split, seed, dedupe,
        item_text, columns, item_features=features, missing_features=missing_features, overwrite=overwrite,
        cold_items=cold_items, impute=impute, item_images=item_images, image_encoder=image_encoder,
        image_weights=image_weights, image_size=image_size,
    )
    s = load_dataset(folder).summary()
    mods = ", ".join(f"{m} ({d}-d)" for m, d in s["modalities"].items()) or "none"
    console.print(
        f"built dataset {s['name']!r} in {folder}: {s['users']:,} users, {s['items']:,} items, "
        f"{s['train']:,} train / {s['valid']:,} valid / {s['test']:,} test interactions; "
        f"features: {mods}. Details in {folder / 'manifest.json'}",
        highlight=False, soft_wrap=True,
    )


@app.command("split-cold")
def split_cold(
    dataset: str = typer.Argument(..., help="Dataset name or folder to derive from."),
    out: str = typer.Option(..., help="New dataset's name (placed beside the source) or folder."),
    fraction: float = typer.Option(0.1, help="Share of items made cold, in (0, 0.5]."),
    seed: int = typer.Option(999, help="Seed of the cold item draw."),
    overwrite: bool = typer.Option(False, help="Replace an existing, non-empty --out folder."),
    data_dir: DataDir = None,
) -> None:
    """Derive a cold-item copy of DATASET: a seeded share of items lose their training rows (all
    their rows go to valid for half of them, to test for the other half), listed in manifest.json."""
    from prismrec.data.derive import split_cold as derive_cold

    folder = derive_cold(dataset, out, fraction, seed, data_dir, overwrite)
    data = load_dataset(folder)
    s = data.summary()
    console.print(
        f"cold-item dataset {s['name']!r} in {folder}: {len(data.cold('valid'))} cold items in valid, "
        f"{len(data.cold('test'))} in test; {s['train']:,} train / {s['valid']:,} valid / {s['test']:,} test "
        f"interactions. Train on it, then: prismrec evaluate --run RUN --mode cold",
        highlight=False, soft_wrap=True,
    )


@app.command()
def synth(
    size: str = typer.Argument(..., help="Whose counts: tiktok, baby or electronics."),
    out: Path = typer.Option(..., help="Dataset folder to write; its name is the dataset's name."),
    scale: float = typer.Option(1.0, help="Multiply users, items and interactions (0.01: a tiny copy)."),
    seed: int = typer.Option(0, help="Seed of the interactions and features."),
    overwrite: bool = typer.Option(False, help="Replace an existing, non-empty --out folder."),
) -> None:
    """Write a synthetic dataset with a real one's size (power-law degrees, float32 features).

    Electronics: 192,403 users, 63,001 items, ~1.7M interactions, 4096-d image and 384-d text
    features (~1.2 GB on disk); for memory and speed tests at scale, not for quality claims.
    """
    from prismrec.data.synthetic import write_sized_dataset

    _output_folder(out, "--out", "dataset")
    folder = write_sized_dataset(out, size, scale, seed=seed, overwrite=overwrite)
    s = load_dataset(folder).summary()
    console.print(f"synthetic {size} dataset in {folder}: {s['users']:,} users, {s['items']:,} items, "
                  f"{s['train']:,} train / {s['valid']:,} valid / {s['test']:,} test interactions",
                  highlight=False, soft_wrap=True)


@app.command()
def tune(
    model: str = typer.Option(..., help="Registered model name."),
    dataset: str = typer.Option(..., help="Dataset name or folder."),
    space: list[str] = typer.Option(..., help="key=LOW..HIGH[:log] or key=A|B|C; repeat per setting; "
                                    "grid: the model's declared grid (paper/reference values)."),
    trials: int = typer.Option(20, min=1, help="Finished trials wanted (a rerun with the same --out resumes)."),
    out: Path = typer.Option(..., help="Output directory (study.db, trial-<n>/, best/, tuning.md)."),
    seeds: Optional[str] = typer.Option(None, help="Final seeds for the selected point, e.g. 999,1000,1001."),
    n_seeds: Optional[int] = typer.Option(None, help="Final seeds: the first N protocol seeds (default 3)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Fixed key=value settings."),
    prune: bool = typer.Option(False, help="Stop trials below the median of earlier ones (after 5 trials, epoch 20)."),
    storage: Optional[str] = typer.Option(
        None, help="Study storage shared by workers: an Optuna database URL (postgresql://USER@HOST/DB) "
        "or journal:PATH (a file on a shared file system). Default: <out>/study.db."),
    study_name: str = typer.Option("prismrec", help="The study's name in --storage."),
    workers: int = typer.Option(
        1, min=1, help="Worker processes on the study: this one and N-1 more started with the same options "
        "(their output in <out>/worker-<k>.log), each trial with cores // N threads unless --set threads is "
        "given. Parallel trials are drawn from fewer finished ones, so the trials depend on N and on timing; "
        "1 (the default) is reproducible."),
    data_dir: DataDir = None,
) -> None:
    """Search settings on validation (Optuna TPE, test never read), then train the best with seeds."""
    from prismrec.experiment.config import parse_assignments, resolve_config
    from prismrec.experiment.search import parse_space, selected_settings, tune as run_tune
    from prismrec.experiment.workers import extra_workers
    from prismrec.experiment.seeds import resolve_seeds

    final_seeds = resolve_seeds(seeds, n_seeds, default_n=3)
    overrides = parse_assignments(set_)
    from prismrec.train.config import check_run_devices

    check_run_devices(resolve_config(model, dataset, overrides))
    _output_folder(out, "--out", "study")
    load_dataset(dataset, data_dir)  # a missing or broken dataset, before the study starts
    command = []  # the other workers' command line
    if workers > 1:
        from prismrec.threads import usable_cpus

        overrides.setdefault("threads", max(1, usable_cpus() // workers))
        command = [sys.executable, "-m", "prismrec", "tune", "--model", model, "--dataset", dataset,
                   *(x for entry in space for x in ("--space", entry)), "--trials", str(trials), "--out", str(out),
                   "--seeds", ",".join(map(str, final_seeds)), "--study-name", study_name,
                   *(x for key, value in overrides.items() for x in ("--set", f"{key}={json.dumps(value)}")),
                   *(["--prune"] if prune else []), *(["--storage", storage] if storage else []),
                   *(["--data-dir", str(data_dir)] if data_dir else [])]
        console.print(f"{workers} workers on the study: this one and {workers - 1} more (output in "
                      f"{out}/worker-<k>.log), {overrides['threads']} thread(s) a trial", highlight=False)
    with extra_workers(command, out, workers - 1):
        summary = run_tune(
            model, dataset, space, trials, out, overrides, data_dir,
            final_seeds=final_seeds, prune=prune, log=lambda msg: console.print(msg, highlight=False),
            storage=storage, study_name=study_name,
        )
    console.print((out / "tuning.md").read_text())
    chosen = summary["selected"]["params"]  # as the study stores them (a choice as its text)
    console.print(f"selected: {selected_settings(parse_space(space, model), chosen)}", highlight=False)


@app.command()
def export(
    run: Path = typer.Option(..., help="Run directory written by `prismrec train` (single- or multi-seed)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default <run>/export)."),
    data_dir: DataDir = None,
) -> None:
    """Write a run's eval-mode user/item representations (.npy) and representations.json."""
    from prismrec.experiment.export import export_representations

    _output_folder(out, "--out", "exported arrays")
    path = export_representations(run, out, data_dir)
    console.print(f"representations written to {path}", highlight=False, soft_wrap=True)


@app.command()
def evaluate(
    run: Path = typer.Option(..., help="A finished single-seed run directory."),
    split: str = typer.Option("test", help="valid or test."),
    groups: str = typer.Option("popularity", help="Item groups: popularity (tail/head) or none."),
    tail_share: float = typer.Option(0.8, help="Share of items (least popular first) in the tail, in (0, 1)."),
    ks: str = typer.Option("10,20", help="Comma-separated cut-offs."),
    mask_valid: bool = typer.Option(False, help="At test, also mask the validation items."),
    mode: str = typer.Option("warm", help="warm (all items), or on a cold-item dataset: cold (cold items "
                             "ranked among cold items) or all (cold items among all items)."),
    strategy: str = typer.Option("auto", help="Cold items' content scoring: auto, native, hook, map or knn."),
    id_rows: str = typer.Option("model", "--id-rows", help="With hook: a cold item's ID row in the model's own "
                                "content path: model (its documented default), zero or impute."),
    data_dir: DataDir = None,
) -> None:
    """Re-evaluate a finished run, overall and per item group; writes <run>/evaluation-<split>.json
    (--mode cold|all: cold-item metrics next to references, evaluation-<split>-<mode>.json)."""
    from prismrec.experiment.evaluate import GROUPINGS, MODES, evaluate_run

    cutoffs = _cut_offs(ks, "--ks")
    if split not in ("valid", "test"):
        raise ConfigError(f"--split {split!r}: choose valid or test")
    if groups not in GROUPINGS:
        raise ConfigError(f"--groups {groups!r}: choose one of {', '.join(GROUPINGS)}")
    if not 0 < tail_share < 1:
        raise ConfigError(f"--tail-share {tail_share}: give the tail's share of items, strictly between 0 and 1")
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    if mask_valid and split != "test":
        raise ConfigError("--mask-valid masks the validation items when ranking for test: use it with --split test")
    from prismrec.coldstart import ColdStartConfig

    ColdStartConfig(strategy=strategy, id_rows=id_rows)  # bad choices before the run is loaded
    if mode == "warm" and (strategy, id_rows) != ("auto", "model"):
        raise ConfigError("--strategy and --id-rows choose how cold items are scored: use them with --mode cold "
                          "or --mode all (--mode warm ranks with the model's own item rows)")
    if mode != "warm":
        result = evaluate_run(run, split, "none", tail_share, cutoffs, mask_valid, data_dir, mode=mode,
                              strategy=strategy, id_rows=id_rows)
        meta = result["meta"]
        rows = {f"{name} ({m['users']} users)": m for name, m in result.items() if name != "meta"}
        title = (f"{meta['model']} on {meta['dataset']} / {split}, {meta['cold_items']} cold items ranked among "
                 f"{'cold items' if mode == 'cold' else 'all items'}; model rows: {meta['strategy']}")
        console.print(_metrics_table(title, rows, label="scoring", ks=sorted(set(cutoffs))))
        console.print(f"evaluation written to {Path(run) / f'evaluation-{split}-{mode}.json'}", highlight=False,
                      soft_wrap=True)
        return
    result = evaluate_run(run, split, groups, tail_share, cutoffs, mask_valid, data_dir)
    rows = {f"{name} ({m['users']} users)": m for name, m in result.items() if name != "meta"}
    title = f"{result['meta']['model']} on {result['meta']['dataset']} / {split}"
    console.print(_metrics_table(title, rows, label="items", ks=sorted(set(cutoffs))))
    console.print(f"evaluation written to {Path(run) / f'evaluation-{split}.json'}", highlight=False, soft_wrap=True)


@app.command()
def significance(
    a: Path = typer.Option(..., help="Run directory of model A (single- or multi-seed)."),
    b: Path = typer.Option(..., help="Run directory of model B, same dataset."),
    metric: str = typer.Option("recall@20", help="Per-user metric, e.g. recall@20, ndcg@10."),
    split: str = typer.Option("test", help="valid or test."),
    data_dir: DataDir = None,
) -> None:
    """Paired per-user test of A - B (t-test, Wilcoxon, bootstrap 95 % CI); seeds averaged per user."""
    from prismrec.experiment.significance import paired_test

    if split not in ("valid", "test"):
        raise ConfigError(f"--split {split!r}: choose valid or test")
    name, at, k = metric.partition("@")
    if name not in METRIC_NAMES or not at or not k.isdigit() or not 1 <= int(k) <= MAX_CUT_OFF:
        raise ConfigError(f"--metric {metric!r}: give METRIC@K with METRIC one of {', '.join(METRIC_NAMES)} "
                          "and K >= 1, e.g. recall@20")
    r = paired_test(a, b, metric, split, data_dir)
    low, high = r["bootstrap_95"]
    console.print(
        f"{split} {metric} over {_counted(r['users'], 'user')}: A {r['a']['model']} "
        f"({_counted(r['a']['seeds'], 'seed')}) {r['a']['mean']:.4f}, B {r['b']['model']} "
        f"({_counted(r['b']['seeds'], 'seed')}) {r['b']['mean']:.4f}\n"
        f"A - B = {r['mean_difference']:+.4f}, 95 % bootstrap CI [{low:+.4f}, {high:+.4f}]; "
        f"p = {r['p_paired_t']:.3g} (paired t), {r['p_wilcoxon']:.3g} (Wilcoxon); "
        f"{_counted(r['users_differing'], 'user')} {'differs' if r['users_differing'] == 1 else 'differ'}",
        highlight=False,
    )


def _user_ids(text: str) -> list[int] | None:
    """``--users``: comma-separated ids, or ``all`` (returned as ``None``)."""
    if text.strip().lower() == "all":
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--users {text!r} names no user; give comma-separated user ids (e.g. 0,5,42) or 'all'")
    bad = [p for p in parts if not p.lstrip("-").isdigit()]
    if bad:
        raise ConfigError(f"--users must be comma-separated integer ids or 'all', got {text!r} ({bad[0]!r} is not an id)")
    return [int(p) for p in parts]


@app.command()
def recommend(
    run: Path = typer.Option(..., help="A finished single-seed run directory."),
    users: str = typer.Option(..., help="Comma-separated user ids, or 'all'."),
    k: int = typer.Option(10, min=1, help="Items per user."),
    exclude: str = typer.Option("seen", help="Items never recommended: seen (train+valid+test), train, none."),
    out: Optional[Path] = typer.Option(None, help="Write a CSV (user,rank,item,score) instead of printing."),
    raw_ids: bool = typer.Option(
        False, help="Take and return the dataset's raw user/item ids (the id maps `prismrec build` wrote)."),
    data_dir: DataDir = None,
) -> None:
    """Top-k items per user from a run's best model (known items masked; -1 pads short lists).

    With --raw-ids, users and items are the source data's ids and short lists are not padded.
    """
    import numpy as np
    import pandas as pd

    from prismrec.serve import EXCLUDE, RunRecommender

    if raw_ids:
        raw = None if users.strip().lower() == "all" else [p.strip() for p in users.split(",") if p.strip()]
        if raw is not None and not raw:
            raise ConfigError(f"--users {users!r} names no user; give comma-separated raw user ids or 'all'")
    else:
        ids = _user_ids(users)
    listed = raw if raw_ids else ids
    twice = sorted({u for u in listed or () if listed.count(u) > 1}, key=str)
    if twice:  # was the user's rows written twice to --out, once in the table
        raise ConfigError(f"--users names {', '.join(map(str, twice))} twice; list each user once")
    if exclude not in EXCLUDE:
        raise ConfigError(f"--exclude {exclude!r}: choose one of {', '.join(EXCLUDE)}")
    if out is not None:
        _output_file(out, "--out")
        if out.suffix.lower() != ".csv":  # was CSV text under a .json (or any) name
            raise ConfigError(f"--out {out}: recommend writes a CSV (user,rank,item,score); give a .csv file name")
    recommender = RunRecommender(run, data_dir, exclude)
    if k > recommender.n_items:  # was the library's "k must be an integer in 1..N", not naming --k
        raise ConfigError(f"--k {k} is above the {recommender.n_items:,} items of {recommender.run.config.dataset}; "
                          f"give --k from 1 to {recommender.n_items:,}")
    if raw_ids:
        if recommender.ids is None:
            raise ConfigError(f"--raw-ids: the dataset of {run} has no u_id_mapping.csv / i_id_mapping.csv "
                              "(written by prismrec build); give internal ids without --raw-ids")
        names = list(recommender.ids.raw_users) if raw is None else raw
        item_lists, score_lists = recommender.recommend_raw(names, k)
        rows = [(u, r + 1, item, score) for u, items, scores in zip(names, item_lists, score_lists)
                for r, (item, score) in enumerate(zip(items, scores))]
        frame = pd.DataFrame(rows, columns=["user", "rank", "item", "score"])
        shown = {u: items for u, items in zip(names, item_lists)}
    else:
        ids = list(range(recommender.n_users)) if ids is None else ids
        items, scores = recommender.recommend(ids, k)
        rank = np.tile(np.arange(1, items.shape[1] + 1), len(ids))
        frame = pd.DataFrame({"user": np.repeat(ids, items.shape[1]), "rank": rank,
                              "item": items.ravel(), "score": scores.ravel()})
        shown = {u: row.tolist() for u, row in zip(ids, items)}
    if out is not None:
        partial = out.with_name(f".{out.name}.partial")
        frame.to_csv(partial, index=False)
        partial.replace(out)  # a killed write never leaves a truncated CSV under the asked name
        console.print(f"{_counted(len(frame), 'recommendation')} for {_counted(len(shown), 'user')} written to {out}",
                      highlight=False, soft_wrap=True)
        return
    table = Table(title=f"{recommender.run.config.model}: top {k}, {exclude} items excluded"
                        + (" (raw ids)" if raw_ids else ""))
    table.add_column("user")
    table.add_column("items (best first)")
    for user, row in shown.items():
        table.add_row(str(user), " ".join(str(i) for i in row))
    console.print(table)


@app.command()
def serve(
    run: Path = typer.Option(..., help="A finished single-seed run directory."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port (1-65535)."),
    exclude: str = typer.Option("seen", help="Items never recommended: seen (train+valid+test), train, none."),
    max_users: int = typer.Option(1000, min=1, help="Most users in one POST /recommend (more: HTTP 413)."),
    max_k: int = typer.Option(1000, min=1, help="Largest k of a request (more: HTTP 422)."),
    max_items: int = typer.Option(100_000, min=1, help="Most items (users x k) in one answer (more: HTTP 413)."),
    max_body_bytes: int = typer.Option(1_000_000, min=1024, help="Largest request body in bytes (more: HTTP 413)."),
    raw_ids: bool = typer.Option(
        False, help="Take and return the dataset's raw user/item ids (the id maps `prismrec build` wrote)."),
    data_dir: DataDir = None,
) -> None:
    """Serve a run's recommendations over HTTP (GET /recommend/{user}?k=, POST /recommend, GET /health)."""
    import socket

    from prismrec.errors import ServeError
    from prismrec.serve import EXCLUDE, RunRecommender

    try:
        import uvicorn

        from prismrec.serve.app import ServeLimits, create_app
    except ImportError:
        raise ConfigError("serving needs FastAPI and uvicorn: pip install 'prismrec[serve]'") from None
    if exclude not in EXCLUDE:
        raise ConfigError(f"--exclude {exclude!r}: choose one of {', '.join(EXCLUDE)}")
    limits = ServeLimits(max_users=max_users, max_k=max_k, max_items=max_items, max_body_bytes=max_body_bytes)
    try:  # is the address usable? (before the model is loaded, and as one line, not a server log)
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        reason = (exc.strerror or str(exc)).split(" (while attempting")[0]
        raise ServeError(f"cannot listen on {host}:{port} ({reason}); pick another --port or --host") from None
    recommender = RunRecommender(run, data_dir, exclude)
    uvicorn.run(create_app(recommender, limits, raw_ids=raw_ids), host=host, port=port)


@app.command()
def report(
    path: Path = typer.Argument(..., help="A run directory, a multi-seed run or a `prismrec compare` --out folder."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default <DIR>/report)."),
) -> None:
    """Write a one-page report (report.md and its PNG pictures) of a run or a comparison.

    It holds the metrics table, the training curves and, for a comparison, the paper table and a
    point plot of mean ± std per model and dataset.
    """
    from prismrec.experiment.report import build_report

    _output_folder(out, "--out", "report")
    page = build_report(path, out)
    typer.echo(f"report written to {page}")


@app.command()
def gates(
    run: Path = typer.Option(..., help="A finished single-seed run directory of a gated model (rlmmrec)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default <run>/gates)."),
    data_dir: DataDir = None,
    buckets: int = typer.Option(4, min=1, help="Item-popularity buckets."),
) -> None:
    """Gate analysis: per-item modality weights (.npy), summary (.json) and histograms (.png)."""
    from prismrec.experiment.gates import gate_analysis

    _output_folder(out, "--out", "gate analysis")
    summary = gate_analysis(run, out, data_dir, buckets)
    console.print_json(data=summary)


def main() -> None:
    """Entry point for ``python -m prismrec``."""
    app(prog_name="prismrec")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
