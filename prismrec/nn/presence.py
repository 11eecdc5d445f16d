"""Which nodes have each view, for the mask-aware fusions of :mod:`prismrec.nn.fusion`.

A dataset loaded with ``impute="zero"`` marks the items whose modality was missing
(:func:`prismrec.data.features.fusion_presence`, ``n_I x K``); a model that fuses views keeps the
mark as a ``K x N`` bool buffer: one row per view, one column per node (users first, when the
model has user rows). :func:`node_presence` turns an item mask into that buffer,
:func:`view_presence` reads it from a dataset, :func:`split_nodes` parts it into users and items,
:func:`node_columns` keeps some nodes' columns, :func:`zero_missing` clears the rows of the nodes
lacking a view, and :func:`for_missing_modalities` builds a per-modality object (a graph over the items that have the
modality) where some item lacks it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from prismrec.data.features import fusion_presence

T = TypeVar("T")


def node_presence(present_items: np.ndarray | torch.Tensor | None, n_users: int = 0) -> torch.Tensor | None:
    """``K x N`` bool presence of ``N = n_users + n_items`` nodes (users first, always present)
    from an ``n_items x K`` item mask (``None`` passes through)."""
    if present_items is None:
        return None
    items = torch.as_tensor(np.asarray(present_items, dtype=bool)).T
    return torch.cat([torch.ones(items.shape[0], n_users, dtype=torch.bool), items], dim=1)


def view_presence(dataset, modalities: list[str], n_users: int = 0, extra_views: int = 0) -> torch.Tensor | None:
    """``K x N`` bool, ``False`` where a node lacks a view, or ``None`` when no used modality was
    zero-filled (the models then fuse exactly as without masks).

    Rows: the ``modalities`` (in that order), then ``extra_views`` views that every node has
    (views not built from features: SMORE's fusion view, DA-MRS's behaviour view). Columns:
    ``n_users`` users (``0``: items only), who have every view, then the items.
    """
    present = node_presence(fusion_presence(dataset, modalities), n_users)
    if present is None or extra_views == 0:
        return present
    return torch.cat([present, torch.ones(extra_views, present.shape[1], dtype=torch.bool)])


def split_nodes(present: torch.Tensor | None, n_users: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The user and the item columns of a ``… x N`` presence (users first); ``(None, None)`` for ``None``."""
    if present is None:
        return None, None
    return present[..., :n_users], present[..., n_users:]


def zero_missing(x: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    """``x`` (``… x N x d``) with the rows of the nodes lacking the view set to 0 (``present``:
    ``… x N`` bool); ``x`` itself for ``None``."""
    if present is None:
        return x
    return x * present.unsqueeze(-1).to(x.dtype)


def for_missing_modalities(present_items: np.ndarray | torch.Tensor | None, n_items: int,
                           build: Callable[[np.ndarray], T]) -> list[T | None] | None:
    """``build(keep)`` for each modality some item lacks (``keep``: its ``n_items`` bool column of
    ``present_items``, ``n_items x K``), ``None`` for a modality every item has; ``None`` in all
    without a mask (the unmasked objects then serve). Raises ``ValueError`` unless the mask holds
    one row per item."""
    if present_items is None:
        return None
    present = np.asarray(present_items, dtype=bool)
    if present.ndim != 2 or present.shape[0] != n_items:
        raise ValueError(f"present_items must hold one row per item ({n_items}), got shape {present.shape}")
    return [None if keep.all() else build(keep) for keep in present.T]


def node_columns(present: torch.Tensor | None, nodes: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
    """The columns ``nodes`` (node ids) of a ``K x N`` (or ``N``) presence, for a forward or a
    loss over those nodes' rows alone; ``present`` itself for ``nodes=None`` (all), ``None`` for ``None``."""
    if present is None or nodes is None:
        return present
    return present.index_select(-1, torch.as_tensor(nodes).to(present.device))
