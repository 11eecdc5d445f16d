"""Train a configured model over one or more seeds, crash-safe and resumable, and record it.

The run directory's layout and protocol belong to :mod:`prismrec.experiment.rundir`: a run
writes ``RUNNING`` first, checkpoints every epoch (or every ``checkpoint_every_s`` seconds),
writes ``model.pt`` / ``metrics.json`` atomically and the ``FINISHED`` marker last. Rerunning
the same command into the directory resumes a killed run from its last checkpoint (with a
bit-identical result on CPU), says "nothing to do" for a finished one, and refuses another
configuration unless told to overwrite. With several seeds each seed gets ``seed-<s>/``, and the
top level holds the config and the aggregated ``metrics.json`` (per-seed entries, ``mean``,
sample ``std``).
"""

from __future__ import annotations

import resource
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

from prismrec.data import Dataset, load_dataset
from prismrec.eval import Evaluator
from prismrec.errors import ConfigError
from prismrec.experiment.config import ExperimentConfig
from prismrec.experiment.curves import write_curves
from prismrec.experiment.rundir import CHECKPOINT, CURVES, RunDir, run_digest
from prismrec.experiment.stages import build_model
from prismrec.train.allocator import keep_freed_memory
from prismrec.train import distributed
from prismrec.train.trainer import TrainingDiverged, fit, seed_everything

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _silent(message: str) -> None:
    """Where a non-zero rank's notes go (rank 0 speaks for the run)."""


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


def config_record(config: ExperimentConfig, dataset: Dataset, seeds: list[int]) -> dict:
    """What ``config.yaml`` holds: the resolved settings, the seeds and the protocol."""
    data = config.to_dict()
    data["seeds"] = seeds
    data["protocol"] = protocol(config, dataset)
    return data


def identity(config: ExperimentConfig, dataset: Dataset, seeds: list[int], evaluate_test: bool) -> dict:
    """A run directory's identity: settings (seed-free digest), seed(s), train split, test or not.

    A rerun into the directory continues it only when all of these are the same."""
    out: dict = {"config_digest": run_digest(config)}
    if len(seeds) > 1:
        out["seeds"] = [int(s) for s in seeds]
    else:
        out["seed"] = int(seeds[0])
    out["train_fingerprint"] = dataset.fingerprint("train")
    out["evaluate_test"] = bool(evaluate_test)
    return out


def _returned(metrics: dict, timing: dict) -> dict:
    """What :func:`run_experiment` returns: ``metrics.json`` plus ``timing`` (``timing.json``) and
    its total ``seconds`` (kept for callers; neither is in ``metrics.json``)."""
    return {**metrics, "timing": timing, "seconds": timing.get("seconds")}


