"""Per-modality graph encoders over the user–item graph: MMGCN's graph convolution (Wei et al.,
MM'19; ALGORITHMS.md 3.7: one modality's user preferences, optional feature MLP and ``L`` gated
layers) and DRAGON's heterogeneous-graph encoder (:class:`ModalityGraphEncoder`).

With ``ρ`` the leaky ReLU (slope 0.01), ``Agg`` the aggregation operator and ``E`` the ID
embeddings shared by the modalities::

    X⁰ = nrm([P_m; F̃_m])                  F̃_m = F_m W⁰ + b⁰, or F_m itself
    Hˡ = ρ( Agg(X^{l-1} Wˡ) )              eq. 1
    X̂ˡ = ρ( X^{l-1} Uˡ + uˡ ) + E          eq. 5
    Xˡ = ρ( Gˡ [Hˡ ; X̂ˡ] + gˡ )            (``concat=False``: ρ(Gˡ Hˡ + gˡ + X̂ˡ))
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prismrec.graph import SparseOperator
from prismrec.nn.embedding import IdEmbedding, register_table
from prismrec.nn.encoders import Projector, feature_matrix
from prismrec.nn.propagation import lightgcn, row_product


class ModalityGCN(nn.Module):
    """One modality's GCN: ``P_m``, the optional feature MLP and the ``L`` layers (eqs. 1, 5).

    Args:
        features: ``n_I x d_m`` raw features ``F_m`` (copied, frozen).
        n_users: rows of the preference table ``P_m``.
        dim: ``d``, every layer's output (and the ID embeddings' width).
        latent: ``d'_m``, width of the MLP ``F_m -> F̃_m``; 0 feeds the raw features.
        n_layers: ``L``.
        concat: combine ``Hˡ`` and ``X̂ˡ`` by concatenation (else by sum).
        trainable: ``P_m`` a parameter (else a frozen buffer at its random initialisation).
    """

    def __init__(self, features: torch.Tensor, n_users: int, dim: int, latent: int, n_layers: int,
                 concat: bool, trainable: bool) -> None:
        super().__init__()
        self.register_buffer("features", feature_matrix(features), persistent=False)  # F_m, frozen
        width = latent or features.shape[1]                                 # d'_m
        self.mlp = nn.Linear(features.shape[1], latent) if latent else None  # F̃_m = F_m W⁰ + b⁰
        register_table(self, "preference", torch.empty(n_users, width), trainable)  # P_m
        self.concat = concat
        dims = [width] + [dim] * n_layers
        self.conv = nn.ParameterList(nn.Parameter(torch.empty(a, a if i == 0 else dim))
                                     for i, a in enumerate(dims[:-1]))  # Wˡ (no bias)
        self.linear = nn.ModuleList(nn.Linear(a, dim) for a in dims[:-1])    # Uˡ, uˡ
        conv_out = [width] + [dim] * (n_layers - 1)
        self.gate = nn.ModuleList(                                          # Gˡ, gˡ
            nn.Linear(c + dim if self.concat else c, dim) for c in conv_out
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # MMGCN's reference init: Xavier-normal P_m, Wˡ, Uˡ and G¹; PyTorch's default for the rest.
        nn.init.xavier_normal_(self.preference)
        if self.mlp is not None:
            self.mlp.reset_parameters()
        for layer, (w, lin, gate) in enumerate(zip(self.conv, self.linear, self.gate)):
            nn.init.xavier_normal_(w)
            lin.reset_parameters()
            nn.init.xavier_normal_(lin.weight)
            gate.reset_parameters()
            if layer == 0:
                nn.init.xavier_normal_(gate.weight)

    def forward(self, graph: SparseOperator, ids: torch.Tensor | None, rows: np.ndarray | None = None) -> torch.Tensor:
        """``Z_m = X^L`` (``N x d``, users first) for the aggregation ``graph`` and the ID
        embeddings ``ids`` (``None``: none added); with ``rows`` (sorted distinct node ids) its
        rows ``R`` alone: a layer is per node after its graph product, so the last one is computed
        for ``R`` only, ``Hᴸ[R] = ρ(Agg[R] (X^{L-1} Wᴸ))`` with the block ``Agg[R]``, and ``X̂ᴸ``
        and the gate on ``R``'s rows."""
        items = self.mlp(self.features) if self.mlp is not None else self.features
        x = F.normalize(torch.cat([self.preference, items]), dim=1)        # X⁰
        last = len(self.conv) - 1
        for layer, (w, lin, gate) in enumerate(zip(self.conv, self.linear, self.gate)):
            if rows is not None and layer == last:
                h = F.leaky_relu(row_product(graph, rows, x @ w))          # Hᴸ[R]
                index = torch.from_numpy(rows).to(x.device)
                x = x.index_select(0, index)
                ids = None if ids is None else ids.index_select(0, index)
            else:
                h = F.leaky_relu(graph @ (x @ w))                           # Hˡ  (eq. 1)
            x_hat = F.leaky_relu(lin(x))                                    # X̂ˡ  (eq. 5)
            if ids is not None:
                x_hat = x_hat + ids
            if self.concat:
                x = F.leaky_relu(gate(torch.cat([h, x_hat], dim=1)))        # Xˡ
            else:
                x = F.leaky_relu(gate(h) + x_hat)
        return x


class ModalityGraphEncoder(nn.Module):
    """DRAGON's step 1 for one modality: ``G_m = Σ_{l≤L} Â^l nrm([P_m; X_m])``, ``X_m`` the
    two-layer encoding ``W_2 leaky_relu(F_m W_1 + b_1) + b_2`` of the frozen raw features, ``P_m``
    the user preferences."""

    def __init__(self, features: torch.Tensor, n_users: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.preference = IdEmbedding(n_users, dim, init="xavier_normal")  # P_m
        self.hidden = Projector(features, hidden, trainable_features=False)  # F_m W_1 + b_1
        self.out = nn.Linear(hidden, dim)  # W_2, b_2

    def forward(self, adjacency: SparseOperator, n_layers: int) -> torch.Tensor:
        x = self.out(F.leaky_relu(self.hidden()))  # X_m
        g0 = F.normalize(torch.cat([self.preference.weight, x]), dim=1)  # G⁰_m
        # Σ_{l=0..L} Â^l G⁰ = (L+1)·LGN(Â, G⁰, L)
        return lightgcn(adjacency, g0, n_layers) * (n_layers + 1)
