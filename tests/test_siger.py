"""SIGER (ALGORITHMS.md §5): infusion graphs, noise magnitudes, anchor losses, training."""

import dataclasses
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from prismrec.experiment.config import resolve_config
from prismrec.graph import cooccurrence_graph, knn_graph, mix, sym_normalize
from prismrec.graph.cooccurrence import infused_graphs
from prismrec.losses import counted_rows, infonce, joint_infonce
from prismrec.models import get_model
from prismrec.models.siger import SIGERConfig
from prismrec.train import fit, seed_everything
from tests.builders import build_model
from tests.test_masked_user_views import lonely  # noqa: F401  (the fixture)
from tests.test_train import random_recall_at_20

TERMS = {"bpr", "reg", "perturb", "anchor", "align"}


def _build(dataset, seed=0, **overrides):
    cfg = resolve_config("siger", dataset.name, overrides)
    seed_everything(seed)
    return get_model("siger")(dataset, cfg.params)


def _batch(dataset, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, dataset.n_users, (size,), generator=g)
    i = torch.randint(0, dataset.n_items, (size,), generator=g)
    j = torch.randint(0, dataset.n_items, (size,), generator=g)
    return u, i, j


def _dense(op):
    return op.matrix.to_dense()


def _graph(net, modality):
    """``G_m`` of ``modality`` as the encoder holds it."""
    return net.encoder.item_graphs[net.modalities.index(modality)]


def _sp_dense(matrix):
    return torch.from_numpy(matrix.toarray())


# ------------------------------------------------------------------------ collaborative infusion
def test_beta_zero_is_the_raw_semantic_graph_and_beta_one_is_the_cooccurrence_graph(planted):
    co = _sp_dense(cooccurrence_graph(planted.train, 10))
    raw = {m: _sp_dense(knn_graph(planted.features[m], 10)) for m in ("image", "text")}
    zero, one = _build(planted, beta=0.0), _build(planted, beta=1.0)
    for m in ("image", "text"):
        torch.testing.assert_close(_dense(_graph(zero, m)), raw[m], rtol=0, atol=0)
        torch.testing.assert_close(_dense(_graph(one, m)), co, rtol=0, atol=0)
    assert not torch.equal(raw["image"], co)


def test_intermediate_and_per_modality_beta_and_renormalisation(planted):
    co = cooccurrence_graph(planted.train, 5, score="cosine", weight="score")
    raw = {m: knn_graph(planted.features[m], 10) for m in ("image", "text")}
    net = _build(planted, beta=0.3, co_k=5, co_score="cosine", co_weight="score")
    torch.testing.assert_close(
        _dense(_graph(net, "text")), _sp_dense(0.7 * raw["text"] + 0.3 * co), rtol=1e-6, atol=1e-7
    )
    per = _build(planted, beta_per_modality=True, beta_modalities=[0.0, 1.0], co_k=5, co_score="cosine",
                 co_weight="score")
    assert per.betas == [0.0, 1.0]
    torch.testing.assert_close(_dense(_graph(per, "image")), _sp_dense(raw["image"]))
    torch.testing.assert_close(_dense(_graph(per, "text")), _sp_dense(co))
    renorm = _build(planted, renormalize_after_mix=True)
    expected = sym_normalize(mix([raw["image"], cooccurrence_graph(planted.train, 10)], [0.5, 0.5]))
    torch.testing.assert_close(_dense(_graph(renorm, "image")), _sp_dense(expected))


