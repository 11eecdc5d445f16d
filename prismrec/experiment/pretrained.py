"""EGRA's stage 0 (ALGORITHMS.md 6.1): the pretrained item representations ``P``.

``P`` comes from a finished run of a model that exports item representations (``prismrec
train`` run dir, or its ``prismrec export`` folder), or, with ``pretrained="auto"``, from a run
trained here on the train split. Either way the recorded train fingerprint must equal the current
train split's.

``"auto"`` (6.1 step 1): with ``pretrain_search="grid"`` (default) every point of the pretraining
model's declared grid (its Config fields with ``metadata["grid"]``; MGCN: ``λ_cl`` ∈ {0.001, 0.01,
0.1}) that ``pretrain_settings`` does not fix is trained with the stage's seed on a copy of the
dataset **without its test split** (``evaluate_test=False``), and the point with the best valid
metric (``valid_metric``; ties: valid NDCG@20, then the earlier point) gives ``P``. Each point's
run is cached by train fingerprint + its config digest + seed, and the selection itself by train
fingerprint + the digest of the base config and the space + seed (``select-*.json`` next to the
runs), so the next run reuses both without training. ``pretrain_search="none"``: the pretraining
model's defaults (plus ``pretrain_settings``) only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from prismrec.errors import ConfigError, PretrainedError
from prismrec.experiment.config import declared_grid, resolve_config
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
    meta = _read_description(export)
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
    """``"auto"``: the stage-1 run of ``pre_model`` on ``dataset`` with ``seed`` whose ``P`` EGRA
    uses: the valid-best point of its grid, or its defaults (module docstring); cached."""
    epochs = {} if cfg.pretrain_epochs is None else {"epochs": cfg.pretrain_epochs}
    # Stage 1 sees the modalities the model uses (unless told otherwise), if it takes any.
    modalities = {}
    if cfg.modalities is not None and _takes_modalities(cfg.pre_model):
        modalities = {"modalities": list(cfg.modalities)}
    settings = {**modalities, **cfg.pretrain_settings, **epochs}  # a seed there is replaced by `seed`
    base = _stage_one_config(cfg.pre_model, dataset, settings)
    space = search_space(cfg.pre_model, settings) if getattr(cfg, "pretrain_search", "grid") == "grid" else {}
    if not space:
        return _train_cached(base, dataset, seed, _cache_root(cfg))
    return select_on_validation(base, settings, space, dataset, seed, _cache_root(cfg))


def search_space(model: str, fixed: dict) -> dict[str, list]:
    """``{setting: values}``: ``model``'s declared grid (:func:`~prismrec.experiment.config.declared_grid`),
    less the ``fixed`` settings."""
    return {k: v for k, v in declared_grid(model).items() if k not in fixed}


def select_on_validation(base, settings: dict, space: dict[str, list], dataset, seed: int, root: Path) -> Path:
    """Train every point of ``space`` (one ``seed`` each, test never read), record the selection
    in ``root`` and return the run dir of the valid-best point (a recorded selection is reused)."""
    metric = base.train.valid_metric
    ident = json.dumps({"base": base.digest(), "space": space, "metric": metric}, sort_keys=True, default=str)
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    record_path = root / f"select-{base.model}-{dataset.name}-train{dataset.fingerprint('train')}-{key}-seed{seed}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        record = json.loads(record_path.read_text())
        if _finished(root / record["selected_run"]):
            return root / record["selected_run"]
    trials = []
    for values in itertools.product(*space.values()):
        point = dict(zip(space, values))
        run_dir = _train_cached(_stage_one_config(base.model, dataset, {**settings, **point}), dataset, seed, root)
        valid = json.loads((run_dir / "metrics.json").read_text())["valid"]
        trials.append({"settings": point, "run": run_dir.name, "valid": valid})
    best = max(range(len(trials)), key=lambda k: (trials[k]["valid"][metric],
                                                   trials[k]["valid"].get("ndcg@20", 0.0), -k))
    record = {"model": base.model, "dataset": dataset.name, "seed": seed, "space": space,
              "selection": f"best valid {metric}; ties: valid ndcg@20, then the earlier point; test never read",
              "trials": trials, "selected": trials[best]["settings"], "selected_run": trials[best]["run"]}
    root.mkdir(parents=True, exist_ok=True)
    tmp = record_path.with_name(f".{record_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, record_path)
    return root / trials[best]["run"]


def _stage_one_config(model: str, dataset, settings: dict):
    try:
        return resolve_config(model, dataset.name, settings)
    except (KeyError, ValueError) as exc:
        raise PretrainedError(f"stage-1 settings (pre_model/pretrain_settings): {exc}") from None


def _cache_root(cfg) -> Path:
    cache = os.environ.get("PRISMREC_CACHE", "~/.cache/prismrec") + "/pretrained"
    root = Path(cfg.pretrain_cache or cache).expanduser()
    blocked = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:  # a cache folder cannot be made there (was "File exists")
        where = f"pretrain_cache={cfg.pretrain_cache!r}" if cfg.pretrain_cache else "$PRISMREC_CACHE"
        raise PretrainedError(f"{where}: {blocked} is a file, so the stage-1 cache folder {root} cannot be made "
                              "there; give a folder path")
    return root


def _train_cached(pre, dataset, seed: int, root: Path) -> Path:
    """The finished run of ``pre`` with ``seed`` on a copy of ``dataset`` without its test split:
    cached by train fingerprint + config digest + seed, trained here if absent.

    It trains in ``.<name>.partial`` next to its cache entry and is renamed to it when finished, so
    the cache never holds a half-trained run; a killed process leaves the partial run with its
    checkpoints, and the next one resumes it (:func:`~prismrec.experiment.runs.run_experiment`).
    One process at a time trains a given entry (a lock file beside it); another waits for it and
    takes the finished run."""
    key = f"{dataset.name}-train{dataset.fingerprint('train')}-cfg{pre.digest()}-seed{seed}"
    run_dir = root / f"{pre.model}-{key}"
    if _finished(run_dir):
        return run_dir
    root.mkdir(parents=True, exist_ok=True)
    partial = run_dir.with_name(f".{run_dir.name}.partial")
    with open(run_dir.with_name(f".{run_dir.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the OS if this process dies
        if _finished(run_dir):  # trained by the process this one waited for
            return run_dir
        _remove_dead_temporaries(run_dir)
        blind = dataclasses.replace(dataset, test=None)  # stage 1 cannot read test
        # Forked RNG streams: this run's own initialisation is the same with or without a cache.
        py_rng, np_rng, threads = random.getstate(), np.random.get_state(), torch.get_num_threads()
        try:
            with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
                run_experiment(pre, [seed], partial, dataset=blind, progress=False, evaluate_test=False)
        except ConfigError as exc:  # the pretraining model's own settings go through pretrain_settings
            shutil.rmtree(partial, ignore_errors=True)
            raise PretrainedError(f"stage 1 (pre_model={pre.model}): {exc} — for the pretrained model, give it "
                                  "in pretrain_settings, e.g. --set 'pretrain_settings={setting: value}'") from None
        finally:
            random.setstate(py_rng), np.random.set_state(np_rng), torch.set_num_threads(threads)
        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished entry left by an older version
        os.replace(partial, run_dir)
    return run_dir


def _remove_dead_temporaries(run_dir: Path) -> None:
    """Remove ``.<name>.<pid>.tmp`` runs that earlier versions trained in and whose process died
    (killed before it could delete them); a live process's is left alone."""
    for tmp in run_dir.parent.glob(f".{run_dir.name}.*.tmp"):
        pid = tmp.name[len(run_dir.name) + 2:-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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


def _read_description(export: Path) -> dict:
    """``export/representations.json``; a damaged one (an export killed mid-write by an older
    version, or edited) is a :class:`PretrainedError` saying how to rewrite it."""
    path = export / "representations.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        meta = exc
    if not isinstance(meta, dict):
        detail = f" ({' '.join(str(meta).split())[:80]})" if isinstance(meta, Exception) else ""
        raise PretrainedError(f"{path} is not a readable export description{detail}: export the run again "
                              "(prismrec export --run RUN), then retry")
    return meta


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
    index = _read_description(source)
    if index.get("kind") == "multi-seed index":
        seeds = sorted(index["seeds"], key=int)
        chosen = str(seed) if per_seed else seeds[0]
        if chosen not in index["seeds"]:
            raise PretrainedError(f"{source} holds seeds {seeds}, not this run's seed {seed}: "
                                  "pretrain with it, or set pretrain_per_seed=false (first seed)")
        source = (source / index["seeds"][chosen]).parent
    return source
