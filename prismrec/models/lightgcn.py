"""LightGCN — He et al., SIGIR'20 (ALGORITHMS.md 3.2).

``[Z_U; Z_I] = 1/(L+1) Σ_l Â^l [E_U; E_I]`` over the normalised user-item graph
``Â = D^-1/2 A D^-1/2`` (no self-loops, no weights, no nonlinearity). Loss
``L_BPR(Z) + λ·reg(E_U[u], E_I[i], E_I[j])`` regularises the **layer-0** rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from prismrec.graph import SparseOperator, bipartite_adjacency
from prismrec.losses import bpr_loss, l2_reg
from prismrec.models import register
from prismrec.nn import IdEmbedding, lightgcn, lightgcn_rows
from prismrec.recommender import Output, Recommender


@dataclass
class LightGCNConfig:
    embedding_size: int = 64
    """``d``, the embedding dimension."""
    n_layers: int = field(default=3, metadata={"grid": [1, 2, 3, 4]})
    """``L``, propagation depth; reference grid {1, 2, 3, 4}."""
    reg_weight: float = field(default=1e-4, metadata={"grid": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]})
    """``λ``; reference grid {1e-2, 1e-3, 1e-4, 1e-5, 1e-6}."""
    reg_form: Literal["emb_norm", "half_sq"] = "emb_norm"
    """L2 form (2.10); MMRec uses ``emb_norm`` (the paper's squared norm is ``half_sq``)."""


@register
class LightGCN(Recommender):
    name = "lightgcn"
    Config = LightGCNConfig

    @classmethod
    def check_settings(cls, config) -> None:
        cls.require_at_least(config, embedding_size=1, n_layers=0)

    def __init__(self, dataset, config: LightGCNConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.adjacency = SparseOperator(bipartite_adjacency(dataset.train), symmetric=True)
        self.user_emb = IdEmbedding(self.n_users, config.embedding_size)  # E_U
        self.item_emb = IdEmbedding(self.n_items, config.embedding_size)  # E_I
        self.reset_parameters()

    def forward(self) -> Output:
        x0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        z = lightgcn(self.adjacency, x0, self.config.n_layers)
        aux = {"nodes": z, "nodes0": x0} if self.training else {}  # the loss's views only
        return Output.of_nodes(z, self.n_users, aux)

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        rows = self._rows(batch)
        return self._terms(out.aux["nodes"].index_select(0, rows), out.aux["nodes0"].index_select(0, rows))

    def batch_loss(self, batch) -> dict[str, torch.Tensor]:
        # The loss reads the batch's rows only: the last layer is propagated for those alone.
        rows = self._rows(batch)
        x0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        z = lightgcn_rows(self.adjacency, x0, self.config.n_layers, rows)
        return self._terms(z, x0.index_select(0, rows))

    def _rows(self, batch) -> torch.Tensor:
        # The (u, i, j) rows of the N x d node matrices, gathered at once: the backward is a
        # single scatter, instead of one full-size zero-fill per gathered table and slice.
        u, i, j = batch
        return torch.cat([u, i + self.n_users, j + self.n_users])

    def _terms(self, z: torch.Tensor, z0: torch.Tensor) -> dict[str, torch.Tensor]:
        zu, zi, zj = z.chunk(3)
        eu, ei, ej = z0.chunk(3)  # layer-0 rows (E_U[u], E_I[i], E_I[j])
        return {
            "bpr": bpr_loss(zu, zi, zj),
            "reg": self.config.reg_weight * l2_reg(self.config.reg_form, eu, ei, ej),
        }
