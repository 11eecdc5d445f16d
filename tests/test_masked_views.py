"""Missing views in the contrastive and alignment terms (``present=`` of prismrec.losses): a row
whose modality view is missing (zero-filled, ``impute="zero"``) is neither a query nor a key, the
mean runs over the other rows, and the row gets no gradient. Checked by hand against plain torch
on tiny batches, in GUME (``vt``, ``bm``) and SIGER (``anchor``, ``perturb``, ``align``), and over
two gloo ranks (the global batch's present rows)."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prismrec import losses
from tests.gloo_ranks import grad_rows, run_two_ranks

TAU = 0.3


def _ref_infonce(p: torch.Tensor, q: torch.Tensor, tau: float, weights=None) -> torch.Tensor:
    """Plain InfoNCE of row-aligned ``p``, ``q``: ``-log softmax_b'(cos(p_b, q_b')/τ)`` at ``b' = b``."""
    logits = F.cosine_similarity(p.unsqueeze(1), q.unsqueeze(0), dim=-1) / tau
    rows = -torch.log_softmax(logits, dim=1).diagonal()
    return rows.mean() if weights is None else (weights * rows).mean()


def _views(seed=0, k=2, n=6, d=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


def test_an_item_without_its_image_is_left_out_of_infonce_by_hand():
    h, c = _views()
    image = h[0].clone()
    image[2] = 0.0  # item 2 has no image: its zero-filled row
    image.requires_grad_()
    anchor = c.clone().requires_grad_()
    present = torch.tensor([True, True, False, True, True, True])
    keep = [0, 1, 3, 4, 5]
    loss = losses.infonce(image, anchor, TAU, present=present)
    torch.testing.assert_close(loss, _ref_infonce(image[keep], anchor[keep], TAU), rtol=1e-12, atol=1e-12)
    loss.backward()
    assert not image.grad[2].any() and not anchor.grad[2].any()  # neither query nor candidate
    assert image.grad[keep].abs().sum() > 0 and anchor.grad[keep].abs().sum() > 0
    # unmasked, the zero row is scored (its cosine is 0 with every key) and changes the loss
    assert not torch.isclose(losses.infonce(image, anchor, TAU), loss)
    # with weights (SIGER's A3 gate): weighted mean over the present rows
    w = torch.rand(6, dtype=torch.float64)
    torch.testing.assert_close(losses.infonce(image, anchor, TAU, w, present),
                               _ref_infonce(image[keep], anchor[keep], TAU, w[keep]), rtol=1e-12, atol=1e-12)


def test_every_row_present_equals_no_mask_and_none_present_is_zero():
    h, c = _views(1)
    everyone = torch.ones(6, dtype=torch.bool)
    torch.testing.assert_close(losses.infonce(h[0], c, TAU, present=everyone), losses.infonce(h[0], c, TAU))
    nobody = torch.zeros(6, dtype=torch.bool)
    p = h[0].clone().requires_grad_()
    zero = losses.infonce(p, c, TAU, present=nobody)
    zero.backward()
    assert float(zero.detach()) == 0.0 and not p.grad.any()
    with pytest.raises(ValueError, match=r"one flag per row \(6\)"):
        losses.infonce(h[0], c, TAU, present=everyone[:5])


def test_rows_infonce_masks_each_row_set_by_hand():
    h, c = _views(2, n=8)
    present = torch.tensor([True, True, True, False, True, False, True, True])  # nodes 3 and 5 missing
    users, items = torch.tensor([0, 1, 2, 1]), torch.tensor([3, 4, 5, 6, 7])
    got = losses.rows_infonce(h[0], c, (users, items), TAU, present)
    want = _ref_infonce(h[0][users], c[users], TAU) + _ref_infonce(h[0][[4, 6, 7]], c[[4, 6, 7]], TAU)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _ref_joint(views, keys, present, tau):
    """A2 by hand: row b scored with its present views; rows with none left out entirely."""
    rows = [b for b in range(keys.shape[0]) if present[:, b].any()]
    out = []
    for b in rows:
        logits = torch.stack([sum(F.cosine_similarity(views[m, b], keys[k], dim=0)
                                  for m in range(len(views)) if present[m, b]) / tau for k in rows])
        out.append(torch.logsumexp(logits, 0) - logits[rows.index(b)])
    return torch.stack(out).mean()


def test_anchor_forms_leave_out_the_missing_views_by_hand():
    h, c = _views(3)
    present = torch.ones(2, 6, dtype=torch.bool)
    present[0, 1] = present[0, 4] = False  # items 1 and 4 lack their image
    present[1, 4] = False  # item 4 lacks its text too: no view at all
    everything = (torch.arange(6),)
    a1 = losses.anchored_infonce(h, c, everything, TAU, "A1", present=present)
    want = (_ref_infonce(h[0][[0, 2, 3, 5]], c[[0, 2, 3, 5]], TAU) + _ref_infonce(h[1][[0, 1, 2, 3, 5]], c[[0, 1, 2, 3, 5]], TAU)) / 2
    torch.testing.assert_close(a1, want, rtol=1e-12, atol=1e-12)
    a2 = losses.anchored_infonce(h, c, everything, TAU, "A2", present=present)
    torch.testing.assert_close(a2, _ref_joint(h, c, present, TAU), rtol=1e-12, atol=1e-12)
    both = [0, 2, 3, 5]
    gate = torch.sigmoid(F.cosine_similarity(h[0], c) + F.cosine_similarity(h[1], c))
    a3 = losses.anchored_infonce(h, c, everything, TAU, "A3", present=present)
    torch.testing.assert_close(a3, _ref_infonce(h[0][both], h[1][both], TAU, gate[both]), rtol=1e-12, atol=1e-12)
    # the missing views get no gradient from any form
    for form in ("A1", "A2", "A3"):
        views = h.clone().requires_grad_()
        losses.anchored_infonce(views, c, everything, TAU, form, present=present).backward()
        assert not views.grad[~present].any(), form
        assert views.grad[present].abs().sum() > 0, form
    # all present: the unmasked values
    full = torch.ones_like(present)
    for form in ("A1", "A2", "A3"):
        torch.testing.assert_close(losses.anchored_infonce(h, c, everything, TAU, form, present=full),
                                   losses.anchored_infonce(h, c, everything, TAU, form))


def test_paired_views_contrast_each_view_on_its_present_rows():
    first, _ = _views(4)
    second, _ = _views(5)
    present = torch.tensor([[True, False, True, True, True, True], [True, True, True, True, False, False]])
    rows = (torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]))
    got = losses.paired_views_infonce(first, second, rows, TAU, present)
    want = (_ref_infonce(first[0][[0, 2]], second[0][[0, 2]], TAU) + _ref_infonce(first[0][3:], second[0][3:], TAU)
            + _ref_infonce(first[1][:3], second[1][:3], TAU) + _ref_infonce(first[1][[3]], second[1][[3]], TAU)) / 2
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_moment_gap_runs_over_each_views_present_rows_by_hand():
    h, _ = _views(6, k=3, n=7)
    h = h.clone()
    h[0, 5] = 0.0  # zero-filled rows
    h[2, 1] = 0.0
    views = h.clone().requires_grad_()
    present = torch.ones(3, 7, dtype=torch.bool)
    present[0, 5] = present[2, 1] = False
    got = losses.moment_gap(views, present)
    parts = [h[m][present[m]] for m in range(3)]
    mean, var = [x.mean() for x in parts], [x.var() for x in parts]  # unbiased, over the present entries
    want = sum((var[a] - var[b]).abs() + (mean[a] - mean[b]).abs() for a, b in ((0, 1), (0, 2), (1, 2))) / 3
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got.backward()
    assert not views.grad[~present].any() and views.grad[present].abs().sum() > 0
    assert not torch.isclose(losses.moment_gap(h), got)
    torch.testing.assert_close(losses.moment_gap(h, torch.ones_like(present)), losses.moment_gap(h))


