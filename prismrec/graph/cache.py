"""Content-addressed on-disk cache for built graphs.

A graph is stored under a key that hashes everything it depends on: the builder's ``kind``, the
full content of every input array (dtype, shape and bytes) and every parameter. A changed feature
value, split or ``k`` therefore gives a new key instead of a stale graph; nothing is ever
invalidated by hand. Files are written atomically (temporary file + ``os.replace``) so a crash or
a concurrent run never leaves a half-written graph under a valid name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

#: Bump when the key recipe or the stored format changes, so old files are never reused.
CACHE_FORMAT_VERSION = 1
_KIND_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

CacheInput = np.ndarray | torch.Tensor | sp.spmatrix


def default_cache_dir() -> Path:
    """``$PRISMREC_CACHE`` if set, else ``~/.cache/prismrec/graphs``."""
    env = os.environ.get("PRISMREC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prismrec" / "graphs"


def _check_not_in_dataset(root: Path) -> None:
    """Refuse a cache root inside a dataset folder (one holding a ``*.inter`` file).

    Dataset folders are inputs: writing derived files into them would change what a content hash
    of the folder sees and could be shipped or deleted with the data.
    """
    resolved = root.expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        if folder.is_dir() and any(folder.glob("*.inter")):
            raise ValueError(
                f"graph cache root {root} lies inside the dataset folder {folder} (it holds a "
                "*.inter file); choose a cache directory outside the data, e.g. "
                "$PRISMREC_CACHE or ~/.cache/prismrec/graphs"
            )


def _hash_array(h: "hashlib._Hash", name: str, value: Any) -> None:
    """Feed one named input's type, dtype, shape and raw bytes into the hash ``h``."""
    if sp.issparse(value):
        m = sp.csr_matrix(value)
        if not m.has_canonical_format:  # equal matrices should hash alike where it is cheap
            m = m.copy()
            m.sum_duplicates()
        h.update(f"input:{name}:sparse:{m.dtype.str}:{m.shape}\n".encode())
        for part in (m.indptr, m.indices, m.data):
            arr = np.ascontiguousarray(part)
            h.update(f"{arr.dtype.str}:{arr.size}\n".encode())
            h.update(arr.view(np.uint8).reshape(-1))
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"input:{name}:tensor:{t.dtype}:{tuple(t.shape)}\n".encode())
        # Raw bytes through a uint8 view: works for every dtype, bfloat16 included.
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        if arr.dtype.hasobject:
            raise TypeError(f"cache input {name!r} has dtype object; its bytes are not its content")
        h.update(f"input:{name}:ndarray:{arr.dtype.str}:{arr.shape}\n".encode())
        h.update(arr.view(np.uint8).reshape(-1))
    else:
        raise TypeError(
            f"cache input {name!r} must be a numpy array, torch tensor or SciPy sparse matrix, "
            f"got {type(value).__name__}"
        )


def _json_default(obj: Any) -> Any:
    """Let numpy scalars and paths into the params JSON; anything else is an error."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(
        f"graph cache params must be JSON-serialisable, got {type(obj).__name__}: {obj!r}"
    )


def cache_key(kind: str, inputs: Mapping[str, CacheInput], params: Mapping[str, Any]) -> str:
    """SHA-256 hex key over the format version, ``kind``, every input's content and ``params``."""
    h = hashlib.sha256()
    h.update(f"prismrec-graph-cache:v{CACHE_FORMAT_VERSION}\nkind:{kind}\n".encode())
    for name in sorted(inputs):  # order-independent: inputs are named
        _hash_array(h, name, inputs[name])
    h.update(b"params:")
    h.update(json.dumps(dict(params), sort_keys=True, default=_json_default).encode())
    return h.hexdigest()


class GraphCache:
    """Content-addressed store of built graphs under ``root/<kind>-<key>.npz``.

    ``root=None`` disables caching: :meth:`get_or_build` then calls the builder every time. The
    root may not lie inside a dataset folder (a folder holding a ``*.inter`` file).
    """

    def __init__(self, root: Path | str | None) -> None:
        self.root = None if root is None else Path(root).expanduser()
        if self.root is not None:
            _check_not_in_dataset(self.root)

    def path_for(self, kind: str, key: str) -> Path:
        """The file a graph of ``kind`` with ``key`` is stored in."""
        if self.root is None:
            raise ValueError("this GraphCache is disabled (root=None) and stores no files")
        return self.root / f"{kind}-{key}.npz"

    def get_or_build(
        self,
        kind: str,
        inputs: Mapping[str, CacheInput],
        params: Mapping[str, Any],
        builder: Callable[[], sp.spmatrix],
    ) -> sp.csr_matrix:
        """Return the cached graph for (``kind``, ``inputs``, ``params``) or build and store it.

        ``kind`` names the builder (letters, digits, ``_.-``) and is part of both key and file
        name; ``params`` must hold every argument that changes the result. An unreadable cache
        file is reported with a warning and rebuilt.
        """
        if not isinstance(kind, str) or not _KIND_PATTERN.match(kind):
            raise ValueError(
                f"kind must be a non-empty name of letters, digits, '_', '.', '-', got {kind!r}"
            )
        if self.root is None:
            return self._checked(builder(), kind)
        path = self.path_for(kind, cache_key(kind, inputs, params))
        if path.exists():
            try:
                return sp.load_npz(path).tocsr()
            except Exception as err:  # noqa: BLE001 - any unreadable file is rebuilt, not fatal
                warnings.warn(
                    f"unreadable graph cache file {path} ({err}); rebuilding", stacklevel=2
                )
        graph = self._checked(builder(), kind)
        self._write(path, graph)
        return graph

    @staticmethod
    def _checked(graph: Any, kind: str) -> sp.csr_matrix:
        if not sp.issparse(graph):
            raise TypeError(
                f"the builder for {kind!r} returned {type(graph).__name__}, "
                "expected a SciPy sparse matrix"
            )
        return sp.csr_matrix(graph)

    def _write(self, path: Path, graph: sp.csr_matrix) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                sp.save_npz(fh, graph, compressed=False)
            os.replace(tmp, path)  # atomic on one filesystem: readers see all or nothing
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __repr__(self) -> str:
        return f"GraphCache(root={str(self.root) if self.root else None!r})"