def train_one_seed(
    config: ExperimentConfig,
    dataset: Dataset,
    out_dir: Path | None,
    progress: bool = True,
    evaluate_test: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
    overwrite: bool = False,
    keep_checkpoints: bool = False,
    log: Log = _stderr,
) -> tuple[dict, dict]:
    """Train with ``config.train.seed``, evaluate test once, write the run files; return
    ``(metrics, timing)``.

    With ``out_dir``: a finished run of the same identity is read back (nothing trained); an
    unfinished one resumes from its checkpoint; another run there is a :class:`RunError` unless
    ``overwrite``. ``evaluate_test=False`` never reads the test split (``metrics["test"]`` is
    None). ``on_epoch_end`` sees every epoch's history row trained in this call.
    """
    cfg = config.train
    env = distributed.from_env()  # under torchrun: rank 0 writes the run, every rank trains
    if env.active:
        cfg.device = distributed.init(env, cfg.device)
        if not env.is_main:
            progress, on_epoch_end, log = False, None, _silent
    run = RunDir(out_dir) if out_dir is not None and env.is_main else None
    ident = identity(config, dataset, [cfg.seed], evaluate_test)
    resume, action, finished = None, None, None
    note = log
    if run is not None:
        action = run.prepare(ident, overwrite)
        if action == "finished":
            log(f"{run.path}: finished with the same configuration and seed, nothing to do "
                "(--overwrite retrains it)")
            finished = run.read_metrics(), run.read_timing()
        if action == "resume":
            resume = run.load_checkpoint()
            if resume is not None and resume.get("identity") != ident:
                log(f"{run.path}: the checkpoint belongs to another run; starting from epoch 0")
                resume = None
            log(f"{run.path}: resuming from the checkpoint after epoch {resume['epoch'] - 1}"
                if resume is not None else f"{run.path}: unfinished run without a checkpoint; "
                "starting from epoch 0")

        def note(message: str) -> None:  # to the user and to run.log
            log(message)
            run.append_log(message)

    if env.active:  # every rank resumes from rank 0's checkpoint, or returns its finished run
        finished, resume = distributed.broadcast_object((finished, resume), env)
    if finished is not None:
        return finished
    if run is not None:
        run.append_log(
            f"{'resume' if resume is not None else 'start'}: {config.model} on {dataset.name} "
            f"({dataset.n_users} users, {dataset.n_items} items), seed {cfg.seed}, "
            f"epochs<={cfg.epochs}, patience {cfg.patience}, selection on valid {cfg.valid_metric}, "
            f"config digest {run_digest(config)[:12]}"
            + (f", from the checkpoint after epoch {resume['epoch'] - 1}" if resume is not None else ""))
    try:
        from prismrec.threads import apply_threads  # "auto": from the cores and the graph's size; in run.log

        apply_threads(cfg.threads, run.append_log if run is not None else None,
                      nodes=dataset.n_users + dataset.n_items)
        seed_everything(cfg.seed)
        model = build_model(config, dataset).to(cfg.device)
        evaluator = Evaluator(
            dataset, ks=cfg.topk, batch_size=cfg.eval_batch_size, mask_valid_at_test=cfg.mask_valid_at_test
        )
        history = list(resume["history"]) if resume is not None else []
        if run is not None:
            run.write_config(config_record(config, dataset, [cfg.seed]))
            run.write_history(history)  # drops rows of epochs after the checkpoint (they are redone)

        def epoch_end(row: dict) -> None:  # history written every epoch, so a killed run keeps its log
            history.append(row)
            if run is not None:
                run.write_history(history)
            if on_epoch_end is not None:
                on_epoch_end(row)

        def checkpoint(state: dict) -> None:
            run.save_checkpoint({**state, "identity": ident})

        result = fit(model, dataset, cfg, evaluator=evaluator, progress=progress, on_epoch_end=epoch_end,
                     resume=resume, checkpoint=checkpoint if run is not None else None,
                     log_line=run.append_log if run is not None else None, dist_env=env)
    except TrainingDiverged as exc:
        if run is not None:
            run.append_log(f"failed: {exc}")
            run.fail(str(exc))
            _draw(run, history, cfg.valid_metric, -1, f"{config.model} on {dataset.name} (diverged)", note)
        raise
    except KeyboardInterrupt:
        if run is not None and (run.path / CHECKPOINT).is_file():
            run.append_log("interrupted: rerun the same command to resume from the last checkpoint")
        raise
    except BaseException:
        # Failed (bad settings for this model, Ctrl-C, ...) before a checkpoint: nothing worth
        # resuming, so no trace is left and a corrected rerun is not refused as another run.
        if run is not None and action == "new" and not (run.path / CHECKPOINT).is_file():
            run.abandon()
        raise
    if not env.is_main:  # rank 0 evaluates test and writes the run; the others return its result
        return distributed.broadcast_object(None, env)
    # The only time the test split is read (and never when evaluate_test is False).
    test = evaluator.evaluate(model, "test") if evaluate_test else None
    metrics = {
        "status": "ok",
        "seed": cfg.seed,
        "valid": _strip(result.best_valid),
        "test": _strip(test) if test is not None else None,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "stop_reason": result.stop_reason,
        "users_evaluated": {"valid": result.best_valid.get("users"), "test": test.get("users") if test is not None else None},
    }
    timing = {
        "seconds": round(result.seconds, 3),
        "median_train_s": float(statistics.median(r["train_s"] for r in result.history)),
        "median_eval_s": float(statistics.median(r["eval_s"] for r in result.history)),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "resumed_at_epoch": resume["epoch"] if resume is not None else None,
    }
    if run is not None:
        run.finish(metrics, timing, model.state_dict(), keep_checkpoint=keep_checkpoints)
        run.append_log(
            f"finished: {result.stop_reason}; best epoch {result.best_epoch + 1} of {result.epochs} "
            f"(valid {cfg.valid_metric} {result.best_valid[cfg.valid_metric]:.4f}"
            + (f", test {cfg.valid_metric} {test[cfg.valid_metric]:.4f}" if test is not None else "")
            + f"); {result.seconds:.0f}s")
        _draw(run, result.history, cfg.valid_metric, result.best_epoch,
              f"{config.model} on {dataset.name}, seed {cfg.seed}", note)
    if env.active:
        distributed.broadcast_object((metrics, timing), env)
    return metrics, timing


def _draw(run: RunDir, history: list[dict], metric: str, best_epoch: int, title: str, note: Log) -> None:
    """``curves.png`` of the run (best effort: a failure is noted, never raised)."""
    if history:
        write_curves(history, metric, best_epoch, run.path / CURVES, title, log=note)


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


def require_splits(dataset: Dataset, evaluate_test: bool = True) -> None:
    """Raise :class:`~prismrec.errors.DatasetError` when ``dataset`` cannot be trained (and, with
    ``evaluate_test``, tested): its valid (or test) split is empty."""
    dataset.require_split("valid", "training selects its epoch on validation")
    if evaluate_test:
        dataset.require_split("test", "a run is evaluated on test")


