"""Mask-aware fusion in the MGCN family (MGCN, GUME, SIGER, EGRA), FREEDOM and DA-MRS: with
``impute="zero"`` an item's missing modality takes no part in the fused view ``M`` (nor in GUME's
extended ``Ĥ``, FREEDOM's mixed item graph, DA-MRS's content mean), in the full forward and in the
row-restricted training paths alike."""

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
from tests.builders import build_model
from tests.test_row_paths import _batch, _terms_and_grads, assert_batch_loss_is_the_full_loss

FAMILY = ["mgcn", "gume", "siger", "egra"]


@pytest.fixture(scope="module")
def dropped(tmp_path_factory):
    """Planted data with 20 % of the image rows missing: zero-filled (masked) and mean-imputed."""
    src = write_planted_dataset(tmp_path_factory.mktemp("presence") / "p", n_users=60, n_items=50,
                                per_user=8, seed=1)
    folder = corrupt_modality(src, "p-drop", "image", "drop", 0.2, seed=4)
    missing = ~np.load(folder / "image_mask.npy")
    assert missing.sum() == 10
    return load_dataset(folder, impute="zero"), load_dataset(folder, impute="mean"), missing


def _model(name, dataset, seed=0, **settings):
    return build_model(name, dataset, seed, **settings)


TRAIN = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 1]], dtype=np.float32))
CHAIN = sp.csr_matrix(np.array([[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], dtype=np.float32))


def _encoder(fusion, present_items=None, graph=UserItemGraph(TRAIN)):
    """Two modalities over 2 users and 3 items, a chain item graph; drawn from seed 0."""
    features = [torch.arange(6.0).view(3, 2), torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]])]
    torch.manual_seed(0)
    enc = MultiViewEncoder(graph, [CHAIN, CHAIN], features, 2, 4, 2, 1, fusion=fusion, present_items=present_items)
    enc.reset_parameters()
    return enc


def test_the_encoder_builds_the_modality_adjacencies_of_its_user_item_graph():
    present = np.array([[True, True], [True, False], [False, True]])  # item 1 lacks m 2, item 2 m 1
    links = sp.csr_matrix(np.array([[0, 1, 1], [1, 0, 0], [0, 1, 0]], dtype=np.float32))
    built = _encoder("behavior_aware", present, UserItemGraph(TRAIN, links, 0.5))
    for a, want in zip(built.modality_adjacencies, present_adjacencies(TRAIN, present, links, 0.5)):
        torch.testing.assert_close(a.matrix.to_dense(), torch.from_numpy(want.toarray()), rtol=0, atol=0)
    torch.testing.assert_close(built.adjacency.matrix.to_dense(),
                               torch.from_numpy(bipartite_adjacency(TRAIN, links, 0.5).toarray()), rtol=0, atol=0)
    assert not torch.equal(built.modality_adjacencies[0].matrix.to_dense(), built.adjacency.matrix.to_dense())
    with torch.no_grad():
        h = built.modality_views()
    assert not torch.equal(h, _encoder("behavior_aware", graph=UserItemGraph(TRAIN, links, 0.5)).modality_views())


@pytest.mark.parametrize("fusion", ["behavior_aware", "mean"])
def test_an_item_missing_a_modality_fuses_its_present_view_alone_by_hand(fusion):
    present = np.array([[True, True], [True, False], [True, True]])  # item 1 lacks modality 2
    masked, plain = _encoder(fusion, present), _encoder(fusion)
    assert masked.present.shape == (2, 5) and masked.present.sum() == 9
    with torch.no_grad():
        c, h = masked.behavior_view(), masked.modality_views()
        fused, unmasked = masked.fuse(h, c), plain.fuse(plain.modality_views(), plain.behavior_view())
        alone = _one_modality_fuser(masked)(h[:1], c) if fusion == "behavior_aware" else h[0]
    node = 2 + 1
    # MGCN's fuser with one view: α = 1, no specific part, M = H_1 / (1 + 1); the mean: M = H_1
    torch.testing.assert_close(fused[node], alone[node])
    torch.testing.assert_close(fused[node], h[0, node] / (2 if fusion == "behavior_aware" else 1))
    assert not torch.allclose(unmasked[node], fused[node])  # the mask changed the item's row
    # user 1 takes modality 2 from item 2 alone (tests/test_masked_user_views.py); the others as
    # without a mask
    others = [0, 2, 4]
    torch.testing.assert_close(fused[others], unmasked[others])
    assert "present" not in masked.state_dict()
    with pytest.raises(ValueError, match=r"present_items must be n_items x K = 3 x 2, got \(2, 2\)"):
        _encoder(fusion, present[:2])


def _one_modality_fuser(encoder):
    """A K = 1 fuser with the encoder's scorer and its first modality's preference gate."""
    from prismrec.nn import BehaviorAwareFuser

    one, dim = BehaviorAwareFuser(encoder.fuser.dim, 1), encoder.fuser.dim
    one.query.load_state_dict(encoder.fuser.query.state_dict())
    with torch.no_grad():
        one.preference.weight.copy_(encoder.fuser.preference.weight[:dim])
        one.preference.bias.copy_(encoder.fuser.preference.bias[:dim])
    return one


