"""Models that carry a modality over the user-item graph or a feature kNN graph (SMORE, LGMRec,
DRAGON, MMGCN) under a presence mask (``impute="zero"``): a user's modality-``m`` rows come only
from its training items that have ``m``, a node lacking ``m`` has no ``m`` view, and the fusions
and contrastive terms read only real views. Each checked against plain torch by hand; without a
mask the models keep their unmasked graphs (the goldens of test_equivalence pin the values)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from prismrec.graph import SparseOperator, bipartite_adjacency, knn_graph
from prismrec.nn.presence import split_nodes, zero_missing
from prismrec.nn.spectral import spectrum_fusion
from prismrec.nn.present_graphs import (
    modality_operators,
    present_interactions,
    present_knn_graphs,
    present_nodes,
    user_degrees,
    user_presence,
)
from tests.builders import build_model
from tests.test_masked_user_views import _user_batch, lonely  # noqa: F401  (the fixture)
from tests.test_row_paths import assert_batch_loss_is_the_full_loss


def _image_items(dataset, missing, u):
    """User ``u``'s training items having the image, and their training degrees."""
    items = np.array([i for i in dataset.train[u].indices if not missing[i]])
    degrees = np.asarray(dataset.train.sum(axis=0)).ravel()[items]
    return items, torch.from_numpy(degrees).float()


def _a_user_with_some_items_lacking_the_image(dataset, missing):
    return next(u for u in range(1, dataset.n_users)
                if 0 < missing[dataset.train[u].indices].sum() < dataset.train[u].nnz)


def test_present_graphs_by_hand():
    train = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1]], dtype=np.float32))
    present = np.array([[True, True], [False, True], [True, True]])
    r_image, r_text = present_interactions(train, present)
    np.testing.assert_array_equal(r_image.toarray(), [[1, 0, 0], [0, 0, 1]])
    assert r_text is None
    np.testing.assert_array_equal(user_presence(train, present), [[True, True], [True, True]])
    np.testing.assert_array_equal(user_presence(train, np.array([[False, True], [False, True], [True, True]])),
                                  [[False, True], [True, True]])
    assert present_interactions(train, None) is None and user_presence(train, None) is None
    np.testing.assert_array_equal(user_degrees(train, present, 2), [[1, 2], [1, 2]])
    np.testing.assert_array_equal(user_degrees(train, None, 2), [[2, 2], [2, 2]])
    lonely = np.array([[False, True], [False, True], [True, True]])  # user 0 has no image item
    nodes = present_nodes(train, lonely)
    np.testing.assert_array_equal(nodes.numpy(), [[False, True, False, False, True], [True] * 5])
    assert present_nodes(train, None) is None
    users, items = split_nodes(nodes, 2)
    assert users.shape == (2, 2) and items.shape == (2, 3) and split_nodes(None, 2) == (None, None)
    x = torch.ones(2, 5, 3)
    np.testing.assert_array_equal(zero_missing(x, nodes)[..., 0].numpy(), nodes.numpy())
    assert zero_missing(x, None) is x
    unmasked = SparseOperator(bipartite_adjacency(train), symmetric=True)
    image, text = modality_operators(bipartite_adjacency, train, present, unmasked, 2)
    assert text is unmasked and image.symmetric
    np.testing.assert_allclose(image.matrix.to_dense().numpy(), bipartite_adjacency(r_image).toarray())
    assert all(op is unmasked for op in modality_operators(bipartite_adjacency, train, None, unmasked, 2))
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.6, 0.8]])
    g = present_knn_graphs([x], [2], present[:, :1], weight="binary")[0].toarray()
    # item 1 (a zero row) has no row and no column; items 0 and 2 are each other's neighbour
    np.testing.assert_allclose(g, [[0.5, 0, 0.5], [0, 0, 0], [0.5, 0, 0.5]])
    full = knn_graph(x, 2, weight="binary").toarray()
    assert full[1].sum() > 0  # unmasked, the zero row takes two tied neighbours
    np.testing.assert_array_equal(present_knn_graphs([x], [2], None, weight="binary")[0].toarray(), full)


# ------------------------------------------------------------------------------------- MMGCN


