"""Graph propagation: LightGCN's layer mean (ALGORITHMS.md 2.7), its batch-row forms, plain steps."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from prismrec.graph.sparse import SparseOperator, spmm


def lightgcn(adjacency: SparseOperator, x0: torch.Tensor, n_layers: int) -> torch.Tensor:
    """``LGN(Â, G⁰, L) = 1/(L+1) Σ_{l=0..L} G^l`` with ``G^{l+1} = Â G^l``; no weights."""
    if n_layers == 0:
        return x0
    if x0.requires_grad:
        return _LayerMean.apply(adjacency, x0, n_layers)
    return _layer_mean(adjacency.matrix, x0, n_layers)


def propagate(graph, x: torch.Tensor, n_layers: int,
              step: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``G^L X``: ``n_layers`` plain products with ``graph`` (no layer mean, no weights), the item
    views' propagation over an item–item graph (a :class:`SparseOperator`, or any ``G @ X``).
    ``step`` (optional) is applied after every product: ``X ← step(G X)`` (SIGER's noise inside
    the propagation)."""
    for _ in range(n_layers):
        x = graph @ x
        if step is not None:
            x = step(x)
    return x


def lightgcn_rows(adjacency: SparseOperator, x0: torch.Tensor, n_layers: int, rows: torch.Tensor) -> torch.Tensor:
    """``lightgcn(adjacency, x0, n_layers)[rows]``, as a training batch needs it.

    Exact, but the last layer is computed for the batch's distinct rows ``R`` only, one product
    with the block ``Â[R]`` instead of all of ``Â``, and its backward starts from ``Â[R]ᵀ``: two
    of the ``2L`` full products per batch become products over ``R``'s entries, and no full-size
    layer sum is kept (the rows are gathered layer by layer).
    """
    distinct, inverse = distinct_rows(rows, x0.shape[0])
    if n_layers == 0 or not few_rows(distinct, x0.shape[0]):
        return lightgcn(adjacency, x0, n_layers).index_select(0, rows)
    return lightgcn_distinct(adjacency, x0, n_layers, distinct).index_select(0, inverse)


def distinct_rows(rows: torch.Tensor, n: int) -> tuple[np.ndarray, torch.Tensor]:
    """``(R, at)``: the sorted distinct values ``R`` of ``rows`` (ids below ``n``) and, for each
    entry of ``rows``, its position in ``R`` (``R[at] == rows``), on ``rows``' device.

    A mark array instead of a sort: linear in ``n`` and ``len(rows)``."""
    marks = np.zeros(n, dtype=bool)
    index = rows.cpu().numpy()
    marks[index] = True
    distinct = np.flatnonzero(marks)
    return distinct, torch.from_numpy((np.cumsum(marks) - 1)[index]).to(rows.device)


def batch_node_rows(batch, n_users: int, n_items: int) -> tuple[np.ndarray, tuple[torch.Tensor, ...]]:
    """For a ``(u, i, j)`` batch over the ``n_users + n_items`` nodes (users first): the sorted
    distinct node ids it touches and, for ``u``, ``i`` and ``j``, their positions among them."""
    u, i, j = batch
    rows, at = distinct_rows(torch.cat([u, i + n_users, j + n_users]), n_users + n_items)
    return rows, at.chunk(3)


ROW_SHARE = 0.5
"""Largest share of a matrix's rows for which the row-restricted products above are used; above
it a batch touches nearly every row, and slicing the block costs more than the rows it saves
(``benchmarks/row_paths.py``: on tiktok a batch holds about a third of the nodes and saves
17-29 % per batch; on lfm2k it holds nearly all of them and LightGCN's row path was 17 % slower),
so the full product is computed and its rows taken (the same values)."""


def few_rows(rows: np.ndarray, n: int) -> bool:
    """Whether ``rows`` (distinct ids) are few enough of ``n`` for a row-restricted product."""
    return len(rows) <= ROW_SHARE * n


def lightgcn_distinct(adjacency: SparseOperator, x0: torch.Tensor, n_layers: int, distinct: np.ndarray) -> torch.Tensor:
    """Rows ``distinct`` (sorted, distinct ids) of ``lightgcn(adjacency, x0, n_layers)``; the last
    layer is a product with the block ``Â[distinct]`` only (see :func:`lightgcn_rows`)."""
    index = torch.from_numpy(distinct).to(x0.device)
    if n_layers == 0:
        return x0.index_select(0, index)
    if not few_rows(distinct, x0.shape[0]):
        return lightgcn(adjacency, x0, n_layers).index_select(0, index)
    block = adjacency.row_block(distinct)
    return _LayerMeanRows.apply(adjacency, x0, n_layers, index, block)


