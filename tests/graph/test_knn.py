"""kNN graph builders (ALGORITHMS.md 2.2, 2.3, 2.5) against a plain dense reference."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from prismrec.graph import intersection_links, knn_graph, knn_neighbors, symmetrize


# ----------------------------------------------------------------------------- dense reference
def dense_knn(x, k, self_loops="force", weight="cosine", normalize=True):
    """Full n x n cosine matrix, stable descending order per row (ties -> lower column)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = xn @ xn.T
    np.fill_diagonal(sim, np.inf if self_loops == "force" else -np.inf)
    w = np.zeros((n, n))
    present = np.zeros((n, n), dtype=bool)
    for i in range(n):
        order = np.lexsort((np.arange(n), -sim[i]))  # primary: value desc; secondary: index asc
        for j in order[:k]:
            present[i, j] = True
            if weight == "binary":
                w[i, j] = 1.0
            else:
                w[i, j] = 1.0 if i == j else sim[i, j]
    if normalize:
        deg = w.sum(axis=1)
        inv = np.zeros(n)
        inv[deg > 0] = deg[deg > 0] ** -0.5
        w = w * inv[:, None] * inv[None, :]
    return present, w


def pattern_and_values(graph):
    g = graph.tocsr()
    present = np.zeros(g.shape, dtype=bool)
    rows = np.repeat(np.arange(g.shape[0]), np.diff(g.indptr))
    present[rows, g.indices] = True
    return present, g.toarray()


def tie_heavy_features(n=50, d=8, seed=0):
    """0/1 rows with exactly 4 ones drawn from a small pool (many duplicates) plus zero rows.

    Every cosine between them is a multiple of 1/4 and exact in float32 and float64 alike, so
    the ties are real ties for both the builder and the reference.
    """
    rng = np.random.default_rng(seed)
    pool = np.zeros((6, d), dtype=np.float32)
    for p in range(6):
        pool[p, rng.choice(d, 4, replace=False)] = 1.0
    x = pool[rng.integers(0, 6, n)]
    x[rng.choice(n, 6, replace=False)] = 0.0  # zero rows: similarity 0 with everything
    return x


@pytest.fixture(params=["random", "ties"])
def features(request):
    if request.param == "random":
        return np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
    return tie_heavy_features()


# ----------------------------------------------------------------------------- knn_graph
@pytest.mark.filterwarnings("ignore:.*non-positive degree")  # zero rows, self excluded
@pytest.mark.parametrize("self_loops", ["force", "exclude"])
@pytest.mark.parametrize("weight", ["cosine", "binary"])
@pytest.mark.parametrize("normalize", [True, False])
def test_knn_graph_matches_dense_reference(features, self_loops, weight, normalize):
    k = 7
    got = knn_graph(features, k, self_loops=self_loops, weight=weight, normalize=normalize)
    assert got.dtype == np.float32 and got.format == "csr"
    assert got.nnz == features.shape[0] * k
    assert (np.diff(got.indptr) == k).all()
    want_present, want_w = dense_knn(features, k, self_loops, weight, normalize)
    got_present, got_w = pattern_and_values(got)
    np.testing.assert_array_equal(got_present, want_present)
    np.testing.assert_allclose(got_w, want_w, atol=2e-6, rtol=1e-5)


def test_forced_self_is_kept_with_weight_one_and_excluded_self_never(features):
    forced = knn_graph(features, 5, normalize=False)
    np.testing.assert_array_equal(forced.diagonal(), np.ones(features.shape[0], np.float32))
    excluded = knn_graph(features, 5, self_loops="exclude", normalize=False)
    assert not pattern_and_values(excluded)[0].diagonal().any()


@pytest.mark.filterwarnings("ignore:.*non-positive degree")  # zero rows, self excluded
def test_ties_go_to_lower_column_index_exactly():
    # Items 0..5 identical, item 6 different: every item's nearest others are a tie among 0..5.
    x = np.zeros((8, 4), dtype=np.float32)
    x[:6, 0] = 1.0
    x[6, 1] = 1.0
    x[7, 0] = 1.0  # a duplicate far from the others in index
    nb = knn_neighbors(knn_graph(x, 3))
    # self + the two lowest-index duplicates
    np.testing.assert_array_equal(nb[0], [0, 1, 2])
    np.testing.assert_array_equal(nb[4], [0, 1, 4])
    np.testing.assert_array_equal(nb[7], [0, 1, 7])
    nb_ex = knn_neighbors(knn_graph(x, 3, self_loops="exclude"))
    np.testing.assert_array_equal(nb_ex[0], [1, 2, 3])
    np.testing.assert_array_equal(nb_ex[1], [0, 2, 3])
    # Item 6 is orthogonal to everything: all others tie at 0 -> the lowest indices.
    np.testing.assert_array_equal(nb_ex[6], [0, 1, 2])


