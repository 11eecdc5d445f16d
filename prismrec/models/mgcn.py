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
   + λ_cl·[InfoNCE(M_I[i], C_I[i]; τ) + InfoNCE(M_U[u], C_U[u]; τ)]``.

Any number ``K >= 1`` of modalities is supported (the paper uses image and text); the fuser
divides by ``K + 1``. GUME (``models/gume.py``) and EGRA reuse this class and change the
behaviour graph through :meth:`MGCN.behavior_graph`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import scipy.sparse as sp
import torch
from torch import nn

from prismrec.graph import SparseOperator, bipartite_adjacency, knn_graph, user_item_block
from prismrec.losses import bpr_loss, infonce, l2_reg
from prismrec.models import register
from prismrec.nn import BehaviorAwareFuser, Purifier, lightgcn
from prismrec.recommender import Output, Recommender


@dataclass
class MGCNConfig:
    modalities: list[str] | None = None
    """Feature names used, in order; ``None`` = every modality of the dataset (canonical order)."""
    embedding_size: int = 64
    """``d``, width of the ID embeddings and of every view."""
    n_ui_layers: int = 2
    """``L_ui``, LightGCN depth of the behaviour view."""
    n_ii_layers: int = 1
    """``L_ii``, propagation steps on each modality kNN graph ``Ŝ_m``."""
    knn_k: int = 10
    """``k`` of the modality kNN graphs (self included)."""
    reg_weight: float = 1e-4
    """``λ_reg``, weight of the batch L2 term on the final rows ``z_u, z_i, z_j``."""
    reg_form: Literal["half_sq", "emb_norm"] = "half_sq"
    """L2 form (2.10); the reference uses ``half_sq``."""
    cl_weight: float = 0.01
    """``λ_cl``, weight of the behaviour-modality InfoNCE; reference grid {0.001, 0.01, 0.1}."""
    cl_tau: float = 0.2
    """``τ`` of the behaviour-modality InfoNCE (fixed in the reference)."""
    train_features: bool = True
    """Fine-tune the raw feature matrices (reference: True); False keeps them frozen."""


@register
class MGCN(Recommender):
    """MGCN; ``out.aux`` holds ``behavior`` = ``C`` and ``modality`` = ``M`` (``N x d``, users first)."""

    name = "mgcn"
    Config = MGCNConfig
    train_defaults = {"lr_decay": 0.96, "lr_decay_epochs": 50}
    min_modalities: ClassVar[int] = 1

    def __init__(self, dataset, config: MGCNConfig) -> None:
        super().__init__(dataset, config)
        self._check_config(config)
        self.modalities = self.select_modalities(dataset, config.modalities, self.min_modalities, self.name)
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"{self.name}: modalities must be distinct, got {self.modalities}")
        d = config.embedding_size

        # 1. Graphs, built once from the raw features: Ŝ_m per modality, Â and R̂.
        knn = [knn_graph(dataset.features[m], config.knn_k) for m in self.modalities]
        for m, graph in zip(self.modalities, knn):
            # One attribute per graph: the base class moves SparseOperator attributes on .to().
            setattr(self, self._graph_attr(m), SparseOperator(graph, symmetric=False))
        adjacency = self.behavior_graph(dataset, knn)
        self.adjacency = SparseOperator(adjacency)
        self.user_item = SparseOperator(user_item_block(adjacency, self.n_users), symmetric=False)

        # 2. Parameters: ID tables, one purifier per modality, the fuser.
        self.user_emb = nn.Parameter(torch.empty(self.n_users, d))
        self.item_emb = nn.Parameter(torch.empty(self.n_items, d))
        self.purifiers = nn.ModuleList(
            Purifier(dataset.features[m], d, trainable_features=config.train_features) for m in self.modalities
        )
        self.fuser = BehaviorAwareFuser(d, len(self.modalities))
        self.reset_parameters()

    @staticmethod
    def _check_config(config) -> None:
        Recommender.require_at_least(config, embedding_size=1, knn_k=1, n_ui_layers=0, n_ii_layers=0)
        for key in ("cl_tau", "bm_tau", "um_tau"):
            if getattr(config, key, 1.0) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(config, key)}")

    @staticmethod
    def _graph_attr(modality: str) -> str:
        return f"item_graph_{modality}"

    def item_graph(self, modality: str) -> SparseOperator:
        """``Ŝ_m``, the normalised kNN graph of ``modality``'s raw features."""
        return getattr(self, self._graph_attr(modality))

    def behavior_graph(self, dataset, knn: list[sp.csr_matrix]) -> sp.csr_matrix:
        """The normalised user-item adjacency the behaviour view runs on: MGCN's plain ``Â``.

        Subclasses that enhance the graph (GUME's ``Â⁺``) override this; ``knn`` are the raw
        (normalised) modality kNN graphs, in ``self.modalities`` order.
        """
        return bipartite_adjacency(dataset.train)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)
        for purifier in self.purifiers:
            purifier.reset_parameters()
        self.fuser.reset_parameters()

    # ----------------------------------------------------------------------------------- views
    def behavior_view(self) -> torch.Tensor:
        """3. ``C = LGN(Â, [E_U; E_I], L_ui)`` (``N x d``)."""
        return lightgcn(self.adjacency, torch.cat([self.user_emb, self.item_emb]), self.config.n_ui_layers)

    def modality_views(self) -> torch.Tensor:
        """2 + 4. ``H_m = [R̂ H_m^I; H_m^I]``, ``H_m^I = Ŝ_m^{L_ii} H_m⁰``; stacked ``K x N x d``."""
        views = []
        for m, purifier in zip(self.modalities, self.purifiers):
            h = purifier(self.item_emb)                          # H_m⁰
            graph = self.item_graph(m)
            for _ in range(self.config.n_ii_layers):
                h = graph @ h                                    # H_m^I
            views.append(torch.cat([self.user_item @ h, h]))     # [H_m^U; H_m^I]
        return torch.stack(views)

    def forward(self) -> Output:
        c = self.behavior_view()
        m = self.fuser(self.modality_views(), c)                 # 5. M = fuse(H | C)
        z = c + m
        return Output(z[: self.n_users], z[self.n_users :], {"behavior": c, "modality": m})

    # ------------------------------------------------------------------------------------ loss
    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        cfg = self.config
        u, i, _ = batch
        zu, zi, zj = out.bpr_rows(batch)
        c, m = out.aux["behavior"], out.aux["modality"]
        i_rows = i + self.n_users  # item rows of the N x d views
        return {
            "bpr": bpr_loss(zu, zi, zj),
            "reg": cfg.reg_weight * l2_reg(cfg.reg_form, zu, zi, zj),
            "cl": cfg.cl_weight
            * (infonce(m[i_rows], c[i_rows], cfg.cl_tau) + infonce(m[u], c[u], cfg.cl_tau)),
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, modalities={self.modalities}"
