"""Normalised user-item adjacency (ALGORITHMS.md 2.1)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from prismrec.graph.ops import sym_normalize


def bipartite_adjacency(
    train: sp.csr_matrix, item_item: sp.spmatrix | None = None, gamma: float = 1.0
) -> sp.csr_matrix:
    """Return ``Â = D^-1/2 A D^-1/2`` for ``A = [[0, R], [Rᵀ, γ·B_II]]`` (users first).

    ``train`` is the binary users x items training matrix ``R``. Without ``item_item`` this is
    LightGCN's graph (no self-loops); with it, the enhanced graph ``Â⁺`` whose item degrees count
    both users and item neighbours. ``B_II`` need not be symmetric: row sums are used throughout.
    """
    r = sp.csr_matrix(train, dtype=np.float32)
    n_users, n_items = r.shape
    ii = None
    if item_item is not None and gamma != 0:
        if item_item.shape != (n_items, n_items):
            raise ValueError(
                f"item_item must be {n_items}x{n_items} to match train, got {item_item.shape}"
            )
        ii = sp.csr_matrix(item_item, dtype=np.float32) * np.float32(gamma)
    adj = sp.bmat([[None, r], [r.T, ii]], format="csr", dtype=np.float32)
    if ii is None:  # bmat drops an all-None block row's shape; make it explicit
        adj = sp.csr_matrix(adj, shape=(n_users + n_items, n_users + n_items))
    return sym_normalize(adj)


def user_item_block(adjacency: sp.csr_matrix, n_users: int) -> sp.csr_matrix:
    """``R̂ = Â[:n_U, n_U:]``: the normalised user -> item block used to aggregate items to users."""
    return adjacency[:n_users, n_users:].tocsr()
