"""BPR-MF — Rendle et al., UAI'09 (ALGORITHMS.md 3.1).

``ŷ_ui = e_u · e_i`` with free ID tables; loss ``L_BPR + λ·emb_norm(e_u, e_i, e_j)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from prismrec.losses import bpr_terms
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
        u, i, j = batch
        zu = out.user.index_select(0, u)
        # i and j gathered at once: the backward is one scatter into the item table, not two
        # full-size zero-filled gradients added together.
        zij = out.item.index_select(0, torch.cat([i, j]))  # [z_i; z_j]
        return bpr_terms(zu, zij, self.config.reg_weight, self.config.reg_form)