def test_entity_weighted_alignment_weighs_the_present_rows_alone():
    h, c = _views(7, n=7)
    present = torch.tensor([True, False, True, True, False, True, True])
    for mode, sign in (("softmax", -1), ("linear", 1), ("none", 1)):
        p = h[0].clone().requires_grad_()
        got = losses.entity_weighted_infonce(p, c, TAU, mode, sign, 0.5, present)
        want = losses.entity_weighted_infonce(h[0][present], c[present], TAU, mode, sign, 0.5)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        got.backward()
        assert not p.grad[~present].any(), mode


def test_modulus_noise_takes_its_mean_norm_over_present_rows_by_hand():
    from prismrec.nn.perturb import perturb

    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 2.0], [6.0, -8.0]], dtype=torch.float64)
    present = torch.tensor([True, False, True, True])
    got = perturb(x, 0.1, "modulus", torch.Generator().manual_seed(5), gamma=1.0, present=present)
    r = torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    norms = x.norm(dim=1, keepdim=True)
    m = norms[present].mean()  # (5 + √5 + 10) / 3: the zero row does not lower it
    want = x + 0.1 * norms * (norms / m) * torch.sign(x) * r / r.norm(dim=1, keepdim=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    unmasked = perturb(x, 0.1, "modulus", torch.Generator().manual_seed(5), gamma=1.0)
    assert not torch.allclose(unmasked[present], got[present])  # over all rows, m is smaller
    same = perturb(x, 0.1, "modulus", torch.Generator().manual_seed(5), gamma=1.0, present=torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(same, unmasked)


def test_layer_noise_gets_each_modalitys_item_presence():
    from tests.test_multiview_presence import _encoder

    seen = []

    def noise(x, present=None):
        seen.append(None if present is None else present.tolist())
        return x

    _encoder("mean").modality_views(noise=noise)
    assert seen == [None, None]  # n_ii_layers = 1, two modalities, no mask
    seen.clear()
    _encoder("mean", np.array([[True, True], [True, False], [True, True]])).modality_views(noise=noise)
    assert seen == [[True, True, True], [True, False, True]]


# ------------------------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def dropped(tmp_path_factory):
    """Planted data with 20 % of the image rows missing, zero-filled (masked) and mean-imputed."""
    from prismrec.data import load_dataset
    from prismrec.data.derive import corrupt_modality
    from prismrec.data.synthetic import write_planted_dataset

    src = write_planted_dataset(tmp_path_factory.mktemp("masked") / "p", n_users=60, n_items=50, per_user=8, seed=1)
    folder = corrupt_modality(src, "p-drop", "image", "drop", 0.2, seed=4)
    missing = ~np.load(folder / "image_mask.npy")
    assert missing.sum() == 10
    return load_dataset(folder, impute="zero"), load_dataset(folder, impute="mean"), missing


def _model(name, dataset, **settings):
    from prismrec.experiment.config import resolve_config
    from prismrec.models import get_model
    from prismrec.train import seed_everything

    cfg = resolve_config(name, dataset.name, settings)
    seed_everything(0)
    return get_model(name)(dataset, cfg.params).train()


def _batch(dataset, missing):
    """A batch whose positives include items without their image."""
    g = torch.Generator().manual_seed(3)
    u = torch.randint(0, dataset.n_users, (24,), generator=g)
    i = torch.randint(0, dataset.n_items, (24,), generator=g)
    i[:3] = torch.from_numpy(np.flatnonzero(missing)[:3])
    j = torch.randint(0, dataset.n_items, (24,), generator=g)
    return u, i, j


@pytest.mark.parametrize("name, settings", [("gume", {}), ("egra", {"backbone": "gume", "item_links": "raw"})])
def test_gume_vt_reads_only_present_rows_and_bm_is_unmasked_with_a_modality_left(dropped, name, settings):
    zero, mean, missing = dropped
    net = _model(name, zero, **settings)
    assert net.encoder.fused_presence() is None  # every item keeps its text: M is a real view
    out = net()
    h = out.aux["modality_views"]
    h.retain_grad()
    terms = net.loss(_batch(zero, missing), out)
    n_u = zero.n_users
    image_rows = np.concatenate([np.arange(n_u), n_u + np.flatnonzero(~missing)])
    with torch.no_grad():
        image, text = h[0][image_rows], h[1]
        want = (image.var() - text.var()).abs() + (image.mean() - text.mean()).abs()
    torch.testing.assert_close(terms["vt"], net.config.vt_weight * want)
    assert not torch.isclose(terms["vt"], net.config.vt_weight * losses.moment_gap(h.detach()))
    terms["vt"].backward()
    assert not h.grad[0, n_u + np.flatnonzero(missing)].any()  # the zero-filled rows: no gradient
    assert h.grad[0, image_rows].abs().sum() > 0 and h.grad[1].abs().sum() > 0
    # mean imputation: the filled rows are estimates, nothing is masked
    plain = _model(name, mean, **settings)
    assert plain.encoder.presence() is None and plain.encoder.fused_presence() is None


def test_gume_row_path_equals_the_full_loss_under_a_mask(dropped, monkeypatch):
    from prismrec.nn import propagation
    from tests.test_row_paths import _terms_and_grads

    zero, _, missing = dropped
    net = _model("gume", zero)
    batch = _batch(zero, missing)
    net.batch_loss(batch)  # creates the noise generator (made lazily) before its state is saved
    for share in (1.0, 0.0):
        monkeypatch.setattr(propagation, "ROW_SHARE", share)
        got, got_grads = _terms_and_grads(net, lambda: net.batch_loss(batch))
        want, want_grads = _terms_and_grads(net, lambda: net.loss(batch, net()))
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=f"term {k}")
        for n, g in want_grads.items():
            torch.testing.assert_close(got_grads[n], g, rtol=1e-5, atol=1e-7, msg=f"gradient of {n}")


@pytest.mark.parametrize("form", ["A1", "A2", "A3"])
def test_siger_anchor_reads_only_present_views(dropped, form):
    zero, _, missing = dropped
    net = _model("siger", zero, anchor_form=form)
    out = net()
    h, c = out.aux["modality_views"], out.aux["behavior"].detach()
    u, i, _ = batch = _batch(zero, missing)
    term = net.loss(batch, out)["anchor"]
    present = net.encoder.presence()
    rows = (u, i + zero.n_users)
    with torch.no_grad():
        if form == "A1":
            want = sum(_ref_infonce(h[m][r][present[m][r]], c[r][present[m][r]], 0.2) for m in range(2) for r in rows) / 2
        elif form == "A2":
            want = sum(_ref_joint(h[:, r], c[r], present[:, r], 0.2) for r in rows)
        else:
            gate = torch.sigmoid(F.cosine_similarity(h[0], c) + F.cosine_similarity(h[1], c))
            want = sum(_ref_infonce(h[0][r][present[0][r]], h[1][r][present[0][r]], 0.2, gate[r][present[0][r]])
                       for r in rows)
    torch.testing.assert_close(term, net.config.lambda_a * want, rtol=1e-5, atol=1e-7)
    (grad,) = torch.autograd.grad(term, h)
    assert not grad[0, zero.n_users + np.flatnonzero(missing)].any()
    assert grad[0, (i + zero.n_users)[~torch.from_numpy(missing)[i]]].abs().sum() > 0


def test_siger_per_modality_perturbation_skips_missing_views(dropped):
    zero, _, missing = dropped
    net = _model("siger", zero, perturb_target="per_modality", lambda_a=0.0, lambda_b=0.0)
    out = net()
    h = out.aux["modality_views"]
    term = net.loss(_batch(zero, missing), out)["perturb"]
    (grad,) = torch.autograd.grad(term, h)
    assert not grad[0, zero.n_users + np.flatnonzero(missing)].any()
    assert grad[0, :zero.n_users].abs().sum() > 0 and grad[1].abs().sum() > 0


@pytest.mark.parametrize("at", ["output", "layers"])
@pytest.mark.parametrize("target", ["fused", "per_modality"])
def test_siger_perturbation_switches_run_under_a_mask(dropped, at, target):
    zero, _, missing = dropped
    for modalities in (["image", "text"], ["image"]):
        net = _model("siger", zero, perturb_at=at, perturb_target=target, modalities=modalities)
        terms = net.loss(_batch(zero, missing), net())
        assert all(torch.isfinite(t) for t in terms.values()) and terms["perturb"] > 0
        sum(terms.values()).backward()


def test_siger_on_the_dropped_modality_alone_leaves_empty_fused_rows_out(dropped):
    """One modality: an item without it fuses to a row of 0, which align and perturb skip."""
    zero, _, missing = dropped
    net = _model("siger", zero, modalities=["image"], lambda_a=0.0)
    fused = net.encoder.fused_presence()
    np.testing.assert_array_equal(fused[zero.n_users:].numpy(), ~missing)
    out = net()
    s, c = out.aux["modality"], out.aux["behavior"]
    assert not s[zero.n_users + np.flatnonzero(missing)].any()  # the zero rows of S
    u, i, _ = batch = _batch(zero, missing)
    terms = net.loss(batch, out)
    items = i + zero.n_users
    keep = items[fused[items]]
    with torch.no_grad():
        want = _ref_infonce(s[u], c[u], 0.2) + _ref_infonce(s[keep], c[keep], 0.2)
    torch.testing.assert_close(terms["align"], net.config.lambda_b * want, rtol=1e-5, atol=1e-7)
    for name in ("align", "perturb"):
        (grad,) = torch.autograd.grad(terms[name], s, retain_graph=True)
        assert not grad[zero.n_users + np.flatnonzero(missing)].any(), name


def test_encoder_fused_presence_marks_nodes_without_any_modality():
    from tests.test_multiview_presence import _encoder

    assert _encoder("mean").fused_presence() is None
    assert _encoder("mean", np.array([[True, True], [True, False], [True, True]])).fused_presence() is None
    enc = _encoder("mean", np.array([[True, True], [False, False], [True, True]]))
    np.testing.assert_array_equal(enc.fused_presence().numpy(), [True, True, True, False, True])
    np.testing.assert_array_equal(enc.fused_presence(np.array([1, 3])).numpy(), [True, False])
    assert "fused_present" not in enc.state_dict()


# ------------------------------------------------------------------------- two processes

RANK_BODY = """
from tests.test_masked_views import MASKED_TERMS, MASKS, masked_inputs
from tests.gloo_ranks import grad_rows
for mask in MASKS:
    for name, term in MASKED_TERMS.items():
        mine, weight = distributed.shard(masked_inputs(mask), env)
        p, q, k, present = mine
        p, q, k = (x.detach().requires_grad_() for x in (p, q, k))
        value = term(p, q, k, present) * weight
        value.backward()
        total = distributed.allreduce_sum(value.detach(), env)
        grads = [None] * env.world_size
        torch.distributed.all_gather_object(grads, [grad_rows(x) for x in (p, q, k)])
        result[f"{name}/{mask}"] = {"value": float(total), "grads": [sum((g[j] for g in grads), []) for j in range(3)]}
"""

# 7 rows, shares of 4 and 3: rows missing in both shares, then the second share with no present row
MASKS = {"mixed": [[1, 1], [0, 1], [1, 1], [1, 0], [1, 1], [0, 0], [1, 1]],
         "second-empty": [[1, 1], [0, 1], [1, 1], [1, 1], [0, 0], [0, 0], [0, 0]]}


def masked_inputs(mask: str) -> tuple[torch.Tensor, ...]:
    """Three row-aligned float64 batch matrices and a ``B x 2`` presence (views ``p`` and ``k``)."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    return (*rows, torch.tensor(MASKS[mask], dtype=torch.bool))


def _all(p):
    return (torch.arange(len(p)),)


MASKED_TERMS = {
    "infonce": lambda p, q, k, m: losses.infonce(p, q, TAU, present=m[:, 0]),
    "infonce_weighted": lambda p, q, k, m: losses.infonce(p, q, TAU, k[:, 0].abs(), m[:, 0]),
    "rows_infonce": lambda p, q, k, m: losses.rows_infonce(p, q, _all(p), TAU, m[:, 0]),
    "anchored_a1": lambda p, q, k, m: losses.anchored_infonce(torch.stack([p, k]), q, _all(p), TAU, "A1", present=m.T),
    "anchored_a2": lambda p, q, k, m: losses.anchored_infonce(torch.stack([p, k]), q, _all(p), TAU, "A2", present=m.T),
    "anchored_a3": lambda p, q, k, m: losses.anchored_infonce(torch.stack([p, k]), q, _all(p), TAU, "A3", present=m.T),
    "entity_softmax": lambda p, q, k, m: losses.entity_weighted_infonce(p, q, TAU, "softmax", -1, 0.5, m[:, 0]),
    "entity_linear": lambda p, q, k, m: losses.entity_weighted_infonce(p, q, TAU, "linear", 1, 0.5, m[:, 0]),
    "paired": lambda p, q, k, m: losses.paired_views_infonce(torch.stack([p, k]), torch.stack([q, q]), _all(p), TAU,
                                                             m.T),
}


def test_masked_terms_over_two_gloo_ranks_equal_one_process(tmp_path):
    two = run_two_ranks(RANK_BODY, tmp_path)
    for mask in MASKS:
        for name, term in MASKED_TERMS.items():
            p, q, k, present = masked_inputs(mask)
            p, q, k = (x.requires_grad_() for x in (p, q, k))
            value = term(p, q, k, present)
            value.backward()
            got = two[f"{name}/{mask}"]
            assert got["value"] == pytest.approx(float(value.detach()), abs=1e-12), (name, mask)
            for g2, x in zip(got["grads"], (p, q, k)):
                want = torch.tensor(grad_rows(x), dtype=torch.float64)
                assert torch.allclose(torch.tensor(g2, dtype=torch.float64), want, atol=1e-12), (name, mask)
