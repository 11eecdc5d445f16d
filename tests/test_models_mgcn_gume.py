import dataclasses

import pytest
import scipy.sparse as sp
import torch

from prismrec.errors import ConfigError
from prismrec.experiment.config import resolve_config
from prismrec.graph import bipartite_adjacency, intersection_links, knn_graph
from prismrec.losses import moment_gap
from tests.builders import build_model
from tests.test_row_paths import _batch

MODELS = ["mgcn", "gume"]
TERMS = {"mgcn": {"bpr", "reg", "cl"}, "gume": {"bpr", "reg", "vt", "bm", "um", "reg2"}}


@pytest.mark.parametrize("model", MODELS)
def test_every_loss_term_present_finite_and_differentiable(planted, model):
    net = build_model(model, planted)
    net.train()
    terms = net.loss(_batch(planted), net())
    assert set(terms) == TERMS[model]
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("model", MODELS)
def test_eval_forward_is_deterministic_and_aux_shapes(planted, model):
    net = build_model(model, planted).eval()
    with torch.no_grad():
        a, b = net(), net()
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    n, d = planted.n_users + planted.n_items, 64
    assert a.user.shape == (planted.n_users, d) and a.item.shape == (planted.n_items, d)
    assert a.aux["behavior"].shape == a.aux["modality"].shape == (n, d)
    z = a.aux["behavior"] + a.aux["modality"]  # Z = C + M, users first
    torch.testing.assert_close(torch.cat([a.user, a.item]), z)


@pytest.mark.parametrize("model", MODELS)
def test_same_seed_same_training_step(planted, model):
    def one_step():
        net = build_model(model, planted, seed=7)
        net.train()
        terms = net.loss(_batch(planted), net())
        return {k: float(v.detach()) for k, v in terms.items()}

    assert one_step() == one_step()


@pytest.mark.parametrize("model", MODELS)
def test_missing_modalities_are_a_clear_error(planted, model):
    bare = dataclasses.replace(planted, features={})
    with pytest.raises(ValueError, match=f"{model} needs"):
        build_model(model, bare)
    with pytest.raises(ValueError, match="needs modality feature\\(s\\) audio"):
        build_model(model, planted, modalities=["image", "audio"])


@pytest.mark.parametrize("model", [*MODELS, "egra"])
def test_the_family_names_every_layer_count_out_of_range(planted, model):
    with pytest.raises(ValueError, match=r"n_ui_layers must be >= 0, got -1; n_ii_layers must be >= 0, got -2"):
        build_model(model, planted, n_ui_layers=-1, n_ii_layers=-2)


@pytest.mark.parametrize("settings, message", [
    ({"gamma": -1.0}, r"gamma must be >= 0, got -1.0"),  # trained: negative degrees in Â⁺ were cut to 0
    ({"noise_eps": -0.1}, r"noise_eps must be >= 0, got -0.1"),  # was 'eps must be >= 0' (SIGER's setting)
])
def test_gume_refuses_a_negative_link_weight_or_noise_scale(settings, message):
    with pytest.raises(ConfigError, match=f"model 'gume' rejects its settings: {message}"):
        resolve_config("gume", "planted", settings)
    with pytest.raises(ConfigError, match=message):
        resolve_config("egra", "planted", {**settings, "backbone": "gume"})


def test_gume_needs_two_modalities_and_mgcn_one(planted):
    one = dataclasses.replace(planted, features={"text": planted.features["text"]})
    with pytest.raises(ValueError, match="gume needs at least 2 modalities"):
        build_model("gume", one)
    net = build_model("mgcn", one)
    assert net.modalities == ["text"] and net().item.shape == (planted.n_items, 64)


