"""A content-addressed disk cache for graphs built from item features (ALGORITHMS.md §2).

A kNN graph over 63k items with 4096-d features costs minutes of matrix products; every model,
seed and tuning trial of a study would otherwise rebuild the same graph. The cache key is a
SHA-256 over the builder's name and format version, every parameter, the torch version and
device type, and the **content** of the input (dtype, shape and bytes), so a changed feature
file, another ``k`` or another builder can never be served a stale graph. Entries are SciPy
``.npz`` files written atomically (a temporary file renamed into place), so a killed process or
two processes building the same graph at once leave either no entry or a complete one.

Where: ``$PRISMREC_GRAPH_CACHE`` if set (``off`` disables the cache), else
``$PRISMREC_CACHE/graphs`` (``PRISMREC_CACHE`` defaults to ``~/.cache/prismrec``, as for the
pretrained stages). Deleting the folder is always safe. A cache that cannot be written (read-only
or full disk) only warns: the graph is built and used as without one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import scipy.sparse as sp
import torch

OFF = ("off", "0", "false", "no", "none")


def cache_dir() -> Path | None:
    """The graph cache folder, or ``None`` when ``PRISMREC_GRAPH_CACHE`` switches it off."""
    setting = os.environ.get("PRISMREC_GRAPH_CACHE")
    if setting is not None:
        if setting.strip().lower() in OFF or not setting.strip():
            return None
        return Path(setting).expanduser()
    return Path(os.environ.get("PRISMREC_CACHE", "~/.cache/prismrec")).expanduser() / "graphs"


def content_digest(arrays: Iterable[np.ndarray | torch.Tensor], params: dict) -> str:
    """SHA-256 (hex) of ``params`` (JSON, sorted keys) and each array's dtype, shape and bytes."""
    h = hashlib.sha256()
    h.update(json.dumps({**params, "torch": torch.__version__}, sort_keys=True, default=str).encode())
    for a in arrays:
        if isinstance(a, torch.Tensor):
            h.update(f"torch:{a.device.type}".encode())
            a = a.detach().cpu().contiguous().numpy()
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a.reshape(-1)).cast("B"))
    return h.hexdigest()


def cached_graph(name: str, arrays: list, params: dict, build: Callable[[], sp.csr_matrix],
                 folder: Path | None = None) -> sp.csr_matrix:
    """``build()``, or the graph a previous ``build()`` with the same inputs stored.

    ``name`` names the builder and its format version (``"knn/1"``: bump the version when the
    builder's output changes); ``arrays`` and ``params`` are everything the output depends on.
    ``folder`` overrides :func:`cache_dir`. The graph comes back exactly as built (same dtype,
    pattern, explicit zeros and values).
    """
    folder = cache_dir() if folder is None else folder
    if folder is None:
        return build()
    digest = content_digest(arrays, {"builder": name, **params})
    path = folder / f"{name.replace('/', '-')}-{digest[:32]}.npz"
    if path.is_file():
        graph = _read(path)
        if graph is not None:
            return graph
    graph = build()
    _write(path, graph)
    return graph


def _read(path: Path) -> sp.csr_matrix | None:
    """The stored graph, or ``None`` (with a warning) when the entry is unreadable."""
    try:
        graph = sp.load_npz(path).tocsr()
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        warnings.warn(f"graph cache entry {path} is unreadable ({exc}); it is rebuilt and replaced",
                      stacklevel=3)
        return None
    return graph


def _write(path: Path, graph: sp.csr_matrix) -> None:
    """Store ``graph`` at ``path`` atomically; a cache that cannot be written only warns."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".partial", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            sp.save_npz(f, sp.csr_matrix(graph), compressed=False)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the entry from others sharing the cache
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        warnings.warn(f"the graph cache {path.parent} cannot be written ({exc.strerror or exc}); graphs are "
                      "rebuilt on every run. Set PRISMREC_GRAPH_CACHE to a writable folder, or to 'off'",
                      stacklevel=3)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
