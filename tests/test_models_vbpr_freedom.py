"""VBPR (ALGORITHMS.md 3.3) and FREEDOM (3.4): learning, shapes, graphs, pruning, configs."""

import re

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from prismrec.data import load_dataset
from prismrec.data.synthetic import write_planted_dataset
from prismrec.errors import ConfigError
from prismrec.experiment.config import resolve_config
from prismrec.experiment.runs import run_experiment
from prismrec.graph import bipartite_adjacency
from prismrec.models import get_model
from prismrec.nn.roles import image_text_pair, modality_role
from prismrec.train import seed_everything


def build(name, dataset, seed=0, **overrides):
    cfg = resolve_config(name, dataset.name, overrides)
    seed_everything(seed)
    return get_model(name)(dataset, cfg.params)


# --------------------------------------------------------------------------- both models


@pytest.mark.parametrize("model", ["vbpr", "freedom"])
def test_needs_modalities(planted, tmp_path, model):
    bare = load_dataset(write_planted_dataset(tmp_path / "bare", modalities={}))
    with pytest.raises(ValueError, match=f"{model} needs at least 1 modality;"):
        build(model, bare)
    with pytest.raises(ValueError, match="needs modality feature\\(s\\) audio.*has image, text"):
        build(model, planted, modalities=["audio"])


@pytest.mark.parametrize("model", ["vbpr", "freedom"])
def test_single_modality_and_loss_terms(planted, model):
    net = build(model, planted, modalities=["text"])
    assert net.modalities == ["text"]
    net.train()
    batch = (torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8]))
    terms = net.loss(batch, net())
    expected = {"bpr", "reg"} if model == "vbpr" else {"bpr", "mm_bpr_text"}
    assert set(terms) == expected and all(torch.isfinite(v) for v in terms.values())


# --------------------------------------------------------------------------- VBPR


def test_vbpr_representation_by_hand(planted):
    assert build("vbpr", planted).config.feature_norm == "standardize"  # the default validation selected
    net = build("vbpr", planted, feature_norm="none")
    assert net.modalities == ["image", "text"]
    out = net()
    d = net.config.embedding_size
    f = torch.cat([planted.features["image"], planted.features["text"]], dim=1)
    w, b = net.content.linear.weight, net.content.linear.bias
    expected = torch.cat([net.item_emb.weight, f @ w.T + b], dim=1)  # z_i = [e_i ; W f_i + b]
    assert out.item.shape == (planted.n_items, 2 * d) and out.user.shape == (planted.n_users, 2 * d)
    torch.testing.assert_close(out.item, expected)
    assert out.user is net.user_emb.weight
    # Raw features are frozen and not part of the checkpoint; W, b are trained from zero bias.
    assert not net.content.features.requires_grad
    assert set(net.state_dict()) == {"user_emb.weight", "item_emb.weight", "content.linear.weight", "content.linear.bias"}
    assert torch.count_nonzero(b) == 0


def test_vbpr_feature_norm_rescales_each_modality_before_concatenation(planted):
    net = build("vbpr", planted, feature_norm="l2")
    f = torch.cat([torch.nn.functional.normalize(planted.features[m], dim=1) for m in ("image", "text")], dim=1)
    torch.testing.assert_close(net.content.features, f)
    std = build("vbpr", planted, feature_norm="standardize").content.features
    torch.testing.assert_close(std.mean(0), torch.zeros(std.shape[1]), atol=1e-5, rtol=0)


def test_vbpr_loss_is_bpr_plus_emb_norm(planted):
    net = build("vbpr", planted, reg_weight=0.5)
    out = net()
    u, i, j = torch.tensor([0, 1, 1]), torch.tensor([2, 3, 4]), torch.tensor([5, 6, 7])
    terms = net.loss((u, i, j), out)
    zu, zi, zj = out.user[u], out.item[i], out.item[j]
    bpr = -torch.nn.functional.logsigmoid((zu * zi).sum(1) - (zu * zj).sum(1)).mean()
    reg = 0.5 * (zu.norm() + zi.norm() + zj.norm()) / 3
    torch.testing.assert_close(terms["bpr"], bpr)
    torch.testing.assert_close(terms["reg"], reg)


# --------------------------------------------------------------------------- FREEDOM


def dense_binary_knn(features: torch.Tensor, k: int) -> np.ndarray:
    """Ŝ^bin densely: self + k-1 most cosine-similar rows (ties -> lower index), D^-1/2 B D^-1/2."""
    x = features.double().numpy()
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, np.inf)
    keep = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    b = np.zeros_like(sim)
    np.put_along_axis(b, keep, 1.0, axis=1)
    inv_sqrt = b.sum(1) ** -0.5
    return inv_sqrt[:, None] * b * inv_sqrt[None, :]


