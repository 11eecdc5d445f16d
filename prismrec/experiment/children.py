"""Training processes started by another: ``compare``'s cells and ``tune``'s extra workers.

Each child is started with :func:`start` (told by the kernel to stop should its parent die
without the chance to stop it, Linux), and :func:`supervised` stops the children cleanly when
the parent is interrupted (Ctrl-C, or SIGTERM turned into the same): SIGINT first, so each
training run leaves its last checkpoint and a rerun resumes it, then a kill after
:data:`STOP_WAIT_S` seconds.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading

STOP_WAIT_S = 30.0
"""How long an interrupted child may take to stop by itself before it is killed."""


def start(command: list[str], output) -> subprocess.Popen:
    """Start ``command`` with stdout and stderr to the open file ``output``."""
    return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_prepare_child)


@contextlib.contextmanager
def supervised(procs: list[subprocess.Popen]):
    """While the block runs, SIGTERM raises KeyboardInterrupt (main thread only); when it raises,
    every child in ``procs`` (the list may grow inside the block) still running is stopped with
    SIGINT, and killed if it has not stopped within :data:`STOP_WAIT_S`, before the error goes on."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield procs
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _prepare_child() -> None:
    """In the child, before it runs the command: SIGINT back to its default, so that Python turns it
    into KeyboardInterrupt (a parent started in the background of a script ignores SIGINT, and its
    children would inherit that and shrug off :func:`supervised`'s stop until killed), and
    :func:`_die_with_parent`."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _die_with_parent()


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the parent dies (Linux), so a killed parent leaves no
    orphan training on (the child keeps its last checkpoint)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:  # pragma: no cover
            pass
