"""BM3 (WWW'23): dense reference, stop-gradient targets, no negatives, switches, smoke run."""

import dataclasses

import pytest
import torch

from prismrec.data import load_dataset
from prismrec.data.synthetic import write_planted_dataset
from prismrec.experiment.config import resolve_config
from prismrec.experiment.runs import run_experiment
from prismrec.models import get_model
from tests.reference.bm3_ref import bm3_reference
from tests.builders import build_model, uneven_degrees
from tests.rounding import no_worse


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bm3") / "tiny"
    planted = write_planted_dataset(folder, n_users=40, n_items=30, per_user=6, modalities={"image": 5, "text": 7})
    data = load_dataset(planted)
    return uneven_degrees(data)



def build(dataset, seed=0, **overrides):
    return build_model("bm3", dataset, seed, **overrides)


def reference_params(net) -> dict:
    """Leaf copies of the model's parameters in the reference's layout."""
    params = {
        "user_emb": net.user_emb,
        "item_emb": net.item_emb,
        "pred_w": net.predictor.weight,
        "pred_b": net.predictor.bias,
    }
    for m, projector in net.projectors.items():
        linear = projector.linear
        params.update({f"feat_{m}": projector.features, f"w_{m}": linear.weight, f"b_{m}": linear.bias})
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def replay_masks(data, modalities, users, items, p, d) -> dict:
    """Whole-matrix dropout masks holding the model's draws: ``torch.rand(rows, d) >= p`` for the
    distinct (sorted) users, the distinct items, then each modality's distinct items; the rows
    no batch entry reads are left at 1 (they never reach the loss)."""
    masks = {}
    for key, rows, n in [("user", users, data.n_users), ("item", items, data.n_items)] + [
        (m, items, data.n_items) for m in modalities
    ]:
        distinct = torch.unique(rows)
        full = torch.ones(n, d)
        if p > 0:
            full[distinct] = (torch.rand(len(distinct), d) >= p).float()
        masks[key] = full
    return masks


BATCH = (torch.tensor([0, 3, 3, 7, 12, 39]), torch.tensor([1, 1, 4, 9, 29, 0]), torch.tensor([2, 5, 6, 8, 10, 11]))


@pytest.mark.parametrize(
    "n_layers, dropout, modalities", [(1, 0.5, ["text", "image"]), (2, 0.3, ["image"]), (2, 0.0, [])]
)
def test_forward_loss_and_gradients_match_dense_reference(tiny, n_layers, dropout, modalities):
    net = build(tiny, n_layers=n_layers, dropout=dropout, reg_weight=0.1, cl_weight=2.0, modalities=modalities)
    net.train()
    params = reference_params(net)
    train = torch.tensor(tiny.train.toarray(), dtype=torch.float32)
    u, i, _ = BATCH

    torch.manual_seed(11)
    out = net()
    terms = net.loss(BATCH, out)
    torch.manual_seed(11)  # replay the model's draws into whole-matrix masks
    masks = replay_masks(tiny, modalities, u, i, dropout, net.config.embedding_size)
    ref = bm3_reference(train, params, modalities, u, i, n_layers, dropout, 0.1, 2.0, masks)

    close = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.user, ref["user"], **close)  # scored rows: g(h_U), g(h_I)
    torch.testing.assert_close(out.item, ref["item"], **close)
    assert set(terms) == {"rec", "reg"} | {f"{k}_{m}" for m in modalities for k in ("align", "mask")}
    torch.testing.assert_close(terms["rec"], ref["ui"] + ref["iu"], **close)
    torch.testing.assert_close(terms["reg"], ref["reg"].reshape(()), **close)
    for m in modalities:
        torch.testing.assert_close(terms[f"align_{m}"], 2.0 * ref[f"align_{m}"], **close)
        torch.testing.assert_close(terms[f"mask_{m}"], 2.0 * ref[f"mask_{m}"], **close)
    total = sum(terms.values())
    torch.testing.assert_close(total, ref["total"].reshape(()), **close)

    # Same gradients, so the stop-gradient on every target matches the reference's no_grad.
    total.backward()
    ref["total"].sum().backward()
    ours = {"user_emb": net.user_emb, "item_emb": net.item_emb, "pred_w": net.predictor.weight}
    for m, projector in net.projectors.items():
        ours.update({f"feat_{m}": projector.features, f"w_{m}": projector.linear.weight})
    for name, p in ours.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_unit_target_is_dropout_then_unit_rows_without_gradient(tiny):
    net = build(tiny, dropout=0.3)
    x = torch.rand(500, 64, requires_grad=True) + 0.5
    torch.manual_seed(0)
    t = net.unit_target(x)
    kept = t != 0
    assert not t.requires_grad
    assert abs(kept.float().mean().item() - 0.7) < 0.01  # keep probability 1 - ρ
    torch.manual_seed(0)  # the same mask, as inverted dropout: unit rows of x·mask / (1 - ρ)
    mask = (torch.rand(x.shape) >= 0.3).float()
    torch.testing.assert_close(t, torch.nn.functional.normalize(x.detach() * mask / 0.7, dim=1, eps=1e-8))
    torch.testing.assert_close(build(tiny, dropout=0.0).unit_target(x), torch.nn.functional.normalize(x.detach(), dim=1))


