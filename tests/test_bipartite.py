import numpy as np
import scipy.sparse as sp
import torch

from prismrec.graph import SparseOperator, UserItemGraph, bipartite_adjacency, restrict_items, user_item_block
from prismrec.nn import lightgcn, lightgcn_rows


def test_normalised_adjacency_matches_hand_computation():
    r = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)  # user 2 isolated
    a = bipartite_adjacency(sp.csr_matrix(r)).toarray()
    # degrees: u0=2, u1=1, u2=0, i0=1, i1=2, i2=0
    want = np.zeros((6, 6))
    for u, i, du, di in [(0, 0, 2, 1), (0, 1, 2, 2), (1, 1, 1, 2)]:
        want[u, 3 + i] = want[3 + i, u] = 1 / np.sqrt(du * di)
    np.testing.assert_allclose(a, want, atol=1e-7)
    np.testing.assert_allclose(user_item_block(sp.csr_matrix(a), 3).toarray(), want[:3, 3:])


def test_enhanced_adjacency_uses_row_sums_of_the_whole_matrix():
    r = np.array([[1, 0], [1, 1]], dtype=np.float32)
    b = np.array([[0, 1], [0, 0]], dtype=np.float32)  # directed item 0 -> item 1
    a = bipartite_adjacency(sp.csr_matrix(r), sp.csr_matrix(b), gamma=0.5).toarray()
    full = np.block([[np.zeros((2, 2)), r], [r.T, 0.5 * b]])
    d = full.sum(1)
    np.testing.assert_allclose(a, full / np.sqrt(np.outer(d, d)), atol=1e-7)


def test_a_user_item_graph_over_some_items_drops_the_others_and_renormalises():
    r = np.array([[1, 1, 0], [0, 1, 1]], dtype=np.float32)
    b = np.array([[0, 1, 1], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    keep = np.array([True, False, True])
    kept = restrict_items(sp.csr_matrix(r), keep)
    np.testing.assert_array_equal(kept.toarray(), r * keep)
    assert kept.nnz == 2 and kept.dtype == np.float32  # item 1's interactions gone, not stored as zeros
    assert restrict_items(sp.csr_matrix(r.astype(np.int64)), keep).dtype == np.float32
    graph = UserItemGraph(sp.csr_matrix(r), sp.csr_matrix(b), 0.5)
    np.testing.assert_array_equal(graph.adjacency().toarray(),
                                  bipartite_adjacency(sp.csr_matrix(r), sp.csr_matrix(b), 0.5).toarray())
    # A over items 0 and 2 alone, normalised by its own row sums: user 0 keeps one item (d = 1)
    want = bipartite_adjacency(sp.csr_matrix(r * keep), sp.csr_matrix(b * np.outer(keep, keep)), 0.5).toarray()
    got = graph.over_items(keep).toarray()
    np.testing.assert_array_equal(got, want)
    assert got[0, 2 + 0] == np.float32(1 / np.sqrt(1 * (1 + 0.5)))  # u0-i0: d_u0 = 1, d_i0 = 1 + γ·1
    assert not got[:, 2 + 1].any() and not got[2 + 1].any()


def test_sparse_operator_forward_and_backward_match_dense():
    rng = np.random.default_rng(0)
    for symmetric in (True, False):
        m = sp.random(30, 30, density=0.2, random_state=1, dtype=np.float32)
        if symmetric:
            m = m + m.T
        op = SparseOperator(m)
        assert op.symmetric == symmetric
        x = torch.tensor(rng.normal(size=(30, 5)), dtype=torch.float32, requires_grad=True)
        w = torch.tensor(rng.normal(size=(30, 5)), dtype=torch.float32)
        ((op @ (op @ x)) * w).sum().backward()
        dense = torch.tensor(m.toarray())
        x2 = x.detach().clone().requires_grad_()
        ((dense @ (dense @ x2)) * w).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)


def test_lightgcn_layer_mean():
    m = sp.csr_matrix(np.array([[0, 0.5], [0.5, 0]], dtype=np.float32))
    x = torch.tensor([[1.0], [3.0]])
    a = torch.tensor(m.toarray())
    want = (x + a @ x + a @ a @ x) / 3
    torch.testing.assert_close(lightgcn(SparseOperator(m), x, 2), want)


def test_lightgcn_gradient_matches_dense_autograd():
    rng = np.random.default_rng(3)
    m = sp.random(20, 20, density=0.3, random_state=2, dtype=np.float32)  # not symmetric
    op, dense = SparseOperator(m), torch.tensor(m.toarray())
    x = torch.tensor(rng.normal(size=(20, 4)), dtype=torch.float32, requires_grad=True)
    w = torch.tensor(rng.normal(size=(20, 4)), dtype=torch.float32)
    out = lightgcn(op, x, 3)
    (out * w).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    want = (x2 + dense @ x2 + dense @ dense @ x2 + dense @ dense @ dense @ x2) / 4
    (want * w).sum().backward()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)


