"""Learnable-hyperedge propagation (LGMRec's global hypergraph embedding, AAAI'24).

A modality's ``A`` hyperedges are latent: each node holds a soft membership row over them
(``n x A``, rows on the simplex), so the incidence matrix is dense but thin and memory stays
``O(n·A)`` — never node x node.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_hyperedges(logits: torch.Tensor, tau: float, noise: bool = True) -> torch.Tensor:
    """Soft node-to-hyperedge memberships from ``n x A`` logits.

    ``noise=True``: the Gumbel-softmax relaxation ``softmax((logits + g) / τ)``, ``g`` i.i.d.
    Gumbel(0, 1) from torch's global generator (``F.gumbel_softmax``, soft sample). ``noise=False``:
    the noise-free ``softmax(logits / τ)`` (a deterministic evaluation).
    """
    if noise:
        return F.gumbel_softmax(logits, tau=tau, hard=False, dim=1)
    return torch.softmax(logits / tau, dim=1)


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
