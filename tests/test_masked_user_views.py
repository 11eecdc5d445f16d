"""Users' modality views under a presence mask (``impute="zero"``): a user's ``H_m^U`` reads only
its training items that have modality ``m`` (``R̂_m`` of ``Â_m``, the adjacency normalised by
the same rule over those items), a user with none has no ``m`` view (presence ``False``, row 0)
and the terms leave it out; GUME's extended branch runs on ``Â_m``. Checked by hand in plain
torch, in MGCN, GUME, SIGER and EGRA, and full path = row path; without a mask nothing changes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from prismrec.data import load_dataset
from prismrec.data.derive import corrupt_modality
from prismrec.data.synthetic import write_planted_dataset
from prismrec.graph import UserItemGraph, bipartite_adjacency
from prismrec.nn import MultiViewEncoder, propagation
from prismrec.nn.multiview import present_adjacencies
from tests.test_masked_views import _ref_infonce
from tests.test_multiview_presence import _model, _one_modality_fuser
from tests.test_row_paths import _terms_and_grads, assert_batch_loss_is_the_full_loss

# 3 users, 4 items. Item 1 lacks modality 1. User 0 has items 0, 1, 2 (0 and 2 have it, both of
# degree 2); user 1 has item 1 alone (no item with modality 1); user 2 has items 0, 2, 3.
TRAIN = sp.csr_matrix(np.array([[1, 1, 1, 0], [0, 1, 0, 0], [1, 0, 1, 1]], dtype=np.float32))
PRESENT = np.array([[True, True], [True, False], [True, True], [True, True]])


def _encoder(present_items=None):
    """Two modalities (4-d features), a ring item graph, ``d = 3``; drawn from seed 0."""
    ring = sp.csr_matrix(np.roll(np.eye(4, dtype=np.float32), 1, axis=1) * 0.5 + np.eye(4, dtype=np.float32) * 0.5)
    g = torch.Generator().manual_seed(1)
    features = [torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)]
    torch.manual_seed(0)
    enc = MultiViewEncoder(UserItemGraph(TRAIN), [ring, ring], features, 3, 3, 2, 1, present_items=present_items)
    enc.reset_parameters()
    return enc


def test_a_users_modality_row_averages_only_its_items_having_it_by_hand():
    masked, plain = _encoder(PRESENT), _encoder()
    with torch.no_grad():
        h, h_plain = masked.modality_views(), plain.modality_views()
    items, items_plain = h[:, 3:], h_plain[:, 3:]
    torch.testing.assert_close(items, items_plain, rtol=0, atol=0)  # item rows do not depend on the mask
    # user 0, modality 1: the mean of items 0 and 2 (R̂_1[0, i] = 1/sqrt(2 * 2)), not item 1's row
    torch.testing.assert_close(h[1, 0], (items[1, 0] + items[1, 2]) / 2)
    torch.testing.assert_close(h_plain[1, 0], (items[1, 0] + items[1, 1] + items[1, 2]) / np.sqrt(3 * 2))
    assert not torch.allclose(h[1, 0], h_plain[1, 0])
    # user 1 has no item with modality 1: no view (row 0, presence False); modality 0 as before
    assert not h[1, 1].any() and h_plain[1, 1].abs().sum() > 0
    torch.testing.assert_close(h[0, :3], h_plain[0, :3], rtol=0, atol=0)
    # user 2's items all have modality 1: as without a mask
    torch.testing.assert_close(h[1, 2], h_plain[1, 2], rtol=0, atol=0)
    np.testing.assert_array_equal(masked.presence().numpy(),
                                  [[True] * 7, [True, False, True, True, False, True, True]])
    assert masked.fused_presence() is None  # every node keeps modality 0
    with torch.no_grad():  # user 1 fuses its modality-0 view alone, as an item missing one does
        c = masked.behavior_view()
        fused, alone = masked.fuse(h, c), _one_modality_fuser(masked)(h[:1], c)
    torch.testing.assert_close(fused[1], alone[1])
    assert not torch.allclose(fused[0], alone[0])


def test_present_adjacencies_renormalise_over_the_items_having_the_modality():
    graphs = present_adjacencies(TRAIN, PRESENT)
    assert graphs[0] is None  # every item has modality 0: Â itself
    r = graphs[1][:3, 3:].toarray()
    item_degree = np.array([2, 2, 2, 1])
    want = np.zeros((3, 4))
    for u, items in ((0, [0, 2]), (2, [0, 2, 3])):  # d_u^1 = the user's items having modality 1
        want[u, items] = 1 / np.sqrt(len(items) * item_degree[items])
    np.testing.assert_allclose(r, want, rtol=1e-6)
    assert not graphs[1][4].nnz  # item 1 (node 4) has no edge in Â_1
    assert present_adjacencies(TRAIN, None) is None
    # item links: an item's links to an item without the modality are dropped, the rest renormalised
    links = sp.csr_matrix(np.array([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=np.float32))
    with_links = present_adjacencies(TRAIN, PRESENT, links, gamma=0.5)[1]
    kept = links.toarray() * PRESENT[:, 1][:, None] * PRESENT[:, 1][None, :]
    np.testing.assert_allclose(with_links.toarray(), bipartite_adjacency(
        TRAIN.multiply(PRESENT[:, 1][None, :]), sp.csr_matrix(kept), gamma=0.5).toarray(), rtol=1e-6)


def test_no_mask_or_a_full_mask_changes_nothing():
    plain = _encoder()
    full = _encoder(np.ones((4, 2), dtype=bool))
    assert all(a is plain.adjacency for a in plain.modality_adjacencies)
    assert all(r is plain.user_item for r in plain.modality_user_items)
    with torch.no_grad():
        torch.testing.assert_close(full.modality_views(), plain.modality_views(), rtol=0, atol=0)
    assert not any("adjacenc" in k or "user_item" in k for k in _encoder(PRESENT).state_dict())


# ------------------------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def lonely(tmp_path_factory):
    """Planted data with 20 % of the image rows missing plus every item of user 0 (so user 0
    has no image view), zero-filled; and the user-0 mask's items."""
    src = write_planted_dataset(tmp_path_factory.mktemp("lonely") / "p", n_users=60, n_items=50,
                                per_user=8, seed=1)
    folder = corrupt_modality(src, "p-drop", "image", "drop", 0.2, seed=4)
    first = load_dataset(folder, impute="zero")
    mask = np.load(folder / "image_mask.npy")
    mask[first.train[0].indices] = False
    np.save(folder / "image_mask.npy", mask)
    return load_dataset(folder, impute="zero"), ~mask


