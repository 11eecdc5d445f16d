"""Item–item graphs whose edges agree across modalities (DA-MRS's denoised modality graphs).

DA-MRS (arXiv 2406.12501, §3.2) keeps an edge ``(i, j)`` of a modality graph only when every
modality finds ``i`` and ``j`` at least averagely similar::

    C_i = { j : cos_m(i, j) >= mean(cos_m)  for every modality m }        (candidates, self included)
    N_m(i) = top-min(k, |C_i|) of cos_m(i, ·) over C_i                    (per modality)
    Ŝ_m = D^-1/2 B_m D^-1/2,   B_m(i, j) = 1[j ∈ N_m(i)],  D = row degrees

``mean(cos_m)`` is the mean of the whole ``n x n`` cosine matrix. It is never formed: with unit
rows ``x̂_i``, ``Σ_ij x̂_i·x̂_j = ||Σ_i x̂_i||²``, so the mean is ``||Σ_i x̂_i||² / n²`` (``>= 0``, so
every kept edge has a non-negative cosine). The candidates and the top-k are computed in row
blocks: memory ``O(block · n · M + n · k · M)`` for ``M`` modalities, never ``n²``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from prismrec.graph.knn import _as_feature_tensor, _topk_lowest_index, default_block_size
from prismrec.graph.ops import sym_normalize


def mean_cosine(unit_rows: torch.Tensor) -> float:
    """Mean of the ``n x n`` cosine matrix of already unit-norm rows: ``||Σ_i x̂_i||² / n²``."""
    total = unit_rows.to(torch.float64).sum(dim=0)
    return float(total.dot(total)) / float(unit_rows.shape[0]) ** 2


def consistent_knn_graphs(
    features: Sequence[np.ndarray | torch.Tensor],
    k: int = 10,
    *,
    block_size: int | None = None,
    normalize: bool = True,
) -> list[sp.csr_matrix]:
    """One binary top-``k`` graph per modality, restricted to cross-modally consistent pairs.

    Args:
        features: one ``n x d_m`` real matrix per modality (same ``n``; finite).
        k: at most ``k`` neighbours per row, ``1 <= k <= n``. Self is a candidate (its cosine
            is 1) and is kept like any other neighbour.
        block_size: rows of the similarity matrices computed at once; default keeps one block
            of one modality near 64 MB.
        normalize: apply :func:`~prismrec.graph.ops.sym_normalize` with row degrees; ``False``
            returns the binary pattern.

    Returns:
        ``n x n`` float32 CSR graphs, one per modality in the order given; row ``i`` of each
        stores ``min(k, |C_i|)`` entries (ties go to the lower column index).
    """
    feats = [_as_feature_tensor(f) for f in features]
    if not feats:
        raise ValueError("consistent_knn_graphs needs at least one feature matrix")
    n = int(feats[0].shape[0])
    if any(int(f.shape[0]) != n for f in feats):
        raise ValueError(f"every feature matrix needs the same rows, got {[int(f.shape[0]) for f in feats]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= n:
        raise ValueError(f"k must be an integer between 1 and {n} (items), got {k!r}")
    k = int(k)
    block_size = default_block_size(n) if block_size is None else int(min(max(1, block_size), n))

    unit = [F.normalize(f.to(torch.float32), dim=1) for f in feats]
    means = [mean_cosine(x) for x in unit]
    rows_out: list[list[np.ndarray]] = [[] for _ in unit]
    cols_out: list[list[np.ndarray]] = [[] for _ in unit]
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        sims = [x[start:stop] @ x.T for x in unit]
        keep = sims[0] >= means[0]
        for sim, mean in zip(sims[1:], means[1:]):
            keep &= sim >= mean
        for m, sim in enumerate(sims):
            masked = sim.masked_fill_(~keep, float("-inf"))
            idx = _topk_lowest_index(masked, k)
            valid = torch.isfinite(masked.gather(1, idx))  # rows with fewer than k candidates
            local, slot = torch.nonzero(valid, as_tuple=True)
            rows_out[m].append((local + start).cpu().numpy())
            cols_out[m].append(idx[local, slot].cpu().numpy())
        del sims, keep

    graphs = []
    for m in range(len(unit)):
        rows = np.concatenate(rows_out[m])
        cols = np.concatenate(cols_out[m])
        g = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n, n))
        g.sort_indices()
        graphs.append(sym_normalize(g) if normalize else g)
    return graphs