@pytest.mark.parametrize("model", MODELS)
def test_config_rejects_unknown_keys_and_accepts_modalities(model):
    with pytest.raises(ValueError, match="unknown setting"):
        resolve_config(model, "planted", {"cl_wieght": 0.1})
    cfg = resolve_config(model, "planted", {"modalities": "text,image"})
    assert cfg.params.modalities == ["text", "image"]
    assert cfg.train.lr_decay == 0.96 and cfg.train.lr_decay_epochs == 50


@pytest.mark.parametrize("model", MODELS)
def test_three_modalities(planted, model):
    feats = dict(planted.features)
    feats["audio"] = torch.randn(planted.n_items, 8, generator=torch.Generator().manual_seed(0))
    net = build_model(model, dataclasses.replace(planted, features=feats))
    assert net.modalities == ["image", "text", "audio"]
    net.train()
    terms = net.loss(_batch(planted), net())
    assert all(torch.isfinite(t) for t in terms.values())


def test_gume_enhanced_graph_uses_the_intersection_of_knn_sets(planted):
    net = build_model("gume", planted)
    knn = [knn_graph(planted.features[m], 10) for m in ("image", "text")]
    links = intersection_links(*knn)
    assert links.nnz > 0 and net.n_item_links == links.nnz
    expected = bipartite_adjacency(planted.train, links, gamma=1.0)
    n_u = planted.n_users
    x = torch.randn(expected.shape[0], 3)
    torch.testing.assert_close(net.encoder.adjacency @ x, torch.from_numpy(expected @ x.numpy()), rtol=1e-5, atol=1e-6)
    r_hat = sp.csr_matrix(expected)[:n_u, n_u:]
    y = torch.randn(planted.n_items, 3)
    torch.testing.assert_close(net.encoder.user_item @ y, torch.from_numpy(r_hat @ y.numpy()), rtol=1e-5, atol=1e-6)


def test_mgcn_forward_matches_spec(planted):
    """C = LGN(Â), H_m = [R̂ Ŝ_m H_m⁰; Ŝ_m H_m⁰], Z = C + fuse(H | C), recomputed densely."""
    net = build_model("mgcn", planted).eval()
    n_u = planted.n_users
    adj = torch.from_numpy(bipartite_adjacency(planted.train).toarray())
    enc = net.encoder
    x0 = torch.cat([enc.user_emb.weight, enc.item_emb.weight]).detach()
    c = (x0 + adj @ x0 + adj @ adj @ x0) / 3
    views = []
    for m, pur in zip(net.modalities, enc.purifiers):
        s = torch.from_numpy(knn_graph(planted.features[m], 10).toarray())
        h_items = s @ pur(enc.item_emb.weight).detach()
        views.append(torch.cat([adj[:n_u, n_u:] @ h_items, h_items]))
    with torch.no_grad():
        expected = c + enc.fuser(views, c)
        out = net()
    torch.testing.assert_close(torch.cat([out.user, out.item]), expected, rtol=1e-4, atol=1e-6)


def test_gume_vt_gap_is_mean_over_pairs():  # losses.moment_gap
    h = torch.randn(3, 10, 4)
    var, mean = [x.var() for x in h], [x.mean() for x in h]
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = sum(abs(var[a] - var[b]) + abs(mean[a] - mean[b]) for a, b in pairs) / 3
    torch.testing.assert_close(moment_gap(h), expected)


def test_frozen_features_are_not_trained(planted):
    net = build_model("mgcn", planted, train_features=False)
    names = {n for n, _ in net.named_parameters()}
    assert not any(n.endswith("features") for n in names)
    assert not any(k.endswith("features") for k in net.state_dict())


@pytest.mark.parametrize("model", ["mgcn", "gume", "siger", "egra"])
def test_knn_k_above_the_item_count_names_knn_k(planted, model):
    # was the graph builder's "k must be between 1 and 200 ..., got k=201", naming no setting
    with pytest.raises(ValueError, match=rf"knn_k=201 exceeds the number of items \({planted.n_items}\)"):
        build_model(model, planted, knn_k=planted.n_items + 1)