def test_negatives_are_ignored_and_flagged(tiny):
    net = build(tiny)
    assert get_model("bm3").uses_negatives is False
    out = net()
    torch.manual_seed(3)
    a = net.loss(BATCH, out)
    torch.manual_seed(3)
    b = net.loss((BATCH[0], BATCH[1], torch.zeros(6, dtype=torch.long)), out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dropout_corrupts_targets_only_in_the_loss(tiny):
    net = build(tiny, dropout=0.5)
    out = net()
    torch.manual_seed(0)
    first = net.loss(BATCH, out)["rec"]
    second = net.loss(BATCH, out)["rec"]
    assert not torch.equal(first, second)  # fresh masks each call
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net().item, net().item)  # scoring is deterministic


def test_switches_and_validation(tiny):
    unit = build(tiny, feature_norm="l2").projectors["text"].features
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(tiny.n_items))
    torch.testing.assert_close(unit, torch.nn.functional.normalize(tiny.features["text"], dim=1))
    frozen = build(tiny, train_features=False)
    assert not frozen.projectors["image"].features.requires_grad
    assert "projectors.image.features" not in frozen.state_dict()
    assert build(tiny).modalities == ["image", "text"]
    plain = build(tiny, n_layers=0, modalities=[])
    with torch.no_grad():  # L = 0: h_I = 2 E_I, h_U = E_U
        h = plain().aux["encoder"]
        torch.testing.assert_close(h[tiny.n_users :], 2 * plain.item_emb)
    with pytest.raises(ValueError, match="dropout .* must be in \\[0, 1\\)"):
        build(tiny, dropout=1.0)
    with pytest.raises(ValueError, match="needs modality feature\\(s\\) audio"):
        build(tiny, modalities=["audio"])
    grids = {f.name: f.metadata.get("grid") for f in dataclasses.fields(get_model("bm3").Config)}
    assert grids["n_layers"] == [1, 2] and grids["dropout"] == [0.3, 0.5] and grids["reg_weight"] == [0.1, 0.01]


def test_smoke_run_trains_and_learns(tiny):
    cfg = resolve_config("bm3", tiny.name, {"epochs": 2, "threads": 1})
    result = run_experiment(cfg, [1], None, dataset=tiny, progress=False)
    assert result["status"] == "ok"
    assert 0.0 <= result["test"]["recall@20"] <= 1.0


