"""Item groups for sliced evaluation (ALGORITHMS.md 6.6, long tail)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def popularity_groups(train: sp.csr_matrix, tail_share: float = 0.8) -> dict[str, np.ndarray]:
    """``{"tail": ids, "head": ids}``: items split by training degree, the least popular
    ``tail_share`` of all items (rounded down; ties broken by item id, stable) in ``tail``."""
    if not 0.0 < tail_share < 1.0:
        raise ValueError(f"tail_share must be in (0, 1), got {tail_share}")
    degree = np.asarray(sp.csr_matrix(train).sum(axis=0)).ravel()
    order = np.argsort(degree, kind="stable")
    n_tail = int(len(order) * tail_share)
    return {"tail": np.sort(order[:n_tail]), "head": np.sort(order[n_tail:])}


def restrict_items(matrix: sp.csr_matrix, items: np.ndarray) -> sp.csr_matrix:
    """``matrix`` with only the columns ``items`` kept (the rest set to 0, shape unchanged)."""
    keep = np.zeros(matrix.shape[1], dtype=bool)
    keep[np.asarray(items, dtype=np.int64)] = True
    coo = sp.csr_matrix(matrix).tocoo()
    mask = keep[coo.col]
    return sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=matrix.shape)
