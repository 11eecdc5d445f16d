"""Normalised user-item adjacency (ALGORITHMS.md 2.1)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class UserItemGraph:
    """What a user-item adjacency is built from: the training matrix ``R`` and, for an enhanced
    ``Â⁺``, item-item links ``B_II`` with their weight ``γ`` (:func:`bipartite_adjacency`)."""

    train: sp.spmatrix
    """``R``, binary users x items."""
    item_links: sp.spmatrix | None = None
    """``B_II`` (``n_I`` square), or ``None`` for LightGCN's ``Â``."""
    gamma: float = 1.0
    """``γ``, the weight of ``B_II`` in ``A`` (0: no links)."""

    def adjacency(self) -> sp.csr_matrix:
        """``Â = D^-1/2 A D^-1/2`` over every item."""
        return bipartite_adjacency(self.train, self.item_links, self.gamma)

    def over_items(self, keep: np.ndarray) -> sp.csr_matrix:
        """``Â`` without the items not in ``keep`` (``n_I`` bool): their interactions and links
        dropped, the rest normalised by the same rule (for LightGCN's ``Â``,
        ``R̂[u, i] = 1/sqrt(d_u d_i)`` with ``d_u`` the user's kept items)."""
        kept = sp.diags(np.asarray(keep, dtype=np.float32))
        links = None if self.item_links is None else sp.csr_matrix(kept @ self.item_links @ kept)
        return bipartite_adjacency(restrict_items(self.train, keep), links, self.gamma)


def restrict_items(train: sp.spmatrix, keep: np.ndarray) -> sp.csr_matrix:
    """``R`` without the interactions of the items not in ``keep`` (``n_I`` bool), float32 CSR:
    their columns emptied (no explicit zeros), the others as they are; the graph of a modality
    over the items that have it."""
    r = sp.csr_matrix(sp.csr_matrix(train, dtype=np.float32) @ sp.diags(np.asarray(keep, dtype=np.float32)))
    r.eliminate_zeros()
    return r
