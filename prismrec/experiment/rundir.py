"""The run directory: its layout, how it is written, and how it is read (DESIGN.md §3).

A single-seed run directory holds::

    config.yaml     fully resolved settings + protocol (split fingerprints, masking, seed)
    history.csv     one row per epoch: each loss term, valid metrics, timings (written as it goes)
    checkpoint.pt   the latest resumable training state (only while the run is unfinished,
                    or kept on request)
    model.pt        the best-validation state dict
    metrics.json    {"status", "seed", "valid", "test", "best_epoch", "epochs", "stop_reason", ...}:
                    only what the seed and the data determine, so a resumed run's file is
                    bit-identical to an uninterrupted one's
    timing.json     what the machine determines: wall seconds, median epoch times, peak memory
    RUNNING         state file while the run works: its identity (config digest, seed)
    FINISHED        finish marker, written last: identity + SHA-256 of config.yaml, metrics.json
                    and model.pt
    FAILED          instead of FINISHED when training diverged or was stopped (e.g. pruned)
    run.log         what the progress display showed (one line per epoch), with start, resume and
                    finish lines; appended as the run goes (a resumed run continues it)
    curves.png      each loss term and the validation metric per epoch, best epoch marked
                    (drawn once the run ends; informative, so neither it nor run.log is among
                    the files the finish marker hashes)

A multi-seed run directory holds ``seed-<s>/`` single-seed directories, and at the top a
``config.yaml``, the aggregated ``metrics.json`` and ``timing.json``, and its own ``RUNNING``
(which lists the seeds' states) / ``FINISHED`` markers.

Protocol: a run first writes ``RUNNING``, then works in place; ``model.pt`` and ``metrics.json``
are written atomically (temporary file + ``os.replace``) and ``FINISHED`` comes last, after which
``RUNNING`` and the checkpoint are removed. A reader (:meth:`RunDir.verify`) accepts only a
directory whose ``FINISHED`` marker matches the files beside it, so an unfinished, killed or
mixed directory (a new config beside an old model) is never taken for a finished run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from prismrec.errors import RunError

CONFIG = "config.yaml"
HISTORY = "history.csv"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METRICS = "metrics.json"
TIMING = "timing.json"
RUNNING = "RUNNING"
FINISHED = "FINISHED"
FAILED = "FAILED"
RUN_LOG = "run.log"
CURVES = "curves.png"
SEED_PREFIX = "seed-"
VERIFIED_FILES = (CONFIG, METRICS, MODEL)
"""Files whose hashes the finish marker records (a multi-seed parent has no model)."""

RUN_FILES = (FINISHED, FAILED, RUNNING, CONFIG, HISTORY, CHECKPOINT, MODEL, METRICS, TIMING, RUN_LOG,
             CURVES)
"""Every file of the layout, markers first (so a half-cleared directory is never 'finished')."""
DERIVED = ("export", "gates", "report")
"""Folders other commands write into a run directory; they go when the run is overwritten."""

IDENTITY_EXCLUDE = ("seed", "device", "threads", "checkpoint_every_s")
"""Settings that do not change what a run computes (the seed is recorded separately)."""


def run_digest(config) -> str:
    """The digest identifying an :class:`ExperimentConfig`'s run, independent of the seed, the
    device, the thread count and the checkpoint cadence."""
    return config.digest(exclude=IDENTITY_EXCLUDE)


def write_atomic(path: Path, data: bytes | str, durable: bool = True) -> None:
    """Write ``path`` so that a reader sees the old file or the whole new one, never a part
    (``durable=False``: no ``fsync``, see :func:`save_torch`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """:func:`write_atomic` of ``data`` as indented JSON."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def save_torch(path: Path, obj: Any, durable: bool = True) -> None:
    """``torch.save`` to a temporary file, then rename (atomic).

    The temporary file has the final name, in a private folder beside it: ``torch.save`` records
    the file's name inside the archive, so a temporary name (with a process id) would make the
    same weights saved by two processes differ in their bytes. ``durable=False`` skips the
    ``fsync``: the rename is still atomic for a killed process (the page cache outlives it), only
    a power cut could lose the file - right for a checkpoint rewritten every epoch."""
    path = Path(path)
    folder = path.parent / f".tmp-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    tmp = folder / path.name
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    _remove_if_empty(folder)


def load_weights(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a missing, truncated or unsafe file is a
    :class:`RunError` (a file that needs arbitrary code to load is never loaded)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} is missing: the run directory holds no trained weights")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        # Only the unpickler's own finding is quoted: torch's advice around it (loading with the
        # safety check off, allow-listing globals) must never reach a user about an unknown file.
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.\s|\.?$)", str(exc), re.MULTILINE)
        reason = f" (the safe loader refused it: {found.group(1)})" if found else ""
        raise RunError(
            f"{path} is not a tensor file prismrec can load safely{reason}: it is corrupted, "
            "truncated, or was not written by prismrec. Retrain the run (or restore the file "
            "from where it was trained)"
        ) from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _seed_key(path: Path) -> tuple:
    tail = path.name[len(SEED_PREFIX):]
    return (not tail.isdigit(), int(tail) if tail.isdigit() else 0, path.name)


def _writer() -> dict:
    """Who writes a ``RUNNING`` marker: this process and machine."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _live_writer(marker: dict | None) -> int | None:
    """The process id of the prismrec process on this machine that wrote ``marker`` (a ``RUNNING``
    file) if it is still running and is not this process, else None. Only a process whose command
    line names prismrec counts, so a process id reused since by another program is not taken for
    the run's writer."""
    pid = (marker or {}).get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or pid == os.getpid() \
            or marker.get("host") != socket.gethostname():
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # gone (or no /proc to tell)
    return pid if b"prismrec" in command else None


@dataclass
class RunState:
    """What :meth:`RunDir.state` found: ``kind`` is ``absent``, ``empty``, ``running``,
    ``finished``, ``failed`` or ``legacy`` (run files without a marker)."""

    kind: str
    identity: dict | None = None
    detail: dict | None = None


class RunDir:
    """One run directory (single seed or multi-seed parent): layout, writing and reading."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ---- layout -------------------------------------------------------------------------------

    def seed(self, seed: int) -> "RunDir":
        """The ``seed-<s>/`` run of a multi-seed directory."""
        return RunDir(self.path / f"{SEED_PREFIX}{seed}")

    def seed_dirs(self) -> list["RunDir"]:
        """Every ``seed-<s>/`` folder, numeric seeds first in numeric order."""
        if not self.path.is_dir():
            return []
        found = [p for p in self.path.glob(f"{SEED_PREFIX}*") if p.is_dir()]
        return [RunDir(p) for p in sorted(found, key=_seed_key)]

    # ---- state --------------------------------------------------------------------------------

    def _marker(self, name: str) -> dict:
        path = self.path / name
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return data
        except (OSError, ValueError) as exc:
            raise RunError(f"{path} is unreadable ({exc}): the run directory is damaged; rerun "
                           "with --overwrite or into a new --out") from None

    def state(self) -> RunState:
        """The directory's state from its markers (no file is hashed here)."""
        if not self.path.exists():
            return RunState("absent")
        if not self.path.is_dir():
            raise RunError(f"{self.path} is a file, not a run directory: choose another --out")
        # FINISHED first: a run killed between writing FINISHED and removing RUNNING is finished.
        for name, kind in ((FINISHED, "finished"), (RUNNING, "running"), (FAILED, "failed")):
            if (self.path / name).is_file():
                data = self._marker(name)
                return RunState(kind, data.get("identity"), data)
        if any((self.path / f).exists() for f in (CONFIG, METRICS, MODEL, HISTORY)) or self.seed_dirs():
            return RunState("legacy")
        return RunState("empty")

    def describe(self) -> str:
        """One line on the state, e.g. for an error message; lists a parent's unfinished seeds."""
        state = self.state()
        if state.kind == "running":
            text = f"{self.path} is unfinished (killed, or still training)"
            seeds = self.unfinished_seeds()
            if seeds:
                text += f"; unfinished seeds: {', '.join(seeds)}"
            ckpt = self.path / CHECKPOINT
            if ckpt.is_file():
                text += "; a checkpoint is there to resume from"
            return text
        if state.kind == "failed":
            return f"{self.path} failed: {(state.detail or {}).get('error', 'no reason recorded')}"
        if state.kind == "legacy":
            return (f"{self.path} has run files but no {FINISHED} marker: it was interrupted, or "
                    "written by a prismrec older than the run-directory protocol")
        return f"{self.path} is {state.kind}"

    def unfinished_seeds(self) -> list[str]:
        """``seed-<s>`` folders (or expected seeds of a parent's identity) not finished."""
        expected = (self.state().identity or {}).get("seeds") if self.path.is_dir() else None
        names = [f"{SEED_PREFIX}{s}" for s in expected] if expected else [d.path.name for d in self.seed_dirs()]
        out = []
        for name in names:
            kind = RunDir(self.path / name).state().kind
            if kind != "finished":
                out.append(f"{name} ({'not started' if kind in ('absent', 'empty') else kind})")
        return out

    # ---- writing ------------------------------------------------------------------------------

    def prepare(self, identity: dict, overwrite: bool = False) -> str:
        """Get the directory ready for the run ``identity``; return what to do:

        - ``"finished"``: it already holds this run, finished and intact (nothing to do; a finished
          run whose files changed or went missing since is a :class:`RunError`, as for its readers);
        - ``"resume"``: it holds this run unfinished (continue from the checkpoint, if any);
        - ``"new"``: it is new or empty (or ``overwrite`` cleared it), ``RUNNING`` is written.

        A directory holding another run (another config or seed), a failed or pre-protocol run
        is refused with a :class:`RunError` naming ``--overwrite``, unless ``overwrite``.
        ``--out`` pointing at a file is always refused.
        """
        state = self.state()
        writer = _live_writer(state.detail) if state.kind == "running" else None
        if writer is not None:  # resuming (or clearing) it now would train twice into one folder
            raise RunError(f"{self.path} is being trained by process {writer} on this machine: wait for it "
                           "to finish (rerun then says nothing to do), or stop it and rerun to resume")
        if overwrite and state.kind not in ("absent", "empty"):
            self.clear()
            state = RunState("empty")
        if state.kind in ("running", "finished") and state.identity == identity:
            if state.kind == "finished":  # a file changed or missing, a seed folder gone: not "nothing to do"
                self.finished_runs()
                return "finished"
            write_json(self.path / RUNNING, {**(state.detail or {}), **_writer()})  # the resumer is the writer now
            return "resume"
        if state.kind == "failed" and state.identity == identity:
            self.clear()  # same settings: a fresh attempt (the code or data may have changed)
        elif state.kind not in ("absent", "empty"):
            what = {
                "running": "an unfinished run with another configuration or seed",
                "finished": "a finished run with another configuration or seed",
                "failed": "a failed run with another configuration or seed",
                "legacy": "run files without a finish marker (an interrupted or pre-protocol run)",
            }[state.kind]
            differs = _differences(state.identity or {}, identity) if state.kind != "legacy" else ""
            raise RunError(
                f"{self.path} holds {what}{differs}: rerun with --overwrite to replace it, or "
                "choose a new --out"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / RUNNING, {"identity": identity, **_writer()})
        return "new"

    def update_running(self, **info: Any) -> None:
        """Add ``info`` (e.g. the seeds' states of a parent) to the ``RUNNING`` file."""
        data = self._marker(RUNNING)
        data.update(info)
        write_json(self.path / RUNNING, data)

    def clear(self) -> None:
        """Remove every file of the layout (and seed folders, exports) - nothing else."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for sub in self.seed_dirs():
            sub.clear()
            _remove_if_empty(sub.path)
        for name in DERIVED:
            shutil.rmtree(self.path / name, ignore_errors=True)
        for path in self.path.glob("evaluation-*.json"):
            path.unlink(missing_ok=True)
        for path in self.path.glob(".*.tmp"):  # left by a write that was killed
            path.unlink(missing_ok=True)
        for path in self.path.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)

    def abandon(self) -> None:
        """Remove an attempt that left nothing worth resuming: the run's files, and the folder
        itself when nothing else is in it."""
        self.clear()
        _remove_if_empty(self.path)

    def write_config(self, data: dict) -> None:
        """Write ``config.yaml`` (atomically)."""
        write_atomic(self.path / CONFIG, yaml.safe_dump(data, sort_keys=False))

    def write_history(self, rows: list[dict]) -> None:
        """Write the whole ``history.csv`` (atomically; a resumed run rewrites the rows it kept)."""
        import pandas as pd

        write_atomic(self.path / HISTORY, pd.DataFrame(rows).to_csv(index=False), durable=False)

    def append_log(self, line: str) -> None:
        """Append one line, time-stamped, to ``run.log`` (flushed at once, so a killed run keeps
        what it showed). The log is informative: it is not hashed by the finish marker."""
        import time

        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path / RUN_LOG, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {line}\n")

    def read_history(self) -> list[dict]:
        """The rows of ``history.csv`` (empty when absent: informative only); a damaged file
        (unparsable, or without a whole-number ``epoch`` per row) is a :class:`RunError`."""
        import pandas as pd

        path = self.path / HISTORY
        if not path.is_file():
            return []
        try:
            frame = pd.read_csv(path)
            epochs = pd.to_numeric(frame["epoch"], errors="coerce")
            if not len(frame) or epochs.isna().any() or (epochs % 1 != 0).any():
                raise ValueError("column 'epoch' needs one whole number per row")
        except (OSError, ValueError, KeyError) as exc:
            reason = f"no column {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())
            raise RunError(f"{path} is damaged ({reason}): restore it, or delete it to go without "
                           "training curves") from None
        return frame.to_dict("records")

    def save_checkpoint(self, state: dict) -> None:
        """Write ``checkpoint.pt`` atomically (not fsynced: see :func:`save_torch`)."""
        save_torch(self.path / CHECKPOINT, state, durable=False)

    def load_checkpoint(self) -> dict | None:
        """The checkpoint of an unfinished run, or None; an unreadable one is a RunError."""
        path = self.path / CHECKPOINT
        return load_weights(path) if path.is_file() else None

    def finish(self, metrics: dict, timing: dict, model_state: dict | None = None,
               keep_checkpoint: bool = False) -> None:
        """Write ``model.pt`` (when given), ``metrics.json``, ``timing.json`` atomically, then the
        ``FINISHED`` marker; remove ``RUNNING`` and (unless kept) the checkpoint."""
        identity = self._marker(RUNNING).get("identity")
        if model_state is not None:
            save_torch(self.path / MODEL, model_state)
        write_json(self.path / METRICS, metrics)
        write_json(self.path / TIMING, timing)
        files = {name: _sha256(self.path / name) for name in VERIFIED_FILES if (self.path / name).is_file()}
        write_json(self.path / FINISHED, {"identity": identity, "files": files})
        (self.path / RUNNING).unlink(missing_ok=True)
        if not keep_checkpoint:
            (self.path / CHECKPOINT).unlink(missing_ok=True)

    def fail(self, error: str, status: str = "failed") -> None:
        """Record a run that cannot finish (diverged, pruned): ``metrics.json`` with ``status``
        and the error, the ``FAILED`` marker; the checkpoint is removed."""
        identity = self._marker(RUNNING).get("identity") if (self.path / RUNNING).is_file() else None
        write_json(self.path / METRICS, {"status": status, "error": error, "seed": (identity or {}).get("seed")})
        write_json(self.path / FAILED, {"identity": identity, "status": status, "error": error})
        (self.path / RUNNING).unlink(missing_ok=True)
        (self.path / CHECKPOINT).unlink(missing_ok=True)

    # ---- reading ------------------------------------------------------------------------------

    def _not_a_folder(self) -> str:
        if self.path.exists():
            return f"{self.path} is a file, not a run directory: pass the run's folder"
        return f"run directory {self.path} does not exist"

    def verify(self) -> dict:
        """Check that this is a finished, self-consistent run directory; return its marker.

        Raises :class:`RunError` saying what is wrong: missing, unfinished (killed or running),
        failed, pre-protocol, a file changed or missing since the run finished (a mixed run).
        """
        if not self.path.is_dir():
            raise RunError(self._not_a_folder())
        state = self.state()
        if state.kind == "running":
            raise RunError(f"{self.describe()}: rerun the same command to resume it; "
                           "it cannot be used before it finishes")
        if state.kind == "failed":
            raise RunError(f"run {self.describe()}; there is no trained model to use")
        if state.kind == "legacy":
            raise RunError(f"{self.describe()}; retrain it (prismrec train ... --out a new folder)")
        if state.kind != "finished":
            raise RunError(f"{self.path} is not a finished run directory of `prismrec train` "
                           f"(no {CONFIG}, {METRICS} or {FINISHED} marker)")
        files = (state.detail or {}).get("files")
        if not isinstance(files, dict) or CONFIG not in files or METRICS not in files:
            raise RunError(f"{self.path / FINISHED} is damaged (no file hashes): retrain the run")
        for name, digest in files.items():
            path = self.path / name
            if not path.is_file():
                raise RunError(f"{path} is missing: the run directory {self.path} is incomplete; "
                               "retrain it or restore the file")
            if _sha256(path) != digest:
                raise RunError(
                    f"{path} changed after the run finished (its digest differs from the one "
                    f"recorded in {FINISHED}): {self.path} mixes files of different runs. Retrain "
                    "it with --overwrite, or into a new --out"
                )
        return state.detail

    def read_config(self) -> dict:
        """The parsed ``config.yaml`` (a broken or non-mapping file is a RunError)."""
        path = self.path / CONFIG
        try:
            data = yaml.safe_load(path.read_text())
        except OSError:
            raise RunError(f"{path} is missing: {self.path} is not a complete run directory") from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" (line {where.line + 1})" if where is not None else ""
            raise RunError(f"{path} is not valid YAML{at}: the run directory is damaged; retrain "
                           "the run or restore the file") from None
        if not isinstance(data, dict):
            raise RunError(f"{path} is not a run configuration (expected a mapping of settings)")
        return data

    def read_metrics(self) -> dict:
        """The parsed ``metrics.json`` (a broken file is a RunError)."""
        path = self.path / METRICS
        try:
            data = json.loads(path.read_text())
        except OSError:
            raise RunError(f"{path} is missing: {self.path} is not a complete run directory") from None
        except ValueError as exc:
            raise RunError(f"{path} is not valid JSON ({exc}): the run directory is damaged") from None
        if not isinstance(data, dict):
            raise RunError(f"{path} is not a metrics record")
        return data

    def read_timing(self) -> dict:
        """``timing.json`` (empty when absent: timings are informative, never required)."""
        try:
            return json.loads((self.path / TIMING).read_text())
        except (OSError, ValueError):
            return {}

    def is_finished(self) -> bool:
        """Whether :meth:`verify` accepts the directory."""
        try:
            self.verify()
            return True
        except RunError:
            return False

    def finished_runs(self) -> list["RunDir"]:
        """The single-seed runs of a finished directory: ``[self]``, or every seed of a finished
        multi-seed parent (numeric order). An unfinished parent is refused, listing its
        unfinished seeds, so no caller silently uses a subset of the seeds."""
        if not self.path.is_dir():
            raise RunError(self._not_a_folder())
        state = self.state()
        seeds = self.seed_dirs()
        is_parent = bool(seeds) or "seeds" in (state.identity or {})
        if not is_parent:
            self.verify()
            return [self]
        if state.kind != "finished":
            missing = self.unfinished_seeds()
            detail = f"; unfinished seeds: {', '.join(missing)}" if missing else ""
            raise RunError(
                f"multi-seed run {self.path} is not finished{detail}. Rerun the same command to "
                "finish it, or pass one finished seed directory"
            )
        self.verify()
        recorded = [f"{SEED_PREFIX}{s}" for s in (state.identity or {}).get("seeds") or []]
        found = [d.path.name for d in seeds]
        problems = [f"{n} is missing" for n in recorded if n not in found] + \
            [f"{n} is not one of them (a folder of another run?)" for n in found if recorded and n not in recorded]
        if recorded and problems:
            raise RunError(f"multi-seed run {self.path} finished with {', '.join(recorded)}, but "
                           f"{'; '.join(problems)}: restore its seed folders, or retrain it with --overwrite")
        for seed in seeds:
            seed.verify()
        return seeds


_IDENTITY_NAMES = {"config_digest": "settings (config digest)", "seed": "seed", "seeds": "seeds",
                   "train_fingerprint": "train split (fingerprint)", "evaluate_test": "test evaluation"}


def _differences(recorded: dict, asked: dict) -> str:
    """`` (seed: recorded 1, asked 2; ...)`` for the identity entries that differ."""
    keys = [k for k in dict.fromkeys([*recorded, *asked]) if recorded.get(k) != asked.get(k)]
    parts = [f"{_IDENTITY_NAMES.get(k, k)}: recorded {recorded.get(k, '-')}, asked {asked.get(k, '-')}" for k in keys]
    return f" ({'; '.join(parts)})" if parts else ""


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass

