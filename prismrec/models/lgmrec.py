"""LGMRec — Guo et al., "Local and Global Graph Learning for Multimodal Recommendation", AAAI'24
(arXiv 2312.16400); official code georgeguo-cn/LGMRec (also MMRec ``lgmrec.py``).

Local embeddings from the user–item graph (collaborative plus per-modality), global embeddings
from a hypergraph whose ``A`` hyperedges per modality are learned from the item features.

1. Collaborative graph embedding (CGE), over ``Â`` (2.1) — LightGCN layer mean (2.7), or the ID
   tables themselves (``cf_model = "mf"``)::

       C = [C_U; C_I] = LGN(Â, [E_U; E_I], L_ui)

2. Modality graph embedding (MGE), per modality ``m`` with frozen features ``F_m`` and a
   bias-free map ``W_m`` (``d_m -> d``); users start as the mean of their items, then ``L_mm``
   plain propagation steps (no layer mean)::

       P_m = F_m W_m,   U_m = D_U^-1 R P_m,   M_m = Â^{L_mm} [U_m; P_m]

3. Hyperedges, per modality: item memberships from the features (``V_m``: ``d_m -> A``), user
   memberships from their items' logits (a plain sum over ``R``), each relaxed by a
   Gumbel-softmax with temperature ``τ_g`` (2.12's generator: torch's global one)::

       H_I^m = GS(F_m V_m),   H_U^m = GS(R F_m V_m)

4. Global hypergraph embedding (GHE) of the CGE item rows, with hyperedge dropout
   (``keep_rate``) on both membership matrices (``nn/hypergraph.py``)::

       Λ = (H_I^m)ᵀ X^{l-1},  X^l = H_I^m Λ,  Y^m = H_U^m Λ        (l = 1..L_h, last layer kept)
       G^m = [Y^m; X^{L_h}],   G = Σ_m G^m

5. Output::

       Z = C + Σ_m nrm(M_m) + α·nrm(G)

   Auxiliaries of the eval-mode forward (``N x d``): ``behavior = C`` and ``modality = Z − C``.

6. Loss (logged as ``bpr``, ``hcl`` and ``reg``, each weighted), with the hypergraph contrastive
   term over each pair of modalities ``(a, b)`` (the reference's two-modality case: ``a`` = image,
   ``b`` = text; ``a`` queries, ``b`` gives the keys and negatives, so the order matters), summed
   over the batch::

       ssl(Q, K)[b] = −log [ exp(cos(Q_b, K_b)/τ) / Σ_r exp(cos(Q_b, K_r)/τ) ]     r over **all** rows
       L_hcl = Σ_{(a,b)} Σ_b ( ssl(G^a_U[u], G^b_U)[b] + ssl(G^a_I[i], G^b_I)[b] )
       L = L_BPR(z_u, z_i, z_j) + λ_cl·L_hcl + λ_reg·emb_norm(z_u, z_i, z_j)

Missing modalities (a dataset loaded with ``impute="zero"``; under ``mean``/``neighbour``
imputation the filled rows take part): modality ``m`` is carried only through the items that have
it, and a node lacking it has no modality-``m`` view (an item whose ``m`` was zero-filled; a user
with no training item having ``m``):

- MGE: ``U_m = D_{U,m}^-1 R_m P_m`` (a user's mean over its items having ``m``) and
  ``M_m = Â_m^{L_mm} [U_m; P_m]``, with ``R_m``, ``Â_m`` the graphs without the items lacking
  ``m``, normalised by the same rule.
- Hyperedges: a node without ``m`` belongs to no modality-``m`` hyperedge (its rows of ``H_I^m``
  and ``H_U^m`` are 0), so it adds nothing to ``Λ`` and its ``G^m`` row is 0.
- The sums over modalities of ``nrm(M_m)`` and of ``G^m`` run over each node's present ones,
  rescaled to the full count (:func:`prismrec.nn.fusion.present_mean`).
- ``L_hcl``: the pair ``(a, b)`` queries the batch rows that have both, against the keys of the
  rows that have ``b``.

7. Content path (cold items, :meth:`LGMRec.content_item_embeddings`): the memberships
   ``H_I^m = GS(F_m V_m)`` come from the item's features alone, so ``G`` places a new item among
   the hyperedges learned from trained ones. The forward runs with its ID row removed
   (``E_I[c] = 0``): with no edge, ``C_c = M_m[c] = 0`` and ``z_c = α·nrm(G)_c`` (our reading; the
   paper does not evaluate cold items). ``--id-rows impute`` fills ``E_I[c]`` from its warm
   neighbours on the features' cosine kNN graph.

Deliberate differences from the reference, each a documented choice:

- The reference samples Gumbel noise in evaluation too; prismrec's evaluation forward is
  deterministic (the test split is scored once), so it uses the noise-free ``softmax(logits/τ_g)``
  unless ``eval_gumbel_noise`` is set.
- The reference defines the model for exactly two modalities (image, text; with fewer it falls
  back to ``C`` alone). Here any number ``≥ 1`` works: the sums run over the used modalities and
  ``L_hcl`` over the ordered pairs ``(a, b)``, ``a`` before ``b`` in ``hcl_order`` (by name for
  an image + text pair, :mod:`prismrec.nn.roles`; given for any others); one modality has none.
- Its first public commit builds the text users' memberships into the image slot (``uv_hyper``
  overwritten); we follow the corrected form in MMRec.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from prismrec.checks import check_choices, refuse_unused, require_fraction
from prismrec.data.features import fusion_presence
from prismrec.graph import SparseOperator, bipartite_adjacency
from prismrec.losses import added, all_keys_infonce, bpr_loss, emb_norm
from prismrec.models import register
from prismrec.nn.fusion import present_mean
from prismrec.nn.present_graphs import inverse_user_degrees, modality_operators, present_nodes
from prismrec.nn.content import content_forward_rows, feature_knn
from prismrec.nn.hypergraph import HyperedgeInputs, hypergraph_propagate
from prismrec.nn.propagation import lightgcn, propagate
from prismrec.nn.roles import role_order
from prismrec.recommender import Output, Recommender


@dataclass
class LGMRecConfig:
    """LGMRec settings; defaults are the official code's values for Baby, ``grid`` the values its
    configuration gives for Baby, Sports and Clothing (the paper's text was not at hand;
    ``cl_weight``'s grid is ours, see there)."""

    modalities: list[str] | None = None
    """Modalities used (MGE, hyperedges, ``L_hcl`` pairs); ``None`` = all present, canonical order."""
    embedding_size: int = 64
    """``d``: ID embeddings and projected features (they are summed, so one size)."""
    cf_model: Literal["lightgcn", "mf"] = "lightgcn"
    """CGE encoder: LightGCN layer mean over ``Â`` or the plain ID tables (``mf``)."""
    n_ui_layers: int = 2
    """``L_ui``, LightGCN layers of the CGE."""
    n_mm_layers: int = 2
    """``L_mm``, propagation steps of the MGE over ``Â``."""
    n_hyper_layer: int = field(default=1, metadata={"grid": [1, 2]})
    """``L_h``, hypergraph layers (Baby/Sports 1, Clothing 2)."""
    hyper_num: int = field(default=4, metadata={"grid": [4, 64]})
    """``A``, hyperedges per modality (Baby/Sports 4, Clothing 64)."""
    keep_rate: float = field(default=0.5, metadata={"grid": [0.2, 0.4, 0.5]})
    """Hyperedge-membership dropout keeps this fraction (Baby 0.5, Sports 0.4, Clothing 0.2)."""
    alpha: float = field(default=0.3, metadata={"grid": [0.2, 0.3, 0.6]})
    """``α``, weight of the normalised global embedding (Baby 0.3, Sports 0.6, Clothing 0.2)."""
    cl_weight: float = field(default=1e-4, metadata={"grid": [1e-6, 1e-5, 1e-4]})
    """``λ_cl`` of the hypergraph contrastive loss ``L_hcl`` (a sum over the batch). The official
    configuration fixes it at 1e-4; the grid is ours: on lfm2k the summed ``L_hcl`` is ~3.0 of a
    ~3.2 loss at 1e-4 and costs 0.045 valid Recall@20 (benchmarks/results/diagnose/multimodal-lfm2k-lgmrec.md),
    so a fair baseline searches smaller weights (0 would be the ablation, not LGMRec)."""
    reg_weight: float = 1e-6
    """``λ_reg`` of ``emb_norm`` on the batch's final rows (2.10)."""
    gumbel_tau: float = 0.2
    """``τ_g``, Gumbel-softmax temperature of the memberships (reference: 0.2)."""
    cl_tau: float = 0.2
    """``τ`` of ``L_hcl`` (reference: 0.2, the same constant as ``τ_g``)."""
    eval_gumbel_noise: bool = False
    """Also draw Gumbel noise in evaluation (reference behaviour; makes evaluation random)."""
    hcl_order: list[str] | None = None
    """Order of the modalities in ``L_hcl``: a pair ``(a, b)`` for each ``a`` before ``b`` (``a``'s
    hypergraph embeddings query ``b``'s). ``None`` = by name for an image + text pair (image first,
    as the reference); required for other modalities (e.g. ``[text,audio]``), ignored for one."""
    feature_norm: Literal["none", "l2", "standardize"] = "none"
    """Rescale each modality's raw features first (``none`` = the reference's raw values). Raw
    scale sets the sharpness of the memberships ``GS(F_m V_m)``: large rows saturate them."""

    def __post_init__(self) -> None:
        """Refuse ``n_ui_layers`` changed with ``cf_model="mf"`` (no propagation: they were ignored)."""
        refuse_unused(self, ("n_ui_layers",), self.cf_model == "lightgcn", "cf_model=lightgcn")


@register
class LGMRec(Recommender):
    name = "lgmrec"
    Config = LGMRecConfig
    content_id_rows = "zero"

    @classmethod
    def check_settings(cls, config) -> None:
        cls.require_at_least(config, embedding_size=1, n_ui_layers=0, n_mm_layers=0, n_hyper_layer=1, hyper_num=1)
        require_fraction("keep_rate", config.keep_rate, "the fraction of hyperedge memberships kept", low_open=True)
        check_choices(config, cls.name)
        if config.gumbel_tau <= 0 or config.cl_tau <= 0:
            raise ValueError(f"temperatures must be > 0, got gumbel_tau={config.gumbel_tau}, cl_tau={config.cl_tau}")

    @classmethod
    def check_dataset(cls, config, dataset) -> None:
        super().check_dataset(config, dataset)
        role_order(cls.name, cls.used_modalities(config, dataset), config.hcl_order, "hcl_order")

    def __init__(self, dataset, config: LGMRecConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.modalities = self.used_modalities(config, dataset)
        d = config.embedding_size
        r = sp.csr_matrix(dataset.train, dtype=np.float32)
        self.adjacency = SparseOperator(bipartite_adjacency(r), symmetric=True)  # Â
        self.interactions = SparseOperator(r, symmetric=False)  # R (binary, n_U x n_I)
        # R_m, Â_m, D_{U,m}^-1 per modality: over the items having m where some item lacks it, else R, Â, D_U^-1
        present_items, k = fusion_presence(dataset, self.modalities), len(self.modalities)  # n_I x K or None
        self.modality_interactions = modality_operators(sp.csr_matrix, r, present_items, self.interactions, k)
        self.modality_adjacencies = modality_operators(bipartite_adjacency, r, present_items, self.adjacency, k)
        self.register_buffer("user_inv_degree", inverse_user_degrees(r, present_items, k), persistent=False)  # n_U x K
        self.user_emb = nn.Parameter(torch.empty(self.n_users, d))  # E_U
        self.item_emb = nn.Parameter(torch.empty(self.n_items, d))  # E_I
        self.inputs = nn.ModuleDict({m: HyperedgeInputs(dataset.features[m], d, config.hyper_num, config.feature_norm)
                                     for m in self.modalities})  # F_m, W_m and V_m (d_m x A)
        order = role_order(self.name, self.modalities, config.hcl_order, "hcl_order")
        self.pairs = list(itertools.combinations(order, 2))  # (a, b) of L_hcl
        self.register_buffer("present", present_nodes(r, present_items), persistent=False)  # K x N or None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for table in (self.user_emb, self.item_emb):
            nn.init.xavier_uniform_(table)
        super().reset_parameters()  # each modality's W_m, then V_m

    def modality_graph(self, m: str) -> torch.Tensor:
        """MGE: ``M_m = Â^{L_mm} [D_U^-1 R P_m; P_m]`` with ``P_m = F_m W_m`` (under a mask
        ``R_m``, ``D_{U,m}``, ``Â_m``: the items having ``m``)."""
        k = self.modalities.index(m)
        p = self.inputs[m].features @ self.inputs[m].projection
        users = (self.modality_interactions[k] @ p) * self.user_inv_degree[:, k : k + 1]  # U_m
        return propagate(self.modality_adjacencies[k], torch.cat([users, p]), self.config.n_mm_layers)

    def hyperedges(self, m: str, noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(H_I^m, H_U^m)``: soft memberships ``GS(F_m V_m)`` and ``GS(R F_m V_m)``; under a mask
        the rows of the nodes without ``m`` are 0 (no membership)."""
        present = None if self.present is None else self.present[self.modalities.index(m)]
        return self.inputs[m].memberships(self.interactions, self.config.gumbel_tau, noise, present)

    def forward(self) -> Output:
        cfg = self.config
        noise = self.training or cfg.eval_gumbel_noise  # evaluation: noise-free unless asked
        edges = {m: self.hyperedges(m, noise) for m in self.modalities}  # 3. (H_I^m, H_U^m)
        x0 = torch.cat([self.user_emb, self.item_emb])  # 1. CGE, C (mf: no layer, the tables)
        c = lightgcn(self.adjacency, x0, 0 if cfg.cf_model == "mf" else cfg.n_ui_layers)
        local = torch.stack([F.normalize(self.modality_graph(m), dim=1) for m in self.modalities])  # 2. nrm(M_m)
        drop = 1.0 - cfg.keep_rate if self.training else 0.0  # hyperedge dropout (reference nn.Dropout)
        hyper = {m: torch.cat(hypergraph_propagate(h_items, h_users, c[self.n_users :], cfg.n_hyper_layer, drop))
                 for m, (h_items, h_users) in edges.items()}  # 4. G^m = [Y^m; X^{L_h}]
        global_sum = present_mean(torch.stack(list(hyper.values())), self.present, "sum")  # G
        modality = present_mean(local, self.present, "sum") + cfg.alpha * F.normalize(global_sum, dim=1)
        z = c + modality  # 5. Z = C + Σ_m nrm(M_m) + α·nrm(G)
        # training: the loss's views G^m; evaluation: the exported views, Z = behavior + modality
        aux = {f"hyper_{m}": g for m, g in hyper.items()} if self.training else {"behavior": c, "modality": modality}
        return Output.of_nodes(z, self.n_users, aux)

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        cfg, (u, i, _), (zu, zi, zj) = self.config, batch, out.bpr_rows(batch)
        terms = {"bpr": bpr_loss(zu, zi, zj)}
        if self.pairs:  # L_hcl: each pair (a, b) on the users (rows u), then on the positive items (rows i)
            sides = (slice(None, self.n_users), u), (slice(self.n_users, None), i)
            # under a mask the rows having a and b query the keys of the rows having b
            has = None if self.present is None else dict(zip(self.modalities, self.present))
            terms["hcl"] = cfg.cl_weight * added(
                all_keys_infonce(out.aux[f"hyper_{a}"][nodes], out.aux[f"hyper_{b}"][nodes], rows, cfg.cl_tau,
                                 None if has is None else (has[a][nodes], has[b][nodes]))
                for (a, b), (nodes, rows) in itertools.product(self.pairs, sides))
        terms["reg"] = cfg.reg_weight * emb_norm(zu, zi, zj)
        return terms

    def content_item_embeddings(self, items, out, id_rows=None):
        """Step 7: ``Z_I`` rows of ``items`` without their ID rows (the global hypergraph part)."""
        graphs = lambda: feature_knn([inputs.features for inputs in self.inputs.values()])  # noqa: E731
        return content_forward_rows(self, self.item_emb, items, id_rows or self.content_id_rows, graphs)
