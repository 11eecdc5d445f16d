"""Per-modality graphs over the items that have the modality, for the models that carry modality
features over the user–item graph or a feature kNN graph (SMORE, LGMRec, DRAGON, MMGCN).

A dataset loaded with ``impute="zero"`` marks the items whose modality ``m`` was missing
(:func:`prismrec.data.features.fusion_presence`, ``n_I x K``); their feature rows are zeros, no
view of their content. A model that propagates modality ``m`` must then not route it through
those items: each function here gives the graph of modality ``m`` built by the model's own rule
over the items that have ``m`` (the others keep their index but have no edge), and a user with no
training item having ``m`` has no modality-``m`` view. Every function returns ``None`` (or the
unmasked graph) where no item lacks the modality, so the unmasked formulas run unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import scipy.sparse as sp
import torch

from prismrec.data.features import fusion_presence
from prismrec.graph import knn_graph, restrict_items
from prismrec.nn.presence import for_missing_modalities, view_presence


def present_interactions(train: sp.spmatrix, present_items: np.ndarray | None) -> list[sp.csr_matrix | None] | None:
    """``R_m`` per modality (``present_items``' column order, ``n_I x K`` bool): the training
    matrix without the interactions of the items lacking ``m`` (:func:`~prismrec.graph.restrict_items`);
    ``None`` for a modality every item has, and ``None`` in all without a mask."""
    return for_missing_modalities(present_items, train.shape[1], partial(restrict_items, train))


def user_presence(train: sp.spmatrix, present_items: np.ndarray | None) -> np.ndarray | None:
    """``n_U x K`` bool: ``True`` where a user has at least one training item with modality ``m``;
    ``None`` without a mask."""
    if present_items is None:
        return None
    r = sp.csr_matrix(train, dtype=np.float32)
    r.eliminate_zeros()
    r.data[:] = 1.0
    return np.asarray(r @ np.asarray(present_items, dtype=np.float32)) > 0


def modality_presence(dataset, modalities: list[str], n_users: int = 0, extra_views: int = 0) -> torch.Tensor | None:
    """:func:`prismrec.nn.presence.view_presence` (``K x N``, users first, ``extra_views`` rows
    every node has) with the users' modality rows from :func:`user_presence`: a user has
    modality ``m`` when one of its training items has it. ``None`` without a mask."""
    present = view_presence(dataset, modalities, n_users, extra_views)
    if present is None or n_users == 0:
        return present
    users = user_presence(dataset.train, fusion_presence(dataset, modalities))
    present[: len(modalities), :n_users] = torch.from_numpy(users.T)
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


def per_modality(build: Callable[[sp.spmatrix], sp.spmatrix], train: sp.spmatrix,
                 present_items: np.ndarray | None, n_modalities: int) -> list[sp.spmatrix | None]:
    """``build(R_m)`` per modality (:func:`present_interactions`), ``None`` for a modality every
    item has (the model's graph of ``R`` serves it) and in all without a mask."""
    interactions = present_interactions(train, present_items)
    if interactions is None:
        return [None] * n_modalities
    return [None if r is None else build(r) for r in interactions]
