"""How many CPU threads a run uses, and how idle OpenMP threads wait.

torch runs its CPU kernels (sparse products, GEMMs, element-wise ops) on an OpenMP thread pool.
On a machine that other programs also use, two things go wrong with torch's defaults:

* **Spinning.** An idle OpenMP thread busy-waits for the next parallel region. When another
  process holds one of the cores, the spinning threads and the descheduled worker fight over it
  and every short kernel waits a scheduler time slice: a LightGCN epoch on 2 cores went from
  2.9 s to 40.9 s next to one other CPU-bound process. ``import prismrec`` therefore sets
  ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep) unless the environment already names a policy
  (a user's explicit ``OMP_WAIT_POLICY=ACTIVE`` wins). OpenMP reads it once, when torch is first
  imported, so it takes effect only when prismrec is imported before torch (as ``prismrec``'s
  command line always is); :func:`wait_policy` says what this process got.
* **How many threads.** ``threads="auto"`` (the default of every run) takes the cores this
  process may use (:func:`usable_cpus`: affinity mask and cgroup CPU quota), except on a small
  graph (fewer than :data:`SMALL_GRAPH_NODES` users + items), where it takes one: with passive
  waiting each parallel region pays a sleeping thread's wake-up, which a small graph's kernels
  (microseconds) do not earn back. Only when OpenMP threads spin (the user chose ``ACTIVE``, or
  torch was loaded first) does it leave out the cores other processes keep busy right now
  (:func:`busy_cpus`, a short sample of ``/proc/stat``). :func:`choose_threads` is the rule; an
  explicit whole number is used as given, and ``OMP_NUM_THREADS`` set by the user wins over
  ``auto``.

``benchmarks/contention.py`` measures both choices, idle and next to a competing process.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# torch is imported inside the functions: `import prismrec` sets OpenMP's environment through
# this module before anything loads torch.

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
"""OpenMP's environment variable for how idle threads wait (``PASSIVE`` or ``ACTIVE``)."""
DEFAULT_WAIT_POLICY = "PASSIVE"
"""Set by ``import prismrec`` when the environment names no policy."""
SPIN_COUNT_ENV = "GOMP_SPINCOUNT"
"""GNU OpenMP's (torch's on Linux): how many iterations an idle thread spins before it sleeps, under
any policy. Not set by prismrec; a user's value is logged with the policy."""
SAMPLE_S = 0.2
"""How long :func:`busy_cpus` watches the CPU counters."""
FREE_SHARE = 0.5
"""A core counts as free for one more thread when other processes use less than this share of it."""
SMALL_GRAPH_NODES = 8_000
"""Below this many users + items, ``threads=auto`` with passive waiting takes one thread. Measured
on 2 cores (2026-12-05, ``python -m benchmarks.contention --cells 1/PASSIVE,2/PASSIVE``, one
file per dataset and model in ``benchmarks/results/contention*.md``), epoch seconds with one / two
passive threads on an idle machine: ml100k (2,625 nodes) BPR-MF 0.04 / 0.10, LightGCN 0.25 / 0.27,
MGCN 0.91 / 1.19; lfm2k (3,283) BPR-MF 0.04 / 0.06, LightGCN 0.11 / 0.17, VBPR 0.10 / 0.13,
FREEDOM 0.34 / 0.39, MGCN 0.62 / 0.76; but GUME, whose B x B InfoNCE GEMMs split well, 2.35
/ 2.17 (lfm2k) and 3.59 / 3.24 (ml100k). From tiktok (16,018) up two threads win or tie (LightGCN
0.41 / 0.38, MGCN 1.49 / 1.55, GUME 4.12 / 3.34; baby (26,495) LightGCN 1.81 / 1.44, BPR-MF 0.91 /
0.64; sports (53,955) LightGCN 8.6 / 5.6). Next to one competing process one thread was as fast as
two (within 2 %) or faster in every one of these cells (two / one: 0.98-1.28x)."""


_LATE = False
"""True when ``import prismrec`` set the policy after torch was already loaded (too late to act)."""


def set_default_wait_policy(environ: dict | None = None) -> str:
    """Put ``OMP_WAIT_POLICY=PASSIVE`` into ``environ`` (default ``os.environ``) unless a policy is there.

    Returns the policy now in the environment; a value the user set is never changed.
    """
    global _LATE
    if environ is None:
        environ = os.environ
        if WAIT_POLICY_ENV not in environ and "torch" in sys.modules:
            _LATE = True  # OpenMP already read its environment: the default stays in force
    return environ.setdefault(WAIT_POLICY_ENV, DEFAULT_WAIT_POLICY)


def wait_policy() -> str:
    """The OpenMP wait policy in force in this process: ``PASSIVE``, ``ACTIVE`` or ``default``
    (none named, or prismrec imported after torch)."""
    value = os.environ.get(WAIT_POLICY_ENV, "").strip().upper()
    return "default" if _LATE or value not in ("PASSIVE", "ACTIVE") else value


def choose_threads(cpus: int, busy: float, passive: bool = True, nodes: int | None = None) -> int:
    """Threads for a run given ``cpus`` usable cores of which other processes keep ``busy`` busy,
    on a graph of ``nodes`` users + items (None: unknown).

    Pure function. With passive waiting, every usable core (idle threads sleep, so a busy core
    costs little; measured: ``benchmarks/contention.py``), but one on a graph smaller than
    :data:`SMALL_GRAPH_NODES`. With spinning threads (``passive=False``), ``cpus - busy`` rounded
    to whole free cores (a core counts when others use less than :data:`FREE_SHARE` of it), at
    least 1: on 2 cores, idle -> 2, one competing process -> 1.
    """
    if cpus < 1:
        raise ValueError(f"cpus must be >= 1, got {cpus}")
    if passive:
        return 1 if nodes is not None and nodes < SMALL_GRAPH_NODES else cpus
    busy = max(0.0, float(busy))
    free = math.floor(cpus - busy + FREE_SHARE)
    return max(1, min(cpus, free))