def test_cosine_equals_cosine_similarity_bit_for_bit():
    from prismrec.losses import cosine, unit_rows

    gen = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e3):
        x = (torch.randn(300, 16, generator=gen) * scale)
        x[3] = x[1]        # a repeated row
        x[5] = 0.0         # a zero row: the norm's gradient is 0 there
        x[7] = 1e-12       # a norm below eps: clamped in the forward, not in the norm's backward
        x.requires_grad_(True)
        target = torch.randn(300, 16, generator=gen)
        g = torch.randn(300, generator=gen)
        want = torch.nn.functional.cosine_similarity(x, target, dim=-1)
        (want_grad,) = torch.autograd.grad(want, x, g)
        got = cosine(x, unit_rows(target))
        (got_grad,) = torch.autograd.grad(got, x, g)
        assert torch.equal(got, want) and torch.equal(got_grad, want_grad), scale


def _previous_batch_loss(net, batch):
    """BM3's batch loss as the unfused nodes compute it (the propagation node, then
    ``_EncoderHead``; the predictor's rows sliced; a boolean dropout mask; a cosine node per pair
    and autograd's mean, 1 - and weight): the reference the fused path must equal to rounding."""
    from prismrec.losses import cosine, unit_rows
    from prismrec.nn.residual_encoder import _EncoderHead, unique
    from prismrec.nn import lightgcn

    def target(rows):
        rows = rows.detach()
        p = net.config.dropout
        return rows if p == 0.0 else rows * (torch.rand(rows.shape) >= p) / (1.0 - p)

    users, u_at = unique(batch[0], net.n_users)
    items, i_at = unique(batch[1], net.n_items)
    y = lightgcn(net.adjacency, torch.cat([net.user_emb, net.item_emb]), net.config.n_layers)
    index = torch.cat([users, items + net.n_users])
    _, rows, norm_u, norm_i = _EncoderHead.apply(y, net.item_emb, index, net.n_users)
    g = net.predictor(rows)
    online_u, online_i = g[: len(users)].index_select(0, u_at), g[len(users):].index_select(0, i_at)
    # the terms with the loss module's cosine node, one per pair, and autograd's mean, 1 - and weight
    target_u = unit_rows(target(rows[: len(users)])).index_select(0, u_at)
    target_i = unit_rows(target(rows[len(users):])).index_select(0, i_at)
    cfg = net.config
    terms = {"rec": (1 - cosine(online_u, target_i).mean()) + (1 - cosine(online_i, target_u).mean()),
             "reg": cfg.reg_weight * (norm_u + norm_i) / net.n_items}
    for m, projector in net.projectors.items():
        h_m = projector.linear(projector.features.index_select(0, items))
        target_m = unit_rows(target(h_m)).index_select(0, i_at)
        online_m = net.predictor(h_m).index_select(0, i_at)
        terms[f"align_{m}"] = cfg.cl_weight * (1 - cosine(online_m, target_i).mean())
        terms[f"mask_{m}"] = cfg.cl_weight * (1 - cosine(online_m, target_m).mean())
    return terms


def _terms_and_grads(net, compute, seed=5):
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    terms = compute()
    sum(terms.values()).backward()
    return ({k: v.detach() for k, v in terms.items()},
            {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})


@pytest.mark.parametrize("n_layers, dropout, modalities",
                         [(1, 0.5, ["text", "image"]), (1, 0.3, ["image"]), (1, 0.0, []), (2, 0.5, ["text"])])
