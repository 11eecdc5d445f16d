"""SMORE — Ong & Khong, "Spectrum-based Modality Representation Fusion Graph Convolutional
Network for Multimodal Recommendation", WSDM'25 (arXiv 2412.14978; official kennethorq/SMORE,
MMRec ``smore.py``).

Modality features are denoised and fused **in the frequency domain**: a learned complex filter
per modality multiplies the feature spectrum (a circular convolution along the embedding
dimension), and the product of the modality spectra, filtered once more, is the fused modality.

1. Spectrum modality fusion, ``X_m = F_m W_m + b_m`` (``d_m -> d``, raw features fine-tuned),
   ``𝓕`` the real FFT along the ``d`` columns (orthonormal), ``K_m, K_f ∈ C^{d/2+1}`` learned::

       X̃_m = 𝓕⁻¹(𝓕(X_m) ⊙ K_m)                          uni-modal denoising
       X̃_f = 𝓕⁻¹(Π_m 𝓕(X_m) ⊙ K_f)                      cross-modality fusion

2. Item views, gated ID embeddings (``σ(x G + g)`` a linear gate per view)::

       H_v = E_I ⊙ σ(X̃_v G_v + g_v)       v ∈ {1..M, f}

3. Behaviour view ``C = LGN(Â, [E_U; E_I], L_ui)`` (2.7). Item–item graphs: per modality the
   cosine kNN graph of the raw features (2.2, ``k_m`` neighbours, self included), frozen; the
   fusion graph ``S_f = max-union_m S_m`` (max over the graphs storing an entry). Then::

       H_v^I = S_v^{L_ii} H_v,   H_v^U = R̂ H_v^I,   H_v ← [H_v^U; H_v^I]

4. Modality-aware preference module (``q_m(x) = tanh(x Q_m + q_m) Q'_m``; softmax over the ``d``
   dimensions of each row; ``p_v(C) = Dropout(σ(C P_v + p_v))``)::

       A_m  = softmax(q_m(H_f)) ⊙ H_m                        fusion-guided modality attention
       side = mean(p_1(C) ⊙ A_1, ..., p_M(C) ⊙ A_M, p_f(C) ⊙ H_f)
       Z    = C + side

5. Loss: ``L_BPR(Z) + λ·half_sq(z_u, z_i, z_j) + λ_cl·(InfoNCE(side_I[i], C_I[i]; τ) +
   InfoNCE(side_U[u], C_U[u]; τ))`` (2.9-2.11, ``τ = 0.2``).

Missing modalities (a dataset loaded with ``impute="zero"``): modality ``m`` is carried only
through the items that have it, and a node lacking it has no ``m`` view (an item whose ``m`` was
zero-filled; a user with no training item having ``m``):

- ``S_m`` is the kNN graph among the items having ``m`` (an item lacking ``m`` has no row or
  column), so ``S_f``'s row of an item is the union over its present modalities.
- ``X̃_f``: the product of the spectra runs over the item's present modalities (a missing one
  contributes the product's identity, 1); an item with none has no fusion view.
- ``H_v^U = R̂_v H_v^I`` with ``R̂_v`` the user–item block of ``Â`` without the items lacking
  view ``v`` (for the fusion view: the items having no modality at all), normalised by the
  same rule.
- ``side``'s mean over the preference-gated views runs over each node's present views,
  renormalised (:mod:`prismrec.nn.fusion`); a node with none (``side = 0``) takes no part in the
  InfoNCE terms.

Under ``mean``/``neighbour`` imputation the filled rows take part.

Content path (cold items, :meth:`SMORE.content_item_embeddings`): the fusion graph ``S_f`` is
built from the raw features alone, so it links a new item to trained ones. The item's ID row
``E_I[c]`` is imputed as the ``S_f``-weighted mean of its warm neighbours' rows; the forward then
gates it with the item's own filtered spectra (step 2) and propagates as above (our choice where
the paper does not treat cold items; ``--id-rows zero`` drops the ID row instead).

The kNN sizes go to modalities **by name** (:mod:`prismrec.nn.roles`): the image-like modality
of an image + text pair (either order) takes the reference's ``image_knn_k`` (Baby 40), the
text-like one ``text_knn_k`` (Baby 15); a single modality takes ``image_knn_k``. Any other
modalities (lfm2k's text + audio, tiktok's image + audio, ml100k's text + genre, or more than
two) have no part by name: ``modality_roles`` says which part each plays (a ConfigError says
so). More modalities join the same equations (the fused spectrum is the product of all). The
dropout on ``p_v`` draws from torch's global generator in training forwards only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from prismrec.checks import check_choices, require_fraction, require_items
from prismrec.data.features import fusion_presence
from prismrec.graph import SparseOperator, bipartite_adjacency, user_item_block
from prismrec.graph.union import max_union
from prismrec.losses import bpr_loss, infonce, l2_reg
from prismrec.models import register
from prismrec.nn.spectral import SpectralFilter, gate
from prismrec.nn.fusion import present_mean, present_mix
from prismrec.nn.present_graphs import modality_operators, present_knn_graphs, present_nodes
from prismrec.nn import IdEmbedding, lightgcn
from prismrec.nn.content import content_forward_rows
from prismrec.nn.propagation import batch_node_rows, lightgcn_distinct, node_dropout, propagate, row_product
from prismrec.nn.encoders import Projector
from prismrec.nn.roles import modality_parts
from prismrec.recommender import Output, Recommender


@dataclass
class SMOREConfig:
    modalities: list[str] | None = None
    """Modalities used; ``None`` = all present, canonical order."""
    embedding_size: int = 64
    """``d``: ID embeddings and projected features; the spectra have ``d // 2 + 1`` frequencies."""
    n_ui_layers: int = field(default=4, metadata={"grid": [3, 4]})
    """``L_ui``: LightGCN layers of the behaviour view (Baby best 4)."""
    n_ii_layers: int = 1
    """``L_ii``: propagation steps of each item view over its item–item graph (``n_layers``)."""
    image_knn_k: int = field(default=40, metadata={"grid": [10, 15, 20, 40]})
    """``k`` of the cosine kNN graph of the modality in the image part (reference ``image_knn_k``; Baby 40)."""
    text_knn_k: int = field(default=15, metadata={"grid": [10, 15, 20, 40]})
    """``k`` of the graph of each modality in the text part (reference ``text_knn_k``; Baby 15)."""
    modality_roles: list[str] | None = None
    """The reference part (``image`` or ``text``) each modality plays, in ``modalities`` order, which
    decides its ``k``. ``None`` = by name (an image-like + text-like pair, in either order; a single
    modality plays the image part); required for any other modalities (e.g. ``[image,text]``)."""
    fusion_graph: Literal["max", "mean"] = "max"
    """``S_f``: element-wise max over the union of the modality graphs (reference) or their mean."""
    reg_weight: float = field(default=1e-4, metadata={"grid": [1e-5, 1e-4]})
    """``λ`` of the ``half_sq`` L2 on the batch's final rows (Baby 1e-4)."""
    cl_weight: float = 0.01
    """``λ_cl`` of the two InfoNCE terms between ``side`` and ``C`` (reference ``cl_loss``; Sports 0.03)."""
    temperature: float = 0.2
    """``τ`` of the InfoNCE terms."""
    dropout: float = field(default=0.1, metadata={"grid": [0.0, 0.1]})
    """Dropout on the preference gates ``p_v(C)`` in training (Baby 0.1)."""
    train_features: bool = True
    """Fine-tune the raw features inside ``X_m`` (reference) or keep them frozen; the kNN graphs
    come from the raw features either way."""


