"""Graph mixing and degree-sensitive edge sampling (2.3, 2.6)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from prismrec.graph import (
    degree_sensitive_edge_sample,
    knn_graph,
    mix,
)


# ----------------------------------------------------------------------------- mix
def test_mix_is_the_weighted_sum_freedom_style():
    rng = np.random.default_rng(0)
    v = knn_graph(rng.standard_normal((40, 8)).astype(np.float32), 10, weight="binary")
    t = knn_graph(rng.standard_normal((40, 16)).astype(np.float32), 10, weight="binary")
    s = mix([v, t], [0.1, 0.9])
    assert s.dtype == np.float32 and s.format == "csr"
    np.testing.assert_allclose(s.toarray(), 0.1 * v.toarray() + 0.9 * t.toarray(), atol=1e-7)
    np.testing.assert_allclose(np.asarray(s.sum(axis=1)).ravel(), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "weights, match",
    [
        ([0.5, 0.6], "sum to 1"),
        ([1.5, -0.5], "non-negative and sum to 1"),
        ([1.0], "2 graphs but 1 weights"),
        ([np.nan, 1.0], "finite"),
    ],
)
def test_mix_validates_weights(weights, match):
    a = sp.eye(3, format="csr", dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        mix([a, a], weights)


def test_mix_general_combination_and_shape_check():
    a = sp.eye(3, format="csr", dtype=np.float32)
    general = mix([a, a], [2.0, -0.5], require_convex=False)
    np.testing.assert_allclose(general.toarray(), 1.5 * np.eye(3))
    with pytest.raises(ValueError, match="shape"):
        mix([a, sp.eye(4, format="csr")], [0.5, 0.5])
    with pytest.raises(ValueError, match="at least one graph"):
        mix([], [])


# ----------------------------------------------------------------------------- edge sampling
def random_train(n_users=200, n_items=100, seed=0):
    rng = np.random.default_rng(seed)
    # Skewed popularity so degrees (and keep probabilities) vary a lot.
    p = np.outer(rng.uniform(0.02, 0.3, n_users), rng.power(0.3, n_items))
    r = (rng.random((n_users, n_items)) < p).astype(np.float32)
    return sp.csr_matrix(r)


@pytest.mark.parametrize("drop_ratio", [0.0, 0.1, 0.5, 0.8, 0.9, 1.0])
def test_edge_sample_keeps_exactly_m_distinct_training_edges(drop_ratio):
    r = random_train()
    kept = degree_sensitive_edge_sample(r, drop_ratio, np.random.default_rng(1))
    m = int(r.nnz * (1.0 - drop_ratio))  # FREEDOM's keep_len expression
    assert kept.shape == r.shape and kept.dtype == np.float32
    assert kept.nnz == m
    np.testing.assert_array_equal(kept.data, 1.0)  # a duplicate would have summed to 2
    assert kept.multiply(r).nnz == m  # every kept edge is a training edge


def test_edge_sample_prefers_low_degree_edges():
    r = random_train()
    coo = r.tocoo()
    du = np.asarray(r.sum(axis=1)).ravel()[coo.row]
    di = np.asarray(r.sum(axis=0)).ravel()[coo.col]
    prob = 1.0 / np.sqrt(du * di)
    rng = np.random.default_rng(123)
    freq = np.zeros(r.nnz)
    edge_id = {(u, i): e for e, (u, i) in enumerate(zip(coo.row, coo.col))}
    for _ in range(200):
        kept = degree_sensitive_edge_sample(r, 0.8, rng).tocoo()
        freq[[edge_id[(u, i)] for u, i in zip(kept.row, kept.col)]] += 1
    low, high = prob <= np.quantile(prob, 0.25), prob >= np.quantile(prob, 0.75)
    # Low-probability (high-degree) edges survive far less often than high-probability ones.
    assert freq[high].mean() > 2 * freq[low].mean()
    assert np.corrcoef(prob, freq)[0, 1] > 0.8


def test_edge_sample_single_draw_follows_the_probabilities():
    # One user with 1 item, one with 3 -> probabilities ∝ 1/sqrt(d_u d_i); keep m = 1 of 4.
    r = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 1]], dtype=np.float32))
    coo = r.tocoo()
    du = np.array([1, 3])[coo.row]
    di = np.array([2, 1, 1])[coo.col]
    p = 1 / np.sqrt(du * di)
    p /= p.sum()
    rng = np.random.default_rng(7)
    hits = np.zeros(4)
    order = {(u, i): e for e, (u, i) in enumerate(zip(coo.row, coo.col))}
    n = 4000
    for _ in range(n):
        kept = degree_sensitive_edge_sample(r, 0.75, rng).tocoo()
        hits[order[(kept.row[0], kept.col[0])]] += 1
    np.testing.assert_allclose(hits / n, p, atol=0.03)


def test_edge_sample_is_reproducible_with_numpy_or_torch_generators():
    r = random_train(seed=3)
    a = degree_sensitive_edge_sample(r, 0.5, np.random.default_rng(5))
    b = degree_sensitive_edge_sample(r, 0.5, np.random.default_rng(5))
    assert (a != b).nnz == 0
    c = degree_sensitive_edge_sample(r, 0.5, torch.Generator().manual_seed(5))
    d = degree_sensitive_edge_sample(r, 0.5, torch.Generator().manual_seed(5))
    assert (c != d).nnz == 0 and c.nnz == a.nnz
    e, f = (degree_sensitive_edge_sample(r, 0.5, 11) for _ in range(2))  # an int seed works too
    assert (e != f).nnz == 0


def test_edge_sample_rejects_bad_ratio():
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        degree_sensitive_edge_sample(random_train(), 1.5, 0)
