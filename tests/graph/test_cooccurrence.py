"""Co-occurrence top-k graph (ALGORITHMS.md 2.4) against a plain dense reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import prismrec.graph.cooccurrence as cooc
from prismrec.graph import cooccurrence_graph


def dense_cooccurrence(r, k, score="count", weight="binary", normalize=True):
    """Dense O = RᵀR, zero diagonal, per-row stable top-k of q > 0 (ties -> lower column)."""
    r = (np.asarray(r) != 0).astype(np.float64)
    o = r.T @ r
    np.fill_diagonal(o, 0)
    n_items = o.shape[0]
    deg = r.sum(axis=0)
    q = o.copy()
    if score == "cosine":
        with np.errstate(invalid="ignore", divide="ignore"):
            q = o / np.sqrt(np.outer(deg, deg))
        q[o == 0] = 0
    w = np.zeros_like(q)
    for i in range(n_items):
        order = np.lexsort((np.arange(n_items), -q[i]))
        chosen = [j for j in order if q[i, j] > 0][:k]
        w[i, chosen] = 1.0 if weight == "binary" else q[i, chosen]
    if normalize:
        d = w.sum(axis=1)
        inv = np.zeros_like(d)
        inv[d > 0] = d[d > 0] ** -0.5
        w = w * inv[:, None] * inv[None, :]
    return w


def make_interactions(n_users=80, n_items=50, density=0.08, seed=0):
    rng = np.random.default_rng(seed)
    r = (rng.random((n_users, n_items)) < density).astype(np.float32)
    r[:, 5] = r[:, 4]  # duplicate columns: exact ties in count and cosine
    r[:, 6] = r[:, 4]
    r[:, 9] = 0  # an item nobody interacted with: empty row
    r[:, 10] = 0
    r[0] = 0
    r[0, [10, 12, 13]] = 1  # item 10's only user also has 12, 13: fewer than k co-items
    return r


@pytest.mark.parametrize("score", ["count", "cosine"])
@pytest.mark.parametrize("weight", ["binary", "score"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("block_size", [None, 1, 7])
def test_matches_dense_reference(score, weight, normalize, block_size):
    r = make_interactions()
    k = 6
    got = cooccurrence_graph(
        sp.csr_matrix(r), k, score=score, weight=weight, normalize=normalize, block_size=block_size
    )
    assert got.dtype == np.float32 and got.format == "csr"
    want = dense_cooccurrence(r, k, score, weight, normalize)
    np.testing.assert_array_equal(got.toarray() != 0, want != 0)
    np.testing.assert_allclose(got.toarray(), want, rtol=1e-6, atol=1e-7)
    counts = np.diff(got.indptr)
    assert counts.max() <= k and counts[9] == 0
    assert 0 < counts[10] < k  # only a few items share item 10's users
    assert got.diagonal().sum() == 0


def test_ties_go_to_lower_index():
    # Items 1..4 each share exactly one user with item 0: a four-way tie for k = 2.
    r = np.zeros((4, 5), dtype=np.float32)
    r[:, 0] = 1
    r[np.arange(4), np.arange(1, 5)] = 1
    g = cooccurrence_graph(sp.csr_matrix(r), 2, normalize=False)
    np.testing.assert_array_equal(g[0].indices, [1, 2])


def test_adaptive_blocks_give_the_same_graph(monkeypatch):
    r = sp.csr_matrix(make_interactions(seed=1))
    ref = cooccurrence_graph(r, 5, score="cosine", weight="score")
    monkeypatch.setattr(cooc, "_BLOCK_WORK", 17)  # force many small adaptive blocks
    assert len(cooc._item_blocks(cooc._binary_interactions(r), None)) > 10
    got = cooccurrence_graph(r, 5, score="cosine", weight="score")
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_array_equal(got.indptr, ref.indptr)
    np.testing.assert_allclose(got.data, ref.data, rtol=1e-7)


def test_non_binary_values_and_explicit_zeros_are_patterns():
    r = make_interactions(seed=2)
    weighted = sp.csr_matrix(r * 3.0)
    weighted.data[::5] = 0.0  # stored zeros are not interactions
    dense = weighted.toarray()
    got = cooccurrence_graph(weighted, 4).toarray()
    np.testing.assert_allclose(got, dense_cooccurrence(dense, 4), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must be between 1 and n_items=50"),
        (dict(k=51), "k must be between 1 and n_items=50"),
        (dict(score="jaccard"), "score must be one of"),
        (dict(weight="count"), "weight must be one of"),
        (dict(block_size=0), "block_size must be a positive integer"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cooccurrence_graph(sp.csr_matrix(make_interactions()), **kwargs)