def _user_batch(dataset, missing):
    """A batch holding user 0 (no image item), users with some, and items without the image."""
    g = torch.Generator().manual_seed(5)
    u = torch.randint(0, dataset.n_users, (24,), generator=g)
    u[:2] = 0
    i = torch.randint(0, dataset.n_items, (24,), generator=g)
    i[2:5] = torch.from_numpy(np.flatnonzero(missing)[:3])
    j = torch.randint(0, dataset.n_items, (24,), generator=g)
    return u, i, j


@pytest.mark.parametrize("name", ["mgcn", "gume", "siger", "egra"])
def test_users_take_the_image_view_from_their_items_having_it(lonely, name):
    dataset, missing = lonely
    net = _model(name, dataset).train()
    enc, n_u = net.encoder, dataset.n_users
    user_present = enc.presence()[0, :n_u].numpy()
    has_image = np.asarray(dataset.train[:, ~missing].sum(axis=1)).ravel() > 0
    np.testing.assert_array_equal(user_present, has_image)
    assert not user_present[0] and user_present.mean() > 0.9
    with torch.no_grad():
        h = enc.modality_views()
    assert not h[0, 0].any()
    # a user's image row: Σ over its items having the image of H^I[i] / sqrt(d_u^image · d_i)
    u = 3
    items = [i for i in dataset.train[u].indices if not missing[i]]
    assert len(items) < dataset.train[u].nnz  # user 3 has items without the image
    if name == "mgcn" or name == "siger":  # plain Â: d_i = the item's users
        d_i = torch.from_numpy(np.asarray(dataset.train.sum(axis=0)).ravel()[items]).float()
        want = (h[0, n_u + np.array(items)] / torch.sqrt(len(items) * d_i).unsqueeze(1)).sum(dim=0)
        torch.testing.assert_close(h[0, u], want)
    else:  # Â⁺_image: the user's row renormalised over its image items; item sides as in Â⁺_image
        image_adj = present_adjacencies(dataset.train, ~np.stack([missing, np.zeros_like(missing)], 1),
                                        *_links(net, dataset))[0]
        row = torch.from_numpy(image_adj[u, n_u:].toarray().ravel()).float()
        assert set(np.flatnonzero(row.numpy())) == set(items)
        torch.testing.assert_close(h[0, u], row @ h[0, n_u:])
        assert not torch.allclose(row, enc.adjacency.matrix.to_dense()[u, n_u:])