@register
class SMORE(Recommender):
    name = "smore"
    Config = SMOREConfig
    content_id_rows = "impute"
    train_defaults = {"lr_decay": 0.96, "lr_decay_epochs": 50}  # learning_rate_scheduler [0.96, 50]

    def __init__(self, dataset, config: SMOREConfig) -> None:
        super().__init__(dataset, config)
        self.require_at_least(
            config, embedding_size=2, n_ui_layers=0, n_ii_layers=0, image_knn_k=1, text_knn_k=1, temperature=1e-8
        )
        require_fraction("dropout", config.dropout, high_open=True)
        check_choices(config, self.name)
        self.modalities = self.select_modalities(dataset, config.modalities, minimum=1, model=self.name)
        parts = modality_parts(self.name, self.modalities, config.modality_roles, settings="image_knn_k/text_knn_k")
        ks = [config.image_knn_k if part == "image" else config.text_knn_k for part in parts]
        require_items(self.n_items, **{f"{part}_knn_k": k for part, k in zip(parts, ks)})
        d = config.embedding_size

        # Â and R̂ (2.1); S_m cosine kNN graphs of the raw features (2.2) and S_f, all frozen. Under
        # a mask (impute="zero") S_m and R̂_v cover the items having view v alone.
        present_items = fusion_presence(dataset, self.modalities)  # n_I x M, or None
        adjacency = bipartite_adjacency(dataset.train)
        self.adjacency = SparseOperator(adjacency, symmetric=True)
        self.user_item = SparseOperator(user_item_block(adjacency, self.n_users), symmetric=False)
        graphs = present_knn_graphs([dataset.features[m] for m in self.modalities], ks, present_items)
        self.item_graphs = nn.ModuleDict({m: SparseOperator(g) for m, g in zip(self.modalities, graphs)})
        fused = max_union(graphs) if config.fusion_graph == "max" else \
            present_mix(graphs, [1.0 / len(graphs)] * len(graphs), present_items)
        self.fusion_graph = SparseOperator(fused)
        views = [*self.modalities, "fusion"]
        if present_items is not None:  # the fusion view: the items having some modality
            present_items = np.column_stack([present_items, present_items.any(axis=1)])
        blocks = modality_operators(lambda r: user_item_block(bipartite_adjacency(r), self.n_users), dataset.train,
                                    present_items, self.user_item, len(views))
        self.user_items = nn.ModuleDict(zip(views, blocks))  # R̂_v

        self.user_emb = IdEmbedding(self.n_users, d)  # E_U
        self.item_emb = IdEmbedding(self.n_items, d)  # E_I
        self.projectors = nn.ModuleDict(
            {m: Projector(dataset.features[m], d, config.train_features) for m in self.modalities}
        )  # X_m = F_m W_m + b_m
        self.filters = nn.ModuleDict({m: SpectralFilter(d) for m in self.modalities})  # K_m
        self.fusion_filter = SpectralFilter(d)  # K_f
        self.item_gates = nn.ModuleDict({v: gate(d) for v in views})  # σ(X̃_v G_v + g_v)
        self.queries = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d, bias=False)) for m in self.modalities}
        )  # q_m
        self.preference_gates = nn.ModuleDict({v: gate(d) for v in views})  # p_v
        present = present_nodes(dataset.train, present_items)  # (M + 1) x N or None
        self.register_buffer("present", present, persistent=False)
        # nodes with no view at all (side = 0), left out of the InfoNCE terms; None if there are none
        fused = None if present is None or bool(present[-1].all()) else present[-1]
        self.register_buffer("fused_present", fused, persistent=False)
        self.reset_parameters()

    def spectrum_fusion(self) -> dict[str, torch.Tensor]:
        """Step 1: ``X̃_m`` per modality and ``X̃_f`` under the key ``"fusion"``."""
        spectra = {m: self.filters[m].spectrum(p()) for m, p in self.projectors.items()}  # 𝓕(X_m)
        out = {m: self.filters[m](s) for m, s in spectra.items()}
        if self.present is not None:  # an item's missing modality: the product's identity, 1
            items = self.present[:, self.n_users :]
            spectra = {m: torch.where(items[k].unsqueeze(1), s, torch.ones_like(s))
                       for k, (m, s) in enumerate(spectra.items())}
        product = spectra[self.modalities[0]]
        for m in self.modalities[1:]:
            product = product * spectra[m]
        out["fusion"] = self.fusion_filter(product)
        return out

    def forward(self) -> Output:
        x0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        c = lightgcn(self.adjacency, x0, self.config.n_ui_layers)                             # 3. C
        views = {v: torch.cat([self.user_items[v] @ h, h]) for v, h in self.item_views().items()}  # 1-3. [H_v^U; H_v^I]
        side = self.preference(c, views, self.present)                                        # 4. side
        z = c + side                                                                          # Z = C + side
        return Output.of_nodes(z, self.n_users, {"behavior": c, "modality": side})

    def item_views(self) -> dict[str, torch.Tensor]:
        """Steps 1-3 on the item side: ``H_v^I = S_v^{L_ii} (E_I ⊙ σ(X̃_v G_v + g_v))`` per view."""
        views = {}
        for v, x in self.spectrum_fusion().items():
            h = self.item_emb.weight * self.item_gates[v](x)  # H_v = E_I ⊙ σ(X̃_v G_v + g_v)
            graph = self.fusion_graph if v == "fusion" else self.item_graphs[v]
            views[v] = propagate(graph, h, self.config.n_ii_layers)  # S_v^{L_ii} H_v
        return views

    def preference(self, c: torch.Tensor, views: dict[str, torch.Tensor], present: torch.Tensor | None,
                   rows: torch.Tensor | None = None) -> torch.Tensor:
        """Step 4, row by row: ``side`` from the rows of ``C`` and of the views (all nodes, or the
        node ids ``rows`` when the inputs hold only those rows; the dropout draws stay full-size)."""
        h_f = views["fusion"]
        parts = []
        for m in self.modalities:
            attention = torch.softmax(self.queries[m](h_f), dim=-1)  # over the d dimensions
            parts.append(self.dropout(self.preference_gates[m](c), rows) * attention * views[m])
        parts.append(self.dropout(self.preference_gates["fusion"](c), rows) * h_f)
        return present_mean(torch.stack(parts), present)

    def dropout(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The gates' dropout, in training forwards only (on the node ids ``rows`` when ``x``
        holds only those: the same draws as a full forward)."""
        if not self.training:
            return x
        return node_dropout(x, self.config.dropout, self.n_users + self.n_items, rows)

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        u, i, _ = batch
        zu, zi, zj = out.bpr_rows(batch)
        c, side = out.aux["behavior"], out.aux["modality"]
        items = i + self.n_users
        return self.terms(zu, zi, zj, (side.index_select(0, items), c.index_select(0, items)),
                          (side.index_select(0, u), c.index_select(0, u)), self.row_presence(items, u))

    def batch_loss(self, batch) -> dict[str, torch.Tensor]:
        # The loss reads rows u, i, j of Z and rows u, i of side and C; the preference module is
        # per node. So C's last layer, the views' user rows (R̂[users] H_v^I) and step 4 are
        # computed for the batch's distinct nodes alone: the terms and gradients of
        # loss(batch, forward()).
        rows, (at_u, at_i, at_j) = batch_node_rows(batch, self.n_users, self.n_items)
        x0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        c = lightgcn_distinct(self.adjacency, x0, self.config.n_ui_layers, rows)  # C[rows]
        users = rows[rows < self.n_users]
        items = torch.from_numpy(rows[len(users):] - self.n_users).to(c.device)
        views = {v: torch.cat([row_product(self.user_items[v], users, h), h.index_select(0, items)])
                 for v, h in self.item_views().items()}
        index = torch.from_numpy(rows).to(c.device)
        present = None if self.present is None else self.present.index_select(1, index)
        side = self.preference(c, views, present, index)
        z = c + side
        zu, zi, zj = z.index_select(0, at_u), z.index_select(0, at_i), z.index_select(0, at_j)
        at = index.index_select(0, at_i), index.index_select(0, at_u)
        return self.terms(zu, zi, zj, (side.index_select(0, at_i), c.index_select(0, at_i)),
                          (side.index_select(0, at_u), c.index_select(0, at_u)), self.row_presence(*at))

    def row_presence(self, items: torch.Tensor, users: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Whether the node ids ``items``, ``users`` have a view (``side`` not 0); ``None`` when every node has."""
        if self.fused_present is None:
            return None, None
        return self.fused_present.index_select(0, items), self.fused_present.index_select(0, users)

    def terms(self, zu, zi, zj, item_pair, user_pair, present=(None, None)) -> dict[str, torch.Tensor]:
        """Step 5 from the batch's rows: ``(side, C)`` rows of the positive items and of the users,
        ``present``: whether those rows have a view (``None``: all)."""
        tau = self.config.temperature
        cl = infonce(*item_pair, tau, present=present[0]) + infonce(*user_pair, tau, present=present[1])
        return {
            "bpr": bpr_loss(zu, zi, zj),
            "reg": self.config.reg_weight * l2_reg("half_sq", zu, zi, zj),
            "cl": self.config.cl_weight * cl,
        }

    def content_item_embeddings(self, items, out, id_rows=None):
        """``Z_I`` rows of ``items`` with their ID rows imputed over the fusion graph ``S_f``."""
        return content_forward_rows(self, self.item_emb.weight, items, id_rows or self.content_id_rows,
                                    [self.fusion_graph])
