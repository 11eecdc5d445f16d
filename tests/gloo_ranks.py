"""Run a test body in two CPU processes joined by gloo (a 2-process DDP group) and read back what
the main rank recorded; the distributed loss tests compare it with one process.

A test gives the body of the rank script: Python that runs after the group is set up, with
``sys``, ``torch``, ``losses``, ``distributed`` (:mod:`prismrec.train.distributed`) and
``env`` (this rank's :class:`~prismrec.train.distributed.DistEnv`) in scope and the repository
root on ``sys.path`` (``from tests.test_x import ...`` works), and that fills the dict
``result``; the main rank writes it as JSON, :func:`run_two_ranks` returns it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

_PROLOGUE = """
import json, sys
import torch
from prismrec import losses
from prismrec.train import distributed

sys.path.insert(0, sys.argv[2])
torch.set_num_threads(1)
env = distributed.from_env()
distributed.init(env, "cpu")
result = {}
"""

_EPILOGUE = """
if env.is_main:
    json.dump(result, open(sys.argv[1], "w"))
torch.distributed.barrier()
torch.distributed.destroy_process_group()  # a clean exit on both ranks
"""


def grad_rows(x: torch.Tensor) -> list:
    """``x``'s gradient as nested lists (zeros where a term does not read ``x``)."""
    return (x.grad if x.grad is not None else torch.zeros_like(x)).tolist()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(body: str, tmp_path: Path, timeout: float = 120) -> dict:
    """Run ``body`` (module docstring) on ranks 0 and 1 of a gloo group; the main rank's
    ``result``. Fails the test with the end of a rank's stderr when a rank exits non-zero."""
    script = tmp_path / "rank.py"
    script.write_text(_PROLOGUE + body + _EPILOGUE)
    root = str(Path(__file__).resolve().parent.parent)
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    base.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    out = tmp_path / "result.json"
    ranks = [subprocess.Popen([sys.executable, str(script), str(out), root],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for rank in ranks:
        _, err = rank.communicate(timeout=timeout)
        assert rank.returncode == 0, err[-3000:]
    return json.loads(out.read_text())


def torchrun(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node 2 <args>`` on a free port."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), *args], capture_output=True, text=True, env=env)
