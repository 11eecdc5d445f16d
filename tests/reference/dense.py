"""Dense building blocks the reference rebuilds share (plain torch, nothing from prismrec).

Each reference file keeps its official code's own normalisation (``+1e-7`` on degrees, ``inf``
set to 0, self-loops): only the parts every official repository writes the same way live here.
"""

from __future__ import annotations

import torch


def bipartite(r: torch.Tensor) -> torch.Tensor:
    """``A = [[0, R], [Rᵀ, 0]]`` (users first), dense, in ``r``'s dtype."""
    n_users, n_items = r.shape
    a = torch.zeros(n_users + n_items, n_users + n_items, dtype=r.dtype)
    a[:n_users, n_users:] = r
    a[n_users:, :n_users] = r.T
    return a


def layer_mean(adj: torch.Tensor, ego: torch.Tensor, n_layers: int) -> torch.Tensor:
    """LightGCN: the mean of ``ego, Â ego, ..., Â^L ego`` (stacked, as the official codes)."""
    layers = [ego]
    for _ in range(n_layers):
        ego = adj @ ego
        layers.append(ego)
    return torch.stack(layers, dim=1).mean(dim=1)


def steps(graph: torch.Tensor, h: torch.Tensor, n_layers: int) -> torch.Tensor:
    """``G^L h``: ``n_layers`` plain products."""
    for _ in range(n_layers):
        h = graph @ h
    return h
