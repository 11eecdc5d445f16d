import math

import pytest
import torch

from prismrec.losses import (
    bpr_loss,
    emb_norm,
    gemm_logsumexp,
    half_sq,
    infonce,
    infonce_rows,
    joint_infonce_rows,
    l2_reg,
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