def run_experiment(
    config: ExperimentConfig,
    seeds: list[int],
    out_dir: str | Path | None,
    data_dir: str | Path | None = None,
    dataset: Dataset | None = None,
    progress: bool = True,
    evaluate_test: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
    overwrite: bool = False,
    keep_checkpoints: bool = False,
    log: Log | None = None,
    train_aside: Callable[[dict[int, Path]], None] | None = None,
) -> dict:
    """Train ``config`` once per seed; return (and write) the metrics, aggregated over seeds.

    Args:
        out_dir: the run directory (None: nothing is written). Rerunning into it resumes a
            killed run from its last checkpoint, returns the recorded metrics of a finished run
            with the same settings, seeds and data ("nothing to do"), and raises
            :class:`~prismrec.errors.RunError` naming ``--overwrite`` when it holds another run
            (or is a file).
        overwrite: replace whatever run ``out_dir`` holds (only the run's own files are removed).
        keep_checkpoints: keep ``checkpoint.pt`` of each finished run (default: removed).
        evaluate_test: ``False``: the test split is never read and every ``"test"`` is ``None``.
        on_epoch_end: called with every epoch's history row (of every seed).
        log: where progress notes go (resume, nothing to do); default stderr.
        train_aside: with several seeds and ``out_dir``, trains the unfinished ones' run directories
            (``{seed: folder}``, two or more) before this process would, e.g. side by side in other
            processes (:func:`prismrec.experiment.compare.seeds_aside`); their finished runs are then
            read back here. Without it every seed trains here, one after another.

    Returns the ``metrics.json`` content, plus ``timing`` (``timing.json``: machine-dependent
    seconds and memory) and its total ``seconds``.
    """
    if not seeds:
        raise ConfigError("at least one seed is needed: give --seeds (e.g. 999) or --n-seeds")
    if len(seeds) > 1 and distributed.from_env().active:
        raise ConfigError(f"torchrun trains one seed per launch, got seeds {seeds}: give --seeds S "
                          "(launch once per seed)")
    log = log or _stderr
    keep_freed_memory()
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        RunDir(out_dir).state()  # an --out that is a file fails before the data is loaded
    dataset = dataset or load_dataset(config.dataset, data_dir)
    require_splits(dataset, evaluate_test)
    config.train.check_cut_offs(dataset.n_items, dataset.name)
    kw = dict(progress=progress, evaluate_test=evaluate_test, on_epoch_end=on_epoch_end,
              keep_checkpoints=keep_checkpoints, log=log)
    if len(seeds) == 1:
        config.train.seed = seeds[0]
        return _returned(*train_one_seed(config, dataset, out_dir, overwrite=overwrite, **kw))
    parent = RunDir(out_dir) if out_dir is not None else None
    action = None
    if parent is not None:
        action = parent.prepare(identity(config, dataset, seeds, evaluate_test), overwrite)
        if action == "finished":
            log(f"{parent.path}: finished with the same configuration and seeds, nothing to do "
                "(--overwrite retrains it)")
            return _returned(parent.read_metrics(), parent.read_timing())
        config.train.seed = seeds[0]
        parent.write_config(config_record(config, dataset, seeds))
    per_seed, timings, states = {}, {}, {str(s): "pending" for s in seeds}

    def abandon_if_nothing_kept() -> None:
        if parent is not None and action == "new" and not any(
                d.state().kind in ("running", "finished") for d in parent.seed_dirs()):
            parent.abandon()  # nothing of this run to resume (see train_one_seed)

    aside: set[int] = set()  # the seeds trained by train_aside
    if parent is not None and train_aside is not None:
        pending = {s: parent.seed(s).path for s in seeds if not parent.seed(s).is_finished()}
        if len(pending) > 1:
            parent.update_running(seeds=states | dict.fromkeys(map(str, pending), "training"))
            try:
                train_aside(pending)
            except BaseException:
                abandon_if_nothing_kept()
                raise
            aside = set(pending)
    for seed in seeds:
        config.train.seed = seed
        sub = parent.seed(seed).path if parent is not None else None
        if parent is not None:
            parent.update_running(seeds=states | {str(seed): "training"})
        try:  # a seed trained aside is read back (its "nothing to do" note left out)
            per_seed[seed], timings[seed] = train_one_seed(
                config, dataset, sub, **(kw | {"log": _silent} if seed in aside else kw))
        except TrainingDiverged:
            if parent is not None:
                parent.update_running(seeds=states | {str(seed): "failed"})
            raise
        except BaseException:
            abandon_if_nothing_kept()
            raise
        states[str(seed)] = "finished"
    config.train.seed = seeds[0]
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
        "per_seed": {str(s): m for s, m in per_seed.items()},
    }
    timing = {
        "seconds": round(sum(t.get("seconds") or 0.0 for t in timings.values()), 3),
        "per_seed": {str(s): t for s, t in timings.items()},
    }
    if parent is not None:
        parent.finish(metrics, timing)
    return _returned(metrics, timing)
