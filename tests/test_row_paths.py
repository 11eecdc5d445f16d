"""Row-restricted training paths equal the full computation they replace.

A model whose loss reads only a batch's rows may compute only those rows in ``batch_loss``
(fewer propagation rows, a fuser over the batch's nodes, a predictor over the batch's rows).
Each such path must give the terms and the gradients of ``loss(batch, forward())``: checked here
on the planted data with repeated users and items, to ~1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prismrec.graph import SparseOperator, bipartite_adjacency
from prismrec.nn import propagation
from prismrec.nn.propagation import distinct_rows, lightgcn, lightgcn_distinct, row_product
from tests.builders import build_model

# (model, settings): every model of ours with a row-restricted batch_loss, and the variants
# whose branches change which rows are read.
CASES = [
    ("lightgcn", {}),
    ("mgcn", {}),
    ("mgcn", {"n_ii_layers": 0}),
    ("gume", {}),
    ("gume", {"noise_mode": "modulus"}),
    ("egra", {}),
    ("egra", {"item_links": "raw", "graph_fusion": "separate"}),
    ("egra", {"backbone": "gume"}),  # GUME's terms read whole matrices: the full forward
    ("siger", {}),  # modulus noise: S fused for every node (its mean norm), its gradient for the rows
    ("siger", {"perturb_at": "layers", "extended_branch": True}),
    ("siger", {"perturb_target": "per_modality", "anchor_form": "A3", "perturb_mode": "fixed"}),
    ("vbpr", {}),
    ("bm3", {}),
    ("bm3", {"modalities": []}),
    ("smore", {}),  # dropout on: the row path draws the same full-size masks
    ("smore", {"n_ii_layers": 0, "modalities": ["text"]}),
    ("mmgcn", {}),
    ("mmgcn", {"concat": False, "combine": "sum"}),
    ("mmgcn", {"aggr": "add", "n_layers": 2, "has_id": False}),  # 3 summing layers: beyond float32's 1e-5
    ("mmgcn", {"train_embeddings": True, "reg_preferences": "all", "latent_dims": [0, 8], "reg_weight": 0.1}),
    ("mmgcn", {"train_embeddings": True, "n_layers": 1, "modalities": ["text"]}),
]


def _model(name, dataset, settings):
    net = build_model(name, dataset, 0, **settings)
    net.train()
    return net


def _batch(dataset, size=48, seed=3):
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, dataset.n_users, (size,), generator=g)
    i = torch.randint(0, dataset.n_items, (size,), generator=g)
    j = torch.randint(0, dataset.n_items, (size,), generator=g)
    u[1], i[2], j[3] = u[0], i[0], i[1]  # repeated users, items and an item both positive and negative
    return u, i, j


def _terms_and_grads(net, compute):
    generators = net.generator_states()
    torch.manual_seed(11)  # the same dropout / noise draws for both computations
    net.load_generator_states(generators)
    net.zero_grad(set_to_none=True)
    terms = compute()
    sum(terms.values()).backward()
    grads = {n: (torch.zeros_like(p) if p.grad is None else p.grad.clone()) for n, p in net.named_parameters()}
    net.load_generator_states(generators)
    return {k: v.detach() for k, v in terms.items()}, grads


def assert_batch_loss_is_the_full_loss(net, batch) -> tuple[dict, dict]:
    """Assert that ``net.batch_loss(batch)`` gives the terms and gradients of
    ``net.loss(batch, net())`` (same random draws); return the batch loss's terms and the full
    loss's gradients."""
    net.batch_loss(batch)  # creates any generator a model makes lazily
    got, got_grads = _terms_and_grads(net, lambda: net.batch_loss(batch))
    want, want_grads = _terms_and_grads(net, lambda: net.loss(batch, net()))
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=f"term {k}")
    for n, g in want_grads.items():
        torch.testing.assert_close(got_grads[n], g, rtol=1e-5, atol=1e-7, msg=f"gradient of {n}")
    return got, want_grads


@pytest.fixture(params=[1.0, 0.0], ids=["block-products", "full-products"])
def row_share(request, monkeypatch):
    """Both ways of computing the rows: products with the rows' block (any share of rows), and the
    full product whose rows are taken (batches that touch more than ROW_SHARE of the rows)."""
    monkeypatch.setattr(propagation, "ROW_SHARE", request.param)
    return request.param


@pytest.mark.parametrize("name,settings", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_batch_loss_equals_the_full_loss_and_its_gradients(planted, name, settings, row_share):
    net = _model(name, planted, settings)
    batch = _batch(planted)
    _, want_grads = assert_batch_loss_is_the_full_loss(net, batch)
    assert any(g.abs().sum() > 0 for g in want_grads.values())


def test_distinct_rows_positions():
    rows = torch.tensor([5, 2, 5, 9, 2, 0])
    distinct, at = distinct_rows(rows, 10)
    assert distinct.tolist() == [0, 2, 5, 9]
    assert torch.equal(torch.from_numpy(distinct)[at], rows)


def test_row_products_equal_rows_of_the_full_products(planted, row_share):
    adjacency = bipartite_adjacency(planted.train)
    op = SparseOperator(adjacency, symmetric=True)
    rows = np.array([0, 3, 4, planted.n_users + 1, adjacency.shape[0] - 1])
    x = torch.randn(adjacency.shape[0], 8, requires_grad=True)
    for n_layers in (0, 1, 3):
        torch.testing.assert_close(lightgcn_distinct(op, x, n_layers, rows), lightgcn(op, x, n_layers)[rows])
    got = row_product(op, rows, x)
    g = torch.randn_like(got)
    (grad,) = torch.autograd.grad(got, x, g)
    want = torch.sparse.mm(op.matrix.to_sparse_coo(), x)[rows]
    (want_grad,) = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, want_grad)
    assert row_product(op, rows[:0], x).shape == (0, 8)


def test_mgcn_row_views_are_rows_of_the_full_views(planted, row_share):
    net = _model("mgcn", planted, {})
    rows = np.array([1, 2, planted.n_users, planted.n_users + 7])
    enc = net.encoder
    torch.testing.assert_close(enc.behavior_rows(rows), enc.behavior_view()[rows])
    torch.testing.assert_close(enc.modality_view_rows(rows), enc.modality_views()[:, rows])
