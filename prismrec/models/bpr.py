"""BPR-MF — Rendle et al., UAI'09 (ALGORITHMS.md 3.1).

``ŷ_ui = e_u · e_i`` with free ID tables; loss ``L_BPR + λ·emb_norm(e_u, e_i, e_j)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from prismrec.losses import bpr_terms_with_grads, output_bpr_terms
from prismrec.models import register
from prismrec.nn import IdEmbedding
from prismrec.recommender import Output, Recommender, add_grad


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

    @classmethod
    def check_settings(cls, config) -> None:
        cls.require_at_least(config, embedding_size=1)

    def __init__(self, dataset, config: BPRConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.user_emb = IdEmbedding(self.n_users, config.embedding_size, init="xavier_normal")  # e_u
        self.item_emb = IdEmbedding(self.n_items, config.embedding_size, init="xavier_normal")  # e_i
        self.reset_parameters()

    def forward(self) -> Output:
        return Output(self.user_emb.weight, self.item_emb.weight)

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        return output_bpr_terms(out, batch, self.config.reg_weight, self.config.reg_form)

    def batch_gradients(self, batch) -> dict[str, torch.Tensor]:
        """The batch's terms and their gradients in closed form, as Rendle's LearnBPR updates: the
        rows' gradients of :func:`~prismrec.losses.bpr_terms_with_grads`, scattered into the tables
        as ``index_select``'s backward scatters them (bit for bit the autograd path's)."""
        cfg = self.config
        u, i, j = batch
        ij = torch.cat([i, j])
        users, items = self.user_emb.weight, self.item_emb.weight
        with torch.no_grad():
            terms, grad_zu, grad_zij = bpr_terms_with_grads(users.index_select(0, u), items.index_select(0, ij),
                                                            cfg.reg_weight, cfg.reg_form)
            add_grad(users, torch.zeros_like(users).index_add_(0, u, grad_zu))
            add_grad(items, torch.zeros_like(items).index_add_(0, ij, grad_zij))
        return terms
