"""Many ``prismrec tune`` workers on one Optuna study: storages, heartbeats, stale trials, a claim.

Workers share the study through its storage and the search folder (``--out``: trial run
directories, the final runs). What keeps them from stepping on each other:

- **Storage** (:func:`open_storage`): the default SQLite file ``<out>/study.db``; any SQLAlchemy
  URL Optuna accepts (``postgresql://user@host/db``, ``mysql+pymysql://...``) for workers on
  several machines; ``journal:PATH`` for Optuna's JournalStorage on a file (a shared file system
  without a database server; the file is locked on every write).
- **Trials**: each worker asks the storage for its next trial, so no trial is handed out twice;
  a retry waiting in the queue is taken first.
- **Heartbeat** (:class:`Heartbeat`): while a trial runs, its worker stamps it every
  ``interval`` seconds (the trial's ``heartbeat`` user attribute) and records who it is
  (``worker``: host and process id). A ``RUNNING`` trial is **stale** when its worker's process
  is gone (same host) or its stamp is older than ``grace`` seconds (any host):
  :func:`fail_stale_trials` marks it failed ("interrupted"; the storage lets exactly one worker
  do so) and queues it again once, with its parameters (Optuna's
  ``RetryHeartbeatStaleTrialCallback(max_retry=1)``). The retry takes over the interrupted
  trial's run directory, so it resumes from its last training checkpoint.
- **Final runs** (:class:`Claim`): one worker trains the selected point's seeds; the claim is a
  file created exclusively in ``<out>`` and kept fresh while it works. The others wait for the
  final runs to finish (or take the claim over when its holder died).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
import warnings
from pathlib import Path

import optuna

from prismrec.errors import ConfigError, RunError

HEARTBEAT_S = 20.0
"""Seconds between a running trial's heartbeats."""
GRACE_S = 120.0
"""A running trial not stamped for this long (on another host) is stale."""


def worker_id() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def storage_url(storage: str | None, out: Path) -> str:
    """The storage as given (``None``: ``sqlite:///<out>/study.db``)."""
    return f"sqlite:///{(out / 'study.db').resolve()}" if storage is None else storage


def open_storage(storage: str | None, out: Path):
    """An Optuna storage for ``storage`` (see the module docstring); a bad URL or a missing
    driver is a :class:`ConfigError` naming what to install or fix."""
    url = storage_url(storage, out)
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not path.parent.is_dir():
            raise ConfigError(f"--storage {url}: the folder {path.parent} does not exist; create it "
                              "(on the file system every worker sees)")
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    try:
        for attempt in range(3):  # workers starting together race to create the tables: retry
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}
                                                  if not url.startswith("sqlite") else None)
            except ImportError:
                raise
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(1.0 + random.random())
    except ImportError as exc:
        raise ConfigError(f"--storage {url}: its database driver is not installed ({exc}); for "
                          "postgresql:// URLs: pip install 'psycopg[binary]' (or psycopg2-binary with "
                          "postgresql+psycopg2://)") from None
    except Exception as exc:  # SQLAlchemy's URL and connection errors
        first = str(exc).splitlines()[0][:200]
        raise ConfigError(f"--storage {url}: cannot open it ({type(exc).__name__}: {first}); give an "
                          "Optuna storage URL (sqlite:///FILE, postgresql://USER@HOST/DB) or "
                          "journal:PATH") from None


class Heartbeat:
    """Stamps ``trial`` as alive every ``interval`` seconds while the ``with`` block runs."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: float = HEARTBEAT_S) -> None:
        self.study, self.trial, self.interval = study, trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="prismrec-heartbeat")

    def _stamp(self) -> None:
        self.study._storage.set_trial_user_attr(self.trial._trial_id, "heartbeat", time.time())

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._stamp()
            except Exception:  # the trial ended meanwhile, or the storage hiccuped: try again later
                pass

    def __enter__(self) -> "Heartbeat":
        self.trial.set_user_attr("worker", worker_id())
        self._stamp()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _process_gone(worker: str | None) -> bool:
    """Whether ``worker`` (``host:pid``) ran on this host and its process has ended."""
    if not worker or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_stale(trial: optuna.trial.FrozenTrial, grace: float = GRACE_S, now: float | None = None) -> bool:
    """Whether a ``RUNNING`` trial's worker is gone (see the module docstring)."""
    if trial.state != optuna.trial.TrialState.RUNNING:
        return False
    worker = trial.user_attrs.get("worker")
    if _process_gone(worker):
        return True
    now = time.time() if now is None else now
    stamp = trial.user_attrs.get("heartbeat")
    if stamp is None:  # asked but never stamped: judge by its start time
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > grace
    return now - float(stamp) > grace


