"""Per-modality graphs over the items that have the modality, for the models that carry modality
features over the user–item graph or a feature kNN graph (SMORE, LGMRec, DRAGON, MMGCN).

A dataset loaded with ``impute="zero"`` marks the items whose modality ``m`` was missing
(:func:`prismrec.data.features.fusion_presence`, ``n_I x K``); their feature rows are zeros, no
view of their content. A model that propagates modality ``m`` must then not route it through
those items: each function here gives the graph of modality ``m`` built by the model's own rule
over the items that have ``m`` (the others keep their index but have no edge), and a user with no
training item having ``m`` has no modality-``m`` view (:func:`present_nodes`). Where no item lacks
the modality, every function gives ``None`` or the unmasked graph (or operator), so the unmasked
formulas run unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from prismrec.graph import SparseOperator, knn_graph, restrict_items
from prismrec.nn.presence import for_missing_modalities, node_presence


def present_interactions(train: sp.spmatrix, present_items: np.ndarray | None) -> list[sp.csr_matrix | None] | None:
    """``R_m`` per modality (``present_items``' column order, ``n_I x K`` bool): the training
    matrix without the interactions of the items lacking ``m`` (:func:`~prismrec.graph.restrict_items`);
    ``None`` for a modality every item has, and ``None`` in all without a mask."""
    return for_missing_modalities(present_items, train.shape[1], partial(restrict_items, train))


def modality_operators(build: Callable[[sp.csr_matrix], sp.spmatrix], train: sp.spmatrix,
                       present_items: np.ndarray | None, unmasked: SparseOperator, n_views: int) -> nn.ModuleList:
    """One operator per modality (``n_views`` of them): of ``build(R_m)`` (:func:`present_interactions`)
    where some item lacks ``m``, else ``unmasked`` itself, the model's operator of ``build(R)`` (in
    all without a mask). ``build`` is the rule of ``unmasked``, so ``R_m``'s graph takes its symmetry."""
    interactions = present_interactions(train, present_items) or [None] * n_views
    return nn.ModuleList(unmasked if r is None else SparseOperator(build(r), symmetric=unmasked.symmetric)
                         for r in interactions)


def user_degrees(train: sp.spmatrix, present_items: np.ndarray | None, n_views: int) -> np.ndarray:
    """``n_U x K`` float32: each user's training items having modality ``m`` (``D_{U,m}``); every
    item counts for a modality without a mask."""
    r = sp.csr_matrix(train, dtype=np.float32)
    r.eliminate_zeros()
    r.data[:] = 1.0
    present = np.ones((r.shape[1], n_views)) if present_items is None else present_items
    return np.asarray(r @ np.asarray(present, dtype=np.float32), dtype=np.float32)


def inverse_user_degrees(train: sp.spmatrix, present_items: np.ndarray | None, n_views: int) -> torch.Tensor:
    """``n_U x K`` float32 ``D_{U,m}^-1`` (:func:`user_degrees`), 0 for a user with no training item
    having ``m``: the factor of a user's mean over those items."""
    degrees = user_degrees(train, present_items, n_views)
    return torch.from_numpy(np.divide(1.0, degrees, out=np.zeros_like(degrees), where=degrees > 0))


def user_presence(train: sp.spmatrix, present_items: np.ndarray | None) -> np.ndarray | None:
    """``n_U x K`` bool: ``True`` where a user has at least one training item with modality ``m``;
    ``None`` without a mask."""
    if present_items is None:
        return None
    return user_degrees(train, present_items, np.shape(present_items)[1]) > 0


def present_nodes(train: sp.spmatrix, present_items: np.ndarray | None) -> torch.Tensor | None:
    """``K x N`` bool presence of the users (first) and the items
    (:func:`prismrec.nn.presence.node_presence`): an item has ``m`` as ``present_items`` says, a
    user when one of its training items has it (:func:`user_presence`). ``None`` without a mask."""
    present = node_presence(present_items, train.shape[0])
    if present is not None:
        present[:, : train.shape[0]] = torch.from_numpy(user_presence(train, present_items).T)
    return present


def present_knn_graphs(features: Sequence[np.ndarray | torch.Tensor], ks: Sequence[int],
                       present_items: np.ndarray | None, **options) -> list[sp.csr_matrix]:
    """:func:`~prismrec.graph.knn_graph` of each modality's features (``options``: its keyword
    settings) built over the items that have the modality alone: an item lacking ``m`` has no
    row and no column in ``S_m`` (a zero-filled row would otherwise take its ties' ``k`` slots,
    with weight 1 in a binary graph, and appear among other items' neighbours); the rest keep
    their top-``k`` among those items, normalised by the same rule. Without a mask (or for a
    modality every item has), exactly ``knn_graph`` of the whole matrix."""
    present = None if present_items is None else np.asarray(present_items, dtype=bool)
    graphs = []
    for k, (x, n_neighbours) in enumerate(zip(features, ks)):
        if present is None or present[:, k].all():
            graphs.append(knn_graph(x, n_neighbours, **options))
            continue
        keep = np.flatnonzero(present[:, k])
        sub = knn_graph(x[torch.from_numpy(keep)] if isinstance(x, torch.Tensor) else x[keep],
                        min(n_neighbours, len(keep)), **options).tocoo()
        n = present.shape[0]
        graphs.append(sp.csr_matrix((sub.data, (keep[sub.row], keep[sub.col])), shape=(n, n), dtype=np.float32))
    return graphs