def test_mmgcn_users_average_only_their_items_having_the_modality(lonely):
    dataset, missing = lonely
    net = build_model("mmgcn", dataset, n_layers=1).eval()
    n_u = dataset.n_users
    assert net.graphs[1] is net.adjacency and net.graphs[0] is not net.adjacency  # text complete
    np.testing.assert_array_equal(net.present[0, :n_u].numpy(),
                                  np.asarray(dataset.train[:, ~missing].sum(axis=1)).ravel() > 0)
    with torch.no_grad():
        out = net()
        gcn = net.gcns["image"]
        x0 = F.normalize(torch.cat([gcn.preference, gcn.mlp(gcn.features)]), dim=1)  # X⁰
        u = _a_user_with_some_items_lacking_the_image(dataset, missing)
        items, _ = _image_items(dataset, missing, u)
        h = F.leaky_relu((x0[n_u + items] @ gcn.conv[0]).mean(dim=0))              # mean over image items
        x_hat = F.leaky_relu(gcn.linear[0](x0[u])) + net.id_emb[u]
        want = F.leaky_relu(gcn.gate[0](torch.cat([h, x_hat])))
        everything = F.leaky_relu((x0[n_u + dataset.train[u].indices] @ gcn.conv[0]).mean(dim=0))
    torch.testing.assert_close(out.aux["modality_image"][u], want)
    assert not torch.allclose(h, everything)
    # user 0 has no item with the image: its score row is its text view alone
    torch.testing.assert_close(out.user[0], out.aux["modality_text"][0])
    torch.testing.assert_close(out.user[u], (out.aux["modality_image"][u] + out.aux["modality_text"][u]) / 2)


# ------------------------------------------------------------------------------------ DRAGON


def test_dragon_carries_the_image_only_through_items_having_it(lonely):
    dataset, missing = lonely
    net = build_model("dragon", dataset, n_ui_layers=1, mm_weights=[0.5, 0.5]).eval()
    n_u, d = dataset.n_users, net.config.embedding_size
    enc = net.encoders["image"]
    with torch.no_grad():
        g0 = F.normalize(torch.cat([enc.preference.weight, enc.out(F.leaky_relu(enc.hidden()))]), dim=1)
        g = enc(net.adjacencies[0], 1)
        u = _a_user_with_some_items_lacking_the_image(dataset, missing)
        items, degrees = _image_items(dataset, missing, u)
        want = g0[u] + (g0[n_u + items] / torch.sqrt(len(items) * degrees).unsqueeze(1)).sum(dim=0)
        torch.testing.assert_close(g[u], want)
        users, items = net.fuse([g, net.encoders["text"](net.adjacencies[1], 1)])
        out = net()
    # cat: user 0 has no image block, an item without the image neither; the homogeneous graphs
    # then fill those blocks from their neighbours' real ones (Z_U = U + W_UU U)
    torch.testing.assert_close(users[:, :d], net.user_modality_weights[:, :1] * g[:n_u]
                               * net.present[0, :n_u].unsqueeze(1))
    assert not users[0, :d].any() and users[0, d:].abs().sum() > 0
    assert not items[missing, :d].any() and items[~missing, :d].abs().sum(dim=1).all()
    torch.testing.assert_close(out.user, users + net.user_graph @ users)
    # S: an item without the image has only its text neighbours; no image edge reaches it
    s = net.item_graph.matrix.to_dense().numpy()
    text = knn_graph(dataset.features["text"], net.config.knn_k, weight="binary").toarray()
    i = int(np.flatnonzero(missing)[0])
    np.testing.assert_allclose(s[i], text[i], rtol=1e-6)
    image = present_knn_graphs([dataset.features["image"]], [net.config.knn_k], ~missing[:, None],
                               weight="binary")[0]
    assert not image[missing].nnz and not image[:, missing].nnz
    np.testing.assert_allclose(s[~missing], (0.5 * image + 0.5 * sp.csr_matrix(text)).toarray()[~missing], rtol=1e-6)


@pytest.mark.parametrize("construction", ["weighted_sum", "weighted_max"])
def test_dragon_user_fusions_skip_a_missing_modality(lonely, construction):
    dataset, _ = lonely
    net = build_model("dragon", dataset, construction=construction, mm_weights=[0.5, 0.5]).eval()
    n_u = dataset.n_users
    reps = [torch.randn(n_u + dataset.n_items, 4) for _ in range(2)]
    with torch.no_grad():
        users, _ = net.fuse(reps)
        w = net.user_modality_weights
        text = w[0, 1] * reps[1][0]
    # user 0 has the text alone: the sum is rescaled to two modalities, the max is the text row
    torch.testing.assert_close(users[0], 2 * text if construction == "weighted_sum" else text)


# ------------------------------------------------------------------------------------ LGMRec