def test_forward_uses_the_infused_graph(planted):
    """H_m = [R̂ G_m H_m⁰; G_m H_m⁰] and Z = C + fuse(H | C), recomputed densely."""
    net = _build(planted, beta=0.5).eval()
    n_u = planted.n_users
    co = _sp_dense(cooccurrence_graph(planted.train, 10))
    with torch.no_grad():
        out = net()
        c = out.aux["behavior"]
        for k, (m, pur) in enumerate(zip(net.modalities, net.encoder.purifiers)):
            g = 0.5 * _sp_dense(knn_graph(planted.features[m], 10)) + 0.5 * co
            items = g @ pur(net.encoder.item_emb.weight)
            torch.testing.assert_close(out.aux["modality_views"][k, n_u:], items, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(out.aux["modality"], net.encoder.fuser(out.aux["modality_views"], c))
        torch.testing.assert_close(torch.cat([out.user, out.item]), c + out.aux["modality"])


# ---------------------------------------------------------------------------------- perturbation
def _expected_rho(mode, eps, norms, gamma):
    return torch.full_like(norms, eps) if mode == "fixed" else eps * norms * (norms / norms.mean()) ** gamma


@pytest.mark.parametrize("mode, gamma", [("modulus", 1.0), ("modulus", 0.0), ("modulus", -2.0), ("fixed", 1.0)])
@pytest.mark.parametrize("target", ["fused", "per_modality"])
def test_noise_magnitude_per_row_follows_the_rows_modulus(planted, mode, gamma, target):
    net = _build(planted, perturb_mode=mode, perturb_target=target, eps=0.2, gamma=gamma)
    net.train()
    with torch.no_grad():
        out = net()
        first, second = net.perturbation_views(out)
    clean = out.aux["modality"].unsqueeze(0) if target == "fused" else out.aux["modality_views"]
    assert first.shape == second.shape == clean.shape
    assert not torch.equal(first, second)  # two independent draws
    for view in (first, second):
        for x, v in zip(clean, view):
            norms = x.norm(dim=1)
            assert (x != 0).all()  # δ has unit norm on rows without zero entries
            torch.testing.assert_close((v - x).norm(dim=1), _expected_rho(mode, 0.2, norms, gamma), rtol=1e-4, atol=1e-6)


def test_layer_noise_follows_every_propagation(planted):
    """perturb_at=layers, L_s = 1: noisy item rows = G_m H_m⁰ + ρ(G_m H_m⁰)·δ."""
    net = _build(planted, perturb_at="layers", perturb_target="per_modality", eps=0.1)
    net.train()
    n_u = planted.n_users
    with torch.no_grad():
        out = net()
        first, _ = net.perturbation_views(out)
    clean_items = out.aux["modality_views"][:, n_u:]
    for x, v in zip(clean_items, first[:, n_u:]):
        torch.testing.assert_close((v - x).norm(dim=1), _expected_rho("modulus", 0.1, x.norm(dim=1), 1.0), rtol=1e-4, atol=1e-6)
    # users aggregate the noisy items: R̂ H'^I
    torch.testing.assert_close(first[:, :n_u], torch.stack([net.encoder.user_item @ v for v in first[:, n_u:]]))


def test_personal_intensity_changes_the_perturbation_loss_with_the_same_draws(planted):
    """γ ≠ 0 makes L_P personal; γ = 0 (every row the same relative noise) is another loss."""
    batch = torch.arange(0, 40), torch.arange(0, 40)
    rows = (counted_rows(batch[0]), counted_rows(batch[1] + planted.n_users))
    losses = {}
    for gamma in (0.0, 1.0, -1.0):
        net = _build(planted, gamma=gamma, eps=0.2)  # same seed: same init, same noise draws
        net.train()
        with torch.no_grad():
            losses[gamma] = net.perturbation_loss(net(), rows).item()
    assert abs(losses[1.0] - losses[0.0]) > 1e-4 and abs(losses[-1.0] - losses[0.0]) > 1e-4


# --------------------------------------------------------------------------------- alignment
def _cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def _nce_rows(p, q, tau):
    """Plain per-row InfoNCE: -log(exp(cos(p_b, q_b)/τ) / Σ_b' exp(cos(p_b, q_b')/τ))."""
    losses = []
    for b in range(len(p)):
        num = math.exp(_cos(p[b], q[b]) / tau)
        den = sum(math.exp(_cos(p[b], q[k]) / tau) for k in range(len(q)))
        losses.append(-math.log(num / den))
    return losses


def _anchor_setup(planted, **overrides):
    net = _build(planted, **overrides)
    net.train()
    out = net()
    u, i, _ = _batch(planted, size=12)
    rows = (u, i + planted.n_users)
    h, c = out.aux["modality_views"].detach().double(), out.aux["behavior"].detach().double()
    return net, out, rows, h, c


def test_anchor_a1_matches_brute_force(planted):
    net, out, rows, h, c = _anchor_setup(planted, tau_a=0.3)
    expected = sum(np.mean(_nce_rows(h[m][r], c[r], 0.3)) for r in rows for m in range(len(h))) / len(h)
    got = net.anchor_loss(out.aux["modality_views"], out.aux["behavior"], rows)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)