def test_freedom_item_graph_equals_dense_reference(planted):
    net = build("freedom", planted)
    assert net.modalities == ["image", "text"] and net.mm_weights == (0.1, 0.9)
    s_v = dense_binary_knn(planted.features["image"], 10)
    s_t = dense_binary_knn(planted.features["text"], 10)
    assert np.allclose(s_v[s_v > 0], 0.1) and (s_v > 0).sum(1).tolist() == [10] * planted.n_items
    graph = net.item_graph.matrix.to_dense().double().numpy()
    np.testing.assert_allclose(graph, 0.1 * s_v + 0.9 * s_t, atol=1e-7)
    # Weights go by name, not position: listing text first still gives the image graph 0.1.
    swapped = build("freedom", planted, modalities=["text", "image"])
    assert swapped.mm_weights == (0.9, 0.1)
    np.testing.assert_allclose(swapped.item_graph.matrix.to_dense().double().numpy(), graph, atol=1e-7)
    assert build("freedom", planted, image_weight=0.3).mm_weights == pytest.approx((0.3, 0.7))
    custom = build("freedom", planted, mm_weights=[0.25, 0.75], knn_k=4)
    expected = 0.25 * dense_binary_knn(planted.features["image"], 4) + 0.75 * dense_binary_knn(
        planted.features["text"], 4
    )
    np.testing.assert_allclose(custom.item_graph.matrix.to_dense().double().numpy(), expected, atol=1e-7)


@pytest.mark.parametrize(
    "weights, message",
    [([0.5, 0.6], "sum to 1"), ([1.2, -0.2], "non-negative"), ([1.0], "1 weight.*2 modalities")],
)
def test_freedom_rejects_bad_mm_weights(planted, weights, message):
    with pytest.raises(ValueError, match=message):
        build("freedom", planted, mm_weights=weights)


def test_freedom_weights_need_an_explicit_setting_without_image_and_text_roles(tmp_path):
    data = load_dataset(
        write_planted_dataset(tmp_path / "three", n_users=40, n_items=30, modalities={"audio": 3, "text": 4, "image": 5})
    )
    for modalities in (None, ["text", "audio"], ["image", "audio"]):  # three modalities; no image/text pair
        with pytest.raises(ConfigError, match=r"freedom: set mm_weights .*audio.*image-like: image, visual") as err:
            build("freedom", data, knn_k=3, modalities=modalities)
        example = re.search(r"--set mm_weights=(\[[^\]]*\])", str(err.value)).group(1)
        assert len(build("freedom", data, knn_k=3, modalities=modalities, mm_weights=example).mm_weights) \
            == len(modalities or data.features)  # the message's example is itself valid
    assert build("freedom", data, knn_k=3, modalities=["text", "audio"], mm_weights=[0.5, 0.5]).mm_weights == (0.5, 0.5)
    net = build("freedom", data, knn_k=3, mm_weights=[0.2, 0.3, 0.5])
    assert net.modalities == ["image", "text", "audio"] and net.mm_weights == (0.2, 0.3, 0.5)
    assert build("freedom", data, knn_k=3, modalities=["audio"]).mm_weights == (1.0,)
    with pytest.raises(ConfigError, match="image_weight must be in"):
        build("freedom", data, knn_k=3, modalities=["image", "text"], image_weight=1.5)


