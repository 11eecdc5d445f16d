"""Sparse item–item co-occurrence top-k graph (ALGORITHMS.md 2.4, used by SIGER).

``O = RᵀR`` counts the training users two items share. It is never formed densely (on
Electronics that would be 15.9 GB): item-row blocks ``O_b = R[:, b]ᵀ R`` are sparse products,
each block is reduced to its rows' top-``k`` entries at once, and only those are kept.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from prismrec.graph.bipartite import restrict_items
from prismrec.graph.ops import mix, sym_normalize

_SCORES = ("count", "cosine")
_WEIGHTS = ("binary", "score")
#: Default budget of multiply-adds (an upper bound on the stored entries) of one block product.
_BLOCK_WORK = 4 * 2**20


def _binary_interactions(train: sp.spmatrix | np.ndarray) -> sp.csr_matrix:
    """The users x items interaction pattern as int32 0/1 CSR (any non-zero is an interaction)."""
    if sp.issparse(train):
        r = sp.csr_matrix(train, copy=True)
    elif isinstance(train, np.ndarray):
        r = sp.csr_matrix(train)
    else:
        raise TypeError(
            f"train_csr must be a SciPy sparse matrix or numpy array, got {type(train).__name__}"
        )
    if r.ndim != 2:
        raise ValueError(f"train_csr must be 2-D (users x items), got shape {r.shape}")
    r.sum_duplicates()
    r.eliminate_zeros()
    # Integer counts keep O exact (float32 would lose integers above 2^24 users).
    r.data = np.ones_like(r.data, dtype=np.int32)
    return r.astype(np.int32)


def _item_blocks(r: sp.csr_matrix, block_size: int | None) -> np.ndarray:
    """Block boundaries over items: fixed ``block_size`` rows, or adaptive to the product's work.

    The adaptive rule bounds the entries a block product can produce: item ``i``'s row of ``O``
    has at most ``w_i = Σ_{u ∋ i} d_u`` entries, so blocks are cut where the running sum of
    ``w`` crosses multiples of a fixed budget (an item heavier than the budget gets its own block).
    """
    n_items = r.shape[1]
    if block_size is not None:
        return np.unique(np.append(np.arange(0, n_items, block_size), n_items))
    user_deg = np.diff(r.indptr).astype(np.int64)
    work = np.asarray(r.T @ user_deg, dtype=np.int64).ravel()
    cum = np.cumsum(work)
    total = int(cum[-1]) if n_items else 0
    cuts = np.searchsorted(cum, np.arange(_BLOCK_WORK, total, _BLOCK_WORK), side="right")
    return np.unique(np.concatenate([[0], cuts, [n_items]]))


def cooccurrence_graph(
    train_csr: sp.spmatrix,
    k: int = 10,
    *,
    score: str = "count",
    weight: str = "binary",
    block_size: int | None = None,
    normalize: bool = True,
) -> sp.csr_matrix:
    """Top-``k`` co-occurrence graph of items from the training matrix (ALGORITHMS.md 2.4).

    ``O = RᵀR`` with its diagonal zeroed; score ``q_ij = O_ij`` (``"count"``) or
    ``O_ij / sqrt(n_i n_j)`` (``"cosine"``, ``n_i`` = item ``i``'s training degree). Each row keeps
    its top-``k`` entries with ``q > 0`` (fewer when fewer items share a user with it; ties go to
    the lower column index), weighted 1 (``weight="binary"``) or ``q`` (``"score"``), then
    :func:`~prismrec.graph.ops.sym_normalize` with row degrees unless ``normalize=False``.

    Args:
        train_csr: users x items training interactions; any stored non-zero counts as one.
        k: ``1 <= k <= n_items`` entries per row at most.
        score: ``"count"`` or ``"cosine"``.
        weight: ``"binary"`` or ``"score"``.
        block_size: items per block product; default adapts blocks so one product produces at
            most about 4M entries (memory ``O(n_items·k + block work)``).
        normalize: apply the row-degree symmetric normalisation.

    Returns:
        ``n_items x n_items`` float32 CSR, directed, at most ``k`` entries per row, empty diagonal.
    """
    if score not in _SCORES:
        raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
    if weight not in _WEIGHTS:
        raise ValueError(f"weight must be one of {_WEIGHTS}, got {weight!r}")
    r = _binary_interactions(train_csr)
    n_items = r.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    k = int(k)
    if n_items < 1 or k < 1 or k > n_items:
        raise ValueError(f"k must be between 1 and n_items={n_items}, got k={k}")
    if block_size is not None and (
        isinstance(block_size, bool)
        or not isinstance(block_size, (int, np.integer))
        or block_size < 1
    ):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")

    item_deg = np.diff(r.tocsc().indptr).astype(np.float64)
    r_items = r.T.tocsr()  # items x users: row block b gives R[:, b]ᵀ without a column slice
    bounds = _item_blocks(r, None if block_size is None else int(block_size))
    kept_rows, kept_cols, kept_q = [], [], []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        block = (r_items[start:stop] @ r).tocoo()  # O_b, (stop-start) x n_items, exact counts
        rows = block.row.astype(np.int64) + start
        cols = block.col.astype(np.int64)
        off_diag = rows != cols  # zero O's diagonal: an item does not co-occur with itself
        rows, cols = rows[off_diag], cols[off_diag]
        q = block.data[off_diag].astype(np.float64)
        if score == "cosine":
            q = q / np.sqrt(item_deg[rows] * item_deg[cols])
        positive = q > 0
        rows, cols, q = rows[positive], cols[positive], q[positive]
        # Per row: q descending, then column ascending (the tie rule); keep the first k.
        order = np.lexsort((cols, -q, rows))
        rows, cols, q = rows[order], cols[order], q[order]
        row_start = np.searchsorted(rows, rows, side="left")
        keep = (np.arange(rows.size) - row_start) < k
        kept_rows.append(rows[keep])
        kept_cols.append(cols[keep])
        kept_q.append(q[keep])

    rows = np.concatenate(kept_rows) if kept_rows else np.empty(0, np.int64)
    cols = np.concatenate(kept_cols) if kept_cols else np.empty(0, np.int64)
    q = np.concatenate(kept_q) if kept_q else np.empty(0, np.float64)
    values = np.ones(rows.size, dtype=np.float32) if weight == "binary" else q.astype(np.float32)
    graph = sp.csr_matrix((values, (rows, cols)), shape=(n_items, n_items), dtype=np.float32)
    graph.sort_indices()
    if not normalize:
        return graph
    return sym_normalize(graph, warn_nonpositive=True)


def behavior_item_graph(train: sp.csr_matrix, k: int, min_count: int) -> sp.csr_matrix:
    """DA-MRS's behaviour item graph ``Ŝ_b``: top-``k`` co-interacted items (``>= min_count`` shared users) plus self, binary,
    normalised with row degrees. Top-``k`` of the counts then the threshold equals the top-``k``
    of the thresholded counts (the counts are ranked highest first)."""
    counts = cooccurrence_graph(train, k, score="count", weight="score", normalize=False)
    counts.data[counts.data < min_count] = 0
    counts.eliminate_zeros()
    counts.data[:] = 1.0
    pattern = counts + sp.identity(counts.shape[0], dtype="float32", format="csr")
    return sym_normalize(pattern)


def infused_graphs(semantic: list[sp.spmatrix], train: sp.spmatrix, betas: list[float], k: int,
                   score: str = "count", weight: str = "binary", renormalize: bool = False,
                   present_items: np.ndarray | None = None) -> list[sp.spmatrix]:
    """SIGER's collaborative infusion (ALGORITHMS.md 5.1): ``G_m = (1 − β_m) Ŝ_m + β_m Ĉ`` with ``Ĉ``
    the co-occurrence top-``k`` graph of ``train`` (built only when some ``β_m > 0``); no
    renormalisation (both are normalised) unless ``renormalize`` (2.2, row degrees).

    ``present_items`` (optional ``n_I x M`` bool, ``False`` where an item's modality ``m`` is
    missing, :func:`prismrec.data.features.fusion_presence`): ``G_m`` infuses ``Ĉ_m``, the
    co-occurrence graph of the items having ``m`` (``train`` without the others' interactions,
    the same top-``k`` rule and normalisation), so an item lacking ``m`` has no ``Ĉ_m`` row or
    column: ``G_m`` neither fills its row from its behaviour neighbours (it has no ``m`` view)
    nor passes it to the items having ``m``. ``None`` (or a modality every item has): ``Ĉ``."""
    graphs = list(semantic)
    if any(b > 0 for b in betas):
        co = cooccurrence_graph(train, k, score=score, weight=weight)
        present = None if present_items is None else np.asarray(present_items, dtype=bool)
        if present is not None and present.shape != (co.shape[0], len(graphs)):
            raise ValueError(f"present_items must be n_items x M = {co.shape[0]} x {len(graphs)}, got {present.shape}")
        cos = [co if present is None or present[:, m].all() or b == 0 else
               cooccurrence_graph(restrict_items(train, present[:, m]), k, score=score, weight=weight)
               for m, b in enumerate(betas)]
        graphs = [mix([s, c], [1.0 - b, b]) for s, c, b in zip(graphs, cos, betas)]
    if renormalize:
        graphs = [sym_normalize(g, warn_nonpositive=True) for g in graphs]
    return graphs
