"""EGRA — arXiv 2508.16170; ALGORITHMS.md §6. Every step is **proposed** (the method text was
not at hand); each open choice is a config switch (§6.5). EGRA = MGCN's multi-view encoder
(:class:`prismrec.nn.MultiViewEncoder`) on a behaviour graph enhanced with item links from a
pretrained model, plus bi-level alignment.

0. ``P ∈ R^{n_I×d}`` (6.1): item rows (``pre_rep``) of a finished ``pre_model`` run, or of one
   trained on the train split (``pretrained="auto"``; its grid: ``pretrain_search``). EGRA only
   **declares** it (:meth:`EGRA.required_inputs`); the experiment layer computes it
   (``stages.build_model``) and passes it to the constructor.
1. ``B_pre = topk(P; k_pre, self excluded)`` (2.5); ``A⁺ = [[0, R], [Rᵀ, γ·B_pre]]`` → ``Â⁺``
   (``item_links="raw"``: GUME's raw-feature intersection links in place of ``B_pre``).
2. MGCN on ``Â⁺``: ``C = LGN(Â⁺, [E_U; E_I], L_ui)``, ``H_m^I = Ŝ_m^{L_ii} H_m⁰`` (raw ``Ŝ_m``),
   ``H_m^U = R̂⁺ H_m^I``, ``M = fuse(H | C)``; ``Z = C + M``, score ``z_u·z_i``.
3. Alignment (6.3), batch users ``u`` and positive items ``i`` apart; ``ℓ_e`` per-row InfoNCE(M, C;
   τ) (2.11), ``a_e = sg(cos(m_e, c_e))``: ``w_e = |B|·softmax_e(s·a_e/τ_w)`` (mean 1), ``λ_t =
   λ_min + (λ_max − λ_min)·min(1, t/T)``, ``L_align = λ_t·[mean_u w_u ℓ_u + mean_i w_i ℓ_i]``; a row
   repeated in ``u`` or ``i`` is scored once, weighted by its count (:class:`prismrec.losses.CountedRows`).
4. ``L = L_BPR(Z) + λ_reg·half_sq(z_u, z_i, z_j) + L_align``; ``λ_t`` is logged every epoch.
   ``backbone="gume"``: with GUME's extended branch (:class:`prismrec.nn.ExtendedBranch`) on
   ``Â⁺``, and its ``vt``, ``um`` and ``reg2`` terms added (``L_align`` in place of its ``bm``).

Missing modalities (``impute="zero"``): a user takes modality ``m`` from its items that have it
(``H_m^U = R̂⁺_m H_m^I``, GUME's ``Ĥ_m`` on ``Â⁺_m``); ``L_align`` and ``um`` leave out a node with
no modality at all (its ``M`` row is 0; the entity weights are normalised over the others) and
``vt`` runs over each view's present rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from prismrec.data.features import fusion_presence
from prismrec.graph import UserItemGraph, knn_graph, pretrained_links, shared_neighbor_links, sym_normalize
from prismrec.losses import (bpr_loss, counted_rows, entity_weighted_infonce, half_sq, moment_gap,
                             user_modality_alignment)
from prismrec.models import register
from prismrec.nn.content import multiview_content_hook
from prismrec.nn import ExtendedBranch, GUMETermsConfig, MultiViewConfig, MultiViewEncoder, NoiseSource
from prismrec.nn.multiview_checks import check_egra_config
from prismrec.nn.propagation import batch_node_rows
from prismrec.recommender import Output, PretrainedItems, PretrainedStageConfig, Recommender


@dataclass
class EGRAConfig(PretrainedStageConfig, GUMETermsConfig, MultiViewConfig):
    """EGRA's settings (stage 0's: :class:`PretrainedStageConfig`); the inherited GUME terms (``vt``,
    ``um``, ``reg2``, noise) act only with ``backbone="gume"``. Grids: ALGORITHMS.md 6.4 (the
    learning rate's {5e-4, 1e-3} is the model's ``train_grid``); checked by
    :func:`~prismrec.nn.multiview_checks.check_egra_config`."""

    reg_weight: float = field(default=1e-4, metadata={"grid": [1e-5, 1e-4]})
    """``λ_reg`` of ``half_sq(z_u, z_i, z_j)`` (2.10); grid {1e-5, 1e-4}."""
    pretrain_search: Literal["grid", "none"] = "grid"
    """``pretrained="auto"``: train every point of ``pre_model``'s declared grid not fixed by
    ``pretrain_settings`` (MGCN: ``λ_cl`` ∈ {0.001, 0.01, 0.1}; 6.1 step 1), one stage seed each,
    test never read, and take ``P`` from the valid-best (selection cached); ``none``: its
    defaults only. Larger grids cost more runs (FREEDOM 8, GUME 48): fix settings to shrink them."""
    n_ui_layers: int | None = field(default=None, metadata={"grid": [2, 3]})
    """``L_ui``, LightGCN depth on ``Â⁺``; grid {2, 3}; None = the backbone's: 2 (MGCN), 3 (GUME)."""
    n_ii_layers: int = field(default=1, metadata={"grid": [1, 2]})
    """``L_ii``, steps on each raw kNN graph ``Ŝ_m`` (and on ``Ŝ_pre`` if separate); grid {1, 2}."""
    k_pre: int = field(default=10, metadata={"grid": [5, 10, 20]})
    """Neighbours per item in ``B_pre`` (self excluded); grid {5, 10, 20}."""
    gamma: float = field(default=1.0, metadata={"grid": [0.5, 1.0]})
    """``γ``, weight of ``B_pre`` in ``A⁺``; grid {0.5, 1.0}; 0 = plain ``Â`` (w/o EBG)."""
    pre_edge_weight: Literal["binary", "cosine"] = "binary"
    """Weights of ``B_pre``: 1, or ``cos(p_i, p_j)``."""
    pre_symmetrize: Literal["none", "max", "mutual"] = "none"
    """``B_pre`` as is (directed), ``max(B, Bᵀ)`` or ``min(B, Bᵀ)`` (2.5)."""
    pre_filter_raw: bool = False
    """Keep only ``B_pre`` links that are also GUME's raw-feature intersection links (3.6)."""
    item_links: Literal["pretrained", "raw"] = "pretrained"
    """``B_pre`` from ``P`` (EGRA), or GUME's raw-feature intersection links in its place
    (the EBG-raw ablation; nothing is pretrained or loaded)."""
    graph_fusion: Literal["joint", "separate"] = "joint"
    """``joint``: ``B_pre`` in ``A⁺``; ``separate``: plain ``Â``, ``C_I += γ·Ŝ_pre^{L_ii} E_I``."""
    backbone: Literal["mgcn", "gume"] = "mgcn"
    """``mgcn``, or ``gume``: GUME's extended branch and ``vt``/``um``/``reg2`` terms on ``Â⁺``
    (``L_align`` replaces GUME's ``bm``; depth ``L_ui = 3`` unless ``n_ui_layers`` is set)."""
    tau: float = field(default=0.2, metadata={"grid": [0.1, 0.2, 0.4]})
    """``τ`` of the per-row InfoNCE between ``M`` and ``C``; grid {0.1, 0.2, 0.4}."""
    lambda_max: float = field(default=1e-2, metadata={"grid": [1e-3, 1e-2, 1e-1]})
    """``λ_max``, final alignment strength; grid {1e-3, 1e-2, 1e-1}."""
    lambda_min_ratio: float = field(default=0.1, metadata={"grid": [0.0, 0.1]})
    """``λ_min = ratio·λ_max``, the strength at epoch 0; grid {0, 0.1}."""
    ramp_epochs: int = field(default=50, metadata={"grid": [20, 50, 100]})
    """``T``, epochs of the ramp from ``λ_min`` to ``λ_max``; grid {20, 50, 100}."""
    schedule: Literal["linear", "exp", "unbounded", "constant"] = "linear"
    """Epoch level ``λ_t`` (:func:`alignment_strength`); ``constant`` = w/o epoch level."""
    entity_weighting: Literal["softmax", "linear", "none"] = "softmax"
    """Entity level ``w_e`` (:func:`prismrec.losses.entity_weights`); ``none`` = w/o entity level."""
    entity_sign: Literal[-1, 1] = -1
    """``s``: −1 gives misaligned entities more pressure; +1 trusts consistent ones."""
    tau_w: float = field(default=0.5, metadata={"grid": [0.2, 0.5, 1.0]})
    """``τ_w``, temperature of the softmax entity weights; grid {0.2, 0.5, 1.0}."""


