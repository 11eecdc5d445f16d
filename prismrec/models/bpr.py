"""BPR-MF — Rendle et al., UAI'09 (ALGORITHMS.md 3.1).

``ŷ_ui = e_u · e_i`` with free ID tables; loss ``L_BPR + λ·emb_norm(e_u, e_i, e_j)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from prismrec import losses
from prismrec.losses import bpr_loss, l2_reg
from prismrec.models import register
from prismrec.nn import IdEmbedding
from prismrec.recommender import Output, Recommender


@dataclass
class BPRConfig:
    embedding_size: int = 64
    """``d``, the embedding dimension."""
    reg_weight: float = field(default=1e-4, metadata={"grid": [2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5]})
    """``λ``; reference grid {2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5}."""
    reg_form: Literal["emb_norm", "half_sq"] = "emb_norm"
    """L2 form (2.10); MMRec's ``EmbLoss`` is ``emb_norm``."""


@register
class BPRMF(Recommender):
    name = "bpr"
    Config = BPRConfig

    def __init__(self, dataset, config: BPRConfig) -> None:
        super().__init__(dataset, config)
        self.user_emb = IdEmbedding(self.n_users, config.embedding_size, init="xavier_normal")  # e_u
        self.item_emb = IdEmbedding(self.n_items, config.embedding_size, init="xavier_normal")  # e_i
        self.reset_parameters()

    def forward(self) -> Output:
        return Output(self.user_emb.weight, self.item_emb.weight)

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        u, i, j = batch
        zu = out.user.index_select(0, u)
        # i and j gathered at once: the backward is one scatter into the item table, not two
        # full-size zero-filled gradients added together.
        zij = out.item.index_select(0, torch.cat([i, j]))  # [z_i; z_j]
        return bpr_terms(zu, zij, self.config.reg_weight, self.config.reg_form)


def bpr_terms(zu: torch.Tensor, zij: torch.Tensor, reg_weight: float, reg_form: str) -> dict[str, torch.Tensor]:
    """``{"bpr": bpr_loss(zu, zi, zj), "reg": reg_weight * l2_reg(reg_form, zu, zi, zj)}`` for
    ``zij = [zi; zj]`` (the batch's positive rows, then its negative rows), as BPR-MF's and VBPR's
    ``loss`` compute them, with the same values and the same gradients bit for bit.

    With ``emb_norm`` on a CPU in one process (the default) both terms are one autograd node
    (:class:`_BPRTerms`); otherwise the two loss functions are called (on a GPU their norm
    gradients avoid a host sync, and a data-parallel batch's norms span the ranks)."""
    if reg_form != "emb_norm" or zu.device.type != "cpu" or losses.batch_shares().split:
        zi, zj = zij.chunk(2)
        return {"bpr": bpr_loss(zu, zi, zj), "reg": reg_weight * l2_reg(reg_form, zu, zi, zj)}
    bpr, reg = _BPRTerms.apply(zu, zij, reg_weight)
    return {"bpr": bpr, "reg": reg}


class _BPRTerms(torch.autograd.Function):
    """``losses.bpr_loss`` and ``reg_weight * losses.emb_norm`` of the same rows as one node.

    Forward: the operations of the two loss nodes, in their order. Backward: theirs too, in the
    order autograd runs them when the terms are summed (``emb_norm``'s node first, being created
    later), so that each row's gradients are added as autograd adds them: ``z_u``'s norm
    gradient, then ``w·z_j``, then ``-w·z_i``; ``z_i``'s and ``z_j``'s norm gradients, then their
    product gradients. The sums are formed in place and ``[∂z_i; ∂z_j]`` is written as one
    buffer, where the separate nodes allocate each sum and concatenate the two halves; the
    bookkeeping of five autograd nodes (two losses, the weight, the split of ``zij``) becomes one.
    """

    @staticmethod
    def forward(ctx, zu, zij, reg_weight):  # noqa: D401
        zi, zj = zij.chunk(2)
        x = ((zu * zi).sum(dim=1) - (zu * zj).sum(dim=1)).neg_()  # softplus's input, -Δ
        bpr = F.softplus(x).mean()
        norms = [torch.linalg.vector_norm(r) for r in (zj, zi, zu)]  # emb_norm's order
        reg = reg_weight * (sum(reversed(norms)) / zu.shape[0])
        ctx.save_for_backward(zu, zij, x, *norms)
        ctx.reg_weight = reg_weight
        return bpr, reg

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_bpr, grad_reg):
        zu, zij, x, norm_j, norm_i, norm_u = ctx.saved_tensors
        batch = zu.shape[0]
        zi, zj = zij.chunk(2)
        grad_zij = torch.empty_like(zij)
        grad_zi, grad_zj = grad_zij.chunk(2)
        g = (grad_reg * ctx.reg_weight) / batch  # through the weight, then the division by B
        _norm_grad(zj, norm_j, g, grad_zj)
        _norm_grad(zi, norm_i, g, grad_zi)
        grad_zu = _norm_grad(zu, norm_u, g, torch.empty_like(zu))
        w = torch.ops.aten.softplus_backward((grad_bpr / batch).expand(x.shape), x, 1, 20).unsqueeze(1)
        minus_w = w.neg()
        grad_zu.add_(w * zj)
        grad_zj.add_(w * zu)
        grad_zu.add_(minus_w * zi)
        grad_zi.add_(minus_w * zu)
        return grad_zu, grad_zij, None


def _norm_grad(x: torch.Tensor, norm: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``emb_norm``'s gradient of ``x``, ``(x / ‖x‖)·g`` (zero where ``‖x‖ = 0``), into ``out``."""
    if norm.item() == 0:
        return out.zero_().mul_(g)
    return torch.div(x, norm, out=out).mul_(g)