def _links(net, dataset):
    """The ``(item_links, gamma)`` a GUME or EGRA model put in its ``Â⁺``."""
    from prismrec.graph import knn_graph, shared_neighbor_links

    if net.name == "egra":
        return net.item_links, net.config.gamma
    knn = [knn_graph(dataset.features[m], net.config.knn_k) for m in net.modalities]
    return shared_neighbor_links(knn), net.config.gamma


@pytest.mark.parametrize("name, settings", [("gume", {}), ("siger", {"anchor_form": "A1"}),
                                            ("egra", {"backbone": "gume", "item_links": "raw"})])
def test_a_user_without_the_image_is_left_out_of_the_view_terms(lonely, name, settings):
    dataset, missing = lonely
    net = _model(name, dataset, **settings).train()
    out = net()
    h = out.aux["modality_views"]
    batch = _user_batch(dataset, missing)
    terms = net.loss(batch, out)
    term = terms["anchor"] if name == "siger" else terms["vt"]
    (grad,) = torch.autograd.grad(term, h)
    assert not grad[0, 0].any()  # user 0's (empty) image row: no part in the term
    assert grad[0, 1:dataset.n_users].abs().sum() > 0 and grad[1, 0].abs().sum() > 0  # its text row: yes
    if name == "siger":  # A1 by hand: the image InfoNCE over the batch's users having the image
        u = batch[0]
        keep = u[net.encoder.presence()[0][u]]
        assert len(keep) <= len(u) - 2
        c = out.aux["behavior"].detach()
        with torch.no_grad():
            image = _ref_infonce(h[0][keep], c[keep], 0.2)
            text = _ref_infonce(h[1][u], c[u], 0.2)
            items = batch[1] + dataset.n_users
            seen = items[net.encoder.presence()[0][items]]
            want = image + text + _ref_infonce(h[0][seen], c[seen], 0.2) + _ref_infonce(h[1][items], c[items], 0.2)
            want = want / 2
        torch.testing.assert_close(term, net.config.lambda_a * want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name, settings", [("mgcn", {}), ("egra", {}), ("siger", {"extended_branch": True})])
def test_a_user_with_no_modality_leaves_the_fused_terms(lonely, name, settings):
    """On the image alone user 0 has no view at all: its fused row is 0 and MGCN's cl, EGRA's
    entity-level alignment, SIGER's align and um leave it out."""
    dataset, missing = lonely
    net = _model(name, dataset, modalities=["image"], **settings).train()
    fused = net.encoder.fused_presence()
    assert not fused[0] and fused[: dataset.n_users].float().mean() > 0.9
    out = net()
    m = out.aux["modality"]
    assert not m[0].any()
    batch = _user_batch(dataset, missing)
    terms = net.loss(batch, out)
    for key in {"mgcn": ["cl"], "egra": ["align"], "siger": ["align", "um"]}[name]:
        (grad,) = torch.autograd.grad(terms[key], m, retain_graph=True)
        assert not grad[0].any(), key
        assert grad[1:dataset.n_users].abs().sum() > 0, key
    if name == "egra":  # the users' side by hand: the entity-weighted InfoNCE of the present rows alone
        from prismrec.losses import entity_weighted_infonce

        u, i, _ = batch
        keep, items = u[fused[u]], i + dataset.n_users
        items = items[fused[items]]
        c, cfg = out.aux["behavior"], net.config
        with torch.no_grad():
            want = sum(entity_weighted_infonce(m[r], c[r], cfg.tau, cfg.entity_weighting, cfg.entity_sign, cfg.tau_w)
                       for r in (keep, items))
        torch.testing.assert_close(terms["align"], net.lambda_t * want, rtol=1e-5, atol=1e-7)


ROW_CASES = [("mgcn", {}), ("mgcn", {"modalities": ["image"]}), ("gume", {}), ("egra", {}),
             ("egra", {"modalities": ["image"]}), ("egra", {"item_links": "raw", "graph_fusion": "separate"})]


@pytest.mark.parametrize("share", [1.0, 0.0], ids=["block-products", "full-products"])
@pytest.mark.parametrize("name,settings", ROW_CASES, ids=[f"{n}-{k}" for k, (n, _) in enumerate(ROW_CASES)])
def test_row_paths_equal_the_full_loss_with_a_user_lacking_a_modality(lonely, monkeypatch, name, settings, share):
    monkeypatch.setattr(propagation, "ROW_SHARE", share)
    dataset, missing = lonely
    net = _model(name, dataset, **settings).train()
    batch = _user_batch(dataset, missing)
    assert_batch_loss_is_the_full_loss(net, batch)
