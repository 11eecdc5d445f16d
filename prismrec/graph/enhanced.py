"""Item-item links for enhanced user-item graphs ``A⁺ = [[0, R], [Rᵀ, γ·B]]`` (ALGORITHMS.md 2.1,
2.5, 3.6, 6.1): GUME's links shared by every modality, EGRA's links from pretrained item
representations. :func:`prismrec.graph.bipartite_adjacency` turns ``B`` into ``Â⁺``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp

from prismrec.graph.knn import intersection_links, knn_graph, symmetrize


def shared_neighbor_links(graphs: Sequence[sp.spmatrix]) -> sp.csr_matrix:
    """GUME's ``B_II``: ``B(i, j) = 1`` iff ``j`` is a neighbour of ``i`` in **every** graph and
    ``j ≠ i`` (binary, directed: row ``i`` uses ``i``'s own neighbour lists)."""
    if not graphs:
        raise ValueError("shared_neighbor_links needs at least one graph")
    links = graphs[0]
    for graph in graphs:
        links = intersection_links(links, graph)
    return links


def pretrained_links(
    representations: np.ndarray,
    k: int,
    weight: Literal["binary", "cosine"] = "binary",
    symmetry: Literal["none", "max", "mutual"] = "none",
    within: sp.spmatrix | None = None,
) -> sp.csr_matrix:
    """EGRA's ``B_pre = topk(P; k)`` (2.5): each item's ``k`` nearest items by cosine of the
    pretrained rows ``P`` (self excluded), weighted 1 or by the cosine, not normalised;
    ``symmetry`` as :func:`prismrec.graph.symmetrize`; ``within`` keeps only the links that
    are also stored in that graph (e.g. GUME's raw-feature links)."""
    links = knn_graph(representations, k, self_loops="exclude", weight=weight, normalize=False)
    links = symmetrize(links, symmetry)
    if within is not None:
        links = sp.csr_matrix(links.multiply(within), dtype=np.float32)
    return links
