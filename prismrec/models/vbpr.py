"""VBPR — He & McAuley, AAAI'16 (arXiv 1510.01784); ALGORITHMS.md 3.3.

Matrix factorisation whose item side is half free ID embedding, half a linear image of the
item's (frozen) raw content features. Reference-code form (enoche/MMRec, no bias terms)::

    f_i = [f_i^{m_1} ; ... ; f_i^{m_M}]          raw features of every selected modality, frozen
    z_i = [e_i ; W f_i + b]                      W: Σ_m d_m -> d (Xavier-normal), b = 0 at init
    z_u = u_u ∈ R^{2d}                           one free user vector per user
    ŷ_ui = z_u · z_i

    L = L_BPR(z_u, z_i, z_j) + λ·emb_norm(z_u, z_i, z_j)     (regularises the final rows)

Deviation: each modality's features are standardised first (``feature_norm``; the reference uses
raw values, ``feature_norm="none"``). The reference concatenates ``[f^t ; f^v]``; here every modality chosen by ``modalities`` (default:
all the dataset has, in canonical order image, text, audio) is concatenated in that order. The
order only permutes the columns of ``W`` and so does not change the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from prismrec.losses import bpr_terms
from prismrec.models import register
from prismrec.nn.content import content_forward_rows, feature_knn
from prismrec.nn import IdEmbedding
from prismrec.nn.encoders import Projector, normalize_features
from prismrec.nn.propagation import distinct_rows, few_rows
from prismrec.recommender import Output, Recommender


@dataclass
class VBPRConfig:
    modalities: list[str] | None = None
    """Modalities whose raw features are concatenated into ``f_i``; ``None`` = all present."""
    embedding_size: int = 64
    """``d``: ID part and visual part of an item are ``d`` each, users are ``2d``."""
    reg_weight: float = field(default=1e-4, metadata={"grid": [2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5]})
    """``λ``; reference grid {2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5}."""
    reg_form: Literal["emb_norm", "half_sq"] = "emb_norm"
    """L2 form (2.10); MMRec's ``EmbLoss`` is ``emb_norm``."""
    feature_norm: Literal["none", "l2", "standardize"] = "standardize"
    """Rescale each modality's raw features before concatenation: ``standardize`` (default: each
    column to mean 0, std 1; selected on validation on tiktok and lfm2k, with ``reg_weight``,
    ``benchmarks/results/vbpr_grid.md``), ``l2`` (unit rows) or ``none`` (MMRec's raw values,
    which collapse on lfm2k's VGGish audio, row norms ~1500)."""


@register
class VBPR(Recommender):
    name = "vbpr"
    Config = VBPRConfig
    content_id_rows = "zero"  # cold items: θ_i·E f_i only (the ID part removed)

    @classmethod
    def check_settings(cls, config) -> None:
        cls.require_at_least(config, embedding_size=1)

    def __init__(self, dataset, config: VBPRConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.modalities = self.used_modalities(config, dataset)
        d = config.embedding_size
        # f_i: the selected raw features side by side, a frozen buffer (not saved in model.pt).
        features = torch.cat(
            [normalize_features(dataset.features[m].float(), config.feature_norm) for m in self.modalities], dim=1
        )
        self.content = Projector(features, d, trainable_features=False)  # W f_i + b
        self.user_emb = IdEmbedding(self.n_users, 2 * d)  # z_u = u_u
        self.item_emb = IdEmbedding(self.n_items, d)  # e_i
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Reference init: Xavier-uniform ID tables, Xavier-normal W, zero b.
        self.user_emb.reset_parameters()
        self.item_emb.reset_parameters()
        nn.init.xavier_normal_(self.content.linear.weight)
        nn.init.zeros_(self.content.linear.bias)

    def forward(self) -> Output:
        item = torch.cat([self.item_emb.weight, self.content()], dim=1)  # z_i = [e_i ; W f_i + b]
        return Output(self.user_emb.weight, item)

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        u, i, j = batch
        return self._terms(out.user.index_select(0, u), out.item.index_select(0, torch.cat([i, j])))

    def batch_loss(self, batch) -> dict[str, torch.Tensor]:
        # The loss reads z_i of the batch's items only: W f_i + b for those rows alone.
        u, i, j = batch
        distinct, at = distinct_rows(torch.cat([i, j]), self.n_items)  # torch.unique's, in linear time
        if not few_rows(distinct, self.n_items):  # nearly every item: the full projection is cheaper
            return self.loss(batch, self())
        items = torch.from_numpy(distinct).to(i.device)
        content = self.content.linear(self.content.features.index_select(0, items))
        rows = torch.cat([self.item_emb.weight.index_select(0, items), content], dim=1)  # z_i of the items
        return self._terms(self.user_emb.weight.index_select(0, u), rows.index_select(0, at))

    def _terms(self, zu: torch.Tensor, zij: torch.Tensor) -> dict[str, torch.Tensor]:
        """The BPR and L2 terms of the users' rows ``zu`` and the items' ``zij = [z_i; z_j]``."""
        return bpr_terms(zu, zij, self.config.reg_weight, self.config.reg_form)

    def content_item_embeddings(self, items, out, id_rows=None):
        return content_forward_rows(self, self.item_emb.weight, items, id_rows or self.content_id_rows,
                                    lambda: feature_knn([self.content.features]))
