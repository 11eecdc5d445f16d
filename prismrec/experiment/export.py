"""Export a trained run's representations as ``.npy`` arrays plus a JSON description.

A finished run directory (``prismrec train``) holds the resolved config, the recorded protocol
(split fingerprints) and the best-validation ``model.pt``. :func:`export_representations`
rebuilds the model from the dataset and the recorded settings, loads the weights, runs **one
eval-mode forward** and writes, into ``<run>/export`` by default::

    user.npy, item.npy                  final representations z_u, z_i (float32, row = id)
    user.<name>.npy, item.<name>.npy    every auxiliary of the forward that is an N x d node
                                        matrix (users first), e.g. FREEDOM's behavior/modality
    representations.json                what each array is, and where it came from: model, run
                                        dir, config digest, seed, best epoch, valid recall@20,
                                        dataset and train-split fingerprint

The train split the model was trained on must be the one loaded now: the run's recorded train
fingerprint is compared with the dataset's and a mismatch is an error (a downstream model, e.g.
EGRA's graph built from pretrained item vectors, would otherwise leak or misalign). This is the
artifact of ALGORITHMS.md §6.1 items 2–4 (EGRA's ``P`` is ``item.npy`` or an ``item.<name>.npy``).

A multi-seed run directory (``seed-<s>/`` subdirectories) is exported seed by seed into
``<out>/seed-<s>/``, with an index ``<out>/representations.json`` listing them.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prismrec.data import Dataset, load_dataset
from prismrec.errors import DatasetError, RunError
from prismrec.experiment.config import ExperimentConfig, resolve_config
from prismrec.experiment.rundir import CONFIG, MODEL, RunDir, load_weights, write_json
from prismrec.experiment.stages import build_model
from prismrec.recommender import Output, Recommender

FORMAT = "prismrec.representations/1"
"""Version tag written into every ``representations.json``."""

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


@dataclass
class LoadedRun:
    """A finished run rebuilt in memory (see :func:`load_run`)."""

    run_dir: Path
    config: ExperimentConfig
    dataset: Dataset
    model: Recommender
    metrics: dict
    recorded_digest: str | None
    train_fingerprint: str


def export_representations(
    run_dir: str | Path, out_dir: str | Path | None = None, data_dir: str | Path | None = None
) -> Path:
    """Write a run's eval-mode representations and their description; return the output folder.

    Args:
        run_dir: a finished single-seed run directory (``config.yaml``, ``metrics.json``,
            ``model.pt``, ``FINISHED``), or a finished multi-seed one whose ``seed-<s>/`` subdirectories are such runs
            (each is exported into ``<out_dir>/seed-<s>/``).
        out_dir: destination; default ``<run_dir>/export``.
        data_dir: data directory used to find the run's dataset by name (default as
            :func:`prismrec.data.load_dataset`: ``$PRISMREC_DATA``, then ``../shared/data``).

    Raises:
        RunError: missing, unfinished (a multi-seed run lists its unfinished seeds), failed or
            mixed run, settings that no longer resolve, weights that do not
            fit the rebuilt model, or a train split whose fingerprint differs from the recorded one.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        RunDir(run_dir).verify()  # says whether it is missing or a file
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise RunError(f"--out {out_dir} is a file: give a folder for the exported arrays")
    out = Path(out_dir) if out_dir is not None else run_dir / "export"
    seed_dirs = finished_runs(run_dir)
    if seed_dirs == [run_dir]:
        _export_run(run_dir, out, data_dir, {})
        return out
    datasets: dict = {}
    _remove_previous_export(out)
    index = {"format": FORMAT, "kind": "multi-seed index", "run_dir": str(run_dir.resolve()), "seeds": {}}
    for sub in seed_dirs:
        meta = _export_run(sub, out / sub.name, data_dir, datasets)
        index["source_model"] = meta["source_model"]
        index["dataset"] = meta["dataset"]
        index["seeds"][str(meta["seed"])] = f"{sub.name}/representations.json"
    write_json(out / "representations.json", index)  # atomic: a killed export leaves no torn description
    return out


def finished_runs(run_dir: Path) -> list[Path]:
    """``[run_dir]`` for a finished single-seed run, else the ``seed-<s>/`` runs of a finished
    multi-seed run, by seed. Anything unfinished is a :class:`RunError` that says what is wrong
    (for a multi-seed run: which seeds are unfinished), so no caller uses a subset of the seeds."""
    return [r.path for r in RunDir(run_dir).finished_runs()]