@pytest.mark.parametrize("settings, message", [
    # were trained, image_weight ignored: mm_weights gives the weights (and 5.0 was never checked)
    ({"mm_weights": [0.5, 0.5], "image_weight": 5.0}, r"image_weight must be in \[0, 1\], got 5.0"),
    ({"mm_weights": [0.5, 0.5], "image_weight": 0.3},
     r"image_weight=0.3 only acts when mm_weights is not set, but mm_weights=\[0.5, 0.5\] gives every"),
    ({"modalities": ["audio"], "image_weight": -0.5}, r"image_weight must be in \[0, 1\], got -0.5"),
])
def test_freedom_refuses_an_image_weight_it_would_ignore(settings, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("freedom", "planted", settings)


def test_modality_roles_by_name():
    assert [modality_role(m) for m in ("image", "Visual", "v", "image_clip", "text", "title", "text_bert", "t")] \
        == ["image"] * 4 + ["text"] * 4
    assert [modality_role(m) for m in ("audio", "audio_whisper", "genre", "video", "textual")] == [None] * 5
    assert image_text_pair(["text", "visual"]) == {"text": "text", "image": "visual"}
    assert image_text_pair(["text", "audio"]) is None and image_text_pair(["image", "text", "audio"]) is None


def lgn_dense(adjacency: np.ndarray, x0: np.ndarray, layers: int) -> np.ndarray:
    total, x = x0.copy(), x0
    for _ in range(layers):
        x = adjacency @ x
        total = total + x
    return total / (layers + 1)


def test_freedom_edge_pruning_in_train_mode_full_graph_in_eval(planted):
    net = build("freedom", planted)
    n_users, n_edges = planted.n_users, planted.train.nnz
    net.train()
    net.on_epoch_start(0)
    pruned = net.train_adjacency.matrix.to_dense().numpy()
    # m = ⌊|E|·(1−ρ)⌋ evaluated as the reference's int(|E| * (1. - ρ)); here |E| = 4800 and float
    # rounding gives 959, one below the real-number 960.
    kept_count = int(n_edges * (1.0 - 0.8))
    assert abs(kept_count - np.floor(n_edges * 0.2)) <= 1
    assert net.train_adjacency.nnz == 2 * kept_count
    kept = sp.csr_matrix(pruned[:n_users, n_users:] != 0, dtype=np.float32)
    assert kept.nnz == kept_count and kept.multiply(planted.train).nnz == kept_count  # a subset of R
    np.testing.assert_allclose(pruned, bipartite_adjacency(kept).toarray(), atol=1e-7)  # own degrees

    e0 = torch.cat([net.user_emb.weight, net.item_emb.weight]).detach().numpy()
    s = net.item_graph.matrix.to_dense().numpy()
    h = s @ net.item_emb.weight.detach().numpy()
    with torch.no_grad():
        train_out = net()
        y = lgn_dense(pruned, e0, 2)
        np.testing.assert_allclose(train_out.user.numpy(), y[:n_users], atol=1e-5)
        np.testing.assert_allclose(train_out.item.numpy(), y[n_users:] + h, atol=1e-5)

        net.eval()
        eval_out = net()
        full = bipartite_adjacency(planted.train).toarray()
        y = lgn_dense(full, e0, 2)
        np.testing.assert_allclose(eval_out.user.numpy(), y[:n_users], atol=1e-5)
        np.testing.assert_allclose(eval_out.item.numpy(), y[n_users:] + h, atol=1e-5)
        np.testing.assert_allclose(eval_out.aux["behavior"].numpy(), y, atol=1e-5)
        z = torch.cat([eval_out.user, eval_out.item])
        torch.testing.assert_close(eval_out.aux["behavior"] + eval_out.aux["modality"], z)
        # Redrawing the training graph leaves evaluation untouched.
        net.train()
        net.on_epoch_start(1)
        net.eval()
        torch.testing.assert_close(net().item, eval_out.item)
    redrawn = net.train_adjacency.matrix.to_dense().numpy()
    assert net.train_adjacency.nnz == 2 * kept_count and not np.array_equal(redrawn, pruned)


def test_freedom_pruning_is_seeded(planted):
    def graphs(seed):
        net = build("freedom", planted, seed=seed)
        out = []
        for epoch in range(2):
            net.on_epoch_start(epoch)
            out.append(net.train_adjacency.matrix.to_dense())
        return out

    a, b, c = graphs(7), graphs(7), graphs(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_freedom_no_pruning_uses_the_full_graph(planted):
    net = build("freedom", planted, drop_ratio=0.0)
    net.train()
    net.on_epoch_start(0)
    assert net.train_adjacency is net.adjacency
    with pytest.raises(ValueError, match="drop_ratio"):
        build("freedom", planted, drop_ratio=1.0)


def test_freedom_loss_terms_by_hand(planted):
    net = build("freedom", planted, reg_weight=0.5)
    net.train()
    out = net()
    u, i, j = torch.tensor([0, 1, 1]), torch.tensor([2, 3, 4]), torch.tensor([5, 6, 7])
    terms = net.loss((u, i, j), out)
    assert set(terms) == {"bpr", "mm_bpr_image", "mm_bpr_text"}

    def bpr(zu, zi, zj):
        return -torch.nn.functional.logsigmoid((zu * zi).sum(1) - (zu * zj).sum(1)).mean()

    zu = out.user[u]
    torch.testing.assert_close(terms["bpr"], bpr(zu, out.item[i], out.item[j]))
    for m in ("image", "text"):
        p = net.projectors[m]()  # P_m = F_m W_m + b_m over all items
        torch.testing.assert_close(terms[f"mm_bpr_{m}"], 0.5 * bpr(zu, p[i], p[j]))
    # Features are fine-tuned (reference code) unless train_features=False.
    sum(terms.values()).backward()
    assert net.projectors["image"].features.grad is not None
    frozen = build("freedom", planted, train_features=False)
    assert not frozen.projectors["text"].features.requires_grad


def test_freedom_same_seed_same_run(planted):
    cfg = resolve_config("freedom", "planted", {"epochs": 2})
    a = run_experiment(cfg, [5], None, dataset=planted, progress=False)
    b = run_experiment(cfg, [5], None, dataset=planted, progress=False)
    assert a["valid"] == b["valid"] and a["test"] == b["test"]
