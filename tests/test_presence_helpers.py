"""The small shared helpers the multimodal baselines compose: a max over present views, a row
path's presence columns and ``[R̂ H; H]`` rows, and the inverse user degrees of a masked modality."""

import numpy as np
import scipy.sparse as sp
import torch

from prismrec.graph import SparseOperator
from prismrec.nn.fusion import present_max
from prismrec.nn.presence import node_columns
from prismrec.nn.present_graphs import inverse_user_degrees
from prismrec.nn.propagation import user_item_rows


def test_present_max_runs_over_each_nodes_present_views_and_is_zero_with_none():
    views = torch.randn(3, 5, 4)
    present = torch.tensor([[1, 0, 1, 0, 1], [1, 1, 0, 0, 1], [0, 1, 1, 0, 1]], dtype=torch.bool)
    got = present_max(views, present)
    for n in range(5):
        want = views[present[:, n], n].amax(dim=0) if present[:, n].any() else torch.zeros(4)
        assert torch.equal(got[n], want)
    assert torch.equal(present_max(views, None), views.amax(dim=0))


def test_node_columns_keeps_the_given_nodes_of_one_or_many_views():
    present = torch.rand(2, 7) > 0.5
    nodes = np.array([1, 4, 6])
    assert torch.equal(node_columns(present, nodes), present[:, nodes])
    assert torch.equal(node_columns(present[0], torch.from_numpy(nodes)), present[0, nodes])
    assert node_columns(present, None) is present and node_columns(None, nodes) is None


def test_user_item_rows_are_the_rows_of_the_full_node_matrix():
    n_users, n_items = 6, 5
    r = sp.random(n_users, n_items, density=0.5, format="csr", random_state=0, dtype=np.float32)
    operator = SparseOperator(r, symmetric=False)
    items = torch.randn(n_items, 3, requires_grad=True)
    full = torch.cat([operator @ items, items])
    for rows in (np.array([0, 2, 7, 9]), np.array([6, 8]), np.arange(n_users + n_items)):  # few, items only, all
        got = user_item_rows(operator, items, rows, n_users)
        torch.testing.assert_close(got, full[torch.from_numpy(rows)])
    (grad,) = torch.autograd.grad(user_item_rows(operator, items, np.array([1, 3, 8]), n_users).sum(), items)
    (want,) = torch.autograd.grad(full[[1, 3, 8]].sum(), items)
    torch.testing.assert_close(grad, want)


def test_inverse_user_degrees_count_the_items_having_each_modality():
    train = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float32))
    present = np.array([[True, True], [True, False], [False, False]])  # items x modalities
    got = inverse_user_degrees(train, present, 2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([[0.5, 1.0], [0.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(inverse_user_degrees(train, None, 1), torch.tensor([[0.5], [1.0], [0.0]]))
