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

**Mask-aware fusion.** Every fusion here takes an optional ``present`` mask (``False`` where a
node lacks a modality: its features were zero-filled, ``impute="zero"``,
:func:`prismrec.data.features.fusion_presence`). A missing modality gets no weight and the
weights are renormalised over the node's present modalities: the attention ``α`` is a softmax
over the present ones, a gate's weights are rescaled to sum to 1 over them, a mean or sum runs
over them (:func:`present_mean`). A node with every modality missing fuses to 0. ``present=None``
(or all ``True``) computes exactly the unmasked formulas. :func:`present_mix` does the same for
a convex mix of item-item graphs (FREEDOM's ``S = Σ_m α_m Ŝ_m``), row by row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from prismrec.graph.ops import mix


def present_mean(views: torch.Tensor, present: torch.Tensor | None, reduce: str = "mean") -> torch.Tensor:
    """``mean_m`` (or ``sum_m``) of the ``K x N x d`` ``views`` over each node's present modalities
    (``present``: ``K x N`` bool). ``sum`` is rescaled to the full count, ``K / K_present · Σ_present``,
    so a node keeps the scale of a node with every modality; a node with none gets 0."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    if present is None:
        return views.mean(dim=0) if reduce == "mean" else views.sum(dim=0)
    keep = present.to(views.device, views.dtype).unsqueeze(-1)          # K x N x 1
    count = keep.sum(dim=0)                                              # N x 1
    total = (views * keep).sum(dim=0)
    scale = (1.0 if reduce == "mean" else float(views.shape[0])) / count.clamp_min(1.0)
    return total * scale


def present_max(views: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    """The element-wise max over ``K`` views (``K x N x d`` -> ``N x d``), per node over the views
    it has (``present``: ``K x N`` bool; 0 for a node with none); the plain max for ``None``. The
    max counterpart of :func:`present_mean`."""
    if present is None:
        return views.amax(dim=0)
    missing = ~present.unsqueeze(-1)
    return views.masked_fill(missing, float("-inf")).amax(dim=0).masked_fill(missing.all(dim=0), 0.0)


def present_mix(graphs: Sequence[sp.spmatrix], weights: Sequence[float],
                present_items: np.ndarray | None) -> sp.csr_matrix:
    """``S = Σ_m α_m G_m`` over item-item graphs (:func:`prismrec.graph.ops.mix`), mask-aware:
    row ``i`` weighs only item ``i``'s present modalities (``present_items``, ``n_I x K`` bool,
    :func:`prismrec.data.features.fusion_presence`), ``α_im = α_m p_im / Σ_m' α_m' p_im'``; a row
    with none present is empty. A zero-filled feature row has no neighbours of its own in
    ``G_m`` (its top-k are ties), so its row takes no part. ``None``: exactly ``mix``."""
    if present_items is None:
        return mix(graphs, weights)
    present = np.asarray(present_items, dtype=bool)
    if present.shape != (graphs[0].shape[0], len(graphs)):
        raise ValueError(f"present_items must be n_items x K = {graphs[0].shape[0]} x {len(graphs)}, "
                         f"got {present.shape}")
    mix(graphs, weights)  # the checks of the unmasked mix (convex weights, shapes)
    alphas = np.asarray(list(weights), dtype=np.float64)[None, :] * present
    total = alphas.sum(axis=1, keepdims=True)
    alphas = np.divide(alphas, total, out=np.zeros_like(alphas), where=total > 0)
    out = sp.csr_matrix(graphs[0].shape, dtype=np.float64)
    for k, g in enumerate(graphs):  # float64 sum, rounded once, as mix
        out = out + sp.diags(alphas[:, k]) @ sp.csr_matrix(g, dtype=np.float64)
    out = sp.csr_matrix(out, dtype=np.float32)
    out.eliminate_zeros()
    return out


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

    def attention(self, views: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """``α``: ``K x N`` softmax over modalities of the shared score ``q(H_m)`` (over the present
        ones only when ``present`` is given; 0 for a node with none)."""
        scores = self.query(views).squeeze(-1)
        if present is None:
            return torch.softmax(scores, dim=0)
        keep = present.to(scores.device)
        alpha = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=0)
        return torch.nan_to_num(alpha, nan=0.0)  # every modality missing: softmax of -inf -> NaN -> 0

    def forward(self, views: Sequence[torch.Tensor] | torch.Tensor, behavior: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        """Fused modality representation ``M`` (``N x d``).

        Args:
            views: the ``K`` modality views ``H_m`` (a sequence of ``N x d`` tensors, or one
                ``K x N x d`` tensor), in a fixed modality order.
            behavior: the behaviour view ``C`` (``N x d``) that drives the preference gates.
            present: optional ``K x N`` bool (module docstring): ``α`` over the present
                modalities, only their specific parts, and ``/(K_present + 1)``.
        """
        h = views if isinstance(views, torch.Tensor) else torch.stack(list(views))
        k = self.n_modalities
        if h.dim() != 3 or h.shape[0] != k or h.shape[2] != self.dim:
            raise ValueError(f"expected {k} views of shape N x {self.dim}, got {tuple(h.shape)}")
        if behavior.shape != h.shape[1:]:
            raise ValueError(f"behavior must be {tuple(h.shape[1:])}, got {tuple(behavior.shape)}")
        alpha = self.attention(h, present)                     # K x N
        common = (alpha.unsqueeze(-1) * h).sum(dim=0)          # H_c = Σ_m α_m H_m
        specific = (h - common).transpose(0, 1)                # H̃_m = H_m − H_c, N x K x d (a view)
        n = behavior.shape[0]
        # N x K x d: [p_1(C) | ... | p_K(C)] as the Linear lays them out (the product runs in the
        # gates' layout, so that their gradient needs no copy back into it)
        gates = torch.sigmoid(self.preference(behavior)).view(n, k, self.dim)
        if present is None:
            return ((gates * specific).sum(dim=1) + common) / (k + 1)
        keep = present.to(h.device, h.dtype)                   # K x N
        return ((keep.t().unsqueeze(-1) * gates * specific).sum(dim=1) + common) / (keep.sum(dim=0).unsqueeze(-1) + 1)

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

    def forward(self, xs: list[torch.Tensor], present: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused ``n x d`` matrix and the weights; ``present`` (optional ``n x M`` bool) zeroes a
        missing modality's weight and rescales the others to sum to 1 (0 for a row with none)."""
        w = self.weights(xs)
        if present is not None:
            w = w * present.to(w.device, w.dtype).unsqueeze(-1)
            w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return (w * torch.stack(xs, dim=1)).sum(dim=1), w