def alignment_strength(t: int, cfg: EGRAConfig) -> float:
    """Epoch level ``λ_t`` at 0-based epoch ``t``, ``λ_min = ratio·λ_max``, ``T = ramp_epochs``:
    ``linear`` ``λ_min + (λ_max − λ_min)·min(1, t/T)``; ``exp`` ``… ·(1 − e^{−t/T})`` (the spec's
    ``λ_max(1 − e^{−t/T})`` at ratio 0); ``unbounded`` ``λ_min(1 + t/T)``; ``constant`` ``λ_max``."""
    lam_max, T, lam_min = cfg.lambda_max, cfg.ramp_epochs, cfg.lambda_min_ratio * cfg.lambda_max
    ramp = {"linear": min(1.0, t / T), "exp": 1.0 - math.exp(-t / T), "constant": 1.0}
    if cfg.schedule == "unbounded":
        return lam_min * (1.0 + t / T)
    return lam_min + (lam_max - lam_min) * ramp[cfg.schedule]


@register
class EGRA(Recommender):
    """EGRA; aux ``behavior`` ``C``, ``modality`` ``M`` (``gume``: ``modality_views``, ``extended``
    in training); ``pretrained_run``/``_file``: where ``P`` came from; ``item_links``: ``B_pre``
    (un-normalised CSR); ``lambda_t``: the current ``λ_t``."""

    name = "egra"
    Config = EGRAConfig
    # Cold items: the forward with the item's ID row imputed from its warm neighbours on S_m
    content_id_rows = "impute"
    content_item_embeddings = multiview_content_hook
    train_defaults = {"lr_decay": 0.96, "lr_decay_epochs": 50}
    train_grid = {"lr": [5e-4, 1e-3]}  # ALGORITHMS.md 6.4

    @classmethod
    def required_inputs(cls, config: EGRAConfig) -> tuple[str, ...]:
        """Stage 0: the pretrained item representations ``P``, unless the links are raw."""
        return () if config.item_links == "raw" else ("pretrained_items",)

    @classmethod
    def check_settings(cls, config) -> None:
        check_egra_config(config)

    @classmethod
    def check_dataset(cls, config, dataset) -> None:
        """Also ``k_pre`` against the other items (:func:`check_egra_config`)."""
        super().check_dataset(config, dataset)
        check_egra_config(config, dataset.n_items)

    def __init__(self, dataset, config: EGRAConfig, pretrained_items: PretrainedItems | None = None) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.modalities = self.used_modalities(config, dataset)
        d, gume = config.embedding_size, config.backbone == "gume"
        self.n_ui_layers = config.n_ui_layers if config.n_ui_layers is not None else (3 if gume else 2)
        # 1. B_pre = topk(P; k_pre) (or GUME's raw links), Â⁺ with item block γ·B_pre.
        knn = [knn_graph(dataset.features[m], config.knn_k) for m in self.modalities]
        raw = shared_neighbor_links(knn) if config.item_links == "raw" or config.pre_filter_raw else None
        if config.item_links == "raw":
            links, self.pretrained_run, self.pretrained_file = raw, None, None
        else:
            if pretrained_items is None:
                raise ValueError("egra needs its stage-0 input P (pretrained_items): build the model with "
                                 "the experiment layer (stages.build_model), or set item_links=raw")
            self.pretrained_run, self.pretrained_file = pretrained_items.run, pretrained_items.file
            links = pretrained_links(pretrained_items.vectors, config.k_pre, config.pre_edge_weight,
                                     config.pre_symmetrize, within=raw)
        self.item_links, self.n_item_links = links, int(links.nnz)
        joint = config.graph_fusion == "joint"  # else separate: plain Â, C_I += γ·Ŝ_pre^{L_ii} E_I
        graph = UserItemGraph(dataset.train, links, config.gamma) if joint else UserItemGraph(dataset.train)
        # 2. MGCN's views on Â⁺; with backbone="gume", GUME's extended branch too. When some
        # modality rows were zero-filled (impute="zero") both weigh only a node's present
        # modalities, and users take modality m from their items that have it (Â⁺_m).
        self.encoder = MultiViewEncoder(
            graph, knn, [dataset.features[m] for m in self.modalities], self.n_users, d, self.n_ui_layers,
            config.n_ii_layers, config.train_features, present_items=fusion_presence(dataset, self.modalities),
            behavior_item_graph=None if joint else sym_normalize(links), behavior_item_weight=config.gamma)
        self.extended = ExtendedBranch(self.n_users, len(self.modalities), d, self.n_ui_layers) if gume else None
        self.reset_parameters()
        if self.extended is not None:
            self.noise = NoiseSource(config.noise_eps, config.noise_mode)  # seeded after the init
        self.lambda_t = alignment_strength(0, config)

    # ---------------------------------------------------------------- stage 2: views
    def forward(self) -> Output:
        c = self.encoder.behavior_view()                         # C on Â⁺ (separate: + γ·Ŝ_pre^{L_ii} E_I)
        h = self.encoder.modality_views()                        # H_m, users via R̂⁺
        m = self.encoder.fuse(h, c)                              # M = fuse(H | C)
        z = c + m
        aux = {"behavior": c, "modality": m}
        if self.extended is not None:
            aux["modality_views"] = h
            if self.training:  # Ĥ only feeds the loss
                aux["extended"] = self.extended(self.encoder.modality_adjacencies, h, self.encoder.present)
        return Output.of_nodes(z, self.n_users, aux)

    # ---------------------------------------------------------------- stage 3: alignment, loss
    def on_epoch_start(self, epoch: int) -> None:
        self.lambda_t = alignment_strength(epoch, self.config)

    def epoch_log(self) -> dict:
        return {"lambda_t": self.lambda_t, "pretrained_run": self.pretrained_run}

    def terms(self, z_rows: tuple[torch.Tensor, ...], users: tuple[torch.Tensor, ...],
              items: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """``L_BPR(Z)``, ``λ_reg·half_sq(z_u, z_i, z_j)`` and ``L_align`` (each side's ``mean_e w_e ℓ_e``,
        :func:`~prismrec.losses.entity_weighted_infonce`) from the batch's rows ``(z_u, z_i, z_j)`` and
        the ``(M, C, fused presence or None, counts)`` rows of its distinct users and of its distinct
        positive items (:meth:`~prismrec.nn.MultiViewEncoder.fused_presence`, :func:`~prismrec.losses.counted_rows`)."""
        cfg, (zu, zi, zj) = self.config, z_rows
        u_align, i_align = (entity_weighted_infonce(m, c, cfg.tau, cfg.entity_weighting, cfg.entity_sign, cfg.tau_w,
                                                    present, counts) for m, c, present, counts in (users, items))
        return {"bpr": bpr_loss(zu, zi, zj), "reg": cfg.reg_weight * half_sq(zu, zi, zj),
                "align": self.lambda_t * (u_align + i_align)}

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        cfg, n_u, (u, i, _) = self.config, self.n_users, batch
        c, m = out.aux["behavior"], out.aux["modality"]
        i_rows = i + n_u  # item rows of the N x d views
        fused = self.encoder.fused_presence  # of the node ids given
        users, items = ((m.index_select(0, r), c.index_select(0, r), fused(r), n)
                        for r, n in map(counted_rows, (u, i_rows)))
        terms = self.terms(out.bpr_rows(batch), users, items)
        if self.extended is not None:  # GUME's vt, um, reg2
            ext = out.aux["extended"]
            terms["vt"] = cfg.vt_weight * moment_gap(out.aux["modality_views"], self.encoder.presence())
            terms["um"] = cfg.um_weight * user_modality_alignment(ext[:n_u], m[:n_u], u, cfg.um_tau, self.noise,
                                                                  fused())
            terms["reg2"] = cfg.reg2_weight * half_sq(ext[i_rows])
        return terms

    def batch_loss(self, batch) -> dict[str, torch.Tensor]:
        """With the MGCN backbone the loss reads rows ``u, i, j`` of ``Z`` and ``u, i`` of ``M`` and ``C``
        only: ``C``'s last layer, the users' ``H_m`` rows and the per-node fuser run for the batch's
        distinct rows alone (same terms and gradients). GUME's terms read whole matrices: full forward."""
        if self.extended is not None:
            return super().batch_loss(batch)
        rows, (at_u, at_i, at_j) = batch_node_rows(batch, self.n_users, self.n_items)
        c, m = self.encoder.fused_rows(rows)                     # C[rows], M[rows]
        z = c + m
        zu, zi, zj = (z.index_select(0, at) for at in (at_u, at_i, at_j))
        fused = self.encoder.fused_presence  # of the node ids given
        nodes = torch.from_numpy(rows).to(at_u.device)  # the node id of each row of C and M
        users, items = ((m.index_select(0, at), c.index_select(0, at), fused(nodes.index_select(0, at)), n)
                        for at, n in map(counted_rows, (at_u, at_i)))
        return self.terms((zu, zi, zj), users, items)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, links={self.n_item_links}, P from {self.pretrained_run}"