def test_zero_rows_keep_k_entries_as_explicit_zeros():
    x = np.zeros((6, 3), dtype=np.float32)
    x[0] = [1, 2, 3]
    g = knn_graph(x, 4)  # cosine weights, normalised: zero rows keep self (1) and three zeros
    assert g.nnz == 24
    np.testing.assert_array_equal(knn_neighbors(g)[3], [0, 1, 2, 3])
    np.testing.assert_allclose(g[3].toarray().ravel(), [0, 0, 0, 1, 0, 0])


@pytest.mark.parametrize("block_size", [1, 7, 50, 1000])
def test_block_size_does_not_change_the_graph(block_size):
    x = tie_heavy_features(seed=3)
    ref = knn_graph(x, 9)
    got = knn_graph(x, 9, block_size=block_size)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_array_equal(got.indptr, ref.indptr)
    np.testing.assert_allclose(got.data, ref.data, atol=1e-7)


def test_torch_and_numpy_inputs_agree():
    x = np.random.default_rng(2).standard_normal((30, 5)).astype(np.float32)
    a = knn_graph(x, 4)
    b = knn_graph(torch.from_numpy(x).requires_grad_(), 4)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)


def test_binary_normalised_entries_are_one_over_k():
    x = np.random.default_rng(4).standard_normal((40, 6)).astype(np.float32)
    g = knn_graph(x, 10, weight="binary")
    np.testing.assert_allclose(g.data, 0.1, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:.*non-positive degree")  # zero rows, self excluded
def test_k_equal_n_keeps_everything_and_k_one_keeps_only_self():
    x = tie_heavy_features(n=12, seed=5)
    assert knn_graph(x, 12).nnz == 144
    one = knn_graph(x, 1, normalize=False)
    np.testing.assert_array_equal(one.toarray(), np.eye(12, dtype=np.float32))
    assert knn_graph(x, 11, self_loops="exclude").nnz == 12 * 11


def test_nonpositive_degree_warns():
    # Row 0's only neighbours point the opposite way: degree 1 + 2·cos ≈ -1 < 0.
    x = np.array([[1.0, 0.0], [-1.0, 0.01], [-1.0, 0.02], [-1.0, 0.03]], dtype=np.float32)
    with pytest.warns(UserWarning, match="non-positive degree"):
        g = knn_graph(x, 3)
    assert g.nnz == 12
    assert np.all(g[0].toarray() == 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must be between 1 and 10"),
        (dict(k=11), "k must be between 1 and 10"),
        (dict(k=10, self_loops="exclude"), "k must be between 1 and 9"),
        (dict(self_loops="keep"), "self_loops must be one of"),
        (dict(weight="dot"), "weight must be one of"),
        (dict(block_size=0), "block_size must be a positive integer"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    x = np.ones((10, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        knn_graph(x, **kwargs)


def test_bad_features_raise():
    with pytest.raises(ValueError, match="NaN or infinite"):
        knn_graph(np.array([[1.0, np.nan], [0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="2-D"):
        knn_graph(np.ones(5), 1)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        knn_graph([[1.0, 2.0]], 1)


# ----------------------------------------------------------------------------- symmetrize
def random_directed_graph(n=30, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((n, n)) < 0.15
    w = rng.standard_normal((n, n)).astype(np.float32)  # negative weights on purpose
    rows, cols = np.nonzero(mask)
    data = w[rows, cols]
    data[::7] = 0.0  # explicit zeros are stored entries too
    return sp.csr_matrix((data, (rows, cols)), shape=(n, n)), mask, np.where(mask, w, 0)


def test_symmetrize_modes_match_dense_reference():
    g, p, _ = random_directed_graph()
    w = np.zeros(g.shape)
    coo = g.tocoo()
    w[coo.row, coo.col] = coo.data
    pt, wt = p.T, w.T
    cases = {
        "none": (p, w),
        "max": (p | pt, np.where(p & pt, np.maximum(w, wt), np.where(p, w, wt))),
        "mutual": (p & pt, np.where(p & pt, np.minimum(w, wt), 0.0)),
    }
    for mode, (want_p, want_w) in cases.items():
        got_p, got_w = pattern_and_values(symmetrize(g, mode))
        np.testing.assert_array_equal(got_p, want_p, err_msg=mode)
        np.testing.assert_allclose(got_w, want_w, err_msg=mode)
    for mode in ("max", "mutual"):
        s = symmetrize(g, mode).toarray()
        np.testing.assert_array_equal(s, s.T)


def test_symmetrize_binary_equals_scipy_maximum_minimum():
    x = np.random.default_rng(6).standard_normal((40, 8)).astype(np.float32)
    b = knn_graph(x, 5, self_loops="exclude", weight="binary", normalize=False)
    np.testing.assert_array_equal(symmetrize(b, "max").toarray(), b.maximum(b.T).toarray())
    np.testing.assert_array_equal(symmetrize(b, "mutual").toarray(), b.minimum(b.T).toarray())


def test_symmetrize_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        symmetrize(sp.eye(3, format="csr"), "union")


# ----------------------------------------------------------------------------- intersection
def test_knn_neighbors_and_intersection_links_match_sets():
    rng = np.random.default_rng(7)
    base = rng.standard_normal((50, 8)).astype(np.float32)
    xa = base + 0.3 * rng.standard_normal((50, 8)).astype(np.float32)
    xb = base + 0.3 * rng.standard_normal((50, 8)).astype(np.float32)
    ga, gb = knn_graph(xa, 10), knn_graph(xb, 10)
    pa, _ = dense_knn(xa, 10)
    pb, _ = dense_knn(xb, 10)
    na, nb = knn_neighbors(ga), knn_neighbors(gb)
    for i in range(50):
        assert set(na[i]) == set(np.flatnonzero(pa[i]))
    links = intersection_links(ga, gb)
    want = np.zeros((50, 50), dtype=np.float32)
    for i in range(50):
        for j in (set(na[i]) & set(nb[i])) - {i}:
            want[i, j] = 1.0
    assert want.sum() > 50  # the test is not vacuous
    np.testing.assert_array_equal(links.toarray(), want)
    assert links.dtype == np.float32 and links.diagonal().sum() == 0
    assert (links.toarray() != links.toarray().T).any()  # directed


def test_intersection_counts_explicit_zero_neighbours():
    x = np.zeros((5, 2), dtype=np.float32)
    x[0] = [1, 0]
    g = knn_graph(x, 3)  # zero rows: neighbours with weight 0
    links = intersection_links(g, g)
    assert links[2].nnz == 2  # row 2 keeps {0, 1, 2}; self removed


def test_knn_neighbors_requires_uniform_rows():
    with pytest.raises(ValueError, match="same number of stored entries"):
        knn_neighbors(sp.csr_matrix(np.array([[1, 1], [0, 1]], dtype=np.float32)))


def test_intersection_links_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        intersection_links(sp.eye(3, format="csr"), sp.eye(4, format="csr"))


# ----------------------------------------------------------------------------- memory
MEMORY_BOUND_MB = 600


def test_knn_graph_memory_stays_blocked():
    """n = 20,000 items, d = 64, k = 10 in a fresh process; peak RSS growth < 600 MB.

    A dense 20k x 20k float32 similarity matrix would be 1.6 GB, well above the bound; the
    blocked builder needs about 64 MB per block plus ``n·k`` outputs (measured ~73 MB; ~90 MB at
    60k items). Takes ~5 s of CPU (most of it the 20k x 20k x 64 matrix products).
    """
    script = textwrap.dedent(
        """
        import json, resource, time
        import numpy as np, torch
        from prismrec.graph import knn_graph
        x = np.random.default_rng(0).standard_normal((20_000, 64), dtype=np.float32)
        knn_graph(x[:100], 10)  # warm up torch / BLAS so their one-off buffers are not counted
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        g = knn_graph(x, 10)
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"delta_mb": (after - before) / 1024, "seconds": seconds, "nnz": g.nnz}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["nnz"] == 200_000
    assert result["delta_mb"] < MEMORY_BOUND_MB, result
