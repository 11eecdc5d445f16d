"""Blocked top-k cosine graphs over item feature matrices (ALGORITHMS.md 2.2, 2.3, 2.5).

Every builder here works on row blocks of the similarity matrix: peak memory is
``O(block_size * n + n * k)`` floats and a dense ``n x n`` matrix is never formed. The default
block holds about 64 MB of float32 similarities.

Tie-breaking is exact: among equal (float32) similarities the lower column index wins, i.e. a
row keeps the first ``k`` columns of a *stable* descending sort. ``torch.topk`` alone does not
promise which of several tied columns it returns, so rows whose boundary value is tied are
re-resolved with an explicit column-order rule (see :func:`_topk_lowest_index`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from prismrec.graph.cache import cached_graph
from prismrec.graph.ops import sym_normalize

#: Target size of one block of float32 similarities (bytes); ``block_size * n * 4`` is about this.
_BLOCK_BYTES = 64 * 2**20
_NORM_EPS = 1e-12
_SELF_LOOP_MODES = ("force", "exclude")
_WEIGHT_MODES = ("cosine", "binary")
_SYMMETRIZE_MODES = ("none", "max", "mutual")


CACHE_MIN_WORK = 10**9
"""``n·n·d`` from which :func:`knn_graph` caches its graph by default (about 0.1 s of products
at one thread; tiktok's 6,710 x 128 features are 5.8e9, a test's 300 x 16 are 1.4e6)."""


def default_block_size(n: int) -> int:
    """Rows per similarity block so that ``block_size * n`` float32 values take about 64 MB."""
    return int(max(1, min(n, _BLOCK_BYTES // (4 * max(n, 1)))))


def _as_feature_tensor(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate an ``n x d`` feature matrix and return it as a detached torch tensor."""
    if isinstance(features, torch.Tensor):
        x = features.detach()
    elif isinstance(features, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(features))
    else:
        raise TypeError(
            f"features must be a numpy array or a torch tensor, got {type(features).__name__}"
        )
    if x.dim() != 2:
        raise ValueError(f"features must be a 2-D (n x d) matrix, got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError("features has no rows; a kNN graph needs at least one item")
    if x.is_complex():
        raise TypeError(f"features must be real-valued, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(
            f"features contain NaN or infinite values in {bad} rows; clean or impute them first"
        )
    return x


def _row_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / max(||x||, eps)`` per row, returned as float32.

    The norm is taken in float64 so huge float32 entries cannot overflow it; zero rows stay zero
    (their similarity with everything is exactly 0). Rows go through float64 in blocks of about
    64 MB, so a large feature matrix (Electronics: 63k x 4096) never has a whole float64 copy.
    """
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    step = max(1, _BLOCK_BYTES // (8 * max(x.shape[1], 1)))
    for start in range(0, x.shape[0], step):
        x64 = x[start:start + step].to(torch.float64)
        norms = torch.linalg.vector_norm(x64, dim=1, keepdim=True).clamp_min(_NORM_EPS)
        out[start:start + step] = x64 / norms
    return out


def _topk_lowest_index(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices (``rows x k``, ascending) of each row's top-``k`` with ties to lower index.

    Equivalent to taking the first ``k`` entries of a stable descending sort of every row, but
    costs one ``topk`` instead of a full ``n log n`` sort (which is ~50x slower here). Only rows
    in which the ``k``-th largest value is shared with a column outside ``topk``'s pick (where
    ``topk`` may return any of the tied columns) are recomputed, and those exactly.
    """
    n_cols = sim.shape[1]
    top_vals, top_idx = torch.topk(sim, min(k + 1, n_cols), dim=1, largest=True, sorted=True)
    if k == n_cols:  # every column is kept: no choice, no tie to break
        return torch.sort(top_idx, dim=1).values
    kth = top_vals[:, k - 1 : k]
    # A tie straddles the cut iff the (k+1)-th largest value equals the k-th; this costs no
    # extra pass over the block (a `sim >= kth` count would cost as much as the matmul).
    ambiguous = torch.nonzero(top_vals[:, k] == top_vals[:, k - 1], as_tuple=True)[0]
    top_idx = top_idx[:, :k]
    if ambiguous.numel():
        sub = sim.index_select(0, ambiguous)
        sub_kth = kth.index_select(0, ambiguous)
        above = sub > sub_kth  # all of these are kept
        tied = sub == sub_kth
        slots = k - above.sum(dim=1, keepdim=True)  # how many tied columns still fit
        # Rank of each tied column among the tied columns of its row, in column order.
        tie_rank = torch.cumsum(tied, dim=1, dtype=torch.int32)
        keep = above | (tied & (tie_rank <= slots))
        # nonzero() is row-major, so each row yields exactly k ascending columns.
        fixed = torch.nonzero(keep, as_tuple=True)[1].view(-1, k)
        top_idx = top_idx.clone()
        top_idx[ambiguous] = fixed
    return torch.sort(top_idx, dim=1).values


def knn_graph(
    features: np.ndarray | torch.Tensor,
    k: int = 10,
    *,
    block_size: int | None = None,
    self_loops: str = "force",
    weight: str = "cosine",
    normalize: bool = True,
    cache: bool | None = None,
) -> sp.csr_matrix:
    """Directed top-``k`` cosine graph of the rows of ``features`` (ALGORITHMS.md 2.2, 2.3, 2.5).

    For each row block ``b`` the similarities ``S = nrm(X_b) nrm(X)ᵀ`` are formed (row L2
    normalisation, ``eps = 1e-12``) and every row keeps its ``k`` largest columns, ties going to
    the lower column index.

    Args:
        features: ``n x d`` real matrix (numpy or torch; a torch tensor is processed on its own
            device). Must be finite.
        k: neighbours per row, ``1 <= k <= n`` (``k <= n - 1`` when self is excluded). With
            ``self_loops="force"`` the row keeps itself plus ``k - 1`` others.
        block_size: rows of ``S`` computed at once; default keeps one block near 64 MB.
        self_loops: ``"force"`` sets ``S_ii = +inf`` so self is always kept (2.2, weight 1);
            ``"exclude"`` sets ``S_ii = -inf`` so self is never kept (2.5).
        weight: ``"cosine"`` stores ``w_ij = cos(x_i, x_j)`` (2.2); ``"binary"`` stores 1
            (2.3, 2.5).
        normalize: apply :func:`~prismrec.graph.ops.sym_normalize` with row degrees
            (``δ_i^-1/2 w_ij δ_j^-1/2``, warns on non-positive degrees of non-empty rows);
            ``False`` returns the raw weights (2.5).
        cache: keep the top-``k`` cosine graph (neighbours and weights, before ``weight`` and
            ``normalize`` are applied) in the content-addressed graph cache
            (:mod:`prismrec.graph.cache`, keyed by the features' bytes, ``k`` and
            ``self_loops``), so every model, seed and trial on the same features computes it
            once. ``None`` (default): cache CPU inputs whose build costs at least ``n·n·d`` =
            :data:`CACHE_MIN_WORK` multiply-adds (tiktok-sized and up, never a test's tiny
            graphs); ``False``: never (features that change during training).

    Returns:
        ``n x n`` float32 CSR with exactly ``n·k`` stored entries (``k`` per row, columns sorted).
        Kept entries whose value is 0 (orthogonal neighbours) stay stored as explicit zeros so
        the neighbour sets remain readable (:func:`knn_neighbors`, :func:`intersection_links`).
    """
    if weight not in _WEIGHT_MODES:
        raise ValueError(f"weight must be one of {_WEIGHT_MODES}, got {weight!r}")
    x, k, block_size = _checked(features, k, block_size, self_loops)
    n = int(x.shape[0])
    if cache is None:
        cache = x.device.type == "cpu" and n * n * int(x.shape[1]) >= CACHE_MIN_WORK
    if cache:  # the costly part (products and top-k) is cached; weights and normalisation are cheap
        raw = cached_graph("knn-topk/1", [x], {"k": k, "self_loops": self_loops},
                           lambda: _topk_cosine(x, k, block_size, self_loops))
    else:
        raw = _topk_cosine(x, k, block_size, self_loops)
    if weight == "binary":
        raw.data.fill(1.0)
    if not normalize:
        return raw
    return _normalize_keep_pattern(raw)


def knn_columns(
    features: np.ndarray | torch.Tensor,
    k: int = 10,
    *,
    block_size: int | None = None,
    self_loops: str = "force",
) -> torch.Tensor:
    """The neighbour columns of :func:`knn_graph` (``n x k`` int64, ascending per row) on the
    features' device, never leaving it: for graphs rebuilt during training on a GPU (LATTICE's
    learned graph), where the SciPy matrix would cost two host round trips per rebuild.
    Arguments as :func:`knn_graph`'s."""
    x, k, block_size = _checked(features, k, block_size, self_loops)
    return torch.cat([idx for _, _, idx, _ in _topk_blocks(x, k, block_size, self_loops)])


def _checked(features, k, block_size, self_loops) -> tuple[torch.Tensor, int, int]:
    """Validated ``(features as a tensor, k, block_size)`` of the builders above."""
    if self_loops not in _SELF_LOOP_MODES:
        raise ValueError(f"self_loops must be one of {_SELF_LOOP_MODES}, got {self_loops!r}")
    x = _as_feature_tensor(features)
    n = int(x.shape[0])
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    k = int(k)
    max_k = n if self_loops == "force" else n - 1
    if k < 1 or k > max_k:
        raise ValueError(
            f"k must be between 1 and {max_k} for {n} items with self_loops={self_loops!r}, "
            f"got k={k}"
        )
    if block_size is None:
        block_size = default_block_size(n)
    elif (
        isinstance(block_size, bool)
        or not isinstance(block_size, (int, np.integer))
        or block_size < 1
    ):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return x, k, int(min(block_size, n))


def _topk_blocks(x: torch.Tensor, k: int, block_size: int, self_loops: str):
    """Per row block ``[start, stop)``: ``(start, stop, columns, cosine weights)`` of its rows'
    top-``k``, on ``x``'s device (self's weight 1)."""
    n = int(x.shape[0])
    xn = _row_normalize(x)
    diag_value = float("inf") if self_loops == "force" else float("-inf")
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        sim = xn[start:stop] @ xn.T  # (block x n) float32, the only large temporary
        local = torch.arange(stop - start, device=sim.device)
        sim[local, local + start] = diag_value
        idx = _topk_lowest_index(sim, k)
        w = sim.gather(1, idx)
        del sim
        # The forced self entry holds +inf; its weight is cos(x_i, x_i) := 1 (2.2), also for
        # zero rows. Rounding can push |cos| a hair past 1, so clamp to the true range.
        yield start, stop, idx, torch.where(torch.isinf(w), torch.ones_like(w), w).clamp_(-1.0, 1.0)


def _topk_cosine(x: torch.Tensor, k: int, block_size: int, self_loops: str) -> sp.csr_matrix:
    """The directed top-``k`` graph with cosine weights (self: 1), unnormalised: every row
    block's similarities, its top-``k`` and their weights. Costs ``n·n·d`` multiply-adds."""
    n = int(x.shape[0])
    cols = np.empty((n, k), dtype=np.int32 if n < 2**31 else np.int64)
    vals = np.empty((n, k), dtype=np.float32)
    for start, stop, idx, w in _topk_blocks(x, k, block_size, self_loops):
        vals[start:stop] = w.cpu().numpy()
        cols[start:stop] = idx.cpu().numpy()
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64 if n * k >= 2**31 else np.int32)
    raw = sp.csr_matrix((vals.ravel(), cols.ravel(), indptr), shape=(n, n))
    raw.has_sorted_indices = True
    return raw