def test_lgmrec_modality_graph_and_hyperedges_read_only_items_having_the_modality(lonely):
    dataset, missing = lonely
    net = build_model("lgmrec", dataset, n_mm_layers=1).train()
    n_u = dataset.n_users
    inputs = net.inputs["image"]
    with torch.no_grad():
        p = inputs.features @ inputs.projection                                      # P_m
        m = net.modality_graph("image")
        u = _a_user_with_some_items_lacking_the_image(dataset, missing)
        items, degrees = _image_items(dataset, missing, u)
        torch.testing.assert_close(m[u], (p[items] / torch.sqrt(len(items) * degrees).unsqueeze(1)).sum(dim=0))
        # an item's row: its users' means over their image items, U_m[v] = mean_i P_m[i]
        i = int(items[0])
        users = dataset.train[:, i].nonzero()[0]
        user_means = torch.stack([p[_image_items(dataset, missing, v)[0]].mean(dim=0) for v in users])
        user_degrees = torch.tensor([len(_image_items(dataset, missing, v)[0]) for v in users]).float()
        want = (user_means / torch.sqrt(user_degrees * len(users)).unsqueeze(1)).sum(dim=0)
        torch.testing.assert_close(m[n_u + i], want)
        assert not m[n_u + np.flatnonzero(missing)].any() and not m[0].any()
        h_items, h_users = net.hyperedges("image", noise=False)
    assert not h_items[missing].any() and not h_users[0].any()  # no image: in no image hyperedge
    assert h_items[~missing].sum(dim=1).allclose(torch.ones(1)) and h_users[1:].sum() > 0


def test_lgmrec_hypergraph_contrast_queries_rows_having_both_modalities(lonely):
    dataset, missing = lonely
    net = build_model("lgmrec", dataset).train()
    torch.manual_seed(3)
    out = net()
    batch = _user_batch(dataset, missing)
    term = net.loss(batch, out)["hcl"] / net.config.cl_weight
    ga, gb, tau, n_u = out.aux["hyper_image"], out.aux["hyper_text"], net.config.cl_tau, dataset.n_users

    def ssl(queries, keys, rows):  # Σ_r −log softmax_k(cos(q_r, keys_k)/τ) at r's own key
        logits = F.normalize(queries[rows], dim=1) @ F.normalize(keys, dim=1).T / tau
        return -torch.log_softmax(logits, dim=1)[torch.arange(len(rows)), rows].sum()

    u, i, _ = batch
    with torch.no_grad():  # text is complete: every row is a key; the rows without the image ask nothing
        users = u[net.present[0, :n_u][u]]
        items = i[~torch.from_numpy(missing)[i]]
        want = ssl(ga[:n_u], gb[:n_u], users) + ssl(ga[n_u:], gb[n_u:], items)
    assert len(users) < len(u) and len(items) < len(i)
    torch.testing.assert_close(term, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- SMORE


def test_smore_users_take_each_view_from_their_items_having_it(lonely):
    dataset, missing = lonely
    net = build_model("smore", dataset, image_knn_k=5, text_knn_k=5).eval()
    with torch.no_grad():
        h = net.item_views()
        image_users = net.user_items["image"] @ h["image"]
        u = _a_user_with_some_items_lacking_the_image(dataset, missing)
        items, degrees = _image_items(dataset, missing, u)
        torch.testing.assert_close(image_users[u], (h["image"][items] / torch.sqrt(len(items) * degrees)
                                                    .unsqueeze(1)).sum(dim=0))
        assert not image_users[0].any() and not net.present[0, 0] and net.present[1:, 0].all()
        assert net.user_items["text"] is net.user_item and net.user_items["fusion"] is net.user_item
        assert net.fused_present is None  # every node keeps the text
        # the fusion spectrum of an item without the image is its text spectrum alone
        projected = {m: p() for m, p in net.projectors.items()}
        _, present_items = split_nodes(net.present, net.n_users)
        x = spectrum_fusion(projected, net.filters, net.fusion_filter, present_items)["fusion"]
        i = int(np.flatnonzero(missing)[0])
        text = torch.fft.rfft(net.projectors["text"]()[i], norm="ortho")
        want = torch.fft.irfft(text * torch.view_as_complex(net.fusion_filter.weight), n=x.shape[1], norm="ortho")
        torch.testing.assert_close(x[i], want)
    # S_f: an item without the image keeps its text row (no self-loop of weight 1 from a zero row)
    text = knn_graph(dataset.features["text"], 5).toarray()
    np.testing.assert_allclose(net.fusion_graph.matrix.to_dense()[i].numpy(), text[i], rtol=1e-6)


def test_smore_nodes_without_any_view_leave_the_infonce_terms_and_row_path_is_full(lonely):
    dataset, missing = lonely
    net = build_model("smore", dataset, modalities=["image"], image_knn_k=5).train()
    n_u = dataset.n_users
    np.testing.assert_array_equal(net.fused_present[n_u:].numpy(), ~missing)
    assert not net.fused_present[0]
    torch.manual_seed(1)
    out = net()
    side = out.aux["modality"]
    assert not side[0].any() and not side[n_u + np.flatnonzero(missing)].any()
    batch = _user_batch(dataset, missing)
    (grad,) = torch.autograd.grad(net.loss(batch, out)["cl"], side)
    assert not grad[0].any() and not grad[n_u + np.flatnonzero(missing)].any()
    assert grad[1:n_u].abs().sum() > 0
    assert_batch_loss_is_the_full_loss(net, batch)
