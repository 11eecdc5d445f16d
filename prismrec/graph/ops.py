"""Small sparse-matrix operations shared by every graph builder."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch


def sym_normalize(matrix: sp.spmatrix, *, warn_nonpositive: bool = False) -> sp.csr_matrix:
    """Return ``D^-1/2 M D^-1/2`` with ``D`` the diagonal of row sums of ``M``.

    ``0^-1/2`` (and the inverse root of any non-positive degree) is taken as 0, so empty rows
    stay empty. For a symmetric ``M`` this is the usual symmetric normalisation; for a directed
    graph (kNN, enhanced adjacency) both sides use the **row** degrees (ALGORITHMS.md 2.1, 2.2).
    """
    m = sp.csr_matrix(matrix, dtype=np.float32)
    if m.shape[0] != m.shape[1]:
        raise ValueError(f"sym_normalize needs a square matrix, got shape {m.shape}")
    deg = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
    bad = deg <= 0
    if warn_nonpositive and bad.any() and m.nnz:
        nonempty_bad = bad & (np.diff(m.indptr) > 0)
        if nonempty_bad.any():
            warnings.warn(
                f"{int(nonempty_bad.sum())} non-empty rows have a non-positive degree; "
                "their normalised rows are set to 0",
                stacklevel=2,
            )
    inv_sqrt = np.zeros_like(deg)
    inv_sqrt[~bad] = deg[~bad] ** -0.5
    d = sp.diags(inv_sqrt.astype(np.float32))
    out = (d @ m @ d).tocsr()
    out.sort_indices()
    return out.astype(np.float32)


def mix(
    graphs: Sequence[sp.spmatrix],
    weights: Sequence[float],
    *,
    require_convex: bool = True,
) -> sp.csr_matrix:
    """Weighted sum ``Σ_m α_m G_m`` of same-shape sparse graphs, as float32 CSR.

    FREEDOM mixes its binary modality graphs this way (ALGORITHMS.md 2.3:
    ``S = 0.1·Ŝ_v^bin + 0.9·Ŝ_t^bin``). With ``require_convex=True`` (default) the weights must be
    non-negative and sum to 1 (within 1e-6), so the mix of normalised graphs stays on their scale;
    pass ``False`` for an arbitrary finite linear combination.
    """
    graphs = list(graphs)
    alphas = np.asarray(list(weights), dtype=np.float64)
    if not graphs:
        raise ValueError("mix needs at least one graph")
    if alphas.ndim != 1 or alphas.size != len(graphs):
        raise ValueError(f"mix got {len(graphs)} graphs but {alphas.size} weights")
    if not np.isfinite(alphas).all():
        raise ValueError(f"mix weights must be finite, got {alphas.tolist()}")
    if require_convex:
        if (alphas < 0).any() or abs(alphas.sum() - 1.0) > 1e-6:
            raise ValueError(
                f"mix weights must be non-negative and sum to 1, got {alphas.tolist()} "
                f"(sum {alphas.sum():.6g}); pass require_convex=False for a general combination"
            )
    shape = graphs[0].shape
    for pos, g in enumerate(graphs):
        if not sp.issparse(g):
            raise TypeError(
                f"mix: graph {pos} is {type(g).__name__}, expected a SciPy sparse matrix"
            )
        if g.shape != shape:
            raise ValueError(f"mix: graph {pos} has shape {g.shape}, graph 0 has {shape}")
    out = sp.csr_matrix(shape, dtype=np.float32)
    for alpha, g in zip(alphas, graphs):
        # Sum in float64 then round once, so the order of the graphs cannot change the result.
        out = out + sp.csr_matrix(g, dtype=np.float64) * alpha
    out = sp.csr_matrix(out, dtype=np.float32)
    out.sort_indices()
    return out


def _edge_keep_count(n_edges: int, drop_ratio: float) -> int:
    """``m = ⌊|E|·(1−ρ)⌋`` evaluated exactly as FREEDOM's ``int(n * (1. - ρ))`` (2.6).

    Plain float arithmetic, so e.g. ``10·(1−0.8)`` gives 1.999… → 1, matching the reference
    code's edge count rather than the real-number value.
    """
    return int(n_edges * (1.0 - drop_ratio))


def degree_sensitive_edge_sample(
    train_csr: sp.spmatrix,
    drop_ratio: float,
    rng: np.random.Generator | torch.Generator | int | None = None,
) -> sp.csr_matrix:
    """Keep ``m = ⌊|E|·(1−ρ)⌋`` training edges, drawn without replacement ∝ ``1/sqrt(d_u d_i)``.

    FREEDOM's degree-sensitive edge pruning (ALGORITHMS.md 2.6): ``ρ = drop_ratio`` is the fraction
    **dropped**; degrees ``d_u``, ``d_i`` come from the full training graph, so edges between
    low-degree nodes survive more often. Sampling is successive sampling without replacement
    (the law of ``torch.multinomial(p, m, replacement=False)``), done in one vectorised step with
    exponential keys: edge ``e`` gets ``E_e / p_e`` with ``E_e ~ Exp(1)`` and the ``m`` smallest
    keys are kept.

    Args:
        train_csr: users x items training matrix; every stored non-zero is an edge.
        drop_ratio: ``ρ`` in ``[0, 1]``.
        rng: a ``numpy.random.Generator``, a ``torch.Generator`` (CPU), or a seed (``None`` draws a
            fresh one); the run's generator keeps the draws reproducible.

    Returns:
        The kept edges as a binary float32 users x items CSR of the same shape. The caller rebuilds
        ``Â_ρ`` from it with its own degrees via
        :func:`prismrec.graph.bipartite.bipartite_adjacency`.
    """
    if not sp.issparse(train_csr):
        raise TypeError(f"train_csr must be a SciPy sparse matrix, got {type(train_csr).__name__}")
    drop = float(drop_ratio)
    if not 0.0 <= drop <= 1.0:
        raise ValueError(
            f"drop_ratio is the fraction of edges dropped and must be in [0, 1], got {drop_ratio}"
        )
    r = sp.csr_matrix(train_csr, dtype=np.float32, copy=True)
    r.sum_duplicates()
    r.eliminate_zeros()
    coo = r.tocoo()
    users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    n_edges = users.size
    m = _edge_keep_count(n_edges, drop)
    if m >= n_edges:
        kept = np.arange(n_edges)
    elif m <= 0:
        kept = np.empty(0, dtype=np.int64)
    else:
        user_deg = np.bincount(users, minlength=r.shape[0]).astype(np.float64)
        item_deg = np.bincount(items, minlength=r.shape[1]).astype(np.float64)
        # Every edge's endpoints have degree >= 1, so the probabilities are finite and positive.
        prob = 1.0 / np.sqrt(user_deg[users] * item_deg[items])
        if isinstance(rng, torch.Generator):
            noise = torch.empty(n_edges, dtype=torch.float64).exponential_(generator=rng).numpy()
        else:
            noise = np.random.default_rng(rng).standard_exponential(n_edges)
        keys = noise / prob
        kept = np.sort(np.argpartition(keys, m - 1)[:m])
    out = sp.csr_matrix(
        (np.ones(kept.size, dtype=np.float32), (users[kept], items[kept])), shape=r.shape
    )
    out.sort_indices()
    return out


def modality_weights(weights: list[float] | None, modalities: list[str]) -> tuple[float, ...]:
    """Mixing weights ``α`` of the modality item graphs (FREEDOM, DRAGON): the given weights
    (checked: one per modality, non-negative, summing to 1) or the references' default, (0.1, 0.9)
    for two modalities (first = visual, second = textual) and uniform otherwise."""
    n = len(modalities)
    if weights is None:
        return (0.1, 0.9) if n == 2 else tuple([1.0 / n] * n)
    alphas = tuple(float(w) for w in weights)
    if len(alphas) != n:
        raise ValueError(
            f"mm_weights has {len(alphas)} weight{'' if len(alphas) == 1 else 's'} {list(alphas)} but {n} "
            f"{'modality is' if n == 1 else 'modalities are'} used "
            f"({', '.join(modalities)}); give one weight per modality, in that order"
        )
    if any(not np.isfinite(a) or a < 0 for a in alphas) or abs(sum(alphas) - 1.0) > 1e-6:
        raise ValueError(
            f"mm_weights must be non-negative and sum to 1, got {list(alphas)} (sum "
            f"{sum(alphas):.6g}) for modalities {', '.join(modalities)}"
        )
    return alphas
