"""EGRA — arXiv 2508.16170; ALGORITHMS.md §6. Every step is **proposed** (the method text was
not at hand); each open choice is a config switch (§6.5). EGRA = MGCN (``models/mgcn.py``) on a
behaviour graph enhanced with item links from a pretrained model, plus bi-level alignment.

0. ``P ∈ R^{n_I×d}`` (6.1): item rows (``pre_rep``) of a finished ``pre_model`` run, or of one
   trained here (``pretrained="auto"``) on the train split, selected on validation, test never
   read; its recorded train fingerprint must equal the current train split's.
1. ``B_pre = topk(P; k_pre, self excluded)`` (2.5); ``A⁺ = [[0, R], [Rᵀ, γ·B_pre]]`` → ``Â⁺``
   (``item_links="raw"``: GUME's raw-feature intersection links in place of ``B_pre``).
2. MGCN on ``Â⁺``: ``C = LGN(Â⁺, [E_U; E_I], L_ui)``, ``H_m^I = Ŝ_m^{L_ii} H_m⁰`` (raw ``Ŝ_m``),
   ``H_m^U = R̂⁺ H_m^I``, ``M = fuse(H | C)``; ``Z = C + M``, score ``z_u·z_i``.
3. Alignment (6.3), batch users ``u`` and positive items ``i`` apart; ``ℓ_e`` per-row InfoNCE(M, C;
   τ) (2.11), ``a_e = sg(cos(m_e, c_e))``: ``w_e = |B|·softmax_e(s·a_e/τ_w)`` (mean 1), ``λ_t =
   λ_min + (λ_max − λ_min)·min(1, t/T)``, ``L_align = λ_t·[mean_u w_u ℓ_u + mean_i w_i ℓ_i]``.
4. ``L = L_BPR(Z) + λ_reg·half_sq(z_u, z_i, z_j) + L_align``; ``λ_t`` is logged every epoch.
   ``backbone="gume"`` (:class:`EGRAOnGUME`): GUME (``models/gume.py``) on ``Â⁺`` instead of MGCN,
   with its ``vt``, ``um`` and ``reg2`` terms added and ``L_align`` in place of its ``bm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from prismrec.graph import SparseOperator, bipartite_adjacency, intersection_links, knn_graph
from prismrec.graph import sym_normalize, symmetrize
from prismrec.losses import bpr_loss, half_sq, infonce
from prismrec.models import register
from prismrec.models.gume import GUME, GUMETerms
from prismrec.models.mgcn import MGCN
from prismrec.recommender import Output


@dataclass
class EGRAConfig(GUMETerms):
    """EGRA's settings; the inherited :class:`GUMETerms` act only with ``backbone="gume"``."""

    modalities: list[str] | None = None
    """Feature names used, in order; ``None`` = every modality of the dataset (canonical order)."""
    embedding_size: int = 64
    """``d``, width of the ID embeddings and of every view."""
    n_ui_layers: int = 2
    """``L_ui``, LightGCN depth on ``Â⁺``; grid {2, 3}."""
    n_ii_layers: int = 1
    """``L_ii``, steps on each raw kNN graph ``Ŝ_m`` (and on ``Ŝ_pre`` if separate); grid {1, 2}."""
    knn_k: int = 10
    """``k`` of the raw modality kNN graphs ``Ŝ_m`` (self included)."""
    reg_weight: float = 1e-4
    """``λ_reg``, weight of ``half_sq(z_u, z_i, z_j)`` (2.10); grid {1e-5, 1e-4}."""
    train_features: bool = True
    """Fine-tune the raw feature matrices (MGCN reference: True); False keeps them frozen."""
    pretrained: str = "auto"
    """A run dir of ``prismrec train`` or its export dir, or ``"auto"`` (nested, cached run)."""
    pre_model: str = "mgcn"
    """Pretraining model of ``"auto"`` (a registered name; e.g. freedom, gume)."""
    pre_rep: Literal["final", "behavior", "modality"] = "final"
    """``P`` = ``Z_I`` (item.npy), ``C_I`` (item.behavior.npy) or ``M_I`` (item.modality.npy)."""
    pretrain_per_seed: bool = True
    """Stage 1 uses the run's seed (also picks a multi-seed run's seed dir); False: seed 999."""
    pretrain_epochs: int | None = None
    """``"auto"``: maximum stage-1 epochs; ``None`` = the training defaults (1000, patience 20)."""
    pretrain_settings: dict[str, Any] = field(default_factory=dict)
    """``"auto"``: other stage-1 settings, e.g. ``{cl_weight: 0.1, device: cuda}`` (not seed)."""
    pretrain_cache: str | None = None
    """``"auto"`` cache root; None: ``$PRISMREC_CACHE/pretrained`` (``~/.cache/prismrec/...``)."""
    k_pre: int = 10
    """Neighbours per item in ``B_pre`` (self excluded); grid {5, 10, 20}."""
    gamma: float = 1.0
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
    (``L_align`` replaces GUME's ``bm``; GUME's own depth is ``n_ui_layers = 3``)."""
    tau: float = 0.2
    """``τ`` of the per-row InfoNCE between ``M`` and ``C``; grid {0.1, 0.2, 0.4}."""
    lambda_max: float = 1e-2
    """``λ_max``, final alignment strength; grid {1e-3, 1e-2, 1e-1}."""
    lambda_min_ratio: float = 0.1
    """``λ_min = ratio·λ_max``, the strength at epoch 0; grid {0, 0.1}."""
    ramp_epochs: int = 50
    """``T``, epochs of the ramp from ``λ_min`` to ``λ_max``; grid {20, 50, 100}."""
    schedule: Literal["linear", "exp", "unbounded", "constant"] = "linear"
    """Epoch level ``λ_t`` (:func:`alignment_strength`); ``constant`` = w/o epoch level."""
    entity_weighting: Literal["softmax", "linear", "none"] = "softmax"
    """Entity level ``w_e`` (:func:`entity_weights`); ``none`` = w/o entity level."""
    entity_sign: Literal[-1, 1] = -1
    """``s``: −1 gives misaligned entities more pressure; +1 trusts consistent ones."""
    tau_w: float = 0.5
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


def entity_weights(a: torch.Tensor, mode: str, sign: int, tau_w: float) -> torch.Tensor:
    """Entity level: weights with mean 1 from alignment degrees ``a ∈ [−1, 1]`` (no gradient).
    ``softmax`` ``|B|·softmax(s·a/τ_w)``; ``linear`` ``(1 + s·a)/mean(1 + s·a)`` (the spec's
    ``(1 − a)/mean(1 − a)`` at ``s = −1``; ones if every base is 0); ``none`` 1."""
    a = a.detach()
    if mode == "softmax":
        return a.numel() * torch.softmax(sign * a / tau_w, dim=0)
    if mode == "linear":
        base = (1.0 + sign * a).clamp_min(0.0)
        mean = base.mean()
        return torch.where(mean > 1e-12, base / mean.clamp_min(1e-12), torch.ones_like(base))
    return torch.ones_like(a)


@register
class EGRA(MGCN):
    """EGRA; aux ``behavior`` ``C``, ``modality`` ``M``; ``pretrained_run``/``_file``: where ``P``
    came from; ``item_links``: ``B_pre`` (un-normalised CSR); ``lambda_t``: the current ``λ_t``."""

    name = "egra"
    Config = EGRAConfig
    train_defaults = {"lr_decay": 0.96, "lr_decay_epochs": 50}

    def __new__(cls, dataset=None, config: EGRAConfig | None = None):
        # backbone="gume" builds the GUME-based variant below; everything else is shared.
        if cls is EGRA and getattr(config, "backbone", "mgcn") == "gume":
            cls = EGRAOnGUME
        return super().__new__(cls)

    def __init__(self, dataset, config: EGRAConfig) -> None:
        super().__init__(dataset, config)  # checks the config; behavior_graph() builds Â⁺ from P
        self.lambda_t = alignment_strength(0, config)

    @staticmethod
    def _check_config(config) -> None:
        MGCN._check_config(config)
        rules = {"k_pre >= 1": config.k_pre >= 1, "ramp_epochs >= 1": config.ramp_epochs >= 1,
                 "gamma >= 0": config.gamma >= 0, "lambda_max >= 0": config.lambda_max >= 0,
                 "tau > 0": config.tau > 0, "tau_w > 0": config.tau_w > 0, "0 <= lambda_min_ratio"
                 " <= 1": 0 <= config.lambda_min_ratio <= 1,
                 "pretrain_epochs >= 1 or null": (config.pretrain_epochs or 1) >= 1}
        if broken := [rule for rule, ok in rules.items() if not ok]:
            raise ValueError(f"EGRA config: {'; '.join(broken)} must hold, got {config}")

    # ---------------------------------------------------------------- stage 0: pretrained P
    def load_pretrained(self, dataset) -> np.ndarray:
        """``P`` from ``config.pretrained`` (:mod:`prismrec.experiment.pretrained`); the seed is
        the run's (``seed_everything`` runs just before a model is built), or 999."""
        from prismrec.experiment.pretrained import pretrained_items  # stage 0 belongs to the runs

        seed = int(torch.initial_seed()) if self.config.pretrain_per_seed else 999
        p, self.pretrained_run, self.pretrained_file = pretrained_items(self.config, dataset, seed)
        return p

    # ---------------------------------------------------------------- stages 1-2: graph, views
    def behavior_graph(self, dataset, knn: list[sp.csr_matrix]) -> sp.csr_matrix:
        """1. ``Â⁺`` with item block ``γ·B_pre``, ``B_pre = topk(P; k_pre)`` (2.5, 2.1)."""
        cfg = self.config
        raw = knn[0]  # GUME's links: j in every raw modality's neighbour set of i, j != i
        for other in knn:
            raw = intersection_links(raw, other)
        if cfg.item_links == "raw":
            links, self.pretrained_run, self.pretrained_file = raw, None, None
        else:
            links = knn_graph(self.load_pretrained(dataset), cfg.k_pre, self_loops="exclude",
                              weight=cfg.pre_edge_weight, normalize=False)
            links = symmetrize(links, cfg.pre_symmetrize)
            if cfg.pre_filter_raw:
                links = sp.csr_matrix(links.multiply(raw), dtype=np.float32)
        self.item_links, self.n_item_links = links, int(links.nnz)
        if cfg.graph_fusion == "separate":
            self.pre_graph = SparseOperator(sym_normalize(links), symmetric=False)
            return bipartite_adjacency(dataset.train)
        return bipartite_adjacency(dataset.train, links, gamma=cfg.gamma)

    def behavior_view(self) -> torch.Tensor:
        """2. ``C = LGN(Â⁺, [E_U; E_I], L_ui)``; separate: ``Â``, ``C_I += γ·Ŝ_pre^{L_ii} E_I``."""
        c = super().behavior_view()
        if self.config.graph_fusion == "joint":
            return c
        h = self.item_emb
        for _ in range(self.config.n_ii_layers):
            h = self.pre_graph @ h
        return torch.cat([c[: self.n_users], c[self.n_users :] + self.config.gamma * h])

    # ---------------------------------------------------------------- stage 3: alignment, loss
    def on_epoch_start(self, epoch: int) -> None:
        self.lambda_t = alignment_strength(epoch, self.config)

    def epoch_log(self) -> dict:
        return {"lambda_t": self.lambda_t, "pretrained_run": self.pretrained_run}

    def weighted_alignment(self, m_rows: torch.Tensor, c_rows: torch.Tensor) -> torch.Tensor:
        """One side's ``mean_e w_e ℓ_e``, ``w_e`` from ``a_e = sg(cos(m_e, c_e))``."""
        cfg = self.config
        a = (F.normalize(m_rows, dim=1, eps=1e-12) * F.normalize(c_rows, dim=1, eps=1e-12)).sum(1)
        w = entity_weights(a, cfg.entity_weighting, cfg.entity_sign, cfg.tau_w)
        return infonce(m_rows, c_rows, cfg.tau, weights=w)

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        cfg = self.config
        u, i, j = batch
        zu, zi, zj = out.bpr_rows(batch)
        c, m = out.aux["behavior"], out.aux["modality"]
        i_rows = i + self.n_users  # item rows of the N x d views
        align = self.weighted_alignment(m[u], c[u]) + self.weighted_alignment(m[i_rows], c[i_rows])
        return {"bpr": bpr_loss(zu, zi, zj), "reg": cfg.reg_weight * half_sq(zu, zi, zj),
                "align": self.lambda_t * align}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, links={self.n_item_links}, P from {self.pretrained_run}"


class EGRAOnGUME(EGRA, GUME):
    """EGRA with ``backbone="gume"`` (built by ``EGRA(...)``): GUME's forward on ``Â⁺`` (its
    extended branch ``Ĥ`` included) and its ``vt``/``um``/``reg2`` terms; ``L_align`` in place of ``bm``."""

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        u, i, _ = batch
        return {**super().loss(batch, out), **self.extension_terms(out, u, i + self.n_users)}
