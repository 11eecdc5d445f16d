"""Sparse item graphs whose edge values carry gradient (LATTICE's learned kNN graph).

A *learned* graph has a sparsity pattern chosen without gradient — the blocked top-``k`` of
:func:`~prismrec.graph.knn.knn_graph` on the current (projected) features — and edge values
that are functions of parameters (cosines of projected features, mixing weights). The dense
reference computes ``n × n`` similarities and scatters the kept ones into an ``n × n`` matrix;
here every step touches only the ``n·k`` kept edges:

- :func:`knn_edges` — the top-``k`` pattern as ``(rows, cols)`` (memory ``O(block·n + n·k)``);
- :func:`sampled_dot` — ``w_e = a[rows_e] · b[cols_e]`` for the kept edges only, with a chunked
  backward (no ``n·k × d`` gathers are kept for autograd);
- :func:`normalize_edges` — ``δ_i^-1/2 w_ij δ_j^-1/2`` with row degrees ``δ``;
- :class:`EdgeGraph` — the edges as a CSR operator: ``G @ X`` is differentiable with respect to
  both ``X`` and the edge values, duplicate ``(i, j)`` pairs are summed;
- :class:`EdgeList` — a fixed SciPy graph as edge tensors, to mix edge-wise with learned ones;
- :class:`KnnPatterns` — the top-``k`` patterns of matrices that change between rebuilds, searched
  again only when a matrix changed;
- :class:`EpochGraph` — the schedule of a graph rebuilt from the parameters once per epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from prismrec.graph.knn import knn_columns
from prismrec.graph.sparse import spmm

#: Edges processed at once by the sampled dot products (``chunk × d`` floats per gather).
EDGE_CHUNK = 1 << 16


def knn_edges(features: torch.Tensor, k: int, block_size: int | None = None,
              keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` cosine neighbours of every row of ``features`` as edge lists ``(rows, cols)``.

    Same neighbour sets as :func:`knn_graph` (self forced, ties to the lower index): ``n·k``
    edges, row-major, columns ascending within a row, as int64 tensors on ``features``' device.
    No gradient flows through the choice of neighbours. ``keep`` (bool per row): the top-``k``
    among the kept rows only (``k`` capped at their number); the other rows get no edges.
    """
    among = None if keep is None else torch.nonzero(keep).squeeze(1)
    x = features.detach() if among is None else features.detach().index_select(0, among)
    k = k if among is None else min(k, len(among))
    cols = knn_columns(x, k, block_size=block_size)  # on the features' device
    rows = torch.arange(cols.shape[0], device=cols.device).repeat_interleave(k)
    if among is None:
        return rows, cols.reshape(-1)
    return among[rows], among[cols.reshape(-1)]


class KnnPatterns(nn.Module):
    """:func:`knn_edges` of matrices that are rebuilt from parameters, each searched again only
    when its matrix changed: an evaluation after an epoch and the next epoch's first batch see the
    same parameters, so they share one blocked top-``k``.

    ``patterns(key, x, keep)`` returns the ``(rows, cols)`` of ``x`` (``keep`` as in
    :func:`knn_edges`, fixed per key); ``clear()`` forgets every pattern. A module of a model:
    a device move (``model.to``) clears it, and it holds nothing to save.
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.cache: dict = {}  # key -> (the matrix searched, rows, cols)

    def forward(self, key, x: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self.cache.get(key)
        if cached is not None and cached[0].shape == x.shape and torch.equal(cached[0], x.detach()):
            return cached[1], cached[2]
        rows, cols = knn_edges(x, self.k, keep=keep)
        self.cache[key] = (x.detach().clone(), rows, cols)
        return rows, cols

    def clear(self) -> None:
        self.cache = {}

    def _apply(self, fn, recurse=True):
        self.clear()  # patterns on the old device
        return super()._apply(fn, recurse)


def _sampled_dot(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    out = a.new_empty(rows.numel())
    for start in range(0, rows.numel(), EDGE_CHUNK):
        stop = start + EDGE_CHUNK
        out[start:stop] = (a.index_select(0, rows[start:stop]) * b.index_select(0, cols[start:stop])).sum(1)
    return out


def _scatter_rows(target: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                  source: torch.Tensor, gather: torch.Tensor) -> torch.Tensor:
    """``target[index_e] += weight_e · source[gather_e]`` for every edge ``e``, chunked."""
    for start in range(0, index.numel(), EDGE_CHUNK):
        stop = start + EDGE_CHUNK
        rows = source.index_select(0, gather[start:stop]) * weight[start:stop, None]
        target.index_add_(0, index[start:stop], rows)
    return target


class _SampledDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, rows, cols):  # noqa: D401
        ctx.save_for_backward(a, b, rows, cols)
        return _sampled_dot(a, b, rows, cols)

    @staticmethod
    def backward(ctx, grad):
        a, b, rows, cols = ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:  # ∂w_e/∂a[rows_e] = b[cols_e]
            grad_a = _scatter_rows(torch.zeros_like(a), rows, grad, b, cols)
        if ctx.needs_input_grad[1]:  # ∂w_e/∂b[cols_e] = a[rows_e]
            grad_b = _scatter_rows(torch.zeros_like(b), cols, grad, a, rows)
        return grad_a, grad_b, None, None


def sampled_dot(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``w_e = a[rows_e] · b[cols_e]`` for each edge ``e`` (a sampled dense-dense product).

    Differentiable in ``a`` and ``b``; forward and backward run over chunks of
    :data:`EDGE_CHUNK` edges, so memory is ``O(|E| + chunk·d)`` beyond the inputs.
    """
    if a.requires_grad or b.requires_grad:
        return _SampledDot.apply(a, b, rows, cols)
    return _sampled_dot(a, b, rows, cols)