def node_dropout(x: torch.Tensor, p: float, n_nodes: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Inverted dropout of a node matrix: keep ``torch.rand >= p`` (torch's global generator;
    ~3x faster on CPU than the ``bernoulli_`` behind ``F.dropout``), scale ``1/(1−p)``.

    ``rows`` (node ids): ``x`` holds only those rows of the ``n_nodes``-row matrix (a row path);
    the mask is drawn for all ``n_nodes`` rows, the same draws as the full matrix's, and its rows
    kept, so a row path and the full forward drop the same entries."""
    if p == 0.0:
        return x
    if rows is None:
        return x * (torch.rand(x.shape, device=x.device) >= p) / (1.0 - p)
    draws = torch.rand((n_nodes, x.shape[1]), device=x.device)
    return x * (draws.index_select(0, rows) >= p) / (1.0 - p)


def row_product(operator: SparseOperator, rows: np.ndarray, dense: torch.Tensor) -> torch.Tensor:
    """``(A @ dense)[rows]`` as one product with the block ``A[rows]`` (backward: ``A[rows]ᵀ``);
    ``rows`` sorted distinct row ids of ``A``."""
    if len(rows) == 0:
        return dense.new_zeros((0, dense.shape[1]))
    if not few_rows(rows, operator.shape[0]):
        return (operator @ dense).index_select(0, torch.from_numpy(rows).to(dense.device))
    block, block_t = operator.row_block(rows)
    if dense.requires_grad:
        return _BlockProduct.apply(block, block_t, dense)
    return spmm(block, dense)


def user_item_rows(user_item: SparseOperator, items: torch.Tensor, rows: np.ndarray, n_users: int) -> torch.Tensor:
    """Rows ``rows`` (sorted distinct node ids, users first) of the node matrix ``[R̂ H; H]``, from
    the item rows ``H`` (``items``, ``n_I x d``) and the user–item operator ``R̂``: the users' rows
    as one product with the block ``R̂[users]`` (:func:`row_product`), the items' taken from ``H``."""
    return torch.cat(user_item_parts(user_item, items, rows, n_users))


def user_item_parts(user_item: SparseOperator, items: torch.Tensor, rows: np.ndarray,
                    n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`user_item_rows`' user rows and item rows, not yet joined (a caller stacking several
    such matrices joins all their parts in one copy)."""
    split = int(np.searchsorted(rows, n_users))
    users, item_rows = rows[:split], torch.from_numpy(rows[split:] - n_users).to(items.device)
    return row_product(user_item, users, items), items.index_select(0, item_rows)


class _BlockProduct(torch.autograd.Function):
    """``B @ X`` for a CSR block ``B`` whose transpose is given (one CSR product each way)."""

    @staticmethod
    def forward(ctx, block, block_t, dense):  # noqa: D401
        ctx.block_t = block_t
        return spmm(block, dense)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, spmm(ctx.block_t, grad.contiguous())


def _layer_mean(matrix: torch.Tensor, x0: torch.Tensor, n_layers: int) -> torch.Tensor:
    """``1/(L+1) Σ_l M^l X``: one CSR product per layer, summed in place into one buffer."""
    scale = 1.0 / (n_layers + 1)
    total, x = x0 * scale, x0
    for _ in range(n_layers):
        x = spmm(matrix, x)
        total.add_(x, alpha=scale)
    return total


class _LayerMean(torch.autograd.Function):
    """The layer mean as one autograd node. It is linear in ``G⁰``, so its backward is the same
    sum over the transpose, ``1/(L+1) Σ_l (Âᵀ)^l ∂Z``: ``L`` CSR products each way and no
    per-layer tensors kept for the backward (autograd's version stores and adds them one by one)."""

    @staticmethod
    def forward(ctx, adjacency: SparseOperator, x0: torch.Tensor, n_layers: int) -> torch.Tensor:  # noqa: D401
        ctx.adjacency, ctx.n_layers = adjacency, n_layers
        return _layer_mean(adjacency.matrix, x0, n_layers)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, _layer_mean(ctx.adjacency.transpose, grad.contiguous(), ctx.n_layers), None


class _LayerMeanRows(torch.autograd.Function):
    """Rows ``R`` of the layer mean (see :func:`lightgcn_rows`). With ``P`` selecting ``R`` and
    ``g`` the incoming gradient scaled by ``1/(L+1)``, the backward is Horner's form of
    ``Σ_l (Âᵀ)^l Pᵀ g``: ``h = Â[R]ᵀ g``, then ``L-1`` times ``h = Âᵀ (h + Pᵀ g)``, then ``h + Pᵀ g``."""

    @staticmethod
    def forward(ctx, adjacency, x0, n_layers, distinct, block):  # noqa: D401
        ctx.adjacency, ctx.n_layers, ctx.distinct, ctx.block_t = adjacency, n_layers, distinct, block[1]
        total, x = x0.index_select(0, distinct), x0
        for _ in range(n_layers - 1):
            x = spmm(adjacency.matrix, x)
            total += x.index_select(0, distinct)
        total += spmm(block[0], x)
        return total.mul_(1.0 / (n_layers + 1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad * (1.0 / (ctx.n_layers + 1))
        h = spmm(ctx.block_t, g)
        for _ in range(ctx.n_layers - 1):
            h = spmm(ctx.adjacency.transpose, h.index_add_(0, ctx.distinct, g))
        return None, h.index_add_(0, ctx.distinct, g), None, None, None
