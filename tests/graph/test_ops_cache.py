"""Graph mixing, degree-sensitive edge sampling (2.3, 2.6) and the content-addressed cache."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from prismrec.graph import (
    GraphCache,
    cache_key,
    default_cache_dir,
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


# ----------------------------------------------------------------------------- cache
def inputs_and_params():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((30, 4)).astype(np.float32)
    train = random_train(20, 30)
    return {"features": feats, "train": train}, {"k": 5, "self_loops": "force", "weight": "cosine"}


class CountingBuilder:
    def __init__(self, features):
        self.features = features
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return knn_graph(self.features, 5)


def test_cache_hit_returns_equal_graph_without_building(tmp_path):
    inputs, params = inputs_and_params()
    builder = CountingBuilder(inputs["features"])
    cache = GraphCache(tmp_path / "cache")
    first = cache.get_or_build("knn", inputs, params, builder)
    again = GraphCache(tmp_path / "cache").get_or_build("knn", inputs, params, builder)
    assert builder.calls == 1
    assert again.format == "csr" and again.dtype == first.dtype
    assert (first != again).nnz == 0
    files = list((tmp_path / "cache").iterdir())
    assert [f.name for f in files] == [f"knn-{cache_key('knn', inputs, params)}.npz"]


def test_key_changes_with_any_input_byte_param_or_kind():
    inputs, params = inputs_and_params()
    base = cache_key("knn", inputs, params)
    assert cache_key("knn", dict(reversed(list(inputs.items()))), params) == base  # order-free
    feats = inputs["features"].copy()
    feats.view(np.uint8)[17] ^= 1  # flip one bit of one byte
    assert cache_key("knn", {**inputs, "features": feats}, params) != base
    train = inputs["train"].copy()
    train.data[3] = 2.0
    assert cache_key("knn", {**inputs, "train": train}, params) != base
    assert cache_key("knn", inputs, {**params, "k": 6}) != base
    assert cache_key("knn", inputs, {**params, "extra": None}) != base
    assert cache_key("cooc", inputs, params) != base
    as_tensor = {**inputs, "features": torch.from_numpy(inputs["features"])}
    assert cache_key("knn", as_tensor, params) == cache_key("knn", as_tensor, params)
    as_double = {**inputs, "features": inputs["features"].astype(np.float64)}
    assert cache_key("knn", as_double, params) != base


def test_cache_miss_after_param_change_builds_again(tmp_path):
    inputs, params = inputs_and_params()
    builder = CountingBuilder(inputs["features"])
    cache = GraphCache(tmp_path)
    cache.get_or_build("knn", inputs, params, builder)
    cache.get_or_build("knn", inputs, {**params, "k": 7}, builder)
    assert builder.calls == 2
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_disabled_cache_builds_every_time():
    inputs, params = inputs_and_params()
    builder = CountingBuilder(inputs["features"])
    cache = GraphCache(None)
    cache.get_or_build("knn", inputs, params, builder)
    cache.get_or_build("knn", inputs, params, builder)
    assert builder.calls == 2


def test_cache_root_inside_dataset_folder_is_refused(tmp_path):
    dataset = tmp_path / "baby"
    dataset.mkdir()
    (dataset / "baby.inter").write_text("userID\titemID\tx_label\n")
    with pytest.raises(ValueError, match="inside the dataset folder"):
        GraphCache(dataset / "graphs")
    with pytest.raises(ValueError, match="inside the dataset folder"):
        GraphCache(dataset)
    GraphCache(tmp_path / "elsewhere")  # a sibling folder is fine


def test_unreadable_cache_file_is_rebuilt(tmp_path):
    inputs, params = inputs_and_params()
    builder = CountingBuilder(inputs["features"])
    cache = GraphCache(tmp_path)
    cache.path_for("knn", cache_key("knn", inputs, params)).write_bytes(b"not a npz")
    with pytest.warns(UserWarning, match="unreadable graph cache file"):
        g = cache.get_or_build("knn", inputs, params, builder)
    assert builder.calls == 1 and g.nnz == 150


def test_cache_argument_errors(tmp_path):
    inputs, params = inputs_and_params()
    cache = GraphCache(tmp_path)
    with pytest.raises(ValueError, match="kind must be"):
        cache.get_or_build("../evil", inputs, params, lambda: sp.eye(2, format="csr"))
    with pytest.raises(TypeError, match="JSON-serialisable"):
        cache_key("knn", inputs, {"fn": object()})
    with pytest.raises(TypeError, match="numpy array, torch tensor or SciPy sparse"):
        cache_key("knn", {"x": [1, 2, 3]}, {})
    with pytest.raises(TypeError, match="expected a SciPy sparse matrix"):
        cache.get_or_build("knn", inputs, params, lambda: np.eye(2))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PRISMREC_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PRISMREC_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "prismrec", "graphs")
