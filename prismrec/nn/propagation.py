"""LightGCN propagation (ALGORITHMS.md 2.7)."""

from __future__ import annotations

import torch

from prismrec.graph.sparse import SparseOperator, spmm


def lightgcn(adjacency: SparseOperator, x0: torch.Tensor, n_layers: int) -> torch.Tensor:
    """``LGN(Â, G⁰, L) = 1/(L+1) Σ_{l=0..L} G^l`` with ``G^{l+1} = Â G^l``; no weights."""
    if n_layers == 0:
        return x0
    if x0.requires_grad:
        return _LayerMean.apply(adjacency, x0, n_layers)
    return _layer_mean(adjacency.matrix, x0, n_layers)


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