def test_batch_loss_equals_the_unfused_nodes_to_rounding(tiny, n_layers, dropout, modalities):
    """The one-layer encoder node (halved buffer), the split predictor rows, the in-place float
    dropout mask, the unscaled unit targets and the cosine-terms nodes give every term and gradient
    of the unfused nodes up to float rounding (the cosine terms' closeness to float64 is tested on
    their own below)."""
    net = build(tiny, n_layers=n_layers, dropout=dropout, modalities=modalities)
    with torch.no_grad():  # embeddings of trained magnitude, not only the init's
        for p in net.parameters():
            p.mul_(1 + torch.rand(p.shape))
    batch = (torch.tensor([0, 3, 3, 7, 12, 39, 5, 5]), torch.tensor([1, 1, 4, 9, 29, 0, 4, 2]), torch.zeros(8, dtype=torch.long))
    got, got_grads = _terms_and_grads(net, lambda: net.batch_loss(batch))
    want, want_grads = _terms_and_grads(net, lambda: _previous_batch_loss(net, batch))
    assert got.keys() == want.keys() and got_grads.keys() == want_grads.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)
    for n, g in want_grads.items():
        assert g.abs().sum() > 0, n
        torch.testing.assert_close(got_grads[n], g, rtol=1e-5, atol=1e-6 * float(g.abs().max()), msg=n)


def test_halved_encoder_equals_propagation_then_head_bit_for_bit(tiny):
    """Every output and every input gradient of the fused one-layer node, for any incoming
    gradients (missing ones included), equals the two unfused nodes'."""
    from prismrec.nn.residual_encoder import _EncoderHead, _HalvedEncoder
    from prismrec.nn import lightgcn

    net = build(tiny)
    gen = torch.Generator().manual_seed(1)
    index = torch.tensor([0, 5, 39, 40, 41, 69])
    for scale in (1e-3, 1.0, 30.0):
        e_u = (torch.randn(net.n_users, 64, generator=gen) * scale).requires_grad_(True)
        e_i = (torch.randn(net.n_items, 64, generator=gen) * scale).requires_grad_(True)
        upstream = (torch.randn(len(index), 64, generator=gen), torch.randn((), generator=gen), torch.randn((), generator=gen))
        for used in ((0, 1, 2), (0,), (1, 2)):
            fused = _HalvedEncoder.apply(e_u, e_i, index, net.adjacency)
            y = lightgcn(net.adjacency, torch.cat([e_u, e_i]), 1)
            plain = _EncoderHead.apply(y, e_i, index, net.n_users)[1:]
            assert all(torch.equal(a, b) for a, b in zip(fused, plain))
            grads = [torch.autograd.grad([out[k] for k in used], [e_u, e_i], [upstream[k] for k in used])
                     for out in (fused, plain)]
            assert all(torch.equal(a, b) for a, b in zip(*grads)), (scale, used)


def test_cosine_terms_equal_the_cosine_nodes_to_rounding():
    """Each term and ``x``'s gradient, for any weight and incoming gradients (missing ones too),
    as ``weight * (1 - losses.cosine(x, t).mean())`` per target, as close to the float64 values as
    those nodes in float32; zero and sub-eps rows included."""
    from prismrec.losses import cosine, cosine_terms, unit_rows

    def unfused(x, targets, weight):
        return [(1 - cosine(x, t).mean()) if weight is None else weight * (1 - cosine(x, t).mean()) for t in targets]

    gen = torch.Generator().manual_seed(2)
    for scale, weight in ((1e-3, None), (1.0, 2.0), (1e3, 0.7)):
        x = torch.randn(200, 16, generator=gen) * scale
        x[3] = x[1]
        x[5] = 0.0
        x[7] = 1e-12
        targets = [unit_rows(torch.randn(200, 16, generator=gen)) for _ in range(3)]
        upstream = [torch.randn((), generator=gen) for _ in targets]
        for used in ((0, 1, 2), (0, 2), (1,)):
            results = []
            for terms, dtype in ((cosine_terms, torch.float32), (unfused, torch.float32), (unfused, torch.float64)):
                xx = x.to(dtype, copy=True).requires_grad_(True)
                values = terms(xx, [t.to(dtype) for t in targets], weight)
                (grad,) = torch.autograd.grad([values[k] for k in used], xx, [upstream[k].to(dtype) for k in used])
                results.append([v.detach() for v in values] + [grad])
            assert all(no_worse(*trio) for trio in zip(*results)), (scale, used)
