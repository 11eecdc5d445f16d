"""Item groups for sliced evaluation (ALGORITHMS.md 6.6, long tail)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def item_degrees(train: sp.spmatrix) -> np.ndarray:
    """Training interactions per item (column sums of the users x items matrix)."""
    return np.asarray(sp.csr_matrix(train).sum(axis=0)).ravel()


def popularity_order(degree: np.ndarray) -> np.ndarray:
    """Item ids from least to most popular by ``degree``, ties broken by item id: the one
    popularity order every item split uses."""
    return np.argsort(np.asarray(degree), kind="stable")


def popularity_groups(train: sp.csr_matrix, tail_share: float = 0.8) -> dict[str, np.ndarray]:
    """``{"tail": ids, "head": ids}``: items split by training degree, the least popular
    ``tail_share`` of all items (rounded down; :func:`popularity_order`) in ``tail``."""
    if not 0.0 < tail_share < 1.0:
        raise ValueError(f"tail_share must be in (0, 1), got {tail_share}")
    order = popularity_order(item_degrees(train))
    n_tail = int(len(order) * tail_share)
    return {"tail": np.sort(order[:n_tail]), "head": np.sort(order[n_tail:])}


def sparsest_users(degree: np.ndarray, share: float) -> np.ndarray:
    """Mask of the sparsest ``share`` of the users whose training interactions are ``degree``
    (rounded down; ties in user order): a user group for sparsity claims."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    sparse = np.zeros(len(degree), dtype=bool)
    sparse[np.argsort(degree, kind="stable")[: int(len(degree) * share)]] = True
    return sparse


def popularity_buckets(degree: np.ndarray, n_buckets: int) -> tuple[np.ndarray, list[str]]:
    """Items split into ``n_buckets`` equal-size groups along :func:`popularity_order`: the
    bucket of each item (0 = least popular) and a label per bucket (its degree range)."""
    order = popularity_order(degree)
    bucket = np.empty(len(degree), dtype=np.int64)
    labels = []
    for b, members in enumerate(np.array_split(order, n_buckets)):
        bucket[members] = b
        degrees = degree[members]
        labels.append(f"{int(degrees.min())}-{int(degrees.max())} interactions")
    return bucket, labels


def restrict_items(matrix: sp.csr_matrix, items: np.ndarray) -> sp.csr_matrix:
    """``matrix`` with only the columns ``items`` kept (the rest set to 0, shape unchanged)."""
    keep = np.zeros(matrix.shape[1], dtype=bool)
    keep[np.asarray(items, dtype=np.int64)] = True
    coo = sp.csr_matrix(matrix).tocoo()
    mask = keep[coo.col]
    return sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=matrix.shape)