def load_run(run_dir: str | Path, data_dir=None, datasets: dict | None = None) -> LoadedRun:
    """Rebuild a finished single-seed run: its config, dataset (train split checked against the
    recorded fingerprint) and model with the best-validation weights, in eval mode. ``datasets``
    caches loaded datasets across calls, keyed by ``(dataset name, str(data_dir))``.

    Only a finished, self-consistent run directory is accepted (see
    :meth:`prismrec.experiment.rundir.RunDir.verify`). Raises :class:`RunError` for a missing,
    unfinished (killed), failed or mixed run, a broken ``config.yaml``, a missing or unloadable
    ``model.pt``, settings that no longer resolve, weights that do not fit, or a different train
    split.
    """
    run = RunDir(run_dir)
    run_dir = run.path
    datasets = {} if datasets is None else datasets
    seed_dirs = [d.path.name for d in run.seed_dirs()]
    if run_dir.is_dir() and seed_dirs and not (run_dir / MODEL).exists():
        raise RunError(
            f"{run_dir} is a multi-seed run: pass one of its seed directories "
            f"({', '.join(seed_dirs)})"
        )
    run.verify()
    config_path = run_dir / CONFIG
    recorded = run.read_config()
    metrics = run.read_metrics()
    if metrics.get("status") != "ok":
        raise RunError(
            f"run {run_dir} did not finish (metrics.json status {metrics.get('status')!r}: "
            f"{metrics.get('error', 'no error recorded')}); there is nothing to export"
        )
    config = _rebuild_config(recorded, config_path)
    protocol = recorded.get("protocol") or {}

    key = (config.dataset, str(data_dir))
    if key not in datasets:
        try:
            datasets[key] = load_dataset(config.dataset, data_dir)
        except DatasetError as exc:  # it said only "dataset 'x' not found in ...", not why it was looked for
            raise DatasetError(f"run {run_dir} was trained on dataset {config.dataset!r}, which is needed to use it "
                               f"(give --data-dir the folder holding it): {exc}") from None
    dataset: Dataset = datasets[key]
    expected = (protocol.get("split_fingerprints") or {}).get("train")
    actual = dataset.fingerprint("train")
    if not expected:
        raise RunError(
            f"{config_path} records no train-split fingerprint (protocol.split_fingerprints.train), "
            "so the data cannot be checked against the run; re-run training with this version"
        )
    if expected != actual:
        raise RunError(
            f"train split mismatch: run {run_dir} was trained on a train split with fingerprint "
            f"{expected}, but dataset {config.dataset!r} loaded from "
            f"{dataset.path or 'the data directory'} has {actual}. Point --data-dir at the data "
            "the run was trained on (a different split would leak test items or misalign ids)."
        )
    recorded_digest = protocol.get("config_digest")
    digest = config.digest()
    if recorded_digest and recorded_digest != digest:
        warnings.warn(
            f"{config_path}: the rebuilt config digest {digest} differs from the recorded "
            f"{recorded_digest} (the model's settings or defaults changed since the run)",
            stacklevel=3,
        )

    model = _load_model(config, dataset, run_dir / MODEL)
    model.eval()
    return LoadedRun(run_dir, config, dataset, model, metrics, recorded_digest, actual)


