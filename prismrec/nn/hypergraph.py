"""Learnable-hyperedge propagation (LGMRec's global hypergraph embedding, AAAI'24).

A modality's ``A`` hyperedges are latent: each node holds a soft membership row over them
(``n x A``, rows on the simplex), so the incidence matrix is dense but thin and memory stays
``O(n·A)`` — never node x node. :class:`HyperedgeInputs` learns the memberships from a modality's
features, :func:`hypergraph_propagate` passes messages through them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prismrec.graph import SparseOperator
from prismrec.nn.encoders import feature_matrix
from prismrec.nn.presence import split_nodes, zero_missing


def soft_hyperedges(logits: torch.Tensor, tau: float, noise: bool = True) -> torch.Tensor:
    """Soft node-to-hyperedge memberships from ``n x A`` logits.

    ``noise=True``: the Gumbel-softmax relaxation ``softmax((logits + g) / τ)``, ``g`` i.i.d.
    Gumbel(0, 1) from torch's global generator (``F.gumbel_softmax``, soft sample). ``noise=False``:
    the noise-free ``softmax(logits / τ)`` (a deterministic evaluation).
    """
    if noise:
        return F.gumbel_softmax(logits, tau=tau, hard=False, dim=1)
    return torch.softmax(logits / tau, dim=1)


class HyperedgeInputs(nn.Module):
    """One modality's frozen features ``F`` (``n_I x d_m``, rescaled by ``normalize``:
    :func:`prismrec.nn.encoders.normalize_features`) with two bias-free maps, both Xavier-uniform
    as in LGMRec's reference: ``W`` (``d_m x dim``, the projection ``F W``) and ``V``
    (``d_m x hyper_num``, the hyperedge logits ``F V``)."""

    def __init__(self, features: torch.Tensor, dim: int, hyper_num: int, normalize: str = "none") -> None:
        super().__init__()
        feats = feature_matrix(features, normalize)
        self.register_buffer("features", feats, persistent=False)  # frozen, rebuilt from data
        self.projection = nn.Parameter(torch.empty(feats.shape[1], dim))  # W
        self.hyper = nn.Parameter(torch.empty(feats.shape[1], hyper_num))  # V
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.projection)
        nn.init.xavier_uniform_(self.hyper)

    def memberships(self, interactions: SparseOperator, tau: float, noise: bool,
                    present: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(H_I, H_U) = (GS(F V), GS(R F V))``: the items' memberships from their logits, the
        users' from the plain sum of their items' logits (``interactions``: ``R``, ``n_U x n_I``),
        each relaxed by :func:`soft_hyperedges` (items first). ``present`` (optional, ``n_U + n_I``
        bools, users first): a node lacking the modality belongs to no hyperedge (its row is 0; a
        zero feature row would otherwise join every hyperedge evenly)."""
        logits = self.features @ self.hyper
        items, users = soft_hyperedges(logits, tau, noise), soft_hyperedges(interactions @ logits, tau, noise)
        present_users, present_items = split_nodes(present, interactions.shape[0])
        return zero_missing(items, present_items), zero_missing(users, present_users)


def hypergraph_propagate(
    item_edges: torch.Tensor, user_edges: torch.Tensor, items: torch.Tensor, n_layers: int, dropout: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Item-hyperedge-node message passing; returns ``(users, items)`` after ``n_layers >= 1``.

    With item memberships ``H_I`` (``n_I x A``), user memberships ``H_U`` (``n_U x A``) and item
    input ``X⁰`` (``n_I x d``), each layer gathers the hyperedges from the items and scatters them
    back::

        Λ^l = H_Iᵀ X^{l-1}          (A x d, hyperedge embeddings)
        X^l = H_I Λ^l,   U^l = H_U Λ^l

    and the last layer's ``(U^L, X^L)`` is returned (no layer mean, no normalisation).
    ``dropout > 0`` first drops membership entries of ``H_I``, then of ``H_U``, with that
    probability (inverted dropout, torch's global generator: LGMRec's hyperedge dropout, for
    training forwards).
    """
    if n_layers < 1:
        raise ValueError(f"hypergraph propagation needs n_layers >= 1, got {n_layers}")
    if dropout > 0.0:
        item_edges, user_edges = F.dropout(item_edges, dropout), F.dropout(user_edges, dropout)
    x = items
    for _ in range(n_layers):
        hyper = item_edges.T @ x
        x = item_edges @ hyper
        users = user_edges @ hyper
    return users, x