def test_anchor_a2_matches_brute_force(planted):
    net, out, rows, h, c = _anchor_setup(planted, anchor_form="A2", tau_a=0.3)
    expected = 0.0
    for r in rows:
        hr, cr = h[:, r], c[r]
        losses = []
        for b in range(len(cr)):
            logit = [sum(_cos(hr[m][b], cr[k]) for m in range(len(h))) / 0.3 for k in range(len(cr))]
            losses.append(-math.log(math.exp(logit[b]) / sum(math.exp(x) for x in logit)))
        expected += np.mean(losses)
    got = net.anchor_loss(out.aux["modality_views"], out.aux["behavior"], rows)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("gate", [True, False])
def test_anchor_a3_matches_brute_force(planted, gate):
    net, out, rows, h, c = _anchor_setup(planted, anchor_form="A3", anchor_gate=gate, tau_a=0.3)
    expected = 0.0
    for r in rows:
        hv, ht, cr = h[0][r], h[1][r], c[r]
        losses = _nce_rows(hv, ht, 0.3)
        weights = [
            1.0 / (1.0 + math.exp(-(_cos(hv[b], cr[b]) + _cos(ht[b], cr[b])))) if gate else 1.0
            for b in range(len(cr))
        ]
        expected += np.mean([w * x for w, x in zip(weights, losses)])
    got = net.anchor_loss(out.aux["modality_views"], out.aux["behavior"], rows)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)


def test_loss_terms_are_the_weighted_pieces(planted):
    net = _build(planted, lambda_a=0.2, lambda_b=0.3, lambda_p=0.0)
    net.train()
    out = net()
    u, i, j = batch = _batch(planted)
    rows = (u, i + planted.n_users)
    terms = net.loss(batch, out)
    assert set(terms) == TERMS and float(terms["perturb"]) == 0.0
    s, c = out.aux["modality"], out.aux["behavior"]
    torch.testing.assert_close(terms["anchor"], 0.2 * net.anchor_loss(out.aux["modality_views"], c, rows))
    torch.testing.assert_close(terms["align"], 0.3 * (infonce(s[u], c[u], 0.2) + infonce(s[rows[1]], c[rows[1]], 0.2)))


@pytest.mark.parametrize("detach", [True, False])
def test_detach_anchor_stops_the_gradient_into_behaviour(planted, detach):
    net, out, rows, _, _ = _anchor_setup(planted, detach_anchor=detach)
    c = out.aux["behavior"]
    (grad,) = torch.autograd.grad(net.anchor_loss(out.aux["modality_views"], c, rows), c, allow_unused=True)
    assert (grad is None) == detach


def test_joint_infonce_with_one_view_is_infonce():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(10, 8, generator=g), torch.randn(10, 8, generator=g)
    torch.testing.assert_close(joint_infonce(p.unsqueeze(0), q, 0.2), infonce(p, q, 0.2))


