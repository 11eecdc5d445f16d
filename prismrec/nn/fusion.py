"""Fusion of modality views (ALGORITHMS.md 2.8).

:class:`BehaviorAwareFuser` is MGCN's behaviour-aware fuser (GUME's "attribute separation"),
written for any number ``K >= 1`` of modality views ``H_1..H_K`` (each ``N x d``, the same nodes
in the same order) and a behaviour view ``C`` (``N x d``):

```
q(h)   = w_qᵀ tanh(W_q h + b_q)                 one scorer shared by all modalities
α_m    = softmax_m q(H_m)                        per node, over the K modalities
H_c    = Σ_m α_m H_m                             common part
H̃_m    = H_m − H_c                               modality-specific part
p_m(C) = σ(C P_m + p_m)                          behaviour-conditioned preference gate
M      = (Σ_m p_m(C) ⊙ H̃_m + H_c) / (K + 1)
```

With two modalities this is exactly MGCN's ``(sep_v + sep_t + common) / 3``.

:class:`GatedFusion` is RLMultimodalRec's learned per-item gate (ALGORITHMS.md §4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class BehaviorAwareFuser(nn.Module):
    """MGCN's behaviour-aware fuser for ``n_modalities >= 1`` views.

    Args:
        dim: ``d``, the width of every view and of the behaviour view.
        n_modalities: ``K``, the number of modality views ``forward`` receives.

    Parameters: ``query`` (``W_q, b_q`` then ``w_q`` without bias: the shared attention scorer)
    and ``preference`` (the ``K`` gates ``P_m, p_m`` stacked into one ``d -> K·d`` Linear, so
    one matrix product computes every gate; its column block ``m`` is ``P_m``).
    """

    def __init__(self, dim: int, n_modalities: int) -> None:
        super().__init__()
        if n_modalities < 1:
            raise ValueError(f"n_modalities must be >= 1, got {n_modalities}")
        self.dim, self.n_modalities = dim, n_modalities
        self.query = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))
        self.preference = nn.Linear(dim, n_modalities * dim)

    def reset_parameters(self) -> None:
        """Re-draw every Linear with PyTorch's default init (as the reference)."""
        self.query[0].reset_parameters()
        self.query[2].reset_parameters()
        self.preference.reset_parameters()

    def attention(self, views: torch.Tensor) -> torch.Tensor:
        """``α``: ``K x N`` softmax over modalities of the shared score ``q(H_m)``."""
        return torch.softmax(self.query(views).squeeze(-1), dim=0)

    def forward(self, views: Sequence[torch.Tensor] | torch.Tensor, behavior: torch.Tensor) -> torch.Tensor:
        """Fused modality representation ``M`` (``N x d``).

        Args:
            views: the ``K`` modality views ``H_m`` (a sequence of ``N x d`` tensors, or one
                ``K x N x d`` tensor), in a fixed modality order.
            behavior: the behaviour view ``C`` (``N x d``) that drives the preference gates.
        """
        h = views if isinstance(views, torch.Tensor) else torch.stack(list(views))
        k = self.n_modalities
        if h.dim() != 3 or h.shape[0] != k or h.shape[2] != self.dim:
            raise ValueError(f"expected {k} views of shape N x {self.dim}, got {tuple(h.shape)}")
        if behavior.shape != h.shape[1:]:
            raise ValueError(f"behavior must be {tuple(h.shape[1:])}, got {tuple(behavior.shape)}")
        alpha = self.attention(h)                              # K x N
        common = (alpha.unsqueeze(-1) * h).sum(dim=0)          # H_c = Σ_m α_m H_m
        specific = h - common                                  # H̃_m = H_m − H_c
        n = behavior.shape[0]
        gates = torch.sigmoid(self.preference(behavior))       # N x K·d: [p_1(C) | ... | p_K(C)]
        gates = gates.view(n, k, self.dim).transpose(0, 1)     # K x N x d
        return ((gates * specific).sum(dim=0) + common) / (k + 1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_modalities={self.n_modalities}"


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
