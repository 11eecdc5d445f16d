"""MMGCN (ALGORITHMS.md 3.7): dense reference, switches, frozen reference tables, smoke run."""

import pytest
import torch

from prismrec.data import load_dataset
from prismrec.data.synthetic import write_planted_dataset
from tests.reference.mmgcn_ref import mmgcn_forward, mmgcn_loss
from tests.builders import build_model
from tests.test_masked_user_views import _user_batch, lonely  # noqa: F401  (the fixture)
from tests.test_row_paths import assert_batch_loss_is_the_full_loss, row_share  # noqa: F401  (the fixture)


def build(dataset, seed=0, **overrides):
    return build_model("mmgcn", dataset, seed, **overrides)


BATCH = (torch.tensor([0, 1, 5, 7, 7]), torch.tensor([3, 4, 5, 9, 11]), torch.tensor([6, 7, 8, 100, 150]))


def reference_params(net):
    leaf = lambda t: t.detach().double().clone().requires_grad_(True)  # noqa: E731
    params = []
    for gcn in net.gcns.values():
        params.append({
            "preference": leaf(gcn.preference),
            "mlp": (leaf(gcn.mlp.weight), leaf(gcn.mlp.bias)) if gcn.mlp is not None else None,
            "conv": [leaf(w) for w in gcn.conv],
            "linear": [(leaf(lin.weight), leaf(lin.bias)) for lin in gcn.linear],
            "gate": [(leaf(g.weight), leaf(g.bias)) for g in gcn.gate],
        })
    return leaf(net.id_emb), params


def pairs_of(net, ids, params):
    pairs = [(net.id_emb, ids)]
    for gcn, p in zip(net.gcns.values(), params):
        pairs.append((gcn.preference, p["preference"]))
        if gcn.mlp is not None:
            pairs += list(zip((gcn.mlp.weight, gcn.mlp.bias), p["mlp"]))
        pairs += list(zip(gcn.conv, p["conv"]))
        for ours, ref in zip(list(gcn.linear) + list(gcn.gate), p["linear"] + p["gate"]):
            pairs += list(zip((ours.weight, ours.bias), ref))
    return pairs


@pytest.mark.parametrize("modalities", [None, ["text"]])
def test_matches_dense_reference_forward_losses_and_gradients(planted, modalities):
    # train_embeddings=True so the gradients of E and P_m are compared too (the reference
    # computes them; it just never applies them).
    net = build(planted, reg_weight=0.1, modalities=modalities, train_embeddings=True)
    net.train()
    out = net()
    ids, params = reference_params(net)
    r = torch.from_numpy(planted.train.toarray()).double()
    feats = [planted.features[m].double() for m in net.modalities]
    ref = mmgcn_forward(r, ids, feats, params)
    n_users = planted.n_users
    torch.testing.assert_close(out.user.double(), ref[:n_users], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.item.double(), ref[n_users:], atol=1e-6, rtol=1e-5)

    terms = net.loss(BATCH, out)
    assert set(terms) == {"bpr", "reg"}
    bpr_ref, reg_ref = mmgcn_loss(ref, ids, params[0]["preference"], n_users, *BATCH, 0.1)
    torch.testing.assert_close(terms["bpr"].double(), bpr_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(terms["reg"].double(), reg_ref, atol=1e-8, rtol=1e-5)

    sum(terms.values()).backward()
    (bpr_ref + reg_ref).backward()
    for ours, theirs in pairs_of(net, ids, params):
        assert theirs.grad is not None and theirs.grad.abs().sum() > 0
        torch.testing.assert_close(ours.grad.double(), theirs.grad, atol=1e-7, rtol=1e-4)


def test_reference_default_keeps_ids_and_preferences_frozen_but_saved(planted):
    net = build(planted)
    names = {n for n, _ in net.named_parameters()}
    assert "id_emb" not in names and not any("preference" in n for n in names)
    state = net.state_dict()
    assert "id_emb" in state and "gcns.image.preference" in state  # random tables restore exactly
    assert "gcns.image.features" not in state  # raw features come from the dataset
    # Reference widths: a 256-d MLP for the first modality, raw features for the others.
    assert net.gcns["image"].mlp.out_features == 256 and net.gcns["text"].mlp is None
    assert net.gcns["text"].preference.shape == (planted.n_users, planted.features["text"].shape[1])
    terms = net.loss(BATCH, net())
    sum(terms.values()).backward()
    assert net.id_emb.grad is None


def test_switches_change_the_computation(planted):
    base = build(planted)
    base.eval()
    out = base()
    views = [out.aux[f"modality_{m}"] for m in base.modalities]
    torch.testing.assert_close(torch.cat([out.user, out.item]), sum(views) / 2)
    summed = build(planted, combine="sum")
    summed.eval()
    torch.testing.assert_close(torch.cat([summed().user, summed().item]), sum(views))
    for overrides in ({"aggr": "add"}, {"concat": False}, {"has_id": False}, {"latent_dims": [0, 8]}):
        other = build(planted, **overrides)
        other.eval()
        assert not torch.allclose(other().item, out.item), overrides
    assert build(planted, concat=False).gcns["text"].gate[0].in_features == planted.features["text"].shape[1]
    assert build(planted, latent_dims=[0, 8]).gcns["text"].mlp.out_features == 8
    # reg_preferences="all" adds every modality's preference table
    first, every = build(planted), build(planted, reg_preferences="all")
    extra = every.gcns["text"].preference.square().mean() * every.config.reg_weight
    torch.testing.assert_close(every.loss(BATCH, every())["reg"], first.loss(BATCH, first())["reg"] + extra)


@pytest.mark.parametrize("combine", ["mean", "sum"])
def test_row_path_under_a_modality_mask_is_the_full_loss(lonely, combine, row_share):
    """batch_loss's last layer over the batch's rows, masked: users without an image item, items
    lacking it (their mean over the present views) give loss(batch, forward())'s terms and gradients."""
    dataset, missing = lonely
    net = build(dataset, combine=combine, train_embeddings=True).train()
    assert net.present is not None and not net.present.all()
    assert_batch_loss_is_the_full_loss(net, _user_batch(dataset, missing))


def test_config_errors(planted, tmp_path):
    with pytest.raises(ValueError, match="latent_dims needs one non-negative width per modality"):
        build(planted, latent_dims=[256])
    with pytest.raises(ValueError, match="n_layers must be >= 1"):
        build(planted, n_layers=0)
    bare = load_dataset(write_planted_dataset(tmp_path / "bare", modalities={}))
    with pytest.raises(ValueError, match="mmgcn needs at least 1 modality;"):
        build(bare)