def _export_run(run_dir: Path, out: Path, data_dir, datasets: dict) -> dict:
    """Export one single-seed run into ``out``; return the metadata written."""
    run = load_run(run_dir, data_dir, datasets)
    config, dataset, model, metrics = run.config, run.dataset, run.model, run.metrics
    recorded_digest, actual, digest = run.recorded_digest, run.train_fingerprint, config.digest()
    with torch.no_grad():
        output = model()
    _remove_previous_export(out)
    arrays, skipped = _write_arrays(output, model, out)
    valid = metrics.get("valid") or {}
    meta = {
        "format": FORMAT,
        "source_model": config.model,
        "run_id": run_dir.name,
        "run_dir": str(run_dir.resolve()),
        "config_digest": digest,
        "recorded_config_digest": recorded_digest,
        "seed": config.train.seed,
        "best_epoch": metrics.get("best_epoch"),
        "valid_recall@20": valid.get("recall@20"),
        "valid_metric": {config.train.valid_metric: valid.get(config.train.valid_metric)},
        "dataset": dataset.name,
        "n_users": dataset.n_users,
        "n_items": dataset.n_items,
        "train_fingerprint": actual,
        "score": "dot product z_u · z_i"
        if type(model).score is Recommender.score
        else f"model-specific ({type(model).__name__}.score); the arrays alone may not reproduce it",
        "arrays": arrays,
        "skipped_aux": skipped,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(out / "representations.json", meta)
    return meta


def _rebuild_config(recorded: dict, path: Path) -> ExperimentConfig:
    """The run's :class:`ExperimentConfig` from its ``config.yaml`` (train + params sections)."""
    try:
        model, dataset = recorded["model"], recorded["dataset"]
    except KeyError as exc:
        raise RunError(f"{path} has no {exc.args[0]!r} entry: not a run config") from None
    sections = [recorded.get(name) or {} for name in ("train", "params")]
    if not all(isinstance(section, dict) for section in sections):
        raise RunError(f"{path}: 'train' and 'params' must be mappings of settings; the file is damaged")
    settings = {**sections[0], **sections[1]}
    try:
        return resolve_config(str(model), str(dataset), settings)
    except (KeyError, ValueError, TypeError) as exc:
        raise RunError(
            f"{path}: the recorded settings no longer resolve for model {model!r} ({exc}); "
            "export with the prismrec version that trained the run"
        ) from None


def _load_model(config: ExperimentConfig, dataset: Dataset, weights: Path) -> Recommender:
    """Rebuild the model (seeded, on CPU, without touching the caller's RNG) and load ``weights``."""
    state = load_weights(weights)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"{weights} is not a state dict of tensors: it was not written by prismrec")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        try:
            model = build_model(config, dataset)
        except (KeyError, ValueError) as exc:  # e.g. the dataset lost a modality the run used
            if isinstance(exc, RunError):
                raise
            raise RunError(f"the {config.model} model of {weights.parent} cannot be rebuilt on dataset "
                           f"{dataset.name!r}: {exc}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(
            f"{weights} does not fit the rebuilt {config.model} model ({exc}); was it written by "
            "another model or another prismrec version?"
        ) from None
    return model


def _remove_previous_export(out: Path) -> None:
    """Remove what an earlier export wrote into ``out``: its ``representations.json`` first, then the
    arrays it lists (and a multi-seed index's seed exports), so a new export never sits beside
    another run's arrays (``item.behavior.npy`` of an MGCN run under a BPR run's description).
    Other files in ``out`` are left alone."""
    index = out / "representations.json"
    try:
        old = json.loads(index.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(old, dict):
        return
    index.unlink()
    for name in old.get("arrays") or {}:
        if isinstance(name, str) and _SAFE_NAME.match(name) and name.endswith(".npy"):
            (out / name).unlink(missing_ok=True)
    for rel in (old.get("seeds") or {}).values() if isinstance(old.get("seeds"), dict) else ():
        sub = Path(str(rel)).parent
        if len(sub.parts) == 1 and _SAFE_NAME.match(sub.name):
            _remove_previous_export(out / sub)


def _write_arrays(output: Output, model: Recommender, out: Path) -> tuple[dict, dict]:
    """Save the final and auxiliary node matrices; return their descriptions and what was skipped."""
    out.mkdir(parents=True, exist_ok=True)
    n_users, n_items = model.n_users, model.n_items
    arrays: dict[str, dict] = {}

    def save(file: str, tensor: torch.Tensor, rows: str, what: str) -> None:
        values = np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)
        if not np.isfinite(values).all():
            warnings.warn(f"{file} holds non-finite values", stacklevel=3)
        np.save(out / file, values)
        arrays[file] = {"shape": list(values.shape), "dtype": "float32", "rows": rows, "description": what}

    save("user.npy", output.user, "users", "final user representations z_u (eval-mode forward); row u = user u")
    save("item.npy", output.item, "items", "final item representations z_i (eval-mode forward); row i = item i")
    skipped: dict[str, str] = {}
    for name, value in output.aux.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[0] != n_users + n_items:
            shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            skipped[name] = f"not an N x d node matrix (N = {n_users + n_items}); got {shape}"
            continue
        if not _SAFE_NAME.match(name):
            skipped[name] = "name is not usable in a file name"
            continue
        what = f"auxiliary {name!r} of the eval-mode forward ({type(model).__name__})"
        save(f"user.{name}.npy", value[:n_users], "users", f"{what}, user rows")
        save(f"item.{name}.npy", value[n_users:], "items", f"{what}, item rows")
    return arrays, skipped