def normalize_edges(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """``δ_i^-1/2 w_ij δ_j^-1/2`` with ``δ_i = Σ_j w_ij`` the row sums (ALGORITHMS.md 2.2).

    Differentiable in ``values``. A non-positive degree gets ``δ^-1/2 = 0`` (with a warning when
    its row has edges), where the dense reference's ``pow(δ, -1/2)`` would give NaN or inf.
    """
    degree = values.new_zeros(n).index_add(0, rows, values)
    positive = degree > 0
    if not bool(positive.all()):
        has_edges = torch.zeros(n, dtype=torch.bool, device=rows.device)
        has_edges[rows] = True
        bad = int((has_edges & ~positive).sum())
        if bad:
            warnings.warn(f"{bad} graph rows have non-positive degree; their normalised rows are set to 0")
    inv_sqrt = torch.where(positive, degree.clamp_min(1e-30).rsqrt(), torch.zeros_like(degree))
    return inv_sqrt.index_select(0, rows) * values * inv_sqrt.index_select(0, cols)


def _csr(indptr_counts: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    crow = torch.zeros(n + 1, dtype=torch.int32, device=cols.device)
    crow[1:] = torch.cumsum(indptr_counts, 0)
    with warnings.catch_warnings():  # "CSR support is in beta": we rely only on sparse.mm
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow, cols.to(torch.int32), values, size=(n, n), check_invariants=False
        )


class _EdgeSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, dense, graph):  # noqa: D401
        ctx.graph = graph
        ctx.save_for_backward(dense)
        return spmm(graph.matrix, dense)

    @staticmethod
    def backward(ctx, grad):
        (dense,) = ctx.saved_tensors
        graph, grad = ctx.graph, grad.contiguous()
        grad_values = grad_dense = None
        if ctx.needs_input_grad[0]:  # ∂(G X)_i / ∂g_ij = X_j
            grad_values = _sampled_dot(grad, dense, graph.rows, graph.cols)
        if ctx.needs_input_grad[1]:
            grad_dense = spmm(graph.transpose, grad)
        return grad_values, grad_dense, None


