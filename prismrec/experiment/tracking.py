"""Optional experiment tracking with MLflow or TensorBoard (``prismrec train --track TARGET``).

``TARGET`` ``tensorboard:FOLDER`` writes TensorBoard event files to ``FOLDER/<run name>`` (view
with ``tensorboard --logdir FOLDER``; needs ``tensorboard``): the settings as text, every
epoch's loss terms and validation metrics as scalars (step = epoch), the final metrics.
Any other ``TARGET`` is MLflow's.

One MLflow run per ``prismrec train``: the resolved settings as params, every epoch's loss terms
and validation metrics as metrics (``@`` written ``_at_``: ``valid_recall_at_20``; step = epoch; the seeds of a multi-seed run follow one another
on the same steps), the final valid/test metrics, and the run directory's ``config.yaml``,
``metrics.json``, ``run.log`` and ``curves.png`` as artifacts. The run directory stays the record
prismrec itself reads; tracking is a copy for browsing and comparing in MLflow's UI.

``URI`` is any MLflow tracking URI (``http://host:5000``, ``sqlite:///path.db``, ...) or a local
folder, which becomes ``sqlite:///FOLDER/mlflow.db`` with artifacts in ``FOLDER/artifacts``
(MLflow's own local default, its file store, is in maintenance mode). Needs ``mlflow`` (or the
lighter ``mlflow-skinny``) installed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from prismrec.errors import ConfigError

EXPERIMENT = "prismrec"
ARTIFACTS = ("config.yaml", "metrics.json", "timing.json", "run.log", "curves.png")


def resolve_uri(target: str) -> tuple[str, str | None]:
    """``(tracking URI, artifact location or None)`` for ``--track``'s value."""
    if "://" in target or target.startswith(("sqlite:", "file:", "databricks")):
        return target, None
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target)
    if scheme:  # was taken as a folder named like that ('mlflow:'), in the working directory
        raise ConfigError(f"--track {target!r}: {scheme[0]!r} is not a tracking target prismrec knows; give a "
                          f"folder (a local MLflow store), an MLflow tracking URI (http://HOST:5000, "
                          f"sqlite:///PATH.db, file:PATH, databricks) or tensorboard:FOLDER")
    folder = Path(target).expanduser().resolve()
    _check_folder(folder, target)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def _check_folder(folder: Path, target: str) -> None:
    if folder.exists() and not folder.is_dir():  # was "File exists" (MLflow) or "FILE/run: Not a directory"
        raise ConfigError(f"--track {target}: {folder} is an existing file, not a folder; give a folder for the "
                          "tracking files")


def make_tracker(target: str):
    """The tracker for ``--track``'s value: TensorBoard for ``tensorboard:FOLDER``, else MLflow."""
    if not target.strip():  # was no tracking at all, silently
        raise ConfigError("--track '' names no target: give a folder (a local MLflow store), an MLflow tracking "
                          "URI (http://HOST:5000) or tensorboard:FOLDER")
    if target.startswith("tensorboard:"):
        return TensorBoardTracker(target.partition(":")[2])
    return MlflowTracker(target)


class TensorBoardTracker:
    """Logs one prismrec run as TensorBoard scalars; see the module docstring."""

    def __init__(self, folder: str) -> None:
        if not folder:
            raise ConfigError("--track tensorboard:FOLDER needs a folder, e.g. --track tensorboard:runs/tb")
        _check_folder(Path(folder).expanduser(), f"tensorboard:{folder}")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--track tensorboard:... needs TensorBoard: pip install tensorboard") from None
        self._writer_class, self.folder, self.writer = SummaryWriter, Path(folder).expanduser(), None

    def start(self, settings: dict, name: str) -> str:
        """Open ``FOLDER/name`` and record ``settings`` (nested keys joined with dots) as text."""
        self.writer = self._writer_class(log_dir=str(self.folder / name))
        table = "\n".join(f"| {k} | {v} |" for k, v in _flatten(settings).items())
        self.writer.add_text("settings", "| setting | value |\n|---|---|\n" + table)
        return str(self.folder / name)

    def epoch(self, row: dict) -> None:
        """One history row's numbers at step ``row['epoch']`` (suitable as ``on_epoch_end``)."""
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(float(value)):
                self.writer.add_scalar(key, float(value), int(row["epoch"]))

    def finish(self, metrics: dict, run_dir: Path | None, status: str = "FINISHED") -> None:
        """The final valid/test metrics and the status; close the event file."""
        for split in ("valid", "test"):
            for key, value in (metrics.get(split) or {}).items():
                self.writer.add_scalar(f"final_{split}/{key}", float(value), 0)
        self.writer.add_text("status", status)
        self.writer.close()

    def describe(self) -> str:
        return f"TensorBoard ({self.writer.log_dir}; tensorboard --logdir {self.folder})"


class MlflowTracker:
    """Logs one prismrec run to MLflow; see the module docstring."""

    def __init__(self, target: str, experiment: str = EXPERIMENT) -> None:
        try:
            import mlflow
        except ImportError:
            raise ConfigError("--track needs MLflow: pip install mlflow (or mlflow-skinny)") from None
        import logging

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.mlflow = mlflow
        self.uri, artifacts = resolve_uri(target)
        mlflow.set_tracking_uri(self.uri)
        try:
            if mlflow.get_experiment_by_name(experiment) is None:
                mlflow.create_experiment(experiment, artifact_location=artifacts)
            mlflow.set_experiment(experiment)
        except mlflow.exceptions.MlflowException as exc:  # an unreachable server: was a traceback
            raise ConfigError(f"--track {target}: MLflow at {self.uri} cannot be used ({' '.join(str(exc).split())}); "
                              "start the server or give a reachable tracking URI, or a folder for a local "
                              "store") from None
        self.run_id: str | None = None

    def start(self, settings: dict, name: str) -> str:
        """Open the MLflow run named ``name`` and log ``settings`` (nested keys joined with dots)."""
        run = self.mlflow.start_run(run_name=name)
        self.run_id = run.info.run_id
        self.mlflow.log_params({k: str(v)[:500] for k, v in _flatten(settings).items()})
        return self.run_id

    def epoch(self, row: dict) -> None:
        """Log one history row's numbers at step ``row['epoch']`` (suitable as ``on_epoch_end``)."""
        values = {_name(k): float(v) for k, v in row.items()
                  if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(float(v))}
        self.mlflow.log_metrics(values, step=int(row["epoch"]))

    def finish(self, metrics: dict, run_dir: Path | None, status: str = "FINISHED") -> None:
        """Log the final valid/test metrics and the run directory's files; close the run."""
        final = {_name(f"final_{split}_{k}"): float(v)
                 for split in ("valid", "test") for k, v in (metrics.get(split) or {}).items()}
        if final:
            self.mlflow.log_metrics(final)
        if run_dir is not None:
            for name in ARTIFACTS:
                if (Path(run_dir) / name).is_file():
                    self.mlflow.log_artifact(str(Path(run_dir) / name))
        self.mlflow.end_run(status=status)

    def describe(self) -> str:
        return f"MLflow ({self.uri}), run {self.run_id}"


def _name(key: str) -> str:
    """An MLflow metric name (no ``@``): ``valid_recall@20`` -> ``valid_recall_at_20``."""
    return key.replace("@", "_at_")


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
