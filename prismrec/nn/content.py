"""Content-only item rows: how a model represents an item it never saw in training.

A cold item (no training interaction) has an ID embedding row that never learned anything. A
model's content path (:meth:`prismrec.recommender.Recommender.content_item_embeddings`) gives
the item a row in the space of ``Z_I`` **without reading that ID row**. The pieces here build
the paths of the models; which one a model uses, and why, is in its own docstring:

* ``id_rows="zero"`` — the model's own forward with the item's ID row removed (set to 0):
  what the model computes for the item from its features alone (RLMultimodalRec's gated
  fusion, LGMRec's hyperedge memberships, MMGCN's feature GCN).
* ``id_rows="impute"`` — the model's own forward with the item's ID row replaced by the mean
  of its warm neighbours' rows on an item–item graph built from the features (the model's own
  kNN graph where it has one, else the cosine kNN graph of its features, :func:`feature_knn`):
  the feature graph links the new item to trained ones, and the model's feature-dependent
  parts (purifier gates, spectral filters, fusers) still see the item's own features.

Either way the forward runs once, in evaluation mode and without gradient, with the rows of the
requested items overwritten in place and restored afterwards; the requested items are never
used as neighbours, so nothing of their original ID rows can leak in (``tests/test_content.py``
fills them with NaN and checks the output is unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from prismrec.recommender import eval_mode

IdRows = Literal["zero", "impute"]
ID_ROWS = ("zero", "impute")


def as_scipy(graph) -> sp.csr_matrix:
    """A SciPy CSR copy of an item–item graph: a SciPy matrix, a torch CSR tensor, or an object
    holding one as ``.matrix`` (:class:`~prismrec.graph.SparseOperator`, ``EdgeGraph``)."""
    if sp.issparse(graph):
        return sp.csr_matrix(graph, dtype=np.float32)
    matrix = getattr(graph, "matrix", graph)
    if not isinstance(matrix, torch.Tensor) or matrix.layout != torch.sparse_csr:
        raise TypeError(f"expected a sparse item-item graph, got {type(graph).__name__}")
    return sp.csr_matrix(
        (matrix.values().detach().cpu().numpy(), matrix.col_indices().cpu().numpy(),
         matrix.crow_indices().cpu().numpy()),
        shape=tuple(matrix.shape), dtype=np.float32,
    )


def neighbour_mean(graphs: Sequence, items: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``len(items) x d``: for each item ``c``, ``Σ_j w_cj values[j] / Σ_j w_cj`` over its neighbours
    ``j`` in ``graphs`` (their weights summed), **excluding every item of** ``items``.

    Only the rows of ``values`` outside ``items`` are read. An item whose neighbours are all
    excluded gets zeros (nothing is known of it). ``O(len(items) · k)`` memory.
    """
    n = values.shape[0]
    items_np = items.detach().cpu().numpy().astype(np.int64)
    excluded = np.zeros(n, dtype=bool)
    excluded[items_np] = True
    weights = sum(as_scipy(g)[items_np] for g in graphs).tocsr()
    weights.data[excluded[weights.indices]] = 0.0
    weights.eliminate_zeros()
    weights.data = np.abs(weights.data)
    used = np.unique(weights.indices)  # the only rows of ``values`` read
    total = np.asarray(weights.sum(axis=1)).ravel()
    scale = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
    weights = (sp.diags(scale) @ weights).tocsr()[:, used]
    dense_rows = values.detach().index_select(0, torch.from_numpy(used).to(values.device))
    mean = weights @ dense_rows.cpu().to(torch.float64).numpy()  # sparse x dense: no items x items matrix
    return torch.from_numpy(np.asarray(mean)).to(values.device, values.dtype)


def feature_knn(features: Sequence[torch.Tensor], k: int = 10) -> list[sp.csr_matrix]:
    """One binary cosine kNN graph per feature matrix (self included): the content graph of a
    model that has none of its own (used by ``id_rows="impute"``)."""
    from prismrec.graph import knn_graph

    n = features[0].shape[0]
    return [knn_graph(f, min(k, n), weight="binary") for f in features]


@contextmanager
def replaced_rows(table: torch.Tensor, items: torch.Tensor, rows: torch.Tensor):
    """Within the block, ``table[items]`` holds ``rows`` (in place, without gradient); restored after."""
    data = table.data
    saved = data.index_select(0, items).clone()
    try:
        with torch.no_grad():
            data.index_copy_(0, items, rows.to(data.dtype))
        yield
    finally:
        with torch.no_grad():
            data.index_copy_(0, items, saved)


def content_forward_rows(
    model: nn.Module,
    table: torch.Tensor,
    items: torch.Tensor,
    id_rows: str,
    graphs: Sequence | Callable[[], Sequence] | None = None,
) -> torch.Tensor:
    """``model``'s eval-mode forward item rows of ``items`` with their rows of the ID ``table``
    (``n_items x d``; a view such as ``ids[n_users:]`` works) zeroed or imputed (module docstring).

    ``graphs``: the item–item graphs whose rows (summed) define the neighbours of ``impute``, or
    a function returning them (called only for ``impute``).
    """
    if id_rows not in ID_ROWS:
        from prismrec.errors import ConfigError

        raise ConfigError(f"id_rows must be one of {', '.join(ID_ROWS)}, got {id_rows!r}")
    items = items.to(table.device, torch.int64)
    if id_rows == "zero":
        rows = table.new_zeros(len(items), table.shape[1])
    else:
        if graphs is None:
            raise ValueError("id_rows='impute' needs the item-item graphs that define the neighbours")
        rows = neighbour_mean(graphs() if callable(graphs) else graphs, items, table)
    with eval_mode(model), replaced_rows(table, items, rows), torch.no_grad():
        out = model()
    return out.item.index_select(0, items.to(out.item.device)).clone()


def multiview_content_items(model: nn.Module, items: torch.Tensor, id_rows: str | None = None) -> torch.Tensor:
    """The MGCN family's content path (MGCN, GUME, SIGER, EGRA): the model's forward for
    ``items`` with their ID rows ``E_I[c]`` imputed (default) from their warm neighbours on the
    family's item–item graphs ``S_m`` (the encoder's, summed over modalities) or zeroed.

    The cold item's own features still act where MGCN puts them: its purifier gates
    ``σ((F_m W_m + b_m) G_m + g_m)`` filter the imputed row in each modality view, and the
    fuser's attention and preference gates weigh the views. (The papers say nothing about cold
    items; this is our choice, ``--id-rows`` switches it.) ``model.encoder`` must be a
    :class:`~prismrec.nn.MultiViewEncoder`.
    """
    encoder = model.encoder
    return content_forward_rows(
        model, encoder.item_emb.weight, items, id_rows or "impute", list(encoder.item_graphs)
    )


def multiview_content_hook(model: nn.Module, items: torch.Tensor, out, id_rows: str | None = None) -> torch.Tensor:
    """:meth:`~prismrec.recommender.Recommender.content_item_embeddings` of the MGCN family, to
    assign in a model's class body (``content_item_embeddings = multiview_content_hook``):
    :func:`multiview_content_items`; ``out`` is not needed (the path reruns the forward)."""
    return multiview_content_items(model, items, id_rows)
