"""MGCN — Yu et al., MM'23 (arXiv 2308.03588); ALGORITHMS.md 3.5.

Multi-view graph convolution: a behaviour view on the user-item graph, one item-item view per
modality on its feature kNN graph, and a behaviour-aware fuser that blends the modality views
under preference gates driven by behaviour.

1. Graphs (built once from the raw features): ``Ŝ_m`` = weighted kNN graph of ``F_m`` (2.2,
   ``k = 10``); ``Â`` the normalised user-item adjacency, ``R̂ = Â[:n_U, n_U:]`` (2.1).
2. Purifier (2.8): ``H_m⁰ = E_I ⊙ σ((F_m W_m + b_m) G_m + g_m)``, trainable copies of ``F_m``.
3. Behaviour view: ``C = LGN(Â, [E_U; E_I], L_ui)``.
4. Item-item view: ``H_m^I = Ŝ_m^{L_ii} H_m⁰``, ``H_m^U = R̂ H_m^I``, ``H_m = [H_m^U; H_m^I]``.
5. Fuser (2.8): ``M = fuse(H_1..H_K | C)``; output ``Z = C + M``, score ``z_u·z_i``.
6. Loss: ``L_BPR(Z) + λ_reg·half_sq(z_u, z_i, z_j)
   + λ_cl·[InfoNCE(M_U[u], C_U[u]; τ) + InfoNCE(M_I[i], C_I[i]; τ)]``; a row repeated in ``u`` or
   ``i`` is scored once, weighted by its count (:class:`prismrec.losses.CountedRows`).

Any number ``K >= 1`` of modalities is supported (the paper uses image and text); the fuser
divides by ``K + 1``. Steps 2-5 are :class:`prismrec.nn.MultiViewEncoder`, shared with GUME,
SIGER and EGRA, which build other graphs.

Missing modalities (``impute="zero"``): the fuser weighs a node's present modalities, a user takes
modality ``m`` from its items that have it (``H_m^U = R̂_m H_m^I``), and ``cl`` leaves out a node
with no modality at all (its ``M`` row is 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from prismrec.data.features import fusion_presence
from prismrec.graph import UserItemGraph, knn_graph
from prismrec.losses import bpr_terms, counted_rows, output_bpr_terms, rows_infonce
from prismrec.models import register
from prismrec.nn.content import multiview_content_hook
from prismrec.nn import MultiViewConfig, MultiViewEncoder, check_multiview_config
from prismrec.nn.propagation import batch_node_rows
from prismrec.recommender import Output, Recommender


@dataclass
class MGCNConfig(MultiViewConfig):
    n_ii_layers: int = 1
    """``L_ii``, propagation steps on each modality kNN graph ``Ŝ_m``."""
    reg_form: Literal["half_sq", "emb_norm"] = "half_sq"
    """L2 form (2.10); the reference uses ``half_sq``."""
    cl_weight: float = field(default=0.01, metadata={"grid": [0.001, 0.01, 0.1]})
    """``λ_cl``, weight of the behaviour-modality InfoNCE; reference grid {0.001, 0.01, 0.1}."""
    cl_tau: float = 0.2
    """``τ`` of the behaviour-modality InfoNCE (fixed in the reference)."""


@register
class MGCN(Recommender):
    """MGCN; ``out.aux``: ``behavior`` ``C`` and ``modality`` ``M`` (``N x d``, users first)."""

    name = "mgcn"
    Config = MGCNConfig
    # Cold items: the forward with the item's ID row imputed from its warm neighbours on S_m
    content_id_rows = "impute"
    content_item_embeddings = multiview_content_hook
    train_defaults = {"lr_decay": 0.96, "lr_decay_epochs": 50}

    @classmethod
    def check_settings(cls, config) -> None:
        check_multiview_config(config, cl_tau=config.cl_tau)

    def __init__(self, dataset, config: MGCNConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.modalities = self.used_modalities(config, dataset)
        # 1. Graphs: Ŝ_m per modality, Â (R̂ is its user-item block).
        knn = [knn_graph(dataset.features[m], config.knn_k) for m in self.modalities]
        # 2-5. ID tables, purifiers and fuser over these graphs; when some modality rows were
        # zero-filled (impute="zero"; else nothing is masked) the fuser weighs only a node's
        # present modalities and H_m^U reads only the user's items that have m.
        self.encoder = MultiViewEncoder(
            UserItemGraph(dataset.train), knn, [dataset.features[m] for m in self.modalities],
            self.n_users, config.embedding_size, config.n_ui_layers, config.n_ii_layers, config.train_features,
            present_items=fusion_presence(dataset, self.modalities),
        )
        self.reset_parameters()

    def forward(self) -> Output:
        c = self.encoder.behavior_view()                         # 3. C
        m = self.encoder.fuse(self.encoder.modality_views(), c)  # 4-5. M = fuse(H | C)
        z = c + m
        return Output.of_nodes(z, self.n_users, {"behavior": c, "modality": m})

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        cfg = self.config
        u, i, _ = batch
        rows = (counted_rows(i + self.n_users), counted_rows(u))  # item rows, then user rows, of the N x d views
        return {
            **output_bpr_terms(out, batch, cfg.reg_weight, cfg.reg_form),
            "cl": cfg.cl_weight * rows_infonce(out.aux["modality"], out.aux["behavior"], rows, cfg.cl_tau,
                                               self.encoder.fused_presence()),
        }

    def batch_loss(self, batch) -> dict[str, torch.Tensor]:
        # The loss reads rows u, i, j of Z and rows u, i of M and C only. The fuser is per node,
        # so C (last layer), the user rows of H_m and M are computed for the batch's distinct
        # rows alone; the terms and gradients are those of loss(batch, forward()).
        cfg = self.config
        rows, (at_u, at_i, at_j) = batch_node_rows(batch, self.n_users, self.n_items)
        c, m = self.encoder.fused_rows(rows)                                 # C[rows], M[rows]
        z = c + m
        zij = z.index_select(0, torch.cat([at_i, at_j]))  # [z_i; z_j]
        return {
            **bpr_terms(z.index_select(0, at_u), zij, cfg.reg_weight, cfg.reg_form),
            "cl": cfg.cl_weight * rows_infonce(m, c, (counted_rows(at_i), counted_rows(at_u)), cfg.cl_tau,
                                               self.encoder.fused_presence(rows)),
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, modalities={self.modalities}"