# ---------------------------------------------------------------------------------- training
def test_smoke_planted(planted):
    cfg = resolve_config("siger", "planted", {"epochs": 6, "lr": 0.01, "patience": 100})
    assert cfg.train.lr_decay == 0.96 and cfg.train.lr_decay_epochs == 50
    seed_everything(0)
    net = get_model("siger")(planted, cfg.params)
    result = fit(net, planted, cfg.train, progress=False)
    losses = [row["loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert {f"loss_{t}" for t in TERMS} <= set(result.history[0])
    assert all(result.history[0][f"loss_{t}"] > 0 for t in TERMS)
    assert result.best_valid["recall@20"] > 2.5 * random_recall_at_20(planted)


ABLATIONS = [
    {"beta": 0.0},
    {"beta": 1.0},
    {"lambda_p": 0.0},
    {"perturb_mode": "fixed"},
    {"lambda_a": 0.0},
    {"lambda_b": 0.0},
    {"anchor_form": "A3"},
    {"anchor_form": "A3", "anchor_gate": False},
    {"anchor_form": "A2"},
    {"fusion": "mean"},
    {"perturb_at": "layers"},
    {"gamma": 0.0},
    {"perturb_target": "per_modality", "gamma": 0.5},
    {"perturb_at": "layers", "perturb_target": "per_modality", "gamma": -2.0},
    {"co_score": "cosine", "co_weight": "score", "renormalize_after_mix": True},
    {"beta_per_modality": True, "beta_modalities": [0.2, 0.8]},
    {"detach_anchor": False},
    {"extended_branch": True},
]


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_switch_trains_one_epoch(planted, overrides, monkeypatch):
    net = _build(planted, **overrides)
    if overrides.get("lambda_p") == 0.0:  # w/o MPP: the noise views are never computed
        monkeypatch.setattr(net, "perturbation_views", lambda out: pytest.fail("views computed with λ_P = 0"))
    cfg = resolve_config("siger", "planted", {"epochs": 1, **overrides})
    row = fit(net, planted, cfg.train, progress=False).history[0]
    terms = {k[5:] for k in row if k.startswith("loss_")}
    assert TERMS <= terms and np.isfinite(row["loss"])
    assert ({"um", "reg2"} <= terms) == bool(overrides.get("extended_branch"))
    for key in ("lambda_p", "lambda_a", "lambda_b"):
        if overrides.get(key) == 0.0:
            assert row[f"loss_{ {'lambda_p': 'perturb', 'lambda_a': 'anchor', 'lambda_b': 'align'}[key]}"] == 0.0


@pytest.mark.parametrize("overrides", [{}, {"extended_branch": True}, {"detach_anchor": False}])
def test_every_parameter_gets_a_gradient(planted, overrides):
    net = _build(planted, **overrides)
    net.train()
    terms = net.loss(_batch(planted), net())
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


def test_same_seed_same_loss_trajectory(planted):
    def trajectory(seed):
        cfg = resolve_config("siger", "planted", {"epochs": 2, "seed": seed, "perturb_at": "layers"})
        seed_everything(seed)
        net = get_model("siger")(planted, cfg.params)
        history = fit(net, planted, cfg.train, progress=False).history
        return [{k: v for k, v in row.items() if k.startswith("loss")} for row in history]

    first = trajectory(3)
    assert len(first) == 2 and first == trajectory(3)
    assert first != trajectory(4)


def test_eval_forward_is_deterministic_and_has_the_aux_views(planted):
    net = _build(planted).eval()
    with torch.no_grad():
        a, b = net(), net()
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    n = planted.n_users + planted.n_items
    assert a.aux["behavior"].shape == a.aux["modality"].shape == (n, 64)
    assert a.aux["modality_views"].shape == (2, n, 64) and "extended" not in a.aux


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"anchor_form": "A4"}, r"anchor_form must be one of \['A1', 'A2', 'A3'\]"),
        ({"beta": 1.5}, r"beta must be in \[0, 1\]"),
        ({"beta": -0.1}, r"beta must be in \[0, 1\]"),
        ({"perturb_mode": "gaussian"}, "perturb_mode must be one of"),
        ({"tau_a": 0.0}, "tau_a must be > 0"),
        ({"lambda_p": -1.0}, "lambda_p must be >= 0"),
        ({"beta_per_modality": True}, "beta_modalities"),
        ({"beta_modalities": [0.1, 0.2]}, "exactly when beta_per_modality=true"),
        ({"beta_per_modality": True, "beta_modalities": [0.5]}, r"one β in \[0, 1\] per modality"),
        ({"beta_per_modality": True, "beta_modalities": [0.5, 2.0]}, r"one β in \[0, 1\] per modality"),
        ({"perturb_at": "layers", "n_sem_layers": 0}, "n_sem_layers >= 1"),
        ({"co_k": 201}, r"co_k=201 exceeds the number of items \(200\)"),  # was "k must be between 1 and ..."
    ],
)
def test_bad_config_is_a_clear_error(planted, overrides, message):
    params = dataclasses.replace(SIGERConfig(), **overrides)  # bypasses resolve_config's checks
    with pytest.raises(ValueError, match=message):
        get_model("siger")(planted, params)


