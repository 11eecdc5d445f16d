"""Element-wise max over the union of sparse graphs' stored entries (SMORE's fusion graph)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def max_union(graphs: Sequence[sp.spmatrix]) -> sp.csr_matrix:
    """``G[i, j] = max_m G_m[i, j]`` over the graphs that **store** ``(i, j)``.

    An entry missing from a graph counts as ``−∞``, not 0 (SMORE's ``max_pool_fusion``), so a
    negative weight stored in one graph survives when no other graph stores that entry. Memory
    and time are linear in the total number of stored entries.
    """
    graphs = [sp.coo_matrix(g) for g in graphs]
    if not graphs:
        raise ValueError("max_union needs at least one graph")
    shape = graphs[0].shape
    if any(g.shape != shape for g in graphs):
        raise ValueError(f"max_union needs graphs of one shape, got {[g.shape for g in graphs]}")
    rows = np.concatenate([g.row for g in graphs]).astype(np.int64)
    cols = np.concatenate([g.col for g in graphs]).astype(np.int64)
    vals = np.concatenate([g.data for g in graphs]).astype(np.float64)
    if rows.size == 0:
        return sp.csr_matrix(shape, dtype=np.float32)
    key = rows * shape[1] + cols
    order = np.argsort(key, kind="stable")
    key, vals = key[order], vals[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    best = np.maximum.reduceat(vals, starts)
    unique = key[starts]
    out = sp.csr_matrix(
        (best.astype(np.float32), (unique // shape[1], unique % shape[1])), shape=shape, dtype=np.float32
    )
    out.sort_indices()
    return out