@pytest.mark.parametrize("name", FAMILY)
def test_zero_imputation_masks_the_family_fuser(dropped, name):
    zero, mean, missing = dropped
    assert _model(name, mean).encoder.present is None  # filled rows are estimates: nothing masked
    net = _model(name, zero).eval()
    np.testing.assert_array_equal(net.encoder.present[0, zero.n_users:].numpy(), ~missing)
    assert net.encoder.present[1].all() and net.encoder.present[:, : zero.n_users].all()
    with torch.no_grad():
        out = net()
        text = net.encoder.modality_views()[1, zero.n_users:]
    fused = out.aux["modality"][zero.n_users:]
    # an item without its image: M is its text view alone (MGCN's fuser, K_present = 1: H_text / 2)
    torch.testing.assert_close(fused[missing], text[missing] / 2)
    assert not torch.allclose(fused[~missing], text[~missing] / 2)
    assert torch.isfinite(out.item).all() and torch.isfinite(out.user).all()


@pytest.mark.parametrize("name", ["gume", "siger"])
def test_extended_branch_averages_the_present_modalities(dropped, name):
    from prismrec.graph import SparseOperator
    from prismrec.nn import lightgcn

    zero, _, missing = dropped
    net = _model(name, zero, **({"extended_branch": True} if name == "siger" else {})).train()
    enc, n_u = net.encoder, zero.n_users
    with torch.no_grad():
        h = enc.modality_views()
        ext = net.extended(enc.modality_adjacencies, h, enc.present)
        # the image branch on Â_image (the items with an image; SIGER: the plain graph), by hand
        image_graph = SparseOperator(bipartite_adjacency(zero.train.multiply(~missing[None, :]).tocsr()))
        users, layers = net.extended.user_tables, net.extended.n_layers
        image = lightgcn(image_graph, torch.cat([users[0].weight, h[0, n_u:]]), layers)
        text = lightgcn(enc.adjacency, torch.cat([users[1].weight, h[1, n_u:]]), layers)
    items = np.flatnonzero(missing) + n_u
    torch.testing.assert_close(ext[items], text[items])  # an item without its image: the text branch alone
    keep = np.setdiff1d(np.arange(len(ext)), items)
    if name == "siger":
        torch.testing.assert_close(ext[keep], ((image + text) / 2)[keep])
    unmasked = net.extended([enc.adjacency] * 2, h)  # the mean over both branches on Â⁺
    assert not torch.allclose(ext[:n_u], unmasked[:n_u])


ROW_CASES = [("mgcn", {}), ("gume", {}), ("egra", {}), ("egra", {"item_links": "raw", "graph_fusion": "separate"})]


@pytest.mark.parametrize("share", [1.0, 0.0], ids=["block-products", "full-products"])
@pytest.mark.parametrize("name,settings", ROW_CASES, ids=[f"{n}-{k}" for k, (n, _) in enumerate(ROW_CASES)])
def test_row_paths_equal_the_full_loss_with_a_mask(dropped, monkeypatch, name, settings, share):
    monkeypatch.setattr(propagation, "ROW_SHARE", share)
    zero, _, missing = dropped
    net = _model(name, zero, **settings).train()
    batch = _batch(zero)
    assert np.isin(batch[1].numpy(), np.flatnonzero(missing)).any()  # the batch holds masked items
    got, _ = assert_batch_loss_is_the_full_loss(net, batch)
    # the mask is in effect on this batch: without it the fused rows, hence the terms, differ
    net.encoder.present = None
    unmasked, _ = _terms_and_grads(net, lambda: net.batch_loss(batch))
    assert not torch.equal(torch.stack(list(unmasked.values())), torch.stack(list(got.values())))


def test_freedom_mixes_only_an_items_present_modality_graphs(dropped):
    from prismrec.graph import knn_graph, mix
    from prismrec.nn.fusion import present_mix

    zero, mean, missing = dropped
    net = _model("freedom", zero, mm_weights=[0.3, 0.7])
    graphs = [knn_graph(zero.features[m], 10, weight="binary") for m in ("image", "text")]
    got = sp.csr_matrix((net.item_graph.matrix.values().numpy(), net.item_graph.matrix.col_indices().numpy(),
                         net.item_graph.matrix.crow_indices().numpy()), shape=graphs[0].shape).toarray()
    # an item without its image: its row of S is its text graph's row alone (the image row's
    # neighbours of a zero vector are ties: the lowest ids); the others as the unmasked mix
    np.testing.assert_allclose(got[missing], graphs[1].toarray()[missing], rtol=1e-6)
    np.testing.assert_allclose(got[~missing], mix(graphs, [0.3, 0.7]).toarray()[~missing], rtol=1e-6)
    assert not np.allclose(got[missing], mix(graphs, [0.3, 0.7]).toarray()[missing])
    unmasked = _model("freedom", mean, mm_weights=[0.3, 0.7]).item_graph.matrix.to_dense().numpy()
    want = mix([knn_graph(mean.features[m], 10, weight="binary") for m in ("image", "text")], [0.3, 0.7])
    np.testing.assert_array_equal(unmasked, want.toarray())  # no zero-filled rows: exactly mix
    empty = present_mix(graphs, [0.3, 0.7], np.zeros((zero.n_items, 2), dtype=bool))
    assert empty.nnz == 0  # an item with no modality has no item-item row


def test_damrs_averages_an_items_present_views(dropped):
    zero, mean, missing = dropped
    assert _model("damrs", mean).present is None
    net = _model("damrs", zero).train()
    assert net.present.shape == (3, zero.n_items) and net.present[1:].all()  # image, text, behaviour
    with torch.no_grad():
        out = net()
    views, h = out.aux["views"], out.aux["content"]
    torch.testing.assert_close(h[missing], views[1:, missing].mean(dim=0))  # text and behaviour only
    torch.testing.assert_close(h[~missing], views[:, ~missing].mean(dim=0))
    assert not torch.allclose(h[missing], views[:, missing].mean(dim=0))
