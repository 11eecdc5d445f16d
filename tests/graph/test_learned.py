"""Edge-valued graphs (graph/learned.py) and the random-walk adjacency (graph/walk.py)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from prismrec.graph import knn_graph
from prismrec.graph import learned
from prismrec.graph.learned import EdgeGraph, knn_edges, normalize_edges, sampled_dot
from prismrec.graph.walk import random_walk_adjacency


def test_knn_edges_match_knn_graph_pattern():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    rows, cols = knn_edges(x, 4)
    g = knn_graph(x, 4).tocoo()
    assert rows.dtype == cols.dtype == torch.int64 and rows.numel() == 160
    assert set(zip(rows.tolist(), cols.tolist())) == set(zip(g.row.tolist(), g.col.tolist()))
    assert all((rows == cols).reshape(40, 4).any(1))  # self forced into every row


@pytest.mark.parametrize("chunk", [3, 1 << 16])
def test_sampled_dot_values_and_gradients(monkeypatch, chunk):
    monkeypatch.setattr(learned, "EDGE_CHUNK", chunk)
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([0, 0, 3, 6, 6, 2, 0])
    cols = torch.tensor([1, 8, 3, 0, 0, 4, 1])  # duplicates on purpose
    w = sampled_dot(a, b, rows, cols)
    torch.testing.assert_close(w, (a @ b.T)[rows, cols])
    torch.autograd.gradcheck(lambda a, b: sampled_dot(a, b, rows, cols), (a, b))


def test_normalize_edges_is_dense_sym_normalisation():
    gen = torch.Generator().manual_seed(2)
    dense = torch.rand(6, 6, generator=gen, dtype=torch.float64) * (torch.rand(6, 6, generator=gen) < 0.5)
    dense[5] = 0  # an empty row keeps degree 0 -> zeros, not NaN
    rows, cols = dense.nonzero(as_tuple=True)
    values = dense[rows, cols].clone().requires_grad_(True)
    out = normalize_edges(rows, cols, values, 6)
    deg = dense.sum(1)
    inv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    expected = (torch.diag(inv) @ dense @ torch.diag(inv))[rows, cols]
    torch.testing.assert_close(out, expected)
    torch.autograd.gradcheck(lambda v: normalize_edges(rows, cols, v, 6), (values,))


def test_normalize_edges_warns_on_non_positive_degree():
    with pytest.warns(UserWarning, match="1 graph rows have non-positive degree"):
        out = normalize_edges(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), torch.tensor([1.0, -2.0, 1.0]), 2)
    assert out[0] == 0 and out[1] == 0 and out[2] == 1


def test_edge_graph_product_and_gradients_match_dense():
    gen = torch.Generator().manual_seed(3)
    rows = torch.tensor([0, 0, 1, 2, 2, 4, 0, 3])
    cols = torch.tensor([1, 1, 2, 0, 4, 4, 3, 0])  # (0, 1) twice: summed
    values = torch.randn(8, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    graph = EdgeGraph(rows, cols, values.float(), 5)
    assert graph.nnz == 7
    dense = torch.zeros(5, 5, dtype=torch.float64).index_put((rows, cols), values.detach(), accumulate=True)
    torch.testing.assert_close(graph.to_dense().double(), dense, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close((graph @ x.float()).double(), dense @ x.detach(), atol=1e-5, rtol=1e-5)

    torch.autograd.gradcheck(lambda v, x: EdgeGraph(rows, cols, v, 5) @ x, (values, x))
    detached = graph.detach()
    assert not detached.values.requires_grad and detached.matrix is graph.matrix


def test_random_walk_adjacency():
    r = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], dtype=np.float32))
    a = np.zeros((5, 5), dtype=np.float32)
    a[:2, 2:] = r.toarray()
    a[2:, :2] = r.toarray().T
    mean = random_walk_adjacency(r).toarray()
    deg = a.sum(1, keepdims=True)
    expected = np.divide(a, deg, out=np.zeros_like(a), where=deg > 0)  # item 2 has no users
    np.testing.assert_allclose(mean, expected)
    loops = random_walk_adjacency(r, self_loops=True).toarray()
    a1 = a + np.eye(5, dtype=np.float32)
    np.testing.assert_allclose(loops, a1 / a1.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(loops.sum(1), np.ones(5), rtol=1e-6)
    raw = random_walk_adjacency(r, normalize=False).toarray()
    np.testing.assert_array_equal(raw, a)  # sum aggregation: A itself