def test_config_layer_rejects_bad_switches():
    with pytest.raises(ValueError, match="anchor_form must be one of"):
        resolve_config("siger", "planted", {"anchor_form": "A4"})
    with pytest.raises(ValueError, match="unknown setting"):
        resolve_config("siger", "planted", {"lambda_q": 0.1})
    cfg = resolve_config("siger", "planted", {"modalities": "text,image", "beta_modalities": "0.1,0.9",
                                              "beta_per_modality": True})
    assert cfg.params.modalities == ["text", "image"] and cfg.params.beta_modalities == [0.1, 0.9]


def test_modality_requirements(planted):
    one = dataclasses.replace(planted, features={"text": planted.features["text"]})
    net = _build(one)
    assert net.modalities == ["text"] and net().item.shape == (planted.n_items, 64)
    with pytest.raises(ValueError, match="anchor_form='A3'.*at least 2"):
        _build(one, anchor_form="A3")
    with pytest.raises(ValueError, match="siger needs"):
        _build(dataclasses.replace(planted, features={}))


# ------------------------------------------------------------- missing modalities (impute="zero")
def test_siger_infuses_the_cooccurrence_graph_of_the_items_having_the_modality_by_hand():
    # users' items: u0 {0, 1, 2}, u1 {0, 1}, u2 {1, 2, 3}, u3 {3, 4}; item 1 lacks modality 1
    rows = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 1), (2, 2), (2, 3), (3, 3), (3, 4)]
    train = sp.csr_matrix((np.ones(len(rows), np.float32), tuple(np.array(rows).T)), shape=(4, 5))
    present = np.ones((5, 2), dtype=bool)
    present[1, 1] = False
    eye = sp.identity(5, dtype=np.float32, format="csr")
    g_image, g_text = infused_graphs([eye, eye], train, [0.5, 0.5], 2, present_items=present)
    # without item 1, common users: 0-2: 1, 2-3: 1, 3-4: 1; binary top-2, row degrees 1, 2, 2, 1
    c = np.zeros((5, 5))
    for i, j in ((0, 2), (2, 3), (3, 4)):
        c[i, j] = c[j, i] = 1.0
    degree = c.sum(axis=1)
    scale = np.divide(1.0, np.sqrt(degree), out=np.zeros(5), where=degree > 0)
    np.testing.assert_allclose(g_text.toarray(), 0.5 * np.eye(5) + 0.5 * scale[:, None] * c * scale[None, :],
                               rtol=1e-6)
    assert g_text[1].nnz == 1 and g_text[:, 1].nnz == 1  # item 1: its self-loop alone
    full = cooccurrence_graph(train, 2)
    assert full[0, 1] > 0  # unmasked, item 0's top co-occurring item is item 1
    np.testing.assert_allclose(g_image.toarray(), 0.5 * np.eye(5) + 0.5 * full.toarray(), rtol=1e-6)
    plain = infused_graphs([eye, eye], train, [0.5, 0.5], 2)
    for masked in (infused_graphs([eye, eye], train, [0.5, 0.5], 2, present_items=np.ones((5, 2), bool)), plain):
        for a, b in zip(masked, plain):
            assert (a != b).nnz == 0


def test_siger_items_without_the_image_take_nothing_from_their_cooccurring_items(lonely):
    dataset, missing = lonely
    net = build_model("siger", dataset, beta=0.5).eval()
    graph = net.encoder.item_graphs[0].matrix.to_dense()  # G_image
    items = torch.from_numpy(np.flatnonzero(missing))
    off_diagonal = graph[items].clone()
    off_diagonal[torch.arange(len(items)), items] = 0
    assert not off_diagonal.any()  # a row without the image: its self-loop alone
    columns = graph[:, items].clone()
    columns[items, torch.arange(len(items))] = 0
    assert not columns.any()  # and no item having the image reads it
    assert (net.encoder.item_graphs[1].matrix.to_dense()[items] > 0).sum(dim=1).min() > 1  # text: Ŝ + Ĉ