def test_lightgcn_zero_layers_and_input_untouched():
    m = sp.csr_matrix(np.array([[0, 1], [1, 0]], dtype=np.float32))
    x = torch.tensor([[1.0], [2.0]], requires_grad=True)
    assert torch.equal(lightgcn(SparseOperator(m), x, 0), x)
    before = x.detach().clone()
    lightgcn(SparseOperator(m), x, 2).sum().backward()
    assert torch.equal(x.detach(), before)
    torch.testing.assert_close(x.grad, torch.tensor([[1.0], [1.0]]))  # Â = swap: every layer passes 1 back


def test_spmm_writes_rows_without_entries(monkeypatch):
    """``spmm`` writes into uninitialised memory: rows with no entries must come out as zeros.
    Torch's debug fill makes every new tensor NaN, so a row left unwritten would show."""
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        m = sp.csr_matrix(np.array([[0, 2, 0], [0, 0, 0], [1, 0, 0]], dtype=np.float32))  # row 1 empty
        x = torch.arange(6, dtype=torch.float32).reshape(3, 2)
        out = lightgcn(SparseOperator(m), x, 1)
    finally:
        torch.use_deterministic_algorithms(was)
    torch.testing.assert_close(out, (x + torch.tensor(m.toarray()) @ x) / 2)


def test_row_block_is_the_rows_of_the_matrix_and_their_transpose():
    m = sp.random(12, 9, density=0.3, random_state=4, dtype=np.float32)
    rows = np.array([0, 3, 4, 11])
    block, block_t = SparseOperator(m).row_block(rows)
    np.testing.assert_array_equal(block.to_dense().numpy(), m.toarray()[rows])
    np.testing.assert_array_equal(block_t.to_dense().numpy(), m.toarray()[rows].T)


def test_sparse_operator_keeps_its_own_copy():
    m = sp.csr_matrix(np.array([[0, 1], [1, 0]], dtype=np.float32))
    op = SparseOperator(m)
    m.data[:] = 7  # the caller's matrix changes afterwards
    np.testing.assert_array_equal(op.row_block(np.array([0]))[0].to_dense().numpy(), [[0, 1]])


def test_lightgcn_rows_equals_rows_of_the_full_propagation():
    """Values and gradients, with repeated and unordered rows, every depth, both operators."""
    rng = np.random.default_rng(5)
    for symmetric in (True, False):
        m = sp.random(25, 25, density=0.2, random_state=6, dtype=np.float32)
        op = SparseOperator(m + m.T if symmetric else m)
        rows = torch.tensor([7, 3, 3, 24, 0, 7, 11])
        w = torch.tensor(rng.normal(size=(len(rows), 4)), dtype=torch.float32)
        for n_layers in range(4):
            x = torch.tensor(rng.normal(size=(25, 4)), dtype=torch.float32, requires_grad=True)
            got = lightgcn_rows(op, x, n_layers, rows)
            (got * w).sum().backward()
            x2 = x.detach().clone().requires_grad_()
            want = lightgcn(op, x2, n_layers)[rows]
            (want * w).sum().backward()
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
