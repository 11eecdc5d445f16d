"""prismrec.train.allocator: freed memory is reused, not page-faulted in again (glibc only)."""

import os
import platform
import subprocess
import sys

import pytest

from prismrec.train import allocator

SCRIPT = """
import ctypes, resource, runpy, sys
# The module alone (its path is argv[2]): importing the prismrec.train package would import torch,
# seconds per process, and torch plays no part here.
keep_freed_memory = runpy.run_path(sys.argv[2])["keep_freed_memory"]
applied = keep_freed_memory() if sys.argv[1] == "tune" else False
# glibc's malloc itself (what keep_freed_memory tunes), not torch's allocator on top of it: whether
# torch's CPU allocations go through the tuned path depends on the torch build and the kernel.
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size = 64 * 2**20
def touch():  # 64 MB, allocated, written and freed again
    block = libc.malloc(size)
    libc.memset(block, 1, size)
    libc.free(block)
for _ in range(2):
    touch()  # first touches: faults either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

def _faults(mode: str, env=None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode, allocator.__file__], capture_output=True, text=True,
                         check=True, env=env)
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
