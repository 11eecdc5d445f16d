"""Thread policy: thread counts from usable/busy cores, CPU counters, the OpenMP wait-policy default."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from prismrec.errors import ConfigError
from prismrec.experiment.config import resolve_config
from prismrec.threads import (SMALL_GRAPH_NODES, CpuTimes, apply_threads, busy_from_samples, choose_threads,
                              read_cpu_times, resolve_threads, set_default_wait_policy)
from prismrec.train.config import TrainConfig

STAT = """cpu  300 40 60 1000 5 0 2 3 0 0
cpu0 100 40 20 500 5 0 1 1 0 0
cpu1 200 0 40 500 0 0 1 2 0 0
intr 1 2 3
"""


@pytest.mark.parametrize("cpus, busy, expected", [
    (2, 0.0, 2),   # idle 2-core machine: both cores
    (2, 0.3, 2),   # a little background work does not cost a thread
    (2, 0.6, 1),   # more than half a core taken: one thread
    (2, 1.0, 1),   # one competing CPU-bound process
    (2, 2.0, 1),   # everything busy: still one thread, never 0
    (8, 3.2, 5),
    (8, -1.0, 8),  # a noisy negative sample is read as idle
    (1, 0.0, 1),
])
def test_choose_threads_when_threads_spin(cpus, busy, expected):
    assert choose_threads(cpus, busy, passive=False) == expected


@pytest.mark.parametrize("cpus, busy", [(2, 0.0), (2, 1.0), (2, 2.0), (8, 3.2)])
def test_choose_threads_when_threads_sleep(cpus, busy):
    assert choose_threads(cpus, busy, passive=True) == cpus  # every usable core


def test_a_small_graph_gets_one_passive_thread():
    assert choose_threads(2, 0.0, nodes=SMALL_GRAPH_NODES - 1) == 1  # lfm2k, ml100k
    assert choose_threads(2, 0.0, nodes=SMALL_GRAPH_NODES) == 2      # tiktok and up
    assert choose_threads(8, 0.0, nodes=None) == 8                   # size unknown: every core
    # spinning threads pay no wake-up: the size does not matter, the busy cores do
    assert choose_threads(2, 0.0, passive=False, nodes=100) == 2


def test_choose_threads_rejects_no_cpus():
    with pytest.raises(ValueError):
        choose_threads(0, 0.0)


def test_cpu_times_and_busy_cores():
    line = STAT.splitlines()[0]
    t = CpuTimes.parse(line)
    assert (t.busy, t.niced, t.total) == (300 + 60 + 2 + 3, 40, 1410)
    both = read_cpu_times(STAT)
    assert (both.busy, both.niced) == (365, 40)
    only1 = read_cpu_times(STAT, {1})
    assert (only1.busy, only1.niced, only1.total) == (243, 0, 743)
    before = CpuTimes(busy=0, niced=0, total=0)
    after = CpuTimes(busy=100, niced=50, total=200)  # 2 cores for 100 ticks each
    assert busy_from_samples(before, after, 2, count_niced=False) == pytest.approx(1.0)
    assert busy_from_samples(before, after, 2, count_niced=True) == pytest.approx(1.5)
    assert busy_from_samples(after, after, 2, count_niced=True) == 0.0


def test_resolve_threads(monkeypatch):
    import prismrec.threads as threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 1.0)
    monkeypatch.setattr(threads, "wait_policy", lambda: "PASSIVE")
    assert resolve_threads("auto")[0] == 4
    threads_, reason = resolve_threads("auto", nodes=3283)
    assert threads_ == 1 and reason.startswith("threads auto -> 1 of 4 usable CPUs (3,283 users + items, below 8,000")
    assert resolve_threads("auto", nodes=16018)[0] == 4
    assert resolve_threads(2, nodes=100)[0] == 2  # an explicit count is kept on a small graph
    monkeypatch.setattr(threads, "wait_policy", lambda: "ACTIVE")  # spinning: leave the busy core out
    assert resolve_threads("auto")[0] == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's explicit count wins over auto
    assert resolve_threads("auto") == (2, "threads auto -> 2 (OMP_NUM_THREADS)")
    assert resolve_threads(3)[0] == 3  # an explicit setting is used as given


def test_apply_threads_sets_torch_and_logs(monkeypatch):
    before = torch.get_num_threads()
    lines = []
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    try:
        assert apply_threads(1, lines.append) == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("GOMP_SPINCOUNT", "1000")  # a user's spin count is part of the policy logged
        apply_threads(1, lines.append)
    finally:
        torch.set_num_threads(before)
    assert lines[0].startswith("threads 1; OpenMP wait policy ") and "GOMP_SPINCOUNT" not in lines[0]
    assert lines[1].endswith(", GOMP_SPINCOUNT=1000")


def test_config_threads_setting():
    assert TrainConfig().threads == "auto"
    assert resolve_config("lightgcn", "planted", {"threads": "auto"}).train.threads == "auto"
    assert resolve_config("lightgcn", "planted", {"threads": 2}).train.threads == 2
    for bad in ("many", -1, 1.5):
        with pytest.raises(ConfigError, match="threads"):
            resolve_config("lightgcn", "planted", {"threads": bad})


def test_default_wait_policy_keeps_a_users_value():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert set_default_wait_policy(env) == "ACTIVE"
    env = {}
    assert set_default_wait_policy(env) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE"), ("passive", "passive")])
def test_import_sets_wait_policy_before_torch(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = ("import sys, os, prismrec; "
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [expected, "False"]  # set, and torch not loaded yet by the import


@pytest.mark.parametrize("given, expected", [(None, "default"), ("active", "ACTIVE")])
def test_wait_policy_in_force_when_torch_came_first(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = "import torch, prismrec.threads as t; print(t.wait_policy())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected  # prismrec's default came too late; a user's value did not