def _normalize_keep_pattern(raw: sp.csr_matrix) -> sp.csr_matrix:
    """``sym_normalize(raw)`` but with ``raw``'s sparsity pattern kept entry for entry.

    SciPy's sparse products drop entries that are exactly 0 (orthogonal neighbours with cosine
    weight 0); the top-k structure is part of the graph's meaning, so those entries are put back
    as explicit zeros.
    """
    out = sym_normalize(raw, warn_nonpositive=True)
    if out.nnz == raw.nnz:  # the product can only remove entries, so the patterns are equal
        return out
    rows = np.repeat(np.arange(raw.shape[0]), np.diff(raw.indptr))
    data = np.asarray(out[rows, raw.indices], dtype=np.float32).ravel()
    kept = sp.csr_matrix((data, raw.indices.copy(), raw.indptr.copy()), shape=raw.shape)
    kept.has_sorted_indices = True
    return kept


def symmetrize(graph: sp.spmatrix, mode: str = "none") -> sp.csr_matrix:
    """Symmetrise a directed graph ``B`` (ALGORITHMS.md 2.5).

    ``"none"`` returns ``B`` as float32 CSR. ``"max"`` is ``max(B, Bᵀ)`` on the union of the two
    patterns: an edge kept in either direction survives with the larger of its stored weights.
    ``"mutual"`` is ``min(B, Bᵀ)`` on the intersection: only edges stored in both directions
    survive, with the smaller weight. "Stored" counts explicit zeros, and a one-way edge keeps its
    own weight even when negative (a plain elementwise ``maximum`` with the implicit 0 would
    drop it), so for non-negative weights these equal SciPy's ``maximum``/``minimum``.
    """
    if mode not in _SYMMETRIZE_MODES:
        raise ValueError(f"mode must be one of {_SYMMETRIZE_MODES}, got {mode!r}")
    b = sp.csr_matrix(graph, dtype=np.float32, copy=True)
    if b.shape[0] != b.shape[1]:
        raise ValueError(f"symmetrize needs a square matrix, got shape {b.shape}")
    b.sum_duplicates()
    if mode == "none":
        return b
    coo = b.tocoo()
    # Each entry appears once as (i, j) from B and once as (j, i) from Bᵀ; group the pairs.
    rows = np.concatenate([coo.row, coo.col]).astype(np.int64)
    cols = np.concatenate([coo.col, coo.row]).astype(np.int64)
    data = np.concatenate([coo.data, coo.data])
    order = np.lexsort((cols, rows))
    rows, cols, data = rows[order], cols[order], data[order]
    n_entries = rows.size
    if n_entries == 0:
        return sp.csr_matrix(b.shape, dtype=np.float32)
    new_group = np.ones(n_entries, dtype=bool)
    new_group[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    starts = np.flatnonzero(new_group)
    group_size = np.diff(np.append(starts, n_entries))
    if mode == "max":
        values = np.maximum.reduceat(data, starts)
        keep = np.ones(starts.size, dtype=bool)
    else:  # mutual: both directions stored <=> the pair group has 2 members
        values = np.minimum.reduceat(data, starts)
        keep = group_size == 2
    out = sp.csr_matrix(
        (values[keep], (rows[starts][keep], cols[starts][keep])), shape=b.shape, dtype=np.float32
    )
    out.sort_indices()
    return out


def knn_neighbors(graph: sp.spmatrix) -> np.ndarray:
    """Neighbour lists of a kNN graph as an ``n x k`` array of column indices (ascending per row).

    Every row must store the same number ``k`` of entries (as :func:`knn_graph` guarantees);
    explicit zeros count as neighbours.
    """
    g = sp.csr_matrix(graph, copy=True)
    g.sum_duplicates()
    counts = np.diff(g.indptr)
    if counts.size == 0:
        return np.empty((0, 0), dtype=np.int64)
    if not (counts == counts[0]).all():
        raise ValueError(
            "knn_neighbors needs the same number of stored entries in every row; "
            f"found between {counts.min()} and {counts.max()}"
        )
    g.sort_indices()
    return g.indices.astype(np.int64).reshape(g.shape[0], int(counts[0]))


def _pattern(graph: sp.spmatrix) -> sp.csr_matrix:
    """Binary float32 CSR with a 1 at every stored entry (explicit zeros included)."""
    g = sp.csr_matrix(graph, dtype=np.float32, copy=True)
    g.sum_duplicates()
    g.data = np.ones_like(g.data)
    return g


def intersection_links(graph_a: sp.spmatrix, graph_b: sp.spmatrix) -> sp.csr_matrix:
    """GUME's item–item links: ``B(i, j) = 1`` iff ``j ∈ N_a(i) ∩ N_b(i)`` and ``j ≠ i`` (3.6).

    Neighbour sets are the stored entries of each row of the two graphs (e.g. the image and text
    kNN graphs). The result is binary, float32 and **directed** (row ``i`` uses ``i``'s own
    neighbour lists), with an empty diagonal; it works for any ``k``.
    """
    a, b = _pattern(graph_a), _pattern(graph_b)
    if a.shape != b.shape or a.shape[0] != a.shape[1]:
        raise ValueError(
            "intersection_links needs two square graphs of the same shape, "
            f"got {a.shape} and {b.shape}"
        )
    both = a.multiply(b).tocoo()
    off_diag = both.row != both.col
    out = sp.csr_matrix(
        (np.ones(int(off_diag.sum()), dtype=np.float32), (both.row[off_diag], both.col[off_diag])),
        shape=a.shape,
    )
    out.sort_indices()
    return out
