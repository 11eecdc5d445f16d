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

import torch
from torch import nn

from prismrec.checks import check_choices, refuse_unused, require_fraction
from prismrec.graph import SparseOperator, bipartite_adjacency, knn_graph
from prismrec.graph.learned import EdgeGraph, EdgeList, EpochGraph, KnnPatterns, normalize_edges, sampled_dot
from prismrec.graph.walk import random_walk_adjacency
from prismrec.losses import bpr_loss, l2_reg, normalized
from prismrec.models import register
from prismrec.nn import lightgcn
from prismrec.nn.content import content_forward_rows
from prismrec.nn.encoders import Projector
from prismrec.nn.presence import view_presence
from prismrec.nn.propagation import propagate
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
    (``regs[0]``), grid {0, 1e-5, 1e-4, 1e-3} (the learning rate's {1e-4, 5e-4, 1e-3, 5e-3} is the
    model's ``train_grid``)."""
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

    def __post_init__(self) -> None:
        """Refuse ``n_ui_layers`` or ``ui_graph`` changed with ``cf_model="mf"`` (no propagation: they were ignored)."""
        refuse_unused(self, ("n_ui_layers", "ui_graph"), self.cf_model == "lightgcn", "cf_model=lightgcn")


@register
class LATTICE(Recommender):
    """LATTICE; the latent item graph ``S`` of the current epoch is ``self.item_graph``."""

    name = "lattice"
    Config = LATTICEConfig
    content_id_rows = "impute"
    train_defaults = {"lr_decay": 0.96, "lr_decay_epochs": 50}
    train_grid = {"lr": [1e-4, 5e-4, 1e-3, 5e-3]}  # the reference's search

    @classmethod
    def check_settings(cls, config) -> None:
        cls.require_at_least(config, embedding_size=1, feat_embed_dim=1, knn_k=1, n_ui_layers=0, n_ii_layers=0)
        require_fraction("lambda_coeff", config.lambda_coeff, "the weight of the frozen graphs in S")
        check_choices(config, cls.name)

    def __init__(self, dataset, config: LATTICEConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.modalities = self.used_modalities(config, dataset)
        d = config.embedding_size

        # Which items have each modality (M x n_I), or None when no used modality was zero-filled.
        self.register_buffer("present", view_presence(dataset, self.modalities), persistent=False)
        # 1. Frozen graphs Ŝ_m (2.2) as edge lists (links between items that have m only): they
        # enter S with the learned weights α_m.
        self.original_edges = nn.ModuleList(
            EdgeList(knn_graph(dataset.features[m], config.knn_k), None if self.present is None else self.present[index])
            for index, m in enumerate(self.modalities)
        )
        if config.ui_graph == "rw_self_loops":  # user–item propagation matrix
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
        self.patterns = KnnPatterns(config.knn_k)  # the top-k of each S̃_m, searched again when P_m changed
        self.schedule = EpochGraph(config.graph_grad)  # S: rebuilt once per epoch and for every evaluation
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)
        for projector in self.projectors.values():
            projector.reset_parameters()
        nn.init.constant_(self.modal_logits, 0.5)  # reference [0.5, 0.5]: uniform α
        self.schedule.expire()

    @property
    def item_graph(self) -> EdgeGraph | None:
        """``S`` of the current epoch (``None`` before the epoch's first training forward)."""
        return self.schedule.current

    def on_epoch_start(self, epoch: int) -> None:
        """The learned graph is rebuilt from the current projections on the next training forward."""
        self.schedule.expire()

    # ------------------------------------------------------------------------------ graphs
    def modality_weights(self) -> torch.Tensor:
        """``α = softmax(a)``, one weight per modality (in ``self.modalities`` order); with a
        presence mask, per item ``α_im = α_m p_im / Σ_m' α_m' p_im'`` (``n_I x M``; 0 for an item
        with no modality)."""
        alpha = torch.softmax(self.modal_logits, dim=0)
        if self.present is None:
            return alpha
        row_alpha = alpha.unsqueeze(0) * self.present.T.to(alpha.dtype)
        return row_alpha / row_alpha.sum(dim=1, keepdim=True).clamp_min(1e-12)

    def latent_graph(self) -> EdgeGraph:
        """2. ``S = (1 − λ)·sym-norm(Σ_m α_m S̃_m) + λ·Σ_m α_m Ŝ_m`` from the current ``P_m``."""
        alpha, lam = self.modality_weights(), self.config.lambda_coeff

        def weight(index: int, rows: torch.Tensor) -> torch.Tensor:  # α_m, or α_im of each edge's row
            return alpha[index] if alpha.dim() == 1 else alpha[:, index].index_select(0, rows)

        rows, cols, values = [], [], []
        for index, projector in enumerate(self.projectors.values()):
            p = normalized(projector())                                          # nrm(P_m)
            keep = None if self.present is None else self.present[index]         # its zero-filled rows share one vector
            r, c = self.patterns(index, p, keep)                                 # top-k pattern of S̃_m
            rows.append(r)
            cols.append(c)
            values.append(weight(index, r) * sampled_dot(p, p, r, c))           # α_m · cos(p_i, p_j)
        learned = normalize_edges(torch.cat(rows), torch.cat(cols), torch.cat(values), self.n_items)  # Ã
        original = torch.cat([weight(index, e.rows) * e.values for index, e in enumerate(self.original_edges)])
        return EdgeGraph(
            torch.cat(rows + [e.rows for e in self.original_edges]),
            torch.cat(cols + [e.cols for e in self.original_edges]),
            torch.cat([(1.0 - lam) * learned, lam * original]), self.n_items,
        )

    # ----------------------------------------------------------------------------- forward
    def forward(self) -> Output:
        graph = self.schedule.graph(self.latent_graph, self.training)                     # S
        h = normalized(propagate(graph, self.item_emb, self.config.n_ii_layers))          # nrm(S^{L_ii} E_I)
        layers = self.config.n_ui_layers if self.config.cf_model == "lightgcn" else 0     # mf: the ID tables
        y = lightgcn(self.adjacency, torch.cat([self.user_emb, self.item_emb]), layers)
        # split, not two slices: its backward is one concatenation, where each slice's would zero-fill
        # an N x d gradient and the two be added
        y_u, y_i = y.split([self.n_users, self.n_items])
        out = Output(y_u, y_i + h)                                                        # Z_U = Y_U, Z_I = Y_I + nrm(h)
        if not self.training:
            out.aux["behavior"] = y
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
