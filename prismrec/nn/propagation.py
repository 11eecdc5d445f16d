"""LightGCN propagation (ALGORITHMS.md 2.7)."""

from __future__ import annotations

import torch

from prismrec.graph.sparse import SparseOperator


def lightgcn(adjacency: SparseOperator, x0: torch.Tensor, n_layers: int) -> torch.Tensor:
    """``LGN(Â, G⁰, L) = 1/(L+1) Σ_{l=0..L} G^l`` with ``G^{l+1} = Â G^l``; no weights."""
    total, x = x0, x0
    for _ in range(n_layers):
        x = adjacency @ x
        total = total + x
    return total / (n_layers + 1)