def usable_cpus() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota if one is set."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cfs_quota_us``) quota; None without one."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU time counters of ``/proc/stat``'s ``cpu`` line (clock ticks)."""

    busy: int
    """user + system + irq + softirq + steal: time taken by processes at nice 0 or below (and the kernel)."""
    niced: int
    """user time of processes with a positive nice value."""
    total: int
    """All counters (idle and iowait included)."""

    @classmethod
    def parse(cls, line: str) -> CpuTimes:
        """Read a ``cpu  user nice system idle iowait irq softirq steal ...`` line."""
        fields = [int(v) for v in line.split()[1:9]]
        fields += [0] * (8 - len(fields))
        user, nice, system, idle, iowait, irq, softirq, steal = fields
        return cls(busy=user + system + irq + softirq + steal, niced=nice,
                   total=user + nice + system + idle + iowait + irq + softirq + steal)


def busy_from_samples(before: CpuTimes, after: CpuTimes, cpus: int, count_niced: bool) -> float:
    """Cores kept busy between two counter samples (pure function).

    ``count_niced=False`` leaves out processes with a positive nice value: next to a process at
    nice 0 the scheduler gives them a small share (nice 19 gets 1.5 % of a contested core).
    """
    total = after.total - before.total
    if total <= 0:
        return 0.0
    busy = after.busy - before.busy + (after.niced - before.niced if count_niced else 0)
    return cpus * busy / total


def read_cpu_times(text: str, cores: set[int] | None = None) -> CpuTimes:
    """Sum ``/proc/stat``'s per-core ``cpuN`` lines over ``cores`` (all cores when None)."""
    parts = [CpuTimes.parse(line) for line in text.splitlines()
             if line.startswith("cpu") and line[3:4].isdigit()
             and (cores is None or int(line.split()[0][3:]) in cores)]
    if not parts:
        raise ValueError("no per-core cpu lines")
    return CpuTimes(busy=sum(p.busy for p in parts), niced=sum(p.niced for p in parts),
                    total=sum(p.total for p in parts))


def busy_cpus(seconds: float = SAMPLE_S, stat: Path = Path("/proc/stat")) -> float:
    """Cores of this process's affinity mask that other processes keep busy now.

    Sampled over ``seconds`` while this process sleeps. Niced processes count only when this
    process is niced too. Without ``/proc/stat`` (not Linux) the 1-minute load average stands in.
    """
    try:
        cores = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cores = None
    try:
        before = read_cpu_times(stat.read_text(), cores)
        time.sleep(seconds)
        after = read_cpu_times(stat.read_text(), cores)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    n = len(cores) if cores is not None else (os.cpu_count() or 1)
    return busy_from_samples(before, after, n, count_niced=os.getpriority(os.PRIO_PROCESS, 0) > 0)


def _env_threads() -> int | None:
    """``OMP_NUM_THREADS`` when the user set it to a whole number >= 1."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def resolve_threads(setting: int | str, nodes: int | None = None) -> tuple[int, str]:
    """Thread count for a ``threads`` setting on a graph of ``nodes`` users + items (None:
    unknown), and a one-line reason.

    ``"auto"``: ``OMP_NUM_THREADS`` when the user set it, else :func:`choose_threads` of the usable
    cores and the graph's size (and, when OpenMP threads spin, of the cores busy now). A whole
    number >= 1 is used as given; 0 keeps torch's current count.
    """
    if setting == "auto":
        env = _env_threads()
        if env is not None:
            return env, f"threads auto -> {env} (OMP_NUM_THREADS)"
        cpus = usable_cpus()
        if wait_policy() == "PASSIVE":
            threads = choose_threads(cpus, 0.0, nodes=nodes)
            if threads < cpus:
                return threads, (f"threads auto -> {threads} of {cpus} usable CPUs ({nodes:,} users + items, "
                                 f"below {SMALL_GRAPH_NODES:,}: a small graph's kernels do not pay for waking "
                                 "a sleeping thread; --set threads=N to choose; compare trains such cells "
                                 "side by side, tune --workers 2 runs two trials at a time)")
            return threads, f"threads auto -> {cpus} (usable CPUs; idle threads sleep)"
        busy = busy_cpus()
        threads = choose_threads(cpus, busy, passive=False)
        return threads, (f"threads auto -> {threads} ({cpus} usable CPUs, {busy:.1f} busy with other work; "
                         "OpenMP threads spin)")
    import torch

    if setting == 0:
        return torch.get_num_threads(), f"threads 0 -> torch's default {torch.get_num_threads()}"
    return int(setting), f"threads {setting}"


def apply_threads(setting: int | str, log: Callable[[str], None] | None = None, nodes: int | None = None) -> int:
    """Set torch's intra-op thread count from a ``threads`` setting for a graph of ``nodes`` users
    + items (None: unknown); returns it and logs why."""
    import torch

    threads, reason = resolve_threads(setting, nodes)
    torch.set_num_threads(threads)
    if log is not None:
        spin = os.environ.get(SPIN_COUNT_ENV)
        log(f"{reason}; OpenMP wait policy {wait_policy()}" + (f", {SPIN_COUNT_ENV}={spin}" if spin else ""))
    return threads
