"""Fixed-width weighted neighbour lists as sparse aggregation graphs (DRAGON's user–user graph).

DRAGON (and DualGNN before it) aggregates each user's ``k`` strongest co-occurrence neighbours
with softmax weights of their co-occurrence counts. A user with fewer than ``k`` neighbours is
padded in the reference code by repeating random entries of its own list, drawn afresh every
epoch (a Pólya urn: each draw picks uniformly among the entries so far, repeats included), which
changes the softmax weights. :func:`softmax_neighbour_graph` builds that graph from any top-``k``
scored neighbour graph (e.g. :func:`prismrec.graph.cooccurrence_graph` of the users) as one
sparse ``n x n`` matrix, vectorised over users: memory ``O(n·k)``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

PADDINGS = ("resample", "none")
AGGREGATIONS = ("softmax", "mean")


def softmax_neighbour_graph(
    scores: sp.spmatrix,
    k: int,
    *,
    pad: str = "resample",
    aggr: str = "softmax",
    rng: np.random.Generator | None = None,
) -> sp.csr_matrix:
    """Row-stochastic aggregation graph ``W`` over each row's stored neighbours.

    Args:
        scores: ``n x n`` sparse matrix; row ``u`` stores at most ``k`` neighbours with their
            scores (co-occurrence counts). Rows without entries give empty rows of ``W``.
        k: the list width ``k``; a row with more than ``k`` entries is an error.
        pad: ``"resample"`` (reference): a row with ``0 < n_u < k`` entries is extended to ``k``
            entries, entry ``t`` (``t = n_u..k-1``) a uniform draw among the ``t`` entries so
            far; ``"none"``: the ``n_u`` entries as they are.
        aggr: ``"softmax"`` (reference): weights ``softmax`` of the scores over the (padded)
            list; ``"mean"``: ``1/len`` per list entry.
        rng: random source of ``"resample"`` (required then).

    Returns:
        ``n x n`` float32 CSR ``W`` with ``W[u, v] = Σ_{entries e of u with neighbour v} w_e``
        (a repeated neighbour's weights add up); non-empty rows sum to 1.
    """
    if pad not in PADDINGS:
        raise ValueError(f"pad must be one of {PADDINGS}, got {pad!r}")
    if aggr not in AGGREGATIONS:
        raise ValueError(f"aggr must be one of {AGGREGATIONS}, got {aggr!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    m = sp.csr_matrix(scores)
    n = m.shape[0]
    counts = np.diff(m.indptr)
    if counts.size and counts.max() > k:
        raise ValueError(f"a row stores {counts.max()} neighbours, more than k={k}")
    # Padded n x k lists: position p < n_u holds the row's p-th stored entry.
    position = np.arange(m.nnz) - np.repeat(m.indptr[:-1], counts)
    rows = np.repeat(np.arange(n), counts)
    cols = np.zeros((n, k), dtype=np.int64)
    vals = np.zeros((n, k), dtype=np.float64)
    cols[rows, position] = m.indices
    vals[rows, position] = m.data
    length = counts.copy()
    if pad == "resample":
        if rng is None:
            raise ValueError("pad='resample' needs a random generator (rng)")
        for t in range(1, k):  # fill position t from the t entries before it, all rows at once
            grow = np.flatnonzero((counts > 0) & (counts <= t))
            if grow.size:
                pick = np.floor(rng.random(grow.size) * t).astype(np.int64)
                cols[grow, t] = cols[grow, pick]
                vals[grow, t] = vals[grow, pick]
        length = np.where(counts > 0, k, 0)
    valid = np.arange(k)[None, :] < length[:, None]
    if aggr == "softmax":
        top = np.where(valid, vals, -np.inf).max(axis=1, keepdims=True)
        weights = np.where(valid, np.exp(vals - np.where(np.isfinite(top), top, 0.0)), 0.0)
    else:
        weights = valid.astype(np.float64)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    row_ids = np.repeat(np.arange(n), k).reshape(n, k)
    graph = sp.csr_matrix(
        (weights[valid].astype(np.float32), (row_ids[valid], cols[valid])), shape=(n, n), dtype=np.float32
    )  # duplicate (row, col) pairs of a padded list are summed
    graph.sort_indices()
    return graph
