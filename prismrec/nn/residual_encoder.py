"""A LightGCN encoder with an item residual, ``h = LGN(Â, [E_U; E_I], L) + [0; E_I]`` (BM3's, WWW'23),
reduced to what a batch's loss reads: the rows ``h[index]`` and the tables' Frobenius norms
``‖h_U‖_F``, ``‖h_I‖_F``, as few autograd nodes and passes as the chain rule allows (the values and
gradients of autograd through the unfused operations up to float rounding, tests/test_bm3.py)."""

from __future__ import annotations

import torch

from prismrec.graph.sparse import spmm
from prismrec.nn.propagation import distinct_rows, lightgcn


def residual_encoder_rows(user_emb: torch.Tensor, item_emb: torch.Tensor, adjacency, n_layers: int,
                          index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``h[index]``, ``‖h_U‖_F`` and ``‖h_I‖_F`` of ``h = LGN(Â, [E_U; E_I], L) + [0; E_I]``
    (``index``: distinct node ids): one node (:class:`_HalvedEncoder`) for one layer, else the
    propagation node and :class:`_EncoderHead`."""
    if n_layers == 1:
        return _HalvedEncoder.apply(user_emb, item_emb, index, adjacency)
    y = lightgcn(adjacency, torch.cat([user_emb, item_emb]), n_layers)
    return _EncoderHead.apply(y, item_emb, index, user_emb.shape[0])[1:]


def unique(ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(ids, return_inverse=True)`` for ids below ``n``, in linear time (a mark
    array, :func:`~prismrec.nn.propagation.distinct_rows`, instead of a sort)."""
    distinct, at = distinct_rows(ids, n)
    return torch.from_numpy(distinct).to(ids.device), at


def _norms(h: torch.Tensor, n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``‖h_U‖_F`` and ``‖h_I‖_F``, one reading pass each (no squared copy of ``h``)."""
    return torch.linalg.vector_norm(h[:n_users]), torch.linalg.vector_norm(h[n_users:])


class _EncoderHead(torch.autograd.Function):
    """``h = Y + [0; E_I]`` (step 1's residual) reduced to what a batch reads: the rows ``index``
    (distinct) of ``h`` and ``‖h_U‖_F``, ``‖h_I‖_F`` (``L_reg``), as one node.

    The values and gradients of autograd through ``Y + pad(E_I)``, ``index_select`` and
    ``pow(2).sum(1)`` up to float rounding (the norms are ``vector_norm``'s, one reading pass each;
    the gradient is autograd's chain, ``∂‖h_U‖ = g / (2‖h_U‖)``, then ``h · 2∂``), with one N x d
    pass each way instead of five: no zero-filled N x d gradient for
    the gathered rows (they are added into the norms' gradient), no padded copy of ``E_I``. ``Y``
    (a fresh propagation output) becomes ``h`` in place, returned first."""

    @staticmethod
    def forward(ctx, y, item_emb, index, n_users):  # noqa: D401
        h = y
        h[n_users:] += item_emb
        ctx.mark_dirty(h)
        ctx.set_materialize_grads(False)  # h itself is not read: no zero-filled gradient for it
        norm_u, norm_i = _norms(h, n_users)
        ctx.save_for_backward(h, index, norm_u, norm_i)
        ctx.n_users = n_users
        return h, h.index_select(0, index), norm_u, norm_i

    @staticmethod
    def backward(ctx, grad_h, grad_rows, grad_u, grad_i):
        h, index, norm_u, norm_i = ctx.saved_tensors
        n = ctx.n_users
        grad = torch.empty_like(h)
        for part, g, norm in ((slice(0, n), grad_u, norm_u), (slice(n, None), grad_i, norm_i)):
            if g is None:
                grad[part] = 0
            else:
                torch.mul(h[part], 2 * (g / (2 * norm)), out=grad[part])  # sqrt's, then pow(2)'s backward
        if grad_rows is not None:
            grad.index_add_(0, index, grad_rows)  # distinct rows: one addition each
        if grad_h is not None:
            grad += grad_h
        return grad, grad[n:], None, None


class _HalvedEncoder(torch.autograd.Function):
    """:class:`_EncoderHead` over a one-layer encoder, fused with it: ``h = ½(X⁰ + ÂX⁰) + [0; E_I]``
    with ``X⁰ = [E_U; E_I]``, returning ``h[index]``, ``‖h_U‖_F`` and ``‖h_I‖_F``.

    Bit-identical to ``lightgcn`` followed by :class:`_EncoderHead` (tests/test_bm3.py), with one
    ``N x d`` pass fewer each way (no concatenated copy of the tables; no separately halved
    gradient) and ``E_I``'s two gradients summed in place. Halving is exact in floating point (outside the subnormal
    range), so it commutes with every rounding: ``Â(½X⁰) = ½(ÂX⁰)`` bit for bit, and the layer
    mean ``½X⁰ + ½(ÂX⁰)`` is built from ``½X⁰``, written straight from the two tables (no
    concatenated copy of them). Backward: with ``∂h`` the gradient reaching ``h`` (the norms' and
    the rows'), the propagation's is ``½∂h + Âᵀ(½∂h)`` and ``E_I``'s residual adds ``∂h_I = 2·½∂h_I``:
    everything from one halved buffer, in the order of the unfused nodes' operations."""

    @staticmethod
    def forward(ctx, user_emb, item_emb, index, adjacency):  # noqa: D401
        n = user_emb.shape[0]
        h = user_emb.new_empty((n + item_emb.shape[0], user_emb.shape[1]))
        torch.mul(user_emb, 0.5, out=h[:n])  # ½X⁰, the layer mean's first term
        torch.mul(item_emb, 0.5, out=h[n:])
        h.add_(spmm(adjacency.matrix, h))  # + ½ÂX⁰ = Â(½X⁰)
        h[n:] += item_emb  # the residual
        ctx.set_materialize_grads(False)
        norm_u, norm_i = _norms(h, n)
        ctx.save_for_backward(h, index, norm_u, norm_i)
        ctx.adjacency, ctx.n_users = adjacency, n
        return h.index_select(0, index), norm_u, norm_i

    @staticmethod
    def backward(ctx, grad_rows, grad_u, grad_i):
        h, index, norm_u, norm_i = ctx.saved_tensors
        n = ctx.n_users
        half = torch.empty_like(h)  # ½∂h
        for part, g, norm in ((slice(0, n), grad_u, norm_u), (slice(n, None), grad_i, norm_i)):
            if g is None:
                half[part] = 0
            else:  # _EncoderHead's factor 2·(g / 2‖·‖), halved (exact)
                torch.mul(h[part], 2 * (g / (2 * norm)) * 0.5, out=half[part])
        if grad_rows is not None:
            half.index_add_(0, index, grad_rows, alpha=0.5)
        grad = spmm(ctx.adjacency.transpose, half)  # Âᵀ(½∂h) = ½Âᵀ∂h
        grad.add_(half)  # the layer mean's gradient, ½∂h + ½Âᵀ∂h
        grad[n:].add_(half[n:], alpha=2.0)  # + ∂h_I, the residual's
        return grad[:n], grad[n:], None, None
