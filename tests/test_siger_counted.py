"""SIGER's loss over a batch's distinct rows: :class:`prismrec.losses.CountedRows` and the noise
views of the rows read give the terms and gradients of the plain row sets and full views; the
noisy views of perturb_at="layers" start from the forward's purified rows."""

import pytest
import torch

from prismrec import losses
from prismrec.losses import counted_rows
from prismrec.nn import perturb
from tests.test_siger import _batch, _build

N, D, K, TAU = 40, 6, 2, 0.3


def _tables():
    """Views ``H`` (``K x N x d``) and anchors ``C`` (``N x d``), float64: the comparison is to 1e-12."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(K, N, D, generator=g, dtype=torch.float64).requires_grad_(),
            torch.randn(N, D, generator=g, dtype=torch.float64).requires_grad_())


def _row_sets():
    """Two row sets with many repeats (a batch's users, its items)."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 15, (50,), generator=g), torch.randint(15, N, (30,), generator=g)


TERMS = {
    "rows_infonce": lambda h, c, rows, present: losses.rows_infonce(h[0], c, rows, TAU, _fused(present)),
    "paired_views": lambda h, c, rows, present: losses.paired_views_infonce(h, h * 0.5 + c, rows, TAU, present),
    "anchor_A1": lambda h, c, rows, present: losses.anchored_infonce(h, c, rows, TAU, "A1", present=present),
    "anchor_A2": lambda h, c, rows, present: losses.anchored_infonce(h, c, rows, TAU, "A2", present=present),
    "anchor_A3": lambda h, c, rows, present: losses.anchored_infonce(h, c, rows, TAU, "A3", present=present),
    "anchor_A3_ungated": lambda h, c, rows, present: losses.anchored_infonce(h, c, rows, TAU, "A3", False, present),
}


def _fused(present):
    return None if present is None else present.any(dim=0)


def _value_and_grads(term, rows, present):
    h, c = _tables()
    value = term(h, c, rows, present)
    value.backward()
    return value.detach(), h.grad, c.grad


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", sorted(TERMS))
def test_counted_rows_give_the_terms_and_gradients_of_the_rows_with_repeats(name, masked):
    present = None
    if masked:  # view 0 missing on every third row, view 1 on every fifth
        present = torch.ones(K, N, dtype=torch.bool)
        present[0, ::3] = False
        present[1, ::5] = False
    plain = _row_sets()
    want = _value_and_grads(TERMS[name], plain, present)
    got = _value_and_grads(TERMS[name], tuple(map(counted_rows, plain)), present)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gemm_logsumexp_with_counts_is_the_logsumexp_over_the_repeated_keys():
    g = torch.Generator().manual_seed(2)
    a, c = (torch.randn(5, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    counts = torch.tensor([1, 3, 2, 1, 4])
    got = losses.gemm_logsumexp(a, c, counts)
    want = torch.logsumexp(a @ c.repeat_interleave(counts, dim=0).T, dim=1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn(5, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * weights).sum(), (a, c))
    expected = torch.autograd.grad((want * weights).sum(), (a, c))
    for x, y in zip(grads, expected):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode, gamma", [("modulus", 1.0), ("modulus", 0.0), ("fixed", 0.0)])
def test_rows_of_a_full_draw_are_the_full_views_rows(mode, gamma):
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(3))
    rows = torch.tensor([3, 3, 0, 17, 39])
    present = torch.arange(N) % 4 != 0
    for mask in (None, present):
        full = [perturb(x, 0.2, mode, torch.Generator().manual_seed(4), gamma=gamma, present=mask)]
        gen = torch.Generator().manual_seed(4)
        part = [perturb(x, 0.2, mode, gen, rows, gamma, mask, draw_all=True)]
        full.append(perturb(x, 0.2, mode, torch.Generator().manual_seed(4).set_state(gen.get_state())))
        part.append(perturb(x, 0.2, mode, gen))  # the generator advanced as for a full view
        assert torch.equal(part[0], full[0][rows])
        assert torch.equal(part[1], full[1])


def _rewinder(noise):
    """A function that sets ``noise``'s generator back to where it is now (unseeded: not created yet)."""
    state = None if noise.generator is None else noise.generator.get_state()

    def rewind():
        if state is None:
            noise.generator = None
        else:
            noise.generator.set_state(state)
    return rewind


@pytest.mark.parametrize("overrides", [
    {},
    {"perturb_target": "per_modality"},
    {"perturb_at": "layers"},
    {"perturb_at": "layers", "perturb_target": "per_modality"},
])
def test_siger_perturbation_views_of_the_rows_read_are_the_full_views_rows(planted, overrides):
    net = _build(planted, **overrides)
    net.train()
    nodes = torch.tensor([5, 5, 0, planted.n_users + 7, planted.n_users + 1])
    with torch.no_grad():
        out = net()
        rewind = _rewinder(net.noise)
        full = net.perturbation_views(out)
        rewind()
        rows = net.perturbation_views(out, nodes)
    for a, b in zip(rows, full):
        torch.testing.assert_close(a, b.index_select(1, nodes), rtol=1e-6, atol=1e-7)


def test_siger_loss_with_counted_rows_is_the_loss_of_the_batch(planted):
    """Every term of the model's loss against the same terms over the plain row sets (float64)."""
    net = _build(planted).double()
    net.train()
    batch = _batch(planted, size=64)
    u, i, _ = batch
    plain = (u, i + planted.n_users)
    counted = tuple(map(counted_rows, plain))
    out = net()
    h, c, s = out.aux["modality_views"], out.aux["behavior"], out.aux["modality"]
    cfg = net.config
    pairs = {
        "anchor": (net.anchor_loss(h, c, counted), net.anchor_loss(h, c, plain)),
        "align": (losses.rows_infonce(s, c, counted, cfg.tau_b), losses.rows_infonce(s, c, plain, cfg.tau_b)),
    }
    rewind = _rewinder(net.noise)
    views = net.perturbation_views(out)  # the full views, then the same draws for the rows alone
    rewind()
    pairs["perturb"] = (net.perturbation_loss(out, counted),
                        losses.paired_views_infonce(*views, plain, cfg.tau_p))
    params = [p for p in net.parameters() if p.requires_grad]
    for name, (got, want) in pairs.items():
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)
        g1 = torch.autograd.grad(got, params, retain_graph=True, allow_unused=True)
        g2 = torch.autograd.grad(want, params, retain_graph=True, allow_unused=True)
        for a, b in zip(g1, g2):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


def test_layer_noise_views_from_the_forwards_purified_rows_are_the_recomputed_ones(planted):
    """perturb_at=layers: the noisy views start from the forward's ``H_m⁰`` (computed once)."""
    net = _build(planted, perturb_at="layers", perturb_target="per_modality")
    net.train()
    out = net()
    assert "purified" in out.aux
    rewind = _rewinder(net.noise)
    shared = net.perturbation_views(out)
    rewind()
    del out.aux["purified"]
    recomputed = net.perturbation_views(out)
    for a, b in zip(shared, recomputed):
        assert torch.equal(a, b)
