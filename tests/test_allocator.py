"""prismrec.train.allocator: freed memory is reused, not page-faulted in again (glibc only)."""

import os
import platform
import subprocess
import sys

import pytest

SCRIPT = """
import os, resource, sys, torch
from prismrec.train.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tune" else False
for _ in range(2):
    torch.empty(16 * 2**20).fill_(1.0)  # first touches: faults either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.empty(16 * 2**20).fill_(1.0)  # 64 MB, allocated and freed again
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, env=None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, env=env)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_removes_repeated_page_faults():
    applied, tuned = _faults("tune")
    _, default = _faults("default")
    assert applied == "True"
    assert default > 5 * 16_000 * 0.9  # each 64 MB block is mapped and faulted in again (4 KB pages)
    assert tuned < default / 3  # at most one of the five blocks is faulted in again
    env = {**os.environ, "PRISMREC_SYSTEM_MALLOC": "1"}
    applied, faults = _faults("tune", env)
    assert applied == "False" and faults > default / 2
