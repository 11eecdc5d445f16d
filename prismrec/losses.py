"""Loss functions shared by every model (ALGORITHMS.md 2.9-2.11).

**Missing views.** The contrastive and alignment forms of the modality views (:func:`infonce`,
:func:`rows_infonce`, :func:`joint_infonce`, :func:`anchored_infonce`,
:func:`paired_views_infonce`, :func:`moment_gap`) take an optional ``present`` mask: ``False``
where a row's view is missing (an item whose modality was zero-filled, ``impute="zero"``;
:meth:`prismrec.nn.MultiViewEncoder.presence`). Such a row takes no part in the term, neither as
a query (anchor) nor as a key (positive, candidate, negative), and the mean runs over the
remaining rows: the term equals the term of the batch without those rows, and the missing rows
get no gradient from it. With the batch split across processes (:class:`BatchShares`) the mean is
over the global batch's present rows. ``present=None`` runs the unmasked formulas unchanged.
"""

from __future__ import annotations

import itertools
import operator
from functools import reduce
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


class BatchShares:
    """How a loss sees a batch split across processes; by default one process holds all of it.

    Terms that couple a batch's rows (in-batch InfoNCE negatives, EGRA's batch-normalised entity
    weights, ``emb_norm``'s norm over all rows) read the rest of the batch through the installed
    shares (:func:`batch_shares`). Data-parallel training installs one that reaches the other
    ranks (:class:`prismrec.train.distributed.RankShares`), so every model's in-batch terms use
    the global batch without the model knowing. With :attr:`split` false (one process) the losses
    take their single-process path unchanged.
    """

    split = False
    """Whether the batch is split across processes (the methods below are identities if not)."""

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every share's ``rows`` concatenated in order, and where this share's begin. The
        gradient reaching the result flows back to each share's own rows (summed over shares)."""
        return rows, 0

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the shares (no gradient)."""
        return values.detach()


_SHARES = BatchShares()


def batch_shares() -> BatchShares:
    """The installed :class:`BatchShares` (the single-process one unless a run installed another)."""
    return _SHARES


def use_batch_shares(shares: BatchShares | None) -> None:
    """Install ``shares`` for every later loss call of this process (``None``: one process again)."""
    global _SHARES
    _SHARES = shares if shares is not None else BatchShares()


def batch_sum(values: torch.Tensor, rows: int) -> torch.Tensor:
    """``values.sum()``, a term summed (not averaged) over a batch of ``rows`` rows (e.g.
    LGMRec's ``hcl``). With the batch split across processes, the trainer weights each share's
    terms by its share of the rows (right for means); a sum is therefore scaled up by the
    inverse of that share here, so that the shares add up to the global batch's sum."""
    total = values.sum()
    if not _SHARES.split:
        return total
    every = _SHARES.total(torch.tensor(float(rows), dtype=total.dtype, device=total.device))
    return total * (every / max(rows, 1))


class _BPRLoss(torch.autograd.Function):
    """:func:`bpr_loss` as one autograd node, with autograd's own values and gradients.

    Autograd would record eight nodes for this B-row term (two products and their row sums, a
    difference, a negation, the softplus and the mean) and walk them back one by one; on a CPU
    with tiny batch kernels (BPR, VBPR) that bookkeeping costs about as much as the arithmetic.
    Here the forward runs the same operations untracked, and the backward evaluates the chain
    rule with the same operations (``softplus_backward`` of the mean's gradient, then the row
    products). ``user`` is passed twice, once per product, so that its two gradients reach the
    graph as autograd's two product nodes deliver them: the negative's product first, then the
    positive's, each with its other operand's gradient. Their sum with any other gradient of the
    same rows (a regulariser's) is then formed in the same order, and a model's gradients stay
    bit-identical to plain autograd's.
    """

    @staticmethod
    def forward(ctx, user_n: torch.Tensor, neg: torch.Tensor, user_p: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = ((user_p * pos).sum(dim=1) - (user_n * neg).sum(dim=1)).neg_()  # softplus's input, -Δ
        ctx.save_for_backward(user_n, neg, user_p, pos, x)
        return F.softplus(x).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        user_n, neg, user_p, pos, x = ctx.saved_tensors
        # the mean's gradient g/B per row, through softplus: w = ∂L/∂(-Δ), so ∂L/∂(z_u·z_j) = w
        # and ∂L/∂(z_u·z_i) = -w
        w = torch.ops.aten.softplus_backward((grad / x.shape[0]).expand(x.shape), x, 1, 20).unsqueeze(1)
        minus_w = w.neg()
        need = ctx.needs_input_grad
        return (w * neg if need[0] else None, w * user_n if need[1] else None,
                minus_w * pos if need[2] else None, minus_w * user_p if need[3] else None)


def bpr_loss(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``mean_b softplus(-(z_u·z_i - z_u·z_j))`` = ``-mean log σ(ŷ_ui - ŷ_uj)`` (first-order
    gradients; one autograd node, see :class:`_BPRLoss`)."""
    return _BPRLoss.apply(user, neg, user, pos)


class _EmbNorm(torch.autograd.Function):
    """``Σ_X ‖X‖_F / B`` in one process, as one autograd node.

    The gradient of ``‖X‖_F`` is ``(X / ‖X‖_F) · g``. Autograd's ``linalg_vector_norm`` backward
    also masks the quotient where the norm is zero with a full-size ``masked_fill`` (three passes
    over each ``B x d`` matrix, and one node per norm, per sum and for the division). Here the
    zero check is made on the scalar norm (an all-zero ``X`` gets a zero gradient), and the rest
    is the same division and product in the same order: values and gradients are bit-identical
    to autograd's through ``sum(torch.linalg.norm(x) for x in rows) / B``. The rows come in
    reversed (``apply(*reversed(rows))``): autograd walks that sum's norms back last first, and
    a node delivers its gradients in the order of its inputs, so the gradients of rows that also
    receive others are summed in autograd's order.
    """

    @staticmethod
    def forward(ctx, *reversed_rows: torch.Tensor) -> torch.Tensor:
        norms = [torch.linalg.vector_norm(x) for x in reversed_rows]
        ctx.save_for_backward(*reversed_rows, *norms)
        ctx.batch = reversed_rows[-1].shape[0]  # B: the first row's rows
        return sum(reversed(norms)) / ctx.batch

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        saved = ctx.saved_tensors
        rows, norms = saved[: len(saved) // 2], saved[len(saved) // 2 :]
        g = grad / ctx.batch  # the division's gradient, shared by every norm
        return tuple(_norm_grad(x, n, g) if need else None
                     for x, n, need in zip(rows, norms, ctx.needs_input_grad))


def _norm_grad(x: torch.Tensor, norm: torch.Tensor, g: torch.Tensor, on_host: bool | None = None) -> torch.Tensor:
    """``(x / ‖x‖) · g``, zero where ``‖x‖ = 0`` (as autograd's), the check made on the scalar:
    read on the host where that is free (``on_host``, by default on a CPU), else without a
    device sync (an all-zero ``x`` divided by 1: equal to autograd's up to the sign of zero)."""
    if on_host is None:
        on_host = norm.device.type == "cpu"
    if on_host:
        return torch.zeros_like(x).mul_(g) if norm.item() == 0 else torch.div(x, norm).mul_(g)
    return torch.div(x, torch.where(norm == 0, torch.ones_like(norm), norm)).mul_(g)


def emb_norm(*rows: torch.Tensor) -> torch.Tensor:
    """MMRec ``EmbLoss``: ``Σ ‖X‖_F / B`` — Frobenius norms, **not** squared.

    A norm couples all of a batch's rows. With the batch split across processes each share
    returns ``Σ_X S_X / (‖X‖_F B_r)`` (``S_X`` its rows' sum of squares, ``‖X‖_F`` over the whole
    batch, ``B_r`` its rows): weighted by ``B_r / B`` (the trainer's share weighting) the shares
    sum to the global value, and the gradient of each share's rows is the global one."""
    shares = _SHARES
    if not shares.split:
        return _EmbNorm.apply(*reversed(rows))
    local = torch.stack([x.pow(2).sum() for x in rows])
    norms = shares.total(local).sqrt().clamp_min(torch.finfo(local.dtype).tiny)
    # value S_X / ‖X‖, gradient x / ‖X‖ (that of ‖X‖): half the square's gradient, at full value
    return ((local + local.detach()) / (2 * norms)).sum() / rows[0].shape[0]


def half_sq(*rows: torch.Tensor) -> torch.Tensor:
    """``Σ ½‖X‖²_F / B`` (MGCN, GUME, LATTICE), as one autograd node (:class:`_HalfSq`) with
    autograd's values and gradients bit for bit."""
    return _HalfSq.apply(*rows)


class _HalfSq(torch.autograd.Function):
    """``½ Σ_X ‖X‖²_F / B``. Forward as autograd's ``Σ 0.5 * X.pow(2).sum() / B`` computes it, with
    the halving taken once after the sum (halving is exact in binary floating point, so it commutes
    with every rounding). Backward: autograd's chain gives ``X``'s gradient as ``c · (2X)`` with
    ``c = (g / B) · ½``; doubling and halving being exact, that is ``X · (g / B)`` bit for bit: one
    pass per ``X`` instead of autograd's three (``X¹``, ``2X¹``, the product) and one node instead
    of ``3 |X| + 2``."""

    @staticmethod
    def forward(ctx, *rows):  # noqa: D401
        ctx.save_for_backward(*rows)
        return 0.5 * added(x.pow(2).sum() for x in rows) / rows[0].shape[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        rows = ctx.saved_tensors
        scale = grad / rows[0].shape[0]
        return tuple(x * scale if need else None for x, need in zip(rows, ctx.needs_input_grad))


def added(terms) -> torch.Tensor:
    """``t_1 + t_2 + ...`` of one or more tensors, left to right: ``sum``'s value without its leading
    ``0 +`` (one operation and one autograd node less per call)."""
    return reduce(operator.add, terms)


REG_FORMS = {"emb_norm": emb_norm, "half_sq": half_sq}


def l2_reg(form: str, *rows: torch.Tensor) -> torch.Tensor:
    """Batch L2 regulariser in one of the two reference forms (``emb_norm`` or ``half_sq``)."""
    try:
        return REG_FORMS[form](*rows)
    except KeyError:
        raise ValueError(f"reg_form must be one of {sorted(REG_FORMS)}, got {form!r}") from None


_UNSHIFTED_BOUND = 30.0
"""Largest ``max‖a‖·max‖c‖`` for which :class:`_GemmLogSumExp` exponentiates the logits unshifted:
they then lie in ``[exp(-30), exp(30)]``, and a row's sum of up to 10^20 such terms stays far
from float32's overflow (3.4e38)."""


def bpr_terms(zu: torch.Tensor, zij: torch.Tensor, reg_weight: float, reg_form: str) -> dict[str, torch.Tensor]:
    """``{"bpr": bpr_loss(zu, zi, zj), "reg": reg_weight * l2_reg(reg_form, zu, zi, zj)}`` for
    ``zij = [zi; zj]`` (the batch's positive rows, then its negative rows), as BPR-MF's, VBPR's and
    MGCN's ``loss`` compute them.

    On a CPU in one process (the default) both terms are one autograd node (:class:`_BPRTerms`),
    equal to the two loss functions up to float rounding (values and gradients,
    tests/test_bpr_terms.py); otherwise the two loss functions are called (on a GPU their norm
    gradients avoid a host sync, and a data-parallel batch's norms span the ranks)."""
    if reg_form not in REG_FORMS or zu.device.type != "cpu" or batch_shares().split:
        zi, zj = zij.chunk(2)
        return {"bpr": bpr_loss(zu, zi, zj), "reg": reg_weight * l2_reg(reg_form, zu, zi, zj)}
    bpr, reg = _BPRTerms.apply(zu, zij, reg_weight, reg_form)
    return {"bpr": bpr, "reg": reg}


def output_bpr_terms(out, batch, reg_weight: float, reg_form: str) -> dict[str, torch.Tensor]:
    """:func:`bpr_terms` of a batch ``(u, i, j)`` on a forward's output (``out.user``,
    ``out.item``): ``z_u`` and ``[z_i; z_j]`` gathered at once (one scatter back into the item rows,
    not two zero-filled gradients added)."""
    u, i, j = batch
    return bpr_terms(out.user.index_select(0, u), out.item.index_select(0, torch.cat([i, j])), reg_weight, reg_form)


class _BPRTerms(torch.autograd.Function):
    """:func:`bpr_loss` and ``reg_weight *`` :func:`emb_norm` or :func:`half_sq` of the same rows as
    one node, in as few passes over the ``B x d`` rows as the chain rule allows.

    With ``x_b = z_u·(z_j − z_i)`` (softplus's input, ``−Δ``), ``w_b = ∂L/∂x_b`` (the mean's
    gradient through softplus) and ``c_X`` a regulariser's gradient factor (``emb_norm``:
    ``λ g / (B ‖X‖_F)``, 0 for an all-zero ``X``; ``half_sq``: ``λ g / B``):
    ``∂z_u = c_u z_u + w ⊙ (z_j − z_i)``, ``∂z_i = c_i z_i − w ⊙ z_u`` and
    ``∂z_j = c_j z_j + w ⊙ z_u``. Forward: the difference ``z_j − z_i`` once, one row product and
    its sum, three norms (six passes); backward: six, each scaled row added through ``alpha``
    into the gradient buffers (``[∂z_i; ∂z_j]`` one buffer). Autograd through the two loss
    functions takes seven passes forward and fourteen back (each norm's division and scaling,
    four products, four additions), one node per operation. The two differ by float rounding
    only (the difference is taken before the row sum, the scalar factors are folded, the norms
    summed in double; ``half_sq``'s value is the loss function's own): BPR-MF's, VBPR's and
    MGCN's goldens (tests/test_equivalence.py) are unchanged.
    """

    @staticmethod
    def forward(ctx, zu, zij, reg_weight, reg_form):  # noqa: D401
        bpr, reg, diff, x, norms = _bpr_terms_values(zu, zij, reg_weight, reg_form)
        ctx.save_for_backward(zu, zij, diff, x)
        ctx.norms, ctx.reg_weight = norms, reg_weight
        return bpr, reg

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_bpr, grad_reg):
        return (*_bpr_terms_grads(*ctx.saved_tensors, ctx.norms, ctx.reg_weight, grad_bpr, grad_reg), None, None)


def _bpr_terms_values(zu, zij, reg_weight, reg_form):
    """:class:`_BPRTerms`'s forward: ``bpr``, ``reg`` and what the gradients need (``z_j − z_i``,
    ``x``, the emb_norm norms or ``None``)."""
    zi, zj = zij.chunk(2)
    diff = zj - zi
    x = (zu * diff).sum(dim=1)  # −Δ = z_u·(z_j − z_i)
    bpr = F.softplus(x).mean()
    if reg_form == "emb_norm":
        norms = [float(torch.linalg.vector_norm(r)) for r in (zu, zi, zj)]  # on the host: a CPU path
        reg = zu.new_tensor(reg_weight * sum(norms) / zu.shape[0])
    else:  # half_sq: ½‖X‖²'s gradient is X itself
        norms = None
        reg = reg_weight * half_sq(zu, zi, zj)
    return bpr, reg, diff, x, norms


def _bpr_terms_grads(zu, zij, diff, x, norms, reg_weight, grad_bpr, grad_reg):
    """:class:`_BPRTerms`'s backward: ``∂z_u`` and ``[∂z_i; ∂z_j]`` for the terms' output gradients
    ``grad_bpr`` and ``grad_reg`` (0-d tensors)."""
    batch = zu.shape[0]
    g = float(grad_reg) * reg_weight / batch
    c_u, c_i, c_j = (g,) * 3 if norms is None else (g / norm if norm else 0.0 for norm in norms)
    w = torch.ops.aten.softplus_backward((grad_bpr / batch).expand(x.shape), x, 1, 20).unsqueeze(1)
    zi, zj = zij.chunk(2)
    grad_zij = torch.empty_like(zij)
    grad_zi, grad_zj = grad_zij.chunk(2)
    w_zu = zu * w
    torch.add(w_zu, zj, alpha=c_j, out=grad_zj)
    torch.sub(w_zu, zi, alpha=c_i, out=grad_zi).neg_()
    grad_zu = torch.mul(diff, w).add_(zu, alpha=c_u)
    return grad_zu, grad_zij


def bpr_terms_with_grads(zu: torch.Tensor, zij: torch.Tensor, reg_weight: float, reg_form: str
                         ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """:func:`bpr_terms` of rows that need no autograd graph, and the gradients of their sum: the
    terms, ``∂(bpr + reg)/∂z_u`` and ``∂(bpr + reg)/∂[z_i; z_j]``, bit for bit as autograd delivers
    them through :func:`bpr_terms` on a CPU in one process (where a caller may use it: the
    closed-form batches of :meth:`~prismrec.recommender.Recommender.batch_gradients`)."""
    with torch.no_grad():
        bpr, reg, diff, x, norms = _bpr_terms_values(zu, zij, reg_weight, reg_form)
        one = bpr.new_ones(())  # each term's gradient in a sum
        return {"bpr": bpr, "reg": reg}, *_bpr_terms_grads(zu, zij, diff, x, norms, reg_weight, one, one)


class _GemmLogSumExp(torch.autograd.Function):
    """``logsumexp_b'(a_b · c_b' + log n_b')`` per row ``b``, never keeping more than one B x B'
    buffer; ``n`` (optional, one per key, ``None``: all 1) counts the keys a distinct key stands
    for, and weighs its exponential in the sum (a ``B'``-vector product instead of the row sum).

    Forward: one GEMM, then exponentiate (shifted only where the logits could overflow) and sum
    in place; the unnormalised softmax is
    kept for backward, where ``∂/∂s_bb' = g_b p_bb'`` costs two GEMMs (the row scale ``g_b`` applied
    to their ``d``-wide factors, not to the B x B' matrix). Autograd
    through ``torch.logsumexp(a @ c.T)`` instead keeps the logits, rebuilds the softmax and
    makes about twice the passes over the B x B' matrix (≈2x slower for B = 2048, d = 64).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, c: torch.Tensor, counts: torch.Tensor | None, bound: float | None) -> torch.Tensor:
        # |s_bb'| <= ‖a_b‖·max‖c‖ (Cauchy-Schwarz). While that bound is <= _UNSHIFTED_BOUND (e.g.
        # InfoNCE on unit rows: 1/τ), exp(s) can neither overflow nor underflow in float32 and
        # needs no shift: no pass for the row maxima, none for the subtraction. Otherwise the
        # usual shift by the exact row maxima. On a GPU the bound is not read (a host sync per
        # call): the shift is always taken there. ``bound``: a caller's bound of the computed
        # norms' product, which then need not be computed.
        s = a @ c.T
        if c.shape[0] and a.device.type == "cpu" and (bound if bound is not None else float(
                torch.linalg.vector_norm(a, dim=1).amax() * torch.linalg.vector_norm(c, dim=1).amax())) <= _UNSHIFTED_BOUND:
            shift = s.new_zeros((s.shape[0], 1))
        else:
            shift = s.amax(dim=1, keepdim=True)
            s.sub_(shift)
        s.exp_()
        total = s.sum(dim=1, keepdim=True) if counts is None else s @ counts.unsqueeze(1)
        ctx.save_for_backward(a, c, s, total, counts)
        return (shift + total.log()).squeeze(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, c, p, total, counts = ctx.saved_tensors
        # ∂/∂s = diag(w) p diag(n) with w = g / total: the row and key scalings are applied to the
        # d-wide factors, never to the B x B' matrix (no extra pass over it, no second B x B' buffer).
        w = grad.unsqueeze(1) / total
        n = None if counts is None else counts.unsqueeze(1)
        grad_a = grad_c = None
        if ctx.needs_input_grad[0]:
            grad_a = (p @ (c if n is None else c * n)).mul_(w)
        if ctx.needs_input_grad[1]:
            grad_c = p.T @ (a * w)
            if n is not None:
                grad_c.mul_(n)
        return grad_a, grad_c, None, None


def gemm_logsumexp(a: torch.Tensor, c: torch.Tensor, counts: torch.Tensor | None = None,
                   bound: float | None = None) -> torch.Tensor:
    """``logsumexp(a @ c.T, dim=1)``, or with key ``counts`` ``log Σ_b' n_b' exp(a_b · c_b')``: the
    log-sum-exp over keys in which key ``b'`` occurs ``n_b'`` times (first-order gradients only;
    see :class:`_GemmLogSumExp`). ``bound`` (optional): an upper bound of ``max_b ‖a_b‖ · max_b'
    ‖c_b'‖`` as the float32 norms compute it (e.g. :func:`unit_bound` for rows scaled to a known
    length), so that they need not be computed.

    No query rows (a masked batch share holding none): an empty result, still joined to ``c``
    in the graph (a gathered ``c``'s backward is a collective every share must reach)."""
    if not a.shape[0]:
        return (a @ c.T).sum(dim=1)
    return _GemmLogSumExp.apply(a, c, None if counts is None else counts.to(a.dtype), bound)


def unit_bound(length: float) -> float:
    """A bound of the float32 norm of a row :func:`normalized` to ``length`` (``1/τ``): the row's
    rounding and the norm's own stay far below this relative margin at any width."""
    return length * (1.0 + 1e-4)


NORMALIZE_EPS = 1e-12
"""``eps`` of ``F.normalize`` (its default), clamping each row's norm from below."""


def normalized(x: torch.Tensor, tau: float | None = None) -> torch.Tensor:
    """``F.normalize(x, dim=-1) / τ`` (``τ = None``: no division): the rows along the last axis at
    unit length, as one autograd node with autograd's values and gradients bit for bit
    (:class:`_Normalized`)."""
    return _Normalized.apply(x, tau)


class _Normalized(torch.autograd.Function):
    """``y = x / max(‖x‖, ε)`` per row (the last axis), then ``y / τ``. The backward evaluates autograd's chain for
    that expression with the same operations: ``∂y = g / τ``; the division's ``∂y / max(‖x‖, ε)``
    and ``-Σ_d ∂y ⊙ (y / max(‖x‖, ε))`` (the negation taken on the row sum, not on the rows: the
    same bits, rounding being symmetric in sign; ``y`` kept from the forward, not divided again);
    the clamp's mask; the norm's ``(x / ‖x‖) ∂‖x‖``, 0 where ``‖x‖ = 0``, with ``x / ‖x‖ = y``
    when no row was clamped. Three passes over the rows fewer than autograd's nodes make, and one
    node instead of six."""

    @staticmethod
    def forward(ctx, x, tau):  # noqa: D401
        norm = torch.linalg.vector_norm(x, 2, dim=-1, keepdim=True)
        clamped = norm.clamp_min(NORMALIZE_EPS)
        y = x / clamped
        ctx.save_for_backward(x, norm, clamped, y)
        ctx.tau = tau
        return y if tau is None else y / tau

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, norm, clamped, y = ctx.saved_tensors
        grad_y = grad if ctx.tau is None else grad / ctx.tau
        grad_clamped = (grad_y * (y / clamped)).sum(dim=-1, keepdim=True).neg_()
        # no row clamped (norm = max(norm, ε) everywhere; one comparison read on the host, not on a GPU):
        # the clamp's mask passes every row, and x / ‖x‖ is y
        if x.device.type == "cpu" and torch.equal(norm, clamped):
            return torch.div(grad_y, clamped).add_(y * grad_clamped), None
        grad_norm = torch.where(norm >= NORMALIZE_EPS, grad_clamped, torch.zeros_like(grad_clamped))
        unit = (x / norm).masked_fill_(norm == 0, 0)  # x / ‖x‖
        return torch.div(grad_y, clamped).add_(unit * grad_norm), None


def infonce_rows(p: torch.Tensor, q: torch.Tensor, tau: float, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row InfoNCE ``ℓ_b = -log softmax_b'(cos(p_b, q_b') / τ)`` evaluated at ``b' = b``.

    Computed as ``logsumexp_b'(s_bb') - s_bb`` with the positive ``s_bb`` taken row-wise rather
    than from the logits' diagonal (no dense matrix for the diagonal's gradient), and the
    log-sum-exp fused with its GEMM (:func:`gemm_logsumexp`). ``counts`` (optional, one per row):
    the rows are a batch's distinct rows (:class:`CountedRows`), row ``b`` standing for ``n_b``
    equal rows: each of its keys enters the softmax ``n_b`` times, as in the batch with repeats.
    """
    pn = normalized(p, tau)
    qn = normalized(q)
    return gemm_logsumexp(pn, _batch_keys(qn), None if counts is None else _batch_keys(counts),
                          unit_bound(1.0 / tau)) - (pn * qn).sum(dim=1)


def _batch_keys(keys: torch.Tensor) -> torch.Tensor:
    """The keys an in-batch InfoNCE row is scored against: ``keys`` in one process, every share's
    keys when the batch is split across processes (the global batch's negatives; each share
    scores its own query rows, and the keys' gradients return to the share that owns them)."""
    return _SHARES.gather(keys)[0] if _SHARES.split else keys


def infonce(
    p: torch.Tensor, q: torch.Tensor, tau: float, weights: torch.Tensor | None = None,
    present: torch.Tensor | None = None, counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean_b ℓ_b``, or ``mean_b w_b ℓ_b`` with given weights (no gradient through ``w``).

    ``present`` (optional bool, one per row): only the present rows take part, as queries and as
    keys, and the mean is over them (module docstring): the InfoNCE of ``p[present]`` against
    ``q[present]``. ``counts`` (optional, one per row): the rows are a batch's distinct rows, row
    ``b`` standing for ``n_b`` equal ones (:class:`CountedRows`): the InfoNCE of the batch with its
    repeats, each distinct row scored once."""
    if present is None and counts is None:
        rows = infonce_rows(p, q, tau)
        if weights is None:
            return rows.mean()
        return (weights.detach() * rows).mean()
    batch = (len(p) if counts is None else int(counts.sum())) if _SHARES.split else None  # read only when split
    if counts is not None:
        counts = counts.to(p.dtype)  # once, for the softmax's keys and the mean
    if present is not None:
        at = _present_rows(present, len(p), p.device)
        p, q = p.index_select(0, at), q.index_select(0, at)
        weights, counts = (None if x is None else x.index_select(0, at) for x in (weights, counts))
    rows = infonce_rows(p, q, tau, counts)
    if weights is not None:
        rows = weights.detach() * rows
    return _present_mean(rows, batch, counts)


def _present_rows(present: torch.Tensor, n: int, device: torch.device | None = None) -> torch.Tensor:
    """The positions of the ``True`` entries of a row mask ``present`` of ``n`` rows (on ``device``)."""
    if tuple(present.shape) != (n,):
        raise ValueError(f"present must hold one flag per row ({n}), got shape {tuple(present.shape)}")
    return present.to(device=device, dtype=torch.bool).nonzero().squeeze(1)


def _present_mean(values: torch.Tensor, rows: int | None, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the per-row ``values`` of a batch's present rows, the batch holding ``rows`` rows
    in all: their mean in one process (0, with a zero gradient, if none is present); with the
    batch split across processes, this share's part of the mean over every share's present rows
    (weighted by the trainer's ``rows / B``, the shares sum to it; ``rows`` is read only then and
    may be ``None`` in one process). ``counts`` (optional): the rows are distinct, value ``b``
    standing for ``n_b`` rows (a mean weighted by them)."""
    if counts is None:
        if not _SHARES.split:
            return values.mean() if len(values) else values.sum()
        count = torch.tensor(float(len(values)), dtype=values.dtype, device=values.device)
    else:
        counts = counts.to(values.dtype)
        values, count = values * counts, counts.sum()
        if not _SHARES.split:
            return values.sum() / count.clamp_min(1.0)
    return batch_sum(values, rows) / _SHARES.total(count).clamp_min(1.0)


class CountedRows(NamedTuple):
    """A batch's row set (e.g. its users, repeats included) as its distinct rows and how often each
    occurs. The row-set terms below (:func:`rows_infonce`, :func:`paired_views_infonce`,
    :func:`anchored_infonce`) take it in place of the plain row ids: a repeated row repeats the
    same query, positive and negatives, so each distinct row is scored once and weighted by its
    count, in the mean and among the softmax's keys. The same term and gradient (up to float
    rounding), with GEMMs over the distinct rows only (:func:`counted_rows`)."""

    index: torch.Tensor
    """The distinct row ids."""
    counts: torch.Tensor | None
    """How often each occurs in the set (``None``: the rows as given, each counted once)."""


def counted_rows(rows: torch.Tensor) -> CountedRows:
    """``rows`` (ids, repeats allowed) as :class:`CountedRows`. On an accelerator the rows stay as
    they are (``counts=None``: each row counted once, the same terms): the number of distinct rows
    would have to be read back to the host every step, which stalls the device for longer than the
    GEMMs it saves there take."""
    if rows.device.type != "cpu":
        return CountedRows(rows, None)
    counts = torch.bincount(rows)  # ids are small (node ids): a count per id, not a sort
    index = counts.nonzero().squeeze(1)
    return CountedRows(index, counts.index_select(0, index))


def gathered_rows(rows: tuple[CountedRows, ...]) -> tuple[torch.Tensor, tuple[CountedRows, ...]]:
    """Row sets of one tensor as the node ids they read, concatenated, and each set with its rows
    at their positions there: for views built for those ids alone."""
    nodes = torch.cat([r.index for r in rows])
    at = torch.arange(len(nodes), device=nodes.device).split([len(r.index) for r in rows])
    return nodes, tuple(CountedRows(a, r.counts) for a, r in zip(at, rows))


def _ids(rows: torch.Tensor | CountedRows) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A row set's ids and counts (``None`` for plain ids, each row counted once)."""
    return (rows.index, rows.counts) if isinstance(rows, CountedRows) else (rows, None)


def joint_infonce_rows(queries: torch.Tensor, keys: torch.Tensor, tau: float,
                       present: torch.Tensor | None = None, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-positive (joint) InfoNCE of ``K`` query views against one key per row.

    For ``queries`` ``K x B x d`` (view ``m`` of row ``b`` is ``q^m_b``) and ``keys`` ``B x d``:
    ``ℓ_b = -log [exp(Σ_m cos(q^m_b, k_b)/τ) / Σ_b' exp(Σ_m cos(q^m_b, k_b')/τ)]`` — the ``K``
    views of a row are scored jointly against the same positive key (SIGER's anchor form A2,
    ALGORITHMS.md 5.2). Since ``Σ_m cos(q^m_b, k) = (Σ_m nrm(q^m_b))·nrm(k)`` it costs one GEMM;
    with ``K = 1`` it equals :func:`infonce_rows`. ``present`` (optional ``K x B`` bool): the sum
    over ``m`` runs over each row's present views only. ``counts``: as in :func:`infonce_rows`.
    """
    unit = normalized(queries)
    if present is not None:
        unit = unit * present.to(unit.device, unit.dtype).unsqueeze(-1)
    pn = unit.sum(dim=0) / tau
    kn = normalized(keys)
    return gemm_logsumexp(pn, _batch_keys(kn), None if counts is None else _batch_keys(counts),
                          unit_bound(queries.shape[0] / tau)) - (pn * kn).sum(dim=1)


def joint_infonce(queries: torch.Tensor, keys: torch.Tensor, tau: float,
                  present: torch.Tensor | None = None, counts: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_b`` of :func:`joint_infonce_rows`. ``present`` (optional ``K x B`` bool): a row is
    scored with its present views (``Σ_{m present} cos(q^m_b, k)``); a row with none takes no
    part, neither as a query nor with its key as a candidate, and the mean is over the others.
    ``counts``: as in :func:`infonce`."""
    if present is None and counts is None:
        return joint_infonce_rows(queries, keys, tau).mean()
    batch = (len(keys) if counts is None else int(counts.sum())) if _SHARES.split else None  # read only when split
    if counts is not None:
        counts = counts.to(keys.dtype)  # once, for the softmax's keys and the mean
    if present is not None:
        at = _present_rows(present.any(dim=0), len(keys), keys.device)
        queries, keys = queries.index_select(1, at), keys.index_select(0, at)
        present, counts = present.to(keys.device).index_select(1, at), None if counts is None else counts.index_select(0, at)
    return _present_mean(joint_infonce_rows(queries, keys, tau, present, counts), batch, counts)


def rows_infonce(p: torch.Tensor, q: torch.Tensor, rows: tuple[torch.Tensor | CountedRows, ...], tau: float,
                 present: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_r InfoNCE(p[r], q[r]; τ)`` over row sets ``r`` of the same ``N x d`` views (e.g. a
    batch's user rows, then its item rows; ids or :class:`CountedRows`): the behaviour-modality
    alignment of MGCN (``cl``), GUME (``bm``) and SIGER (``align``). ``present`` (optional ``N``
    bool): the rows of ``p`` and ``q`` that take part (:func:`infonce`). Rows are gathered with
    ``index_select`` here and below: on CPU its backward is a scatter-add, several times faster
    than indexing's accumulating put."""
    return added(infonce(p.index_select(0, r), q.index_select(0, r), tau, present=_at(present, r), counts=n)
                 for r, n in map(_ids, rows))


def _at(present: torch.Tensor | None, r: torch.Tensor) -> torch.Tensor | None:
    """``present``'s entries ``r`` along its last axis (``None`` passes through)."""
    return None if present is None else present.to(r.device).index_select(present.dim() - 1, r)


def moment_gap(views: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """GUME's ``vt`` (3.6): ``mean_{a<b} |var(H_a) − var(H_b)| + |mean(H_a) − mean(H_b)|`` over
    the whole matrices of the ``K >= 2`` views ``H`` (``K x N x d``; unbiased variance).

    ``present`` (optional ``K x N`` bool): each view's mean and variance run over its present rows
    only (a missing row is not a sample of the view's distribution; it gets no gradient). Every
    view needs at least two present entries."""
    if views.shape[0] < 2:
        raise ValueError(f"moment_gap compares modality views and needs at least 2, got {views.shape[0]}")
    if present is None:
        var = views.flatten(1).var(dim=1)
        mean = views.flatten(1).mean(dim=1)
    else:
        keep = present.to(views.device, views.dtype).unsqueeze(-1)               # K x N x 1
        count = keep.sum(dim=(1, 2)) * views.shape[2]                             # entries per view
        mean = (views * keep).sum(dim=(1, 2)) / count
        var = ((views - mean.view(-1, 1, 1)).pow(2) * keep).sum(dim=(1, 2)) / (count - 1)
    a, b = torch.triu_indices(len(var), len(var), offset=1, device=views.device)
    return ((var[a] - var[b]).abs() + (mean[a] - mean[b]).abs()).mean()


def user_modality_alignment(extended: torch.Tensor, fused: torch.Tensor, rows: torch.Tensor, tau: float, noise,
                            present: torch.Tensor | None = None) -> torch.Tensor:
    """GUME's ``um`` term without its weight (3.6), on user matrices ``Ĥ_U`` and ``M_U``:
    ``InfoNCE(Ĥ_U[u], M_U[u]; τ) + InfoNCE(M'[u], M''[u]; τ) + InfoNCE(Ĥ'[u], Ĥ''[u]; τ)``, with
    ``X', X''`` two views of ``X[u]`` from ``noise(X, rows)`` (e.g. a
    :class:`prismrec.nn.NoiseSource`), drawn for ``M`` first. ``present`` (optional bool per
    user): the users with a modality view (:meth:`prismrec.nn.MultiViewEncoder.fused_presence`;
    a user with none has rows of 0 in ``Ĥ_U`` and ``M_U``) take part, the others not. A user
    repeated in ``rows`` is scored once in the first InfoNCE, weighted by its count
    (:class:`CountedRows`); the noise terms keep every row (each draws its own noise)."""
    at = _at(present, rows)

    def noisy(x: torch.Tensor) -> torch.Tensor:
        return infonce(noise(x, rows), noise(x, rows), tau, present=at)

    return rows_infonce(extended, fused, (counted_rows(rows),), tau, present) + noisy(fused) + noisy(extended)


ND_EPS = 1e-9
_PSEUDO_BLOCK = 64 * 2**20
"""Scores held at once when ranking pseudo-positives (row blocks of anchors)."""


def denoised_bpr(user, pos, neg, w_pos, w_neg) -> torch.Tensor:
    """``-mean(w⁺ log σ(Δ) + w⁻ log σ(-Δ))``, ``Δ = u·i - u·j``, as softplus (stable)."""
    diff = (user * pos).sum(dim=1) - (user * neg).sum(dim=1)
    return (w_pos * F.softplus(-diff) + w_neg * F.softplus(diff)).mean()


def symmetric_bernoulli_kl(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Mean symmetric KL between Bernoulli(σ(a)) and Bernoulli(σ(c)) (DA-MRS's preference
    alignment), in its exact simplified form ``(σ(a) − σ(c))(a − c)``: cheap and overflow-free.
    One autograd node (:class:`_SymmetricBernoulliKL`)."""
    return _SymmetricBernoulliKL.apply(a, c)


class _SymmetricBernoulliKL(torch.autograd.Function):
    """``mean((σ(a) − σ(c))(a − c))`` with ``∂a = (σ'(a)(a − c) + σ(a) − σ(c)) g/N`` and
    ``∂c = −(σ'(c)(a − c) + σ(a) − σ(c)) g/N``: six passes over the scores back (a fused
    ``σ'·(a − c)``, the difference of sigmoids added, the scale), where autograd through the
    expression takes about ten, with a node per operation. On DA-MRS's
    ``|U_B| x |I_B|`` logits (millions of entries per batch) these passes are most of what its
    loss adds to its products. Equal to the expression up to float rounding (tests/test_damrs.py)."""

    @staticmethod
    def forward(ctx, a, c):  # noqa: D401
        sig_a, sig_c = torch.sigmoid(a), torch.sigmoid(c)
        gap, diff = sig_a - sig_c, a - c
        ctx.save_for_backward(sig_a, sig_c, gap, diff)
        return (gap * diff).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        sig_a, sig_c, gap, diff = ctx.saved_tensors
        scale = grad / gap.numel()
        need = ctx.needs_input_grad
        grad_a = torch.ops.aten.sigmoid_backward(diff, sig_a).add_(gap).mul_(scale) if need[0] else None
        grad_c = torch.ops.aten.sigmoid_backward(diff, sig_c).add_(gap).mul_(-scale) if need[1] else None
        return grad_a, grad_c


@torch.no_grad()
def pseudo_positives(unit_views: torch.Tensor, items: torch.Tensor, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per view ``x``: ``(P_x, Q_x)``, the multi-view and single-view pseudo-positive item ids
    of each anchor in ``items`` (``len(items) x k`` each; DA-MRS), computed in row blocks.

    ``P_x`` = top-``k`` of ``Σ_v q_v + q_x``; ``Q_x`` = top-``k`` of ``q_x`` outside ``P_x``, taken
    from the top ``2k`` of ``q_x`` (at most ``k`` of which lie in ``P_x``): no masked copy of the
    anchors x items matrix and no second top-``k`` over it."""
    n_views, n_items, _ = unit_views.shape
    rows = max(1, _PSEUDO_BLOCK // (n_views * n_items))
    parts = [([], []) for _ in range(n_views)]
    for start in range(0, len(items), rows):
        anchors = unit_views[:, items[start : start + rows]]  # |V| x b x d
        q = torch.softmax(anchors @ unit_views.transpose(1, 2), dim=-1)  # q_v(i, ·)
        total = q.sum(dim=0)
        score = torch.empty_like(total)
        for x in range(n_views):
            multi = torch.topk(torch.add(total, q[x], out=score), k, dim=1).indices  # P_x
            parts[x][0].append(multi)
            parts[x][1].append(_top_outside(q[x], multi, k))  # Q_x
    return [(torch.cat(m), torch.cat(s)) for m, s in parts]


def _top_outside(scores: torch.Tensor, taken: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the ids of the ``k`` largest ``scores`` whose id is not in that row of ``taken``
    (``b x k``), largest first: the top ``2k`` holds them, since ``taken`` removes at most ``k``."""
    candidates = torch.topk(scores, min(2 * k, scores.shape[1]), dim=1).indices
    inside = (candidates.unsqueeze(2) == taken.unsqueeze(1)).any(dim=2)
    order = torch.sort(inside.to(torch.uint8), dim=1, stable=True).indices[:, :k]  # outside first, in rank order
    return candidates.gather(1, order)


def neighbour_discrimination(views: torch.Tensor, items: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """DA-MRS's neighbour discrimination ``L_ND`` (``K x n x d`` views), averaged over the views,
    anchors ``items`` against all items, ``k`` pseudo-positives, temperature ``tau``."""
    unit = normalized(views)
    losses = []
    for x, (multi, single) in enumerate(pseudo_positives(unit.detach(), items, k)):
        anchor = unit[x].index_select(0, items)  # nrm(h_x[i])
        log_total = gemm_logsumexp(anchor / tau, unit[x])  # log T
        log_multi = torch.logsumexp((anchor.unsqueeze(1) * unit[x][multi]).sum(-1) / tau, dim=1)
        log_single = torch.logsumexp((anchor.unsqueeze(1) * unit[x][single]).sum(-1) / tau, dim=1)
        r_multi = torch.exp(log_multi - log_total)  # Σ_P e / T
        r_single = torch.exp(log_single - log_total) / (1.0 - r_multi)  # Σ_Q e / (T - Σ_P e)
        losses.append(-(torch.log(r_multi + ND_EPS) + torch.log(r_single + ND_EPS)).mean())
    return torch.stack(losses).mean()


def paired_views_infonce(first: torch.Tensor, second: torch.Tensor, rows: tuple[torch.Tensor | CountedRows, ...],
                         tau: float, present: torch.Tensor | None = None) -> torch.Tensor:
    """``(1/K) Σ_k Σ_r InfoNCE(V'_k[r], V''_k[r]; τ)`` over ``K`` pairs of noisy views (``K x N x d``
    each): SIGER's perturbation term ``L_P`` (ALGORITHMS.md 5.2). ``present`` (optional ``K x N``
    bool): pair ``k`` is contrasted on the rows where view ``k`` is present."""
    return added(infonce(a.index_select(0, r), b.index_select(0, r), tau, present=_at(_view(present, k), r), counts=n)
                 for k, (a, b) in enumerate(zip(first, second)) for r, n in map(_ids, rows)) / len(first)


def _view(present: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """Row ``k`` of a ``K x N`` presence mask (``None`` passes through)."""
    return None if present is None else present[k]


def anchored_infonce(views: torch.Tensor, anchor: torch.Tensor, rows: tuple[torch.Tensor | CountedRows, ...], tau: float,
                     form: str = "A1", gated: bool = True, present: torch.Tensor | None = None) -> torch.Tensor:
    """SIGER's anchor term ``L_A`` (5.2) of modality views ``H`` (``K x N x d``) against behaviour
    anchors ``C`` (``N x d``; detach them first for ``sg(C)``), summed over ``rows``:
    ``A1`` ``(1/K) Σ_m InfoNCE(H_m[r], C[r])``; ``A2`` the joint multi-positive InfoNCE
    (:func:`joint_infonce`); ``A3`` the mean over modality pairs ``a < b`` of
    ``InfoNCE(H_a[r], H_b[r])`` weighted by ``σ(cos(h^a, c) + cos(h^b, c))`` (1 unless ``gated``).

    ``present`` (optional ``K x N`` bool, ``False`` where a row's view ``H_m`` is missing): ``A1``
    aligns ``H_m`` on its present rows; ``A2`` scores a row with its present views (a row with none
    takes no part); ``A3`` contrasts the pair ``a, b`` on the rows where both are present."""
    rows = [_ids(r) for r in rows]
    if form == "A1":
        return added(infonce(h.index_select(0, r), anchor.index_select(0, r), tau, present=_at(_view(present, m), r),
                             counts=n) for m, h in enumerate(views) for r, n in rows) / len(views)
    if form == "A2":
        return added(joint_infonce(views.index_select(1, r), anchor.index_select(0, r), tau, _at(present, r), n)
                     for r, n in rows)
    pairs = list(itertools.combinations(range(len(views)), 2))
    total = 0.0
    for (a, b), (r, n) in itertools.product(pairs, rows):
        ha, hb, c = views[a].index_select(0, r), views[b].index_select(0, r), anchor.index_select(0, r)
        gate = torch.sigmoid(F.cosine_similarity(ha, c) + F.cosine_similarity(hb, c)) if gated else None
        both = None if present is None else _at(present[a] & present[b], r)
        total = total + infonce(ha, hb, tau, gate, both, n)
    return total / len(pairs)


def entity_weights(a: torch.Tensor, mode: str, sign: int, tau_w: float,
                   counts: torch.Tensor | None = None) -> torch.Tensor:
    """EGRA's entity level (ALGORITHMS.md 6.3): weights with mean 1 from alignment degrees
    ``a ∈ [−1, 1]`` (no gradient). ``softmax`` ``|B|·softmax(s·a/τ_w)``; ``linear``
    ``(1 + s·a)/mean(1 + s·a)`` (the spec's ``(1 − a)/mean(1 − a)`` at ``s = −1``; ones if every
    base is 0); ``none`` 1. ``counts`` (optional, one per row): the rows are a batch's distinct
    rows, row ``b`` standing for ``n_b`` equal ones (:class:`CountedRows`): the weights of the batch
    with its repeats."""
    a = a.detach()
    if _SHARES.split and mode in ("softmax", "linear"):  # normalised over the global batch
        every, at = _SHARES.gather(a)
        every_counts = None if counts is None else _batch_keys(counts)
        return _entity_weights(every, mode, sign, tau_w, every_counts)[at : at + len(a)]
    return _entity_weights(a, mode, sign, tau_w, counts)


def _entity_weights(a: torch.Tensor, mode: str, sign: int, tau_w: float,
                    counts: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`entity_weights` of the whole batch's ``a`` (detached), ``counts`` ``n`` (``None``: 1)."""
    if mode == "softmax":
        x = sign * a / tau_w
        if counts is None:
            return a.numel() * torch.softmax(x, dim=0)
        n = counts.to(a.dtype)  # |B| exp(x_b) / Σ_b' n_b' exp(x_b'), |B| = Σ_b' n_b'
        return n.sum() * torch.softmax(x + n.log(), dim=0) / n
    if mode == "linear":
        base = (1.0 + sign * a).clamp_min(0.0)
        mean = base.mean() if counts is None else (counts * base).sum() / counts.sum()
        return torch.where(mean > 1e-12, base / mean.clamp_min(1e-12), torch.ones_like(base))
    return torch.ones_like(a)


def entity_weighted_infonce(p: torch.Tensor, q: torch.Tensor, tau: float, mode: str = "softmax",
                            sign: int = -1, tau_w: float = 0.5, present: torch.Tensor | None = None,
                            counts: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_e w_e ℓ_e`` of row-aligned ``p``, ``q`` (EGRA's one-side alignment, 6.3): ``ℓ_e`` the
    per-row InfoNCE, ``w_e`` :func:`entity_weights` of ``a_e = sg(cos(p_e, q_e))``. ``present``
    (optional bool per row): the term of the present rows alone, their weights normalised over
    them (module docstring). ``counts``: as in :func:`infonce`."""
    rows = len(p) if counts is None else int(counts.sum())
    if present is not None:
        at = _present_rows(present, len(p), p.device)
        p, q = p.index_select(0, at), q.index_select(0, at)
        counts = None if counts is None else counts.index_select(0, at)
    a = (F.normalize(p, dim=1, eps=1e-12) * F.normalize(q, dim=1, eps=1e-12)).sum(1)
    if present is None and counts is None:
        return infonce(p, q, tau, weights=entity_weights(a, mode, sign, tau_w))
    return _present_mean(entity_weights(a, mode, sign, tau_w, counts) * infonce_rows(p, q, tau, counts), rows, counts)


COSINE_EPS = 1e-8
"""``eps`` of ``F.cosine_similarity`` (its default), clamping each row's norm from below."""


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` with each row divided by its norm clamped at :data:`COSINE_EPS`: how
    ``F.cosine_similarity`` normalises an argument (a detached target here), done once per row."""
    return x / torch.linalg.vector_norm(x, 2, dim=-1, keepdim=True).clamp_min(COSINE_EPS)


def cosine(x: torch.Tensor, target_unit: torch.Tensor) -> torch.Tensor:
    """``F.cosine_similarity(x, target, dim=-1)`` for a detached ``target`` given as
    ``unit_rows(target)``: the same values and gradient bit for bit (tests/test_bm3.py), with
    the target normalised once however often it is used and a backward of five passes over the
    rows instead of autograd's eleven (:class:`_Cosine`)."""
    return _Cosine.apply(x, target_unit)


class _Cosine(torch.autograd.Function):
    """``Σ_d (x / max(‖x‖, ε)) ⊙ t`` per row; the backward is autograd's for that expression
    (the product's, the division's for both operands, then the norm's, which uses the unclamped
    ``‖x‖`` and is 0 at 0) with the shared factors computed once."""

    @staticmethod
    def forward(ctx, x, target_unit):  # noqa: D401
        norm = torch.linalg.vector_norm(x, 2, dim=-1, keepdim=True)
        clamped = norm.clamp_min(COSINE_EPS)
        a = x / clamped
        ctx.save_for_backward(x, norm, clamped, a, target_unit)
        return (a * target_unit).sum(dim=-1)

    @staticmethod
    def backward(ctx, grad):
        x, norm, clamped, a, t = ctx.saved_tensors
        grad_a = grad.unsqueeze(-1) * t                                           # ∂/∂a
        grad_norm = -(grad_a * (a / clamped)).sum(dim=-1, keepdim=True)           # ∂/∂‖x‖ through a = x / ‖x‖
        small = x.device.type != "cpu" or bool((norm < COSINE_EPS).any())        # no host read on a GPU
        via_norm = ((x / norm) if small else a) * grad_norm                       # ‖x‖'s backward: (x / ‖x‖) g
        if small:
            via_norm.masked_fill_(norm == 0, 0)
        return grad_a.div_(clamped).add_(via_norm), None


def cosine_terms(x: torch.Tensor, targets: list[torch.Tensor], weight: float | None = None) -> tuple[torch.Tensor, ...]:
    """``weight · (1 − mean_b cos(x_b, t_b))`` for each detached target ``t`` in ``targets``, given
    as unit rows (:func:`unit_rows`); no weight when ``weight`` is ``None``.

    The values and gradient of ``x`` of ``weight * (1 - cosine(x, t).mean())`` per target up to
    float rounding (tests/test_bm3.py), as one autograd node (:class:`_CosineTerms`): ``x``'s norm
    is computed once for all its targets (BM3's modality views meet two), and the mean, the
    ``1 −`` and the weight are not nodes of their own."""
    return _CosineTerms.apply(x, weight, *targets)


class _CosineTerms(torch.autograd.Function):
    """The terms of :func:`cosine_terms` in few passes over the ``B x d`` rows.

    With ``n_b = ‖x_b‖``, ``ñ_b = max(n_b, ε)`` and ``cos_kb = x_b·t_kb / ñ_b``, term ``k``'s
    gradient reaching ``cos_kb`` is the same ``c_k = −g_k·w / B`` for every row (the weight, the
    ``1 −`` and the mean), so that, as :func:`cosine`'s backward gives it (the norm's path through
    the unclamped ``n``, 0 where ``n = 0``), ``∂x_b = (Σ_k c_k t_kb − s_b x_b) / ñ_b`` with
    ``s_b = Σ_k c_k cos_kb / n_b``. Forward: the norms and, per target, a row product and its sum
    (``1 + 2K`` passes); backward: ``K + 2`` (the targets' scaled sum, then ``− s x`` and the
    division), where a node per target in autograd's order takes seven each."""

    @staticmethod
    def forward(ctx, x, weight, *targets):  # noqa: D401
        norm = torch.linalg.vector_norm(x, 2, dim=-1)
        clamped = norm.clamp_min(COSINE_EPS)
        cosines = [(x * t).sum(dim=-1).div_(clamped) for t in targets]
        terms = [1 - c.mean() for c in cosines]
        ctx.save_for_backward(x, norm, clamped, *cosines, *targets)
        ctx.weight, ctx.n_targets = weight, len(targets)
        ctx.set_materialize_grads(False)
        return tuple(terms if weight is None else [weight * t for t in terms])

    @staticmethod
    def backward(ctx, *grads):
        x, norm, clamped, *rest = ctx.saved_tensors
        cosines, targets = rest[: ctx.n_targets], rest[ctx.n_targets :]
        scale = -(1.0 if ctx.weight is None else ctx.weight) / x.shape[0]
        weighted = [(g * scale, c, t) for g, c, t in zip(grads, cosines, targets) if g is not None]
        if not weighted:
            return (None, None, *([None] * len(targets)))
        grad_x, s = None, None
        for c_k, cos_k, t in weighted:  # Σ_k c_k t_k and Σ_k c_k cos_k
            grad_x = t * c_k if grad_x is None else grad_x.addcmul_(t, c_k)
            s = cos_k * c_k if s is None else s.addcmul_(cos_k, c_k)
        s = torch.where(norm > 0, s / norm, 0.0)  # the norm's path: 0 where x_b = 0
        grad_x.addcmul_(x, s.unsqueeze(-1), value=-1).div_(clamped.unsqueeze(-1))
        return (grad_x, None, *([None] * len(targets)))


def all_keys_infonce(queries: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor, tau: float,
                     present: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``Σ_b ℓ[b]`` over the batch ``rows`` (LGMRec's ``L_hcl``): query ``queries[r]``, positive
    ``keys[r]``, **every** row of ``keys`` as a candidate (a ``B x n`` score matrix, never
    ``n x n``), cosine scores over ``tau``.

    ``present`` (optional ``(has_query, has_key)``, ``n`` bools each): only the rows having both
    query (the others' terms are 0), and only the rows having a key are candidates.

    A row repeated in the batch repeats the same term, so each distinct row is scored once and
    weighted by its count: the same sum and gradient, with fewer rows in the GEMMs. A sum over
    the batch (its shares' under DDP, :func:`batch_sum`, counting every row of the batch)."""
    n_rows = len(rows)
    if present is not None:  # keys: the rows having one; rows renumbered among them
        has_query, has_key = (p.to(rows.device) for p in present)
        candidates = has_key.nonzero().squeeze(1)
        rows = (torch.cumsum(has_key, 0) - 1)[rows[(has_query & has_key)[rows]]]
        queries, keys = queries.index_select(0, candidates), keys.index_select(0, candidates)
    distinct, counts = torch.unique(rows, return_counts=True)
    q = normalized(queries.index_select(0, distinct), tau)
    k = normalized(keys)
    per_row = gemm_logsumexp(q, k) - (q * k.index_select(0, distinct)).sum(dim=1)
    return batch_sum(per_row * counts, n_rows)
