"""Keep freed memory in the process for reuse (glibc), instead of returning it to the system.

Training allocates and frees the same large tensors every batch (``N x d`` layer outputs and
their gradients, ``B x B`` contrastive logits, ``B x n_items`` score blocks). With glibc's
defaults, blocks above the dynamic mmap threshold (≤ 32 MB) are mapped and unmapped on every
allocation, and freed heap memory above the trim threshold is handed back to the kernel, so
the next batch page-faults the same memory in again, zero-filled: on baby with LightGCN
(single thread) 115-280 thousand page faults and 0.3-0.8 s of system time per training epoch,
and ~134 thousand faults per validation, measured with ``getrusage``. Raising both thresholds
removes them (a handful of faults per epoch); the process keeps its peak memory instead.

:func:`keep_freed_memory` is called by :func:`prismrec.experiment.run_experiment` (every
``prismrec train`` and ``compare`` cell); set ``PRISMREC_SYSTEM_MALLOC=1`` to leave the
allocator untouched. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 1 << 30          # blocks up to 1 GiB come from the heap and are reused
_TRIM_THRESHOLD = (1 << 31) - 1    # never give freed heap memory back while the process runs
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's ``malloc`` once per process (see module docstring); True if it applied."""
    global _done
    if _done is None:
        _done = False
        if os.environ.get("PRISMREC_SYSTEM_MALLOC", "") not in ("", "0"):
            return _done
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc: nothing to tune
            return _done
        _done = bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)) and bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))
    return _done
