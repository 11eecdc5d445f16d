"""Row-normalised (mean-aggregation) user-item adjacency.

LightGCN's ``Â = D^-1/2 A D^-1/2`` (``bipartite.py``) is symmetric; two older baselines use the
random-walk form instead:

- LATTICE (reference code, NGCF lineage): ``D^-1 (A + I)`` — every node averages itself and its
  neighbours (degrees count the self-loop);
- MMGCN (``aggr = "mean"`` message passing): ``D^-1 A`` — every node averages its neighbours.

Both are ``P = D^-1 (A + s·I)`` for ``A = [[0, R], [Rᵀ, 0]]`` (users first), ``D`` its row sums
with ``0^-1 := 0`` (a node without neighbours gets an all-zero row). ``P`` is not symmetric:
wrap it in ``SparseOperator(P, symmetric=False)`` so the backward uses ``Pᵀ``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def random_walk_adjacency(train: sp.spmatrix, self_loops: bool = False, normalize: bool = True) -> sp.csr_matrix:
    """``D^-1 (A + s·I)`` for ``A = [[0, R], [Rᵀ, 0]]`` and ``s = 1`` iff ``self_loops``.

    Args:
        train: the binary users x items training matrix ``R``.
        self_loops: add ``I`` before normalising (LATTICE) or not (MMGCN's mean aggregation).
        normalize: ``False`` returns ``A + s·I`` itself (sum aggregation, MMGCN ``aggr = "add"``).

    Returns:
        ``N x N`` float32 CSR (``N = n_U + n_I``) whose non-empty rows sum to 1 when normalised.
    """
    r = sp.csr_matrix(train, dtype=np.float32)
    n_users, n_items = r.shape
    n = n_users + n_items
    adj = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
    adj = sp.csr_matrix(adj, shape=(n, n))
    if self_loops:
        adj = (adj + sp.eye(n, dtype=np.float32, format="csr")).tocsr()
    if not normalize:
        adj.sort_indices()
        return adj
    degree = np.asarray(adj.sum(axis=1), dtype=np.float64).ravel()
    inverse = np.zeros_like(degree)
    np.divide(1.0, degree, out=inverse, where=degree > 0)
    out = sp.diags(inverse.astype(np.float32)) @ adj
    out = sp.csr_matrix(out, dtype=np.float32)
    out.sort_indices()
    return out
