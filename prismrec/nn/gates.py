"""Learned gates that balance modalities per item (RLMultimodalRec, ALGORITHMS.md §4)."""

from __future__ import annotations

import torch
from torch import nn


class GatedFusion(nn.Module):
    """Convex, learned per-item combination of ``M >= 2`` modality matrices (each ``n x d``).

    Two modalities: ``g = σ(W_g [x¹; x²] + b_g)``, weights ``(g, 1 − g)``. More: weights
    ``softmax_m(W_g [x¹; ...; x^M] + b_g)``. ``scalar=False`` gives one weight per dimension
    (``W_g ∈ R^{d×Md}`` for two modalities), ``scalar=True`` one weight per item. ``forward``
    returns the fused ``n x d`` matrix and the weights, ``n x M x (d or 1)``, which are in
    [0, 1] and sum to 1 over modalities.
    """

    def __init__(self, n_modalities: int, dim: int, scalar: bool = False) -> None:
        super().__init__()
        if n_modalities < 2:
            raise ValueError(f"a gate needs at least 2 modalities, got {n_modalities}")
        self.n_modalities, self.width = n_modalities, 1 if scalar else dim
        out = self.width if n_modalities == 2 else n_modalities * self.width
        self.linear = nn.Linear(n_modalities * dim, out)

    def weights(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Modality weights, ``n x M x width``."""
        logits = self.linear(torch.cat(xs, dim=1))
        if self.n_modalities == 2:
            g = torch.sigmoid(logits)
            return torch.stack([g, 1 - g], dim=1)
        return torch.softmax(logits.view(-1, self.n_modalities, self.width), dim=1)

    def forward(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weights(xs)
        return (w * torch.stack(xs, dim=1)).sum(dim=1), w
