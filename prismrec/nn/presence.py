"""Which nodes have each view, for the mask-aware fusions of :mod:`prismrec.nn.fusion`.

A dataset loaded with ``impute="zero"`` marks the items whose modality was missing
(:func:`prismrec.data.features.fusion_presence`); a model that fuses views keeps the mark as a
``K x N`` bool buffer: one row per view, one column per node.
"""

from __future__ import annotations

import torch

from prismrec.data.features import fusion_presence
from prismrec.nn.fusion import node_presence


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