with warnings.catch_warnings():  # experimental since Optuna 2.8, stable in use
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1, inherit_intermediate_values=True)
"""Queues a stale trial again once, with its parameters and its reported curve."""


def fail_stale_trials(study: optuna.Study, grace: float = GRACE_S) -> list[int]:
    """Mark every stale ``RUNNING`` trial failed and queue its retry (once); return their numbers.

    The storage refuses to end a trial twice, so when several workers find the same stale trial
    only one marks it and queues the retry."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not is_stale(trial, grace):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "interrupted", f"worker {trial.user_attrs.get('worker')} stopped")
            if not study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL):
                continue
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            continue  # another worker got there first
        RETRY(study, study._storage.get_trial(trial._trial_id))
        failed.append(trial.number)
    return failed


def retried_number(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int | None:
    """The number of the interrupted trial that ``trial`` retries (None: not a retry)."""
    if isinstance(trial, optuna.Trial):
        trial = trial.study._storage.get_trial(trial._trial_id)
    return trial.system_attrs.get("failed_trial")


class Claim:
    """An exclusive claim on a piece of work in ``path`` (a file created with ``O_EXCL``).

    The holder touches it every ``interval`` seconds while it works; a claim whose holder's
    process is gone (same host) or not touched for ``grace`` seconds is taken over."""

    def __init__(self, path: Path, interval: float = HEARTBEAT_S, grace: float = GRACE_S) -> None:
        self.path, self.interval, self.grace = Path(path), interval, grace
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> str | None:
        """``host:pid`` of the current holder (None: unclaimed or unreadable)."""
        try:
            return json.loads(self.path.read_text()).get("worker")
        except (OSError, ValueError):
            return None

    def _abandoned(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        return _process_gone(self.holder()) or age > self.grace

    def acquire(self) -> bool:
        """Take the claim (True), or leave it to its live holder (False)."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._abandoned():
                    return False
                stale = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
                try:
                    os.replace(self.path, stale)  # one taker wins the rename
                    os.unlink(stale)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"worker": worker_id(), "since": time.time()}, f)
            self._thread = threading.Thread(target=self._touch, daemon=True, name="prismrec-claim")
            self._thread.start()
            return True
        return False

    def _touch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Give the claim up (the file is removed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def wait_for(condition, what: str, log, poll_s: float = 2.0, timeout_s: float | None = None) -> None:
    """Poll ``condition()`` until it is true, saying once what this worker waits for."""
    log(f"waiting for {what}")
    started = time.time()
    while not condition():
        if timeout_s is not None and time.time() - started > timeout_s:
            raise RunError(f"gave up waiting for {what} after {timeout_s:.0f}s")
        time.sleep(poll_s)


@contextlib.contextmanager
def extra_workers(command: list[str], out: Path, n: int):
    """Run ``n`` more worker processes of ``command`` (a ``prismrec tune`` command line with this
    one's options) beside the block (this process's own worker), each writing its output to
    ``<out>/worker-<k>.log``; after the block, wait for them. A worker that failed is a
    :class:`RunError` naming its log's last line; an interrupt stops them, leaving each trial's
    checkpoint (:func:`prismrec.experiment.children.supervised`)."""
    if n < 1:
        yield
        return
    from prismrec.experiment import children

    out.mkdir(parents=True, exist_ok=True)
    logs = [out / f"worker-{k}.log" for k in range(1, n + 1)]
    procs: list = []
    with children.supervised(procs):
        for path in logs:
            with path.open("w") as output:  # the child keeps its own descriptor
                procs.append(children.start([*command, "--workers", "1"], output))
        yield
        for proc in procs:
            proc.wait()
    failed = [(path, proc.returncode) for path, proc in zip(logs, procs) if proc.returncode != 0]
    if failed:
        path, code = failed[0]
        lines = path.read_text(errors="replace").strip().splitlines()
        raise RunError(f"tune worker {path.name} stopped with exit code {code}: "
                       f"{lines[-1] if lines else '(no output)'} (its output: {path})")
