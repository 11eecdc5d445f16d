import math

import pytest
import torch
import torch.nn.functional as F

from prismrec.losses import (
    BatchShares,
    all_keys_infonce,
    bpr_loss,
    counted_rows,
    emb_norm,
    gemm_logsumexp,
    half_sq,
    infonce,
    infonce_rows,
    joint_infonce_rows,
    l2_reg,
    normalized,
    unit_bound,
    use_batch_shares,
)


def _cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def _infonce_row_reference(p, q, b, tau):
    """-log softmax over b' of cos(p_b, q_b')/tau, at b' = b, one row at a time in Python."""
    logits = [_cos(p[b], q[k]) / tau for k in range(q.shape[0])]
    return math.log(sum(math.exp(x) for x in logits)) - logits[b]


def test_infonce_rows_match_per_row_reference():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    rows = infonce_rows(p, q, 0.3)
    ref = torch.tensor([_infonce_row_reference(p, q, b, 0.3) for b in range(7)], dtype=torch.float64)
    assert torch.allclose(rows, ref, atol=1e-12)
    weights = torch.rand(7, generator=g, dtype=torch.float64)
    assert torch.isclose(infonce(p, q, 0.3, weights), (weights * ref).mean(), atol=1e-12)


def test_gemm_logsumexp_values_and_gradients_match_autograd():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gemm_logsumexp, (a, c))
    weights = torch.randn(6, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad((gemm_logsumexp(a, c) * weights).sum(), (a, c))
    ref = torch.autograd.grad((torch.logsumexp(a @ c.T, dim=1) * weights).sum(), (a, c))
    for x, y in zip(ours, ref):
        assert torch.allclose(x, y, atol=1e-12)
    # Large logits: the shift keeps it finite where a naive exp would overflow.
    big = gemm_logsumexp(a.detach() * 1e3, c.detach())
    assert torch.isfinite(big).all()
    assert torch.allclose(big, torch.logsumexp(1e3 * a.detach() @ c.detach().T, dim=1))


def test_gemm_logsumexp_unshifted_near_its_limit_is_exact_in_float32():
    """Unit rows at 1/τ = 30 (the largest bound exponentiated without a shift): logits of +-30 give
    torch's logsumexp in float32; just above, the shift by the exact row maxima takes over."""
    g = torch.Generator().manual_seed(3)
    c = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    for scale in (30.0, 30.5):
        a = torch.cat([c[:3], -c[:3]]) * scale  # rows at the top and at the bottom of their range
        torch.testing.assert_close(gemm_logsumexp(a, c), torch.logsumexp(a @ c.T, dim=1), rtol=1e-6, atol=1e-5)


def test_gemm_logsumexp_with_a_known_bound_is_bit_identical():
    """InfoNCE's unit rows given their bound (no norms computed): the same branch, values and
    gradients bit for bit; a bound above the limit falls back to computing the norms."""
    g = torch.Generator().manual_seed(4)
    for tau in (0.2, 0.05, 1 / 30):
        a0 = torch.randn(40, 64, generator=g) * 3
        c0 = torch.randn(55, 64, generator=g)
        counts = torch.randint(1, 4, (55,), generator=g).float()
        outs = []
        for bound in (None, unit_bound(1.0 / tau)):
            a, c = a0.clone().requires_grad_(), c0.clone().requires_grad_()
            value = gemm_logsumexp(normalized(a, tau), normalized(c), counts, bound)
            (value * torch.arange(40.0)).sum().backward()
            outs.append((value.detach(), a.grad, c.grad))
        for x, y in zip(*outs):
            assert torch.equal(x, y)


def test_counted_rows_are_the_sorted_distinct_ids_and_their_counts():
    g = torch.Generator().manual_seed(5)
    for rows in (torch.randint(0, 3000, (2048,), generator=g), torch.tensor([4, 4, 0]), torch.zeros(0, dtype=torch.long)):
        got = counted_rows(rows)
        want = torch.unique(rows, return_counts=True)
        assert torch.equal(got.index, want[0]) and torch.equal(got.counts, want[1])


def test_gemm_logsumexp_gradient_only_where_needed():
    a = torch.randn(3, 2, requires_grad=True)
    c = torch.randn(4, 2)
    gemm_logsumexp(a, c).sum().backward()
    assert a.grad is not None and a.grad.shape == a.shape


def test_joint_infonce_reduces_to_infonce_and_matches_reference():
    g = torch.Generator().manual_seed(2)
    views = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    keys = torch.randn(5, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(joint_infonce_rows(views[:1], keys, 0.5), infonce_rows(views[0], keys, 0.5))
    ref = []
    for b in range(5):
        logits = [sum(_cos(views[m, b], keys[k]) for m in range(3)) / 0.5 for k in range(5)]
        ref.append(math.log(sum(math.exp(x) for x in logits)) - logits[b])
    assert torch.allclose(joint_infonce_rows(views, keys, 0.5), torch.tensor(ref, dtype=torch.float64))


def test_bpr_and_regularisers_equal_their_formulas():
    u, i, j = (torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[0.5, 0.5], [1.0, 1.0]]),
               torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    diffs = [(1 * 0.5 + 2 * 0.5) - (1 * 2 + 0), (0 - 1) - (0 - 2)]
    expected = sum(-math.log(1 / (1 + math.exp(-x))) for x in diffs) / 2
    assert bpr_loss(u, i, j).item() == pytest.approx(expected)
    assert half_sq(u, i).item() == pytest.approx(0.5 * (1 + 4 + 0 + 1 + 0.25 + 0.25 + 1 + 1) / 2)
    assert emb_norm(u, i).item() == pytest.approx((math.sqrt(6) + math.sqrt(2.5)) / 2)
    assert l2_reg("half_sq", u).item() == pytest.approx(half_sq(u).item())
    with pytest.raises(ValueError, match="reg_form must be one of"):
        l2_reg("l1", u)


def test_pseudo_positives_match_the_masked_second_top_k():
    """P_x = top-k of Σ_v q_v + q_x; Q_x = top-k of q_x with P_x masked out (the reference's way)."""
    from prismrec.losses import pseudo_positives

    torch.manual_seed(0)
    unit = torch.nn.functional.normalize(torch.randn(3, 40, 8), dim=-1)
    items = torch.tensor([0, 5, 7, 39, 12])
    got = pseudo_positives(unit, items, 4)
    q = torch.softmax(unit[:, items] @ unit.transpose(1, 2), dim=-1)
    for x, (multi, single) in enumerate(got):
        want_multi = torch.topk(q.sum(0) + q[x], 4, dim=1).indices
        want_single = torch.topk(q[x].scatter(1, want_multi, 0.0), 4, dim=1).indices
        assert torch.equal(multi, want_multi)
        assert torch.equal(single, want_single)
        assert not (single.unsqueeze(2) == multi.unsqueeze(1)).any()


def _autograd_bpr(user, pos, neg):
    """``bpr_loss`` as plain autograd records it (the reference of its one-node form)."""
    diff = (user * pos).sum(dim=1) - (user * neg).sum(dim=1)
    return torch.nn.functional.softplus(-diff).mean()


def _autograd_emb_norm(*rows):
    """``emb_norm`` as plain autograd records it (the reference of its one-node form)."""
    return sum(torch.linalg.norm(x) for x in rows) / rows[0].shape[0]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor: equality here is bit-identity (the sign of zero included)."""
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _value_and_grads(fn, rows, upstream):
    leaves = [x.clone().requires_grad_() for x in rows]
    value = fn(*leaves)
    (value * upstream).backward()
    return value.detach(), [x.grad for x in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])  # 30: margins beyond softplus's threshold (20)
def test_bpr_loss_is_bit_identical_to_autograd(dtype, scale):
    g = torch.Generator().manual_seed(4)
    rows = [torch.randn(257, 64, generator=g, dtype=dtype) * scale for _ in range(3)]
    rows[0][:5] = 0.0  # rows whose margin is exactly 0
    for upstream in (1.0, 1e-4, -3.0):
        ours, ref = _value_and_grads(bpr_loss, rows, upstream), _value_and_grads(_autograd_bpr, rows, upstream)
        assert torch.equal(_bits(ours[0]), _bits(ref[0]))
        for a, b in zip(ours[1], ref[1]):
            assert torch.equal(_bits(a), _bits(b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emb_norm_is_bit_identical_to_autograd_including_an_all_zero_input(dtype):
    g = torch.Generator().manual_seed(5)
    rows = [torch.randn(300, 64, generator=g, dtype=dtype) for _ in range(3)]
    cases = [rows, [rows[0], torch.zeros(300, 64, dtype=dtype), rows[2]], [torch.zeros(300, 64, dtype=dtype)]]
    for case in cases:
        for upstream in (1.0, 1e-4, -2.0):
            ours = _value_and_grads(emb_norm, case, upstream)
            ref = _value_and_grads(_autograd_emb_norm, case, upstream)
            assert torch.equal(_bits(ours[0]), _bits(ref[0]))
            for a, b in zip(ours[1], ref[1]):
                assert torch.isfinite(a).all()
                assert torch.equal(_bits(a), _bits(b))
    zero = torch.zeros(4, 3, requires_grad=True)
    emb_norm(zero).backward()
    assert torch.equal(zero.grad, torch.zeros(4, 3))  # not NaN: the zero check on the scalar norm


def test_norm_gradient_without_a_host_sync_equals_autograds():
    """The accelerators' form of the zero check (no host read) on a CPU: the same values."""
    from prismrec.losses import _norm_grad

    g = torch.tensor(-3e-3)
    for x in (torch.randn(40, 8), torch.zeros(40, 8)):
        leaf = x.clone().requires_grad_()
        (torch.linalg.norm(leaf) * g).backward()
        got = _norm_grad(x, torch.linalg.vector_norm(x), g, on_host=False)
        assert torch.isfinite(got).all() and torch.equal(got, leaf.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [None, 0.2, 0.07])
def test_normalized_is_bit_identical_to_autograds_normalize(dtype, tau):
    """``normalized`` (unit rows, one node) against ``F.normalize(x, dim=-1) / τ``: values
    and gradients bit for bit, with an all-zero row and a row below ``F.normalize``'s ``eps``."""
    g = torch.Generator().manual_seed(7)
    for scale in (1e-3, 1.0, 50.0):
        x = torch.randn(301, 64, generator=g, dtype=dtype) * scale
        x[3], x[7] = 0.0, 1e-14
        for rows in (x, x[8:], x[1:].view(3, 100, 64)):  # with the clamped rows, without, K x B x d views
            upstream = torch.randn(rows.shape, generator=g, dtype=dtype)
            a, b = rows.clone().requires_grad_(), rows.clone().requires_grad_()
            want = F.normalize(a, dim=-1) if tau is None else F.normalize(a, dim=-1) / tau
            got = normalized(b, tau)
            (want * upstream).sum().backward()
            (got * upstream).sum().backward()
            assert torch.equal(_bits(got.detach()), _bits(want.detach()))
            assert torch.equal(_bits(b.grad), _bits(a.grad))


def test_one_node_losses_sum_shared_gradients_in_autograds_order():
    """A row set read by both terms (a user's rows: two BPR products and the regulariser) gets
    its three gradients summed in plain autograd's order (not associative in floating point)."""
    g = torch.Generator().manual_seed(6)
    for _ in range(5):
        u = torch.randn(33, 8, generator=g, requires_grad=True)
        i, j = torch.randn(33, 8, generator=g), torch.randn(33, 8, generator=g, requires_grad=True)
        (bpr_loss(u, i, j) + 1e-2 * emb_norm(u, i, j, u)).backward()
        want = torch.autograd.grad(_autograd_bpr(u, i, j) + 1e-2 * _autograd_emb_norm(u, i, j, u), (u, j))
        assert torch.equal(_bits(u.grad), _bits(want[0])) and torch.equal(_bits(j.grad), _bits(want[1]))
        assert i.grad is None  # no gradient where none is asked for


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_half_sq_is_bit_identical_to_autograds_sum_of_halves(dtype):
    """``half_sq``'s one node against autograd through ``Σ 0.5 * X.pow(2).sum() / B``: value and
    gradients bit for bit, with a row set passed twice and rows also read by the BPR term."""
    g = torch.Generator().manual_seed(8)
    for scale in (1e-3, 1.0, 30.0):
        u, i, j = (torch.randn(257, 64, generator=g, dtype=dtype) * scale for _ in range(3))
        leaves = [[x.clone().requires_grad_() for x in (u, i, j)] for _ in range(2)]
        (a_u, a_i, a_j), (b_u, b_i, b_j) = leaves
        want = sum(0.5 * x.pow(2).sum() for x in (a_u, a_i, a_j, a_u)) / 257
        got = half_sq(b_u, b_i, b_j, b_u)
        (_autograd_bpr(a_u, a_i, a_j) + 1e-4 * want).backward()
        (_autograd_bpr(b_u, b_i, b_j) + 1e-4 * got).backward()
        assert torch.equal(_bits(got.detach()), _bits(want.detach()))
        for a, b in zip(leaves[0], leaves[1]):
            assert torch.equal(_bits(b.grad), _bits(a.grad))


def test_one_node_losses_reject_double_backward():
    u, i, j = (torch.randn(5, 4, requires_grad=True) for _ in range(3))
    for term in (lambda: bpr_loss(u, i, j), lambda: emb_norm(u, i, j)):
        first = torch.autograd.grad(term(), u, create_graph=True)[0]
        with pytest.raises(RuntimeError):
            first.sum().backward()


# Every model whose loss reads bpr_loss or emb_norm (directly or through l2_reg): one batch's terms
# and every parameter's gradient, bit for bit, with the losses' one-node forms and with autograd's.
ONE_NODE_MODELS = ["bpr", "vbpr", "lightgcn", "lgmrec", "mgcn", "egra", "siger", "smore", "lattice",
                   "dragon", "rlmmrec", "damrs"]


def _batch_terms_and_grads(net, batch):
    generators = net.generator_states()
    torch.manual_seed(11)
    net.zero_grad(set_to_none=True)
    terms = net.batch_loss(batch)
    sum(terms.values()).backward()
    net.load_generator_states(generators)
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


@pytest.mark.parametrize("name", ONE_NODE_MODELS)
def test_models_train_bit_identically_with_the_one_node_losses(planted, name, monkeypatch):
    import importlib

    import numpy as np

    from prismrec import losses
    from prismrec.experiment.config import resolve_config
    from prismrec.models import get_model
    from prismrec.recommender import PretrainedItems
    from prismrec.train import seed_everything

    cfg = resolve_config(name, planted.name, {})
    seed_everything(0)
    cls = get_model(name)
    inputs = {}
    if "pretrained_items" in cls.required_inputs(cfg.params):
        vectors = np.random.default_rng(0).standard_normal((planted.n_items, 16)).astype(np.float32)
        inputs["pretrained_items"] = PretrainedItems(vectors, "test", None)
    net = cls(planted, cfg.params, **inputs)
    net.train()
    gen = torch.Generator().manual_seed(3)
    batch = tuple(torch.randint(0, n, (64,), generator=gen) for n in (planted.n_users, planted.n_items, planted.n_items))
    batch[0][1] = batch[0][0]  # a repeated user
    net.batch_loss(batch)  # creates any generator a model makes lazily
    got = _batch_terms_and_grads(net, batch)
    module = importlib.import_module(cls.__module__)
    for attr, ref in (("bpr_loss", _autograd_bpr), ("emb_norm", _autograd_emb_norm)):
        if hasattr(module, attr):
            monkeypatch.setattr(module, attr, ref)
    monkeypatch.setitem(losses.REG_FORMS, "emb_norm", _autograd_emb_norm)
    want = _batch_terms_and_grads(net, batch)
    assert got[0].keys() == want[0].keys() and got[1].keys() == want[1].keys() and want[1]
    for k in want[0]:
        assert torch.equal(_bits(got[0][k]), _bits(want[0][k])), k
    for n in want[1]:
        assert torch.equal(_bits(got[1][n]), _bits(want[1][n])), n


class _TwoShares(BatchShares):
    """A batch split in two shares, the other one holding 6 rows."""

    split = True

    def total(self, values):
        return values.detach() + 6


def test_all_keys_infonce_under_a_presence_mask_matches_a_per_row_reference():
    g = torch.Generator().manual_seed(3)
    queries, keys = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    rows = torch.tensor([0, 2, 2, 3, 5, 1])
    has_query = torch.tensor([True, True, True, False, True, True])
    has_key = torch.tensor([True, False, True, True, True, True])

    def reference(r):  # query r against the keys of the rows having one, positive keys[r]
        q = F.normalize(queries[r], dim=0) / 0.5
        k = F.normalize(keys[has_key], dim=1)
        return torch.logsumexp(k @ q, 0) - q @ F.normalize(keys[r], dim=0)

    want = sum(reference(int(r)) for r in rows if has_query[r] and has_key[r])  # rows 1 and 3 left out
    got = all_keys_infonce(queries, keys, rows, 0.5, (has_query, has_key))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, all_keys_infonce(queries, keys, rows, 0.5))  # the mask matters
    # split across processes, the sum is scaled by the batch's rows (6 here of 12), not the kept ones
    use_batch_shares(_TwoShares())
    try:
        torch.testing.assert_close(all_keys_infonce(queries, keys, rows, 0.5, (has_query, has_key)), 2 * want)
    finally:
        use_batch_shares(None)