class EdgeGraph:
    """A square sparse matrix ``G`` given by edges, usable as ``G @ X``.

    ``rows``, ``cols``, ``values`` (length ``|E|``, duplicates allowed and summed) describe
    ``G_ij = Σ_{e: (rows_e, cols_e) = (i, j)} values_e``. ``G @ X`` is one CSR product; its
    backward gives ``Gᵀ ∂Y`` for ``X`` and the sampled products ``∂Y_i · X_j`` for the edge values,
    so gradients reach whatever the values were computed from. :meth:`detach` keeps the same
    matrix without the value gradient (for the batches after the first, as the reference does).
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int) -> None:
        key = rows.to(torch.int64) * n + cols.to(torch.int64)
        unique, inverse = torch.unique(key, sorted=True, return_inverse=True)  # row-major order
        self.n = int(n)
        self.rows = torch.div(unique, n, rounding_mode="floor")
        self.cols = unique - self.rows * n
        self.values = values.new_zeros(unique.numel()).index_add(0, inverse, values)  # coalesced
        counts = torch.bincount(self.rows, minlength=n)
        self.matrix = _csr(counts, self.cols, self.values.detach(), n)
        self._transposed: dict = {}  # Gᵀ once built; shared with the detached copies

    @property
    def transpose(self) -> torch.Tensor:
        """``Gᵀ`` as CSR, built when a backward first needs it (an evaluation forward never does)."""
        if not self._transposed:
            order = torch.argsort(self.cols * self.n + self.rows)  # the transpose's row-major order
            self._transposed["csr"] = _csr(torch.bincount(self.cols, minlength=self.n), self.rows[order],
                                           self.values.detach()[order], self.n)
        return self._transposed["csr"]

    @property
    def nnz(self) -> int:
        """Stored entries after summing duplicates."""
        return int(self.values.numel())

    def detach(self) -> "EdgeGraph":
        """The same matrix with no gradient into its values."""
        out = object.__new__(EdgeGraph)
        out.__dict__.update(self.__dict__)
        out.values = self.values.detach()
        return out

    def __matmul__(self, dense: torch.Tensor) -> torch.Tensor:
        if self.values.requires_grad or dense.requires_grad:
            return _EdgeSpMM.apply(self.values, dense, self)
        return spmm(self.matrix, dense)

    def to_dense(self) -> torch.Tensor:
        """The dense ``n × n`` matrix (tests and small graphs only)."""
        return torch.zeros(self.n, self.n, dtype=self.values.dtype, device=self.values.device).index_put_(
            (self.rows, self.cols), self.values.detach(), accumulate=True
        )

    def __repr__(self) -> str:
        return f"EdgeGraph(n={self.n}, nnz={self.nnz}, grad={self.values.requires_grad})"


class EdgeList(nn.Module):
    """A fixed sparse graph as edge tensors ``rows``, ``cols`` (int64) and ``values`` (float32),
    to be mixed edge by edge with learned graphs (:class:`EdgeGraph` sums duplicate pairs).

    ``keep`` (optional bool per node): only the edges between kept nodes (LATTICE's frozen graph
    of a modality links only the items that have it). The tensors are non-persistent buffers:
    they move with the model and are rebuilt from the dataset, never saved.
    """

    def __init__(self, graph: sp.spmatrix, keep: np.ndarray | None = None) -> None:
        super().__init__()
        g = sp.coo_matrix(graph)
        if keep is not None:
            keep = np.asarray(keep, dtype=bool)
            kept = keep[g.row] & keep[g.col]
            g = sp.coo_matrix((g.data[kept], (g.row[kept], g.col[kept])), shape=g.shape)
        self.register_buffer("rows", torch.from_numpy(g.row.astype(np.int64)), persistent=False)
        self.register_buffer("cols", torch.from_numpy(g.col.astype(np.int64)), persistent=False)
        self.register_buffer("values", torch.from_numpy(g.data.astype(np.float32)), persistent=False)


class EpochGraph(nn.Module):
    """When a graph learned from the parameters is rebuilt (LATTICE's reference schedule).

    ``graph(build, training)``: the first training forward after :meth:`expire` builds the graph
    (gradient flows into its edge values when ``grad`` and autograd is on) and keeps a detached
    copy, which the later training forwards of the epoch reuse; an evaluation forward builds it
    afresh without gradient (and keeps nothing). ``current`` is the kept graph (``None`` before
    the epoch's first training forward). A module of a model: a device move expires it, and it
    holds nothing to save.
    """

    def __init__(self, grad: bool = True) -> None:
        super().__init__()
        self.grad = grad
        self.current: EdgeGraph | None = None

    def expire(self) -> None:
        """The next training forward rebuilds the graph."""
        self.current = None

    def _apply(self, fn, recurse=True):
        self.expire()  # a graph on the old device
        return super()._apply(fn, recurse)

    def graph(self, build: Callable[[], EdgeGraph], training: bool) -> EdgeGraph:
        if not training:
            with torch.no_grad():
                return build()
        if self.current is not None:
            return self.current
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            graph = build()
        self.current = graph.detach()
        return graph  # this forward back-propagates into the graph's values
