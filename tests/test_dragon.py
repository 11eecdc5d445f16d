"""DRAGON: dense reference, user-graph padding, switches, config errors, smoke run."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from prismrec.graph.neighbour_sampling import softmax_neighbour_graph
from tests.reference.dragon_ref import dragon_forward, dragon_loss
from tests.builders import build_model

BATCH = (torch.tensor([0, 1, 5, 7, 7]), torch.tensor([3, 4, 5, 9, 11]), torch.tensor([6, 7, 8, 100, 150]))


def build(dataset, seed=0, **overrides):
    return build_model("dragon", dataset, seed, **overrides)


def leaf(t):
    return t.detach().double().clone().requires_grad_(True)


def test_matches_dense_reference_forward_losses_and_gradients(planted):
    net = build(planted, user_pad="none", reg_weight=0.1)
    net.train()
    net.on_epoch_start(0)
    out = net()
    params = [
        (leaf(e.preference.weight), leaf(e.hidden.linear.weight), leaf(e.hidden.linear.bias), leaf(e.out.weight), leaf(e.out.bias))
        for e in net.encoders.values()
    ]
    weight_u = leaf(net.user_modality_weights)
    r = torch.from_numpy(planted.train.toarray()).double()
    feats = [planted.features[m].double() for m in net.modalities]
    user, item = dragon_forward(r, feats, params, weight_u[:, :, None])
    torch.testing.assert_close(out.user.double(), user, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.item.double(), item, atol=1e-6, rtol=1e-5)

    terms = net.loss(BATCH, out)
    assert set(terms) == {"bpr", "reg"}
    bpr_ref, reg_ref = dragon_loss(user, item, [p[0] for p in params], weight_u, *BATCH, 0.1)
    torch.testing.assert_close(terms["bpr"].double(), bpr_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(terms["reg"].double(), reg_ref, atol=1e-9, rtol=1e-5)

    sum(terms.values()).backward()
    (bpr_ref + reg_ref).backward()
    ours = [net.user_modality_weights]
    for e in net.encoders.values():
        ours += [e.preference.weight, e.hidden.linear.weight, e.hidden.linear.bias, e.out.weight, e.out.bias]
    theirs = [weight_u] + [t for p in params for t in p]
    for a, b in zip(ours, theirs):
        assert b.grad is not None and b.grad.abs().sum() > 0
        torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-7, rtol=1e-4)


def test_user_graph_padding_follows_the_reference_urn():
    # rows: 3 neighbours (counts 3, 1, 1), 1 neighbour, none, k=4 neighbours (no padding)
    scores = sp.csr_matrix(
        (np.array([3.0, 1.0, 1.0, 2.0, 1.0, 2.0, 3.0, 4.0]),
         (np.array([0, 0, 0, 1, 3, 3, 3, 3]), np.array([1, 2, 3, 0, 0, 1, 2, 4]))),
        shape=(5, 5),
    )
    none = softmax_neighbour_graph(scores, 4, pad="none").toarray()
    np.testing.assert_allclose(none[0, 1:4], np.exp([3, 1, 1]) / np.exp([3, 1, 1]).sum(), rtol=1e-6)
    np.testing.assert_allclose(none[1], [1, 0, 0, 0, 0])
    assert not none[2].any() and not none[4].any()
    for seed in range(20):
        padded = softmax_neighbour_graph(scores, 4, pad="resample", rng=np.random.default_rng(seed)).toarray()
        np.testing.assert_allclose(padded[3], none[3], rtol=1e-6)  # k entries already: no draw
        np.testing.assert_allclose(padded[1], none[1])
        # row 0: one repeat of one of its 3 entries -> weights m_v e^c_v / Σ m e^c, Σ m = 4
        w = padded[0, 1:4]
        m = w / np.exp([3, 1, 1])
        m = m / m.min() * 1.0
        assert sorted(np.round(m).astype(int).tolist()) == [1, 1, 2]
        assert padded.sum(1)[[0, 1, 3]] == pytest.approx([1, 1, 1])
    mean = softmax_neighbour_graph(scores, 4, pad="resample", aggr="mean", rng=np.random.default_rng(0)).toarray()
    assert sorted(mean[0, 1:4].tolist()) == pytest.approx([0.25, 0.25, 0.5])
    with pytest.raises(ValueError, match="needs a random generator"):
        softmax_neighbour_graph(scores, 4)
    with pytest.raises(ValueError, match="more than k=2"):
        softmax_neighbour_graph(scores, 2, pad="none")


def test_user_graph_is_redrawn_per_epoch_and_reproducible(planted):
    net = build(planted, user_knn_k=280)
    net.on_epoch_start(0)
    first = net.user_graph.matrix.to_dense()
    net.on_epoch_start(1)
    second = net.user_graph.matrix.to_dense()
    net.on_epoch_start(0)
    torch.testing.assert_close(net.user_graph.matrix.to_dense(), first)
    assert not torch.equal(first, second)  # some users have fewer than 280 neighbours
    torch.testing.assert_close(first.sum(1)[first.sum(1) > 0], torch.ones(int((first.sum(1) > 0).sum())))
    fixed = build(planted, user_knn_k=280, user_pad="none")
    fixed.on_epoch_start(0)
    a = fixed.user_graph.matrix.to_dense()
    fixed.on_epoch_start(1)
    torch.testing.assert_close(fixed.user_graph.matrix.to_dense(), a)


def test_switches_change_the_computation(planted):
    base = build(planted)
    base.eval()
    out = base()
    d = base.config.embedding_size
    assert out.user.shape == (planted.n_users, 2 * d) and out.item.shape == (planted.n_items, 2 * d)
    for construction in ("weighted_sum", "weighted_max"):
        other = build(planted, construction=construction)
        other.eval()
        o = other()
        assert o.user.shape == (planted.n_users, d)
        views = [o.aux[f"modality_{m}"][planted.n_users:] for m in other.modalities]
        torch.testing.assert_close(o.item, sum(views) + other.item_graph @ sum(views))
    # weighted_max does not regularise w (reference); same seed -> same P_m and w
    wmax, wsum = build(planted, construction="weighted_max"), build(planted, construction="weighted_sum")
    w_reg = wsum.config.reg_weight * wsum.user_modality_weights.square().mean()
    reg_max, reg_sum = wmax.loss(BATCH, wmax())["reg"], wsum.loss(BATCH, wsum())["reg"]
    torch.testing.assert_close(reg_max + w_reg, reg_sum)
    assert float(w_reg.detach()) > 1e-3 * float(reg_sum.detach())
    cat_terms = base.loss(BATCH, base())
    ln = build(planted, bpr_log2=False)
    torch.testing.assert_close(cat_terms["bpr"], ln.loss(BATCH, ln())["bpr"] / math.log(2))
    for overrides in ({"n_ii_layers": 0}, {"user_aggr": "mean"}, {"n_ui_layers": 1}, {"modalities": ["text"]}):
        other = build(planted, **overrides)
        other.eval()
        o = other()
        assert o.item.shape != out.item.shape or not torch.allclose(o.item, out.item) or not torch.allclose(o.user, out.user), overrides


def test_weights_init_and_gradients(planted):
    net = build(planted)
    w = net.user_modality_weights.detach()
    torch.testing.assert_close(w.sum(1), torch.ones(planted.n_users))  # softmax rows at init
    assert 0.4 < float(w.min()) and float(w.max()) < 0.6  # near uniform (xavier std ~0.08)
    net.train()
    sum(net.loss(BATCH, net()).values()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not any("features" in n for n in net.state_dict())  # raw features are frozen, not saved


def test_config_errors(planted):
    with pytest.raises(ValueError, match="construction must be one of"):
        build(planted, construction="attention")
    with pytest.raises(ValueError, match="mm_weights has 1 weight"):
        build(planted, mm_weights=[1.0])
    with pytest.raises(ValueError, match="user_pad must be one of"):
        build(planted, user_pad="zeros")
    with pytest.raises(ValueError, match="user_aggr must be one of"):
        build(planted, user_aggr="max")
    with pytest.raises(ValueError, match="user_knn_k must be >= 1"):
        build(planted, user_knn_k=0)
    with pytest.raises(ValueError, match=r"user_knn_k=301 exceeds the number of users \(300\)"):  # was cut to 300
        build(planted, user_knn_k=301)


def test_graph_weights_go_by_name_and_other_modalities_need_mm_weights(planted, tmp_path):
    from prismrec.data import load_dataset
    from prismrec.data.synthetic import write_planted_dataset
    from prismrec.errors import ConfigError

    assert build(planted).mm_weights == (0.1, 0.9)  # image, text
    assert build(planted, modalities=["text", "image"]).mm_weights == (0.9, 0.1)  # by name, not position
    audio = load_dataset(write_planted_dataset(tmp_path / "ta", n_users=40, n_items=30,
                                               modalities={"text": 6, "audio": 5}, seed=1))
    with pytest.raises(ConfigError, match=r"dragon: set mm_weights .*--set mm_weights=\[0.5,0.5\]"):
        build(audio)
    assert build(audio, mm_weights=[0.5, 0.5]).mm_weights == (0.5, 0.5)
    assert build(audio, modalities=["audio"]).mm_weights == (1.0,)
