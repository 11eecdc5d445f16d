"""EGRA's stage 0 (ALGORITHMS.md 6.1): the pretrained item representations ``P``.

``P`` comes from a finished run of a model that exports item representations (``prismrec
train`` run dir, or its ``prismrec export`` folder), or, with ``pretrained="auto"``, from a run
trained here on the train split (selected on validation, the test split never read) and cached
by train fingerprint + stage-1 config digest + seed. Either way the recorded train fingerprint
must equal the current train split's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from prismrec.errors import PretrainedError
from prismrec.experiment.config import resolve_config
from prismrec.experiment.export import export_representations
from prismrec.experiment.rundir import RunDir
from prismrec.experiment.runs import run_experiment
from prismrec.models import get_model

PRE_REP_FILES = dict(final="item.npy", behavior="item.behavior.npy", modality="item.modality.npy")


def load_pretrained_items(cfg, dataset, seed: int) -> tuple[np.ndarray, str, str]:
    """``(P, run, file)``: ``P`` (``n_I x d``, float32) from ``cfg.pretrained`` (a run or export
    dir, or ``"auto"``), checked against ``dataset``; ``seed`` picks a multi-seed run's seed."""
    auto = cfg.pretrained == "auto"
    source = pretrain(cfg, dataset, seed) if auto else Path(cfg.pretrained).expanduser()
    export = _export_dir(source, dataset, seed, cfg.pretrain_per_seed)
    meta = json.loads((export / "representations.json").read_text())
    path = export / PRE_REP_FILES[cfg.pre_rep]
    if not path.is_file():
        raise PretrainedError(f"{export} has no {path.name} (pre_rep={cfg.pre_rep!r}), only "
                              f"{sorted(meta.get('arrays', {}))}: choose another pre_rep")
    p, what = np.load(path), f"pretrained representations {path}"
    if p.ndim != 2 or p.shape[0] != dataset.n_items:
        raise PretrainedError(f"{what} have shape {p.shape}, but dataset {dataset.name!r} has "
                              f"{dataset.n_items} items: P needs one row per item")
    if not np.isfinite(p).all():
        raise PretrainedError(f"{what} hold NaN or infinite values; retrain that run")
    recorded, actual = meta.get("train_fingerprint"), dataset.fingerprint("train")
    if recorded != actual:
        raise PretrainedError(
            f"{what} come from a train split with fingerprint {recorded}, but dataset "
            f"{dataset.name!r} has {actual}: pretrain on this exact split (another split "
            "would leak held-out items or misalign ids), or use pretrained=auto")
    return p.astype(np.float32), meta.get("run_dir", str(source)), str(path)


def pretrain(cfg, dataset, seed: int) -> Path:
    """``"auto"``: train ``pre_model`` on ``dataset`` with ``seed`` (selected on validation,
    test never read); cached by train fingerprint + stage-1 config digest + seed."""
    epochs = {} if cfg.pretrain_epochs is None else {"epochs": cfg.pretrain_epochs}
    # Stage 1 sees the modalities the model uses (unless told otherwise), if it takes any.
    modalities = {}
    if cfg.modalities is not None and _takes_modalities(cfg.pre_model):
        modalities = {"modalities": list(cfg.modalities)}
    settings = {**modalities, **cfg.pretrain_settings, **epochs}  # a seed there is replaced by `seed`
    try:
        pre = resolve_config(cfg.pre_model, dataset.name, settings)
    except (KeyError, ValueError) as exc:
        raise PretrainedError(f"stage-1 settings (pre_model/pretrain_settings): {exc}") from None
    cache = os.environ.get("PRISMREC_CACHE", "~/.cache/prismrec") + "/pretrained"
    key = f"{dataset.name}-train{dataset.fingerprint('train')}-cfg{pre.digest()}-seed{seed}"
    run_dir = Path(cfg.pretrain_cache or cache).expanduser() / f"{pre.model}-{key}"
    if _finished(run_dir):
        return run_dir
    tmp = run_dir.with_name(f".{run_dir.name}.{os.getpid()}.tmp")  # never a half-written cache
    # Forked RNG streams: this run's own initialisation is the same with or without a cache.
    py_rng, np_rng, threads = random.getstate(), np.random.get_state(), torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            run_experiment(pre, [seed], tmp, dataset=dataset, progress=False, evaluate_test=False)
        with contextlib.suppress(OSError):  # another process may have finished it first
            os.replace(tmp, run_dir)
    finally:
        random.setstate(py_rng), np.random.set_state(np_rng), torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return run_dir


def _takes_modalities(model: str) -> bool:
    try:
        return "modalities" in {f.name for f in dataclasses.fields(get_model(model).Config)}
    except KeyError:  # an unknown pre_model is reported by resolve_config
        return False


def _finished(run_dir: Path) -> bool:
    """A cached stage-1 run that may be used: finished (run protocol), or written before the
    protocol had markers (only finished runs were ever moved into the cache, below)."""
    run = RunDir(run_dir)
    if run.is_finished():
        return True
    return run.path.is_dir() and run.state().kind == "legacy" and (run_dir / "metrics.json").is_file()


def _export_dir(source: Path, dataset, seed: int, per_seed: bool) -> Path:
    """The single-seed export folder of a run or export dir (exporting the run if needed)."""
    if not source.is_dir():
        raise PretrainedError(f"pretrained={str(source)!r} is not a directory: give a run dir of"
                              " `prismrec train`, its `prismrec export` folder, or pretrained=auto")
    if not (source / "representations.json").is_file():
        if not (source / "export" / "representations.json").is_file():
            try:  # the run's dataset is looked up by name next to the current one
                export_representations(source, None, dataset.path.parent if dataset.path else None)
            except (ValueError, OSError) as exc:
                raise PretrainedError(f"pretrained={str(source)!r}: {exc}") from None
        source = source / "export"
    index = json.loads((source / "representations.json").read_text())
    if index.get("kind") == "multi-seed index":
        seeds = sorted(index["seeds"], key=int)
        chosen = str(seed) if per_seed else seeds[0]
        if chosen not in index["seeds"]:
            raise PretrainedError(f"{source} holds seeds {seeds}, not this run's seed {seed}: "
                                  "pretrain with it, or set pretrain_per_seed=false (first seed)")
        source = (source / index["seeds"][chosen]).parent
    return source
