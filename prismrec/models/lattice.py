"""LATTICE — Zhang et al., MM'21 (arXiv 2104.09036); ALGORITHMS.md 3.7.

"Mining latent structures": per modality an item–item graph is **learned** from projected
features, mixed with the frozen graph of the raw features, and the item ID embeddings are
propagated over it and added to a LightGCN's item embeddings.

1. Frozen graphs, built once from the raw features ``F_m`` (2.2, ``k`` neighbours, self
   included, cosine weights, ``Ŝ = D^-1/2 S D^-1/2``): ``Ŝ_m``.
2. Learned graphs, rebuilt at the start of every epoch and for every evaluation (as the
   reference does) from ``P_m = F_m W_m + b_m`` (``d_m -> d_f``, raw features fine-tuned)::

       S̃_m = top-k( nrm(P_m) nrm(P_m)ᵀ )              kept entries: cosine weights, rest 0
       α    = softmax(a)                              a ∈ R^M learned, init uniform
       Ã    = sym-norm( Σ_m α_m S̃_m )                 D^-1/2 · D^-1/2 with its own row sums
       S    = (1 − λ) Ã + λ Σ_m α_m Ŝ_m               λ = 0.9: "0.9·original + 0.1·learned"

   Gradient reaches ``W_m, b_m, F_m`` and ``a`` through the kept edge values (not the choice of
   neighbours) on the **first** training batch of each epoch; later batches of the epoch use
   the graph detached (reference code; ``graph_grad = False`` never back-propagates into it).
   Every step is blocked top-``k`` / edge-list work: memory ``O(n·k)``, no ``n × n`` matrix.
3. Forward::

       h          = S^{L_ii} E_I                       item ID embeddings over the latent graph
       [Y_U; Y_I] = LGN(P, [E_U; E_I], L_ui)          P = D^-1 (A + I) (reference) or Â
       Z_U = Y_U,   Z_I = Y_I + nrm(h)

   (``cf_model = "mf"``: ``Z_U = E_U``, ``Z_I = E_I + nrm(h)``.) Auxiliary of the eval forward:
   ``modality = [0; nrm(h)]`` (``N x d``, users first), ``behavior = Z − modality``.
4. Loss: ``L_BPR(Z) + λ_reg·half_sq(z_u, z_i, z_j)`` on the final rows.

Missing modalities (``impute="zero"``): the graphs of modality ``m`` link only items that have
it (its learned ``S̃_m`` is the top-``k`` among them: zero-filled rows project to one common
vector and would link to each other), and row ``i`` weighs only its present modalities,
``α_im = α_m p_im / Σ_m' α_m' p_im'``. Without zero-filled rows nothing changes.

5. Content path (cold items, :meth:`LATTICE.content_item_embeddings`): ``S`` is computed from the
   features alone (the frozen ``Ŝ_m`` and the learned ``S̃_m`` of ``P_m``), so it links a new
   item to trained ones. The item's ID row ``E_I[c]`` is imputed as the ``S``-weighted mean of its
   warm neighbours' rows, then the forward above computes ``z_c`` (our choice where the paper
   does not treat cold items; ``--id-rows zero`` drops the ID row instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prismrec.data.features import fusion_presence
from prismrec.graph import SparseOperator, bipartite_adjacency, knn_graph
from prismrec.graph.learned import EdgeGraph, knn_edges, normalize_edges, sampled_dot
from prismrec.graph.walk import random_walk_adjacency
from prismrec.losses import bpr_loss, l2_reg
from prismrec.models import register
from prismrec.nn import lightgcn
from prismrec.nn.content import content_forward_rows
from prismrec.nn.encoders import Projector
from prismrec.recommender import Output, Recommender


@dataclass
class LATTICEConfig:
    modalities: list[str] | None = None
    """Modalities with a frozen and a learned graph; ``None`` = all present, canonical order."""
    embedding_size: int = 64
    """``d``: user/item ID embeddings."""
    feat_embed_dim: int = 64
    """``d_f``: width of the projected features ``P_m`` the learned graphs are built from."""
    n_ui_layers: int = 2
    """``L_ui``: LightGCN layers on the user–item graph (reference ``weight_size = [64, 64]``)."""
    n_ii_layers: int = 1
    """``L_ii``: propagation steps of the item ID embeddings over the latent graph ``S``."""
    knn_k: int = 10
    """``k`` neighbours per item in the frozen and the learned graphs (self included)."""
    lambda_coeff: float = 0.9
    """``λ``: weight of the frozen raw-feature graphs in ``S`` (the rest is the learned graph)."""
    reg_weight: float = field(default=1e-5, metadata={"grid": [0.0, 1e-5, 1e-4, 1e-3]})
    """``λ_reg`` of the batch L2 term on the final rows; reference default ``1e-5``
    (``regs[0]``), grid {0, 1e-5, 1e-4, 1e-3} (the learning rate is searched in
    {1e-4, 5e-4, 1e-3, 5e-3} — a training setting, ``--set lr=...``)."""
    reg_form: Literal["half_sq", "emb_norm"] = "half_sq"
    """L2 form (2.10); the reference uses ``half_sq``."""
    cf_model: Literal["lightgcn", "mf"] = "lightgcn"
    """Downstream collaborative filter the item-graph embeddings are added to (the reference
    also offers NGCF; not implemented)."""
    ui_graph: Literal["rw_self_loops", "sym"] = "rw_self_loops"
    """User–item propagation matrix: ``D^-1 (A + I)`` (reference code) or LightGCN's
    ``D^-1/2 A D^-1/2`` (the LightGCN paper's graph)."""
    train_features: bool = True
    """Fine-tune the raw feature matrices inside ``P_m`` (reference) or keep them frozen."""
    graph_grad: bool = True
    """Back-propagate through the learned graph's edge values on the first training batch of
    each epoch (reference code); ``False`` builds it without gradient (``P_m`` and ``a`` are
    then never trained)."""


@register
class LATTICE(Recommender):
    """LATTICE; the latent item graph ``S`` of the current epoch is ``self.item_graph``."""

    name = "lattice"
    Config = LATTICEConfig
    content_id_rows = "impute"
    train_defaults = {"lr_decay": 0.96, "lr_decay_epochs": 50}

    def __init__(self, dataset, config: LATTICEConfig) -> None:
        super().__init__(dataset, config)
        self.require_at_least(config, embedding_size=1, feat_embed_dim=1, knn_k=1, n_ui_layers=0, n_ii_layers=0)
        if not 0.0 <= config.lambda_coeff <= 1.0:
            raise ValueError(f"lambda_coeff mixes two graphs and must be in [0, 1], got {config.lambda_coeff}")
        if config.cf_model not in ("lightgcn", "mf"):
            raise ValueError(f"cf_model must be 'lightgcn' or 'mf', got {config.cf_model!r}")
        if config.ui_graph not in ("rw_self_loops", "sym"):
            raise ValueError(f"ui_graph must be 'rw_self_loops' or 'sym', got {config.ui_graph!r}")
        self.modalities = self.select_modalities(dataset, config.modalities, minimum=1, model=self.name)
        if config.knn_k > self.n_items:
            raise ValueError(f"knn_k={config.knn_k} exceeds the number of items ({self.n_items})")
        d = config.embedding_size

        # Which items have each modality (n_I x M), or None when no used modality was zero-filled.
        present = fusion_presence(dataset, self.modalities)
        self.register_buffer("present", None if present is None else torch.from_numpy(present), persistent=False)
        # 1. Frozen graphs Ŝ_m (2.2), kept as edge lists: they enter S with learned weights α_m.
        self.original_edges = []
        for index, m in enumerate(self.modalities):
            g = knn_graph(dataset.features[m], config.knn_k).tocoo()  # (rows, cols, ŝ_ij)
            if present is not None:  # links between items that have m only
                keep = present[g.row, index] & present[g.col, index]
                g = type(g)((g.data[keep], (g.row[keep], g.col[keep])), shape=g.shape)
            self.original_edges.append(tuple(
                torch.from_numpy(x.astype(dtype)) for x, dtype in ((g.row, np.int64), (g.col, np.int64), (g.data, np.float32))
            ))
        # User–item propagation matrix.
        if config.ui_graph == "rw_self_loops":
            self.adjacency = SparseOperator(random_walk_adjacency(dataset.train, self_loops=True), symmetric=False)
        else:
            self.adjacency = SparseOperator(bipartite_adjacency(dataset.train), symmetric=True)

        self.user_emb = nn.Parameter(torch.empty(self.n_users, d))  # E_U
        self.item_emb = nn.Parameter(torch.empty(self.n_items, d))  # E_I
        # P_m = F_m W_m + b_m (PyTorch's default Linear init, as the reference).
        self.projectors = nn.ModuleDict(
            {m: Projector(dataset.features[m], config.feat_embed_dim, config.train_features) for m in self.modalities}
        )
        self.modal_logits = nn.Parameter(torch.empty(len(self.modalities)))  # a; α = softmax(a)
        self.item_graph: EdgeGraph | None = None  # S of the current epoch
        self._rebuild = True
        self._patterns: dict[int, tuple] = {}  # modality index -> (nrm(P_m), rows, cols)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)
        for projector in self.projectors.values():
            projector.reset_parameters()
        nn.init.constant_(self.modal_logits, 0.5)  # reference [0.5, 0.5]: uniform α
        self.item_graph, self._rebuild = None, True

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        device = self.device
        self.original_edges = [tuple(t.to(device) for t in edges) for edges in self.original_edges]
        self.item_graph, self._rebuild, self._patterns = None, True, {}
        return out

    # ------------------------------------------------------------------------------ graphs
    def modality_weights(self) -> torch.Tensor:
        """``α = softmax(a)``, one weight per modality (in ``self.modalities`` order)."""
        return torch.softmax(self.modal_logits, dim=0)

    def latent_graph(self) -> EdgeGraph:
        """2. ``S = (1 − λ)·sym-norm(Σ_m α_m S̃_m) + λ·Σ_m α_m Ŝ_m`` from the current ``P_m``."""
        n, k, lam = self.n_items, self.config.knn_k, self.config.lambda_coeff
        alpha = self.modality_weights()
        if self.present is None:
            def weight(index: int, r: torch.Tensor) -> torch.Tensor:  # α_m
                return alpha[index]
        else:  # α_im = α_m p_im / Σ_m' α_m' p_im' (a row with no modality: 0)
            row_alpha = alpha.unsqueeze(0) * self.present.to(alpha.dtype)
            row_alpha = row_alpha / row_alpha.sum(dim=1, keepdim=True).clamp_min(1e-12)

            def weight(index: int, r: torch.Tensor) -> torch.Tensor:
                return row_alpha[:, index].index_select(0, r)
        rows, cols, values = [], [], []
        for index, projector in enumerate(self.projectors.values()):
            p = F.normalize(projector(), dim=1)                         # nrm(P_m)
            r, c = self._knn_pattern(index, p)                          # top-k pattern of S̃_m
            rows.append(r)
            cols.append(c)
            values.append(weight(index, r) * sampled_dot(p, p, r, c))  # α_m · cos(p_i, p_j)
        rows_l, cols_l = torch.cat(rows), torch.cat(cols)
        learned = normalize_edges(rows_l, cols_l, torch.cat(values), n)  # Ã (duplicates summed)
        rows_o = torch.cat([e[0] for e in self.original_edges])
        cols_o = torch.cat([e[1] for e in self.original_edges])
        original = torch.cat([weight(i, e[0]) * e[2] for i, e in enumerate(self.original_edges)])
        return EdgeGraph(
            torch.cat([rows_l, rows_o]), torch.cat([cols_l, cols_o]),
            torch.cat([(1.0 - lam) * learned, lam * original]), n,
        )

    def _knn_pattern(self, index: int, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` edges of ``p``; reused while ``p`` is unchanged (the evaluation after an
        epoch and the next epoch's first batch see the same parameters: one blocked top-k, not
        two)."""
        cached = self._patterns.get(index)
        if cached is not None and cached[0].shape == p.shape and torch.equal(cached[0], p.detach()):
            return cached[1], cached[2]
        if self.present is None:
            rows, cols = knn_edges(p, self.config.knn_k)
        else:  # among the items that have the modality (its zero-filled rows share one vector)
            have = torch.nonzero(self.present[:, index]).squeeze(1)
            rows, cols = knn_edges(p.index_select(0, have), min(self.config.knn_k, len(have)))
            rows, cols = have[rows], have[cols]
        self._patterns[index] = (p.detach().clone(), rows, cols)
        return rows, cols

    def on_epoch_start(self, epoch: int) -> None:
        """The learned graph is rebuilt from the current projections on the next training forward."""
        self._rebuild = True

    def _current_graph(self) -> EdgeGraph:
        if not self.training:  # evaluation rebuilds from the current parameters (reference)
            with torch.no_grad():
                return self.latent_graph()
        if self._rebuild or self.item_graph is None:
            with torch.set_grad_enabled(self.config.graph_grad and torch.is_grad_enabled()):
                graph = self.latent_graph()
            self.item_graph, self._rebuild = graph.detach(), False
            return graph  # this batch back-propagates into the graph's values
        return self.item_graph

    # ----------------------------------------------------------------------------- forward
    def forward(self) -> Output:
        graph = self._current_graph()
        h = self.item_emb  # h = S^{L_ii} E_I
        for _ in range(self.config.n_ii_layers):
            h = graph @ h
        h = F.normalize(h, dim=1)
        if self.config.cf_model == "lightgcn":
            y = lightgcn(self.adjacency, torch.cat([self.user_emb, self.item_emb]), self.config.n_ui_layers)
            y_u, y_i = y[: self.n_users], y[self.n_users :]
        else:  # mf
            y_u, y_i = self.user_emb, self.item_emb
        out = Output(y_u, y_i + h)
        if not self.training:
            out.aux["behavior"] = torch.cat([y_u, y_i])
            out.aux["modality"] = torch.cat([h.new_zeros(self.n_users, h.shape[1]), h])
        return out

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        zu, zi, zj = out.bpr_rows(batch)
        return {
            "bpr": bpr_loss(zu, zi, zj),
            "reg": self.config.reg_weight * l2_reg(self.config.reg_form, zu, zi, zj),
        }

    def content_item_embeddings(self, items, out, id_rows=None):
        """Step 5: ``Z_I`` rows of ``items`` with their ID rows imputed over the latent graph ``S``."""

        def graphs():
            with torch.no_grad():
                return [self.latent_graph()]

        return content_forward_rows(self, self.item_emb, items, id_rows or self.content_id_rows, graphs)
