"""SIGER (arXiv 2508.06154); ALGORITHMS.md §5. Everything past the abstract is **proposed**.

MGCN's multi-view encoder (:class:`prismrec.nn.MultiViewEncoder`) whose semantic item-item graphs
receive collaborative signal, trained with noise views of personal, modulus-guided intensity and a
dual (anchor + standard) alignment.

1. Behaviour ``C = LGN(Â, [E_U; E_I], L_ui)`` on the plain user-item graph (MGCN's view).
2. ``Ĉ``: row top-``k_c`` of ``O = RᵀR`` (2.4); ``Ŝ_m``: weighted kNN of ``F_m`` (2.2).
3. Collaborative infusion ``G_m = (1 − β_m) Ŝ_m + β_m Ĉ``; no renormalisation (both are normalised).
4. ``H_m^I = G_m^{L_s} H_m⁰`` (purifier 2.8), ``H_m^U = R̂ H_m^I``, ``H_m = [H_m^U; H_m^I]``:
   the encoder's modality views with ``G_m`` in place of ``Ŝ_m``.
5. ``S = fuse(H_1..H_K | C)`` (2.8) or ``mean_m H_m``; ``Z = C + S``, score ``z_u·z_i``. Aux:
   ``behavior`` C, ``modality`` S, ``modality_views`` H (``K x N x d``), ``extended`` Ĥ.

Loss (``r`` = the batch's user rows ``u``, then item rows ``i``; zero-weight terms are not computed;
a row repeated in ``r`` is scored once, weighted by its count (:class:`prismrec.losses.CountedRows`),
and the noise views are built for the rows read, drawn as for every row)::

    bpr      L_BPR(Z)                         reg    λ_reg·half_sq(z_u, z_i, z_j)
    perturb  λ_P Σ_r InfoNCE(S'[r], S''[r]; τ_P),   S', S'' = perturb(S, ε, perturb_mode, γ)
    anchor   λ_A L_A (anchor_form)            align  λ_B Σ_r InfoNCE(S[r], C[r]; τ_B)

``modulus`` noise has ``ρ_e = ε‖s_e‖(‖s_e‖/m)^γ``, ``m`` the mean row norm: the relative intensity
``ε(‖s_e‖/m)^γ`` is personal (γ = 0: the same for every node); ``perturb_at`` and
``perturb_target`` move it into the ``G_m`` propagation (SimGCL) or onto each ``H_m``.

Anchor forms, ``c = sg(C)`` when ``detach_anchor``, each summed over ``r``:
``A1`` ``(1/K) Σ_m InfoNCE(H_m[r], c[r]; τ_A)``;
``A2`` ``ℓ_e = −log[exp(Σ_m cos(h_e^m, c_e)/τ_A) / Σ_e' exp(Σ_m cos(h_e^m, c_e')/τ_A)]``;
``A3`` mean over modality pairs ``a < b`` of ``InfoNCE(H_a[r], H_b[r]; τ_A)`` with row weights
``σ(cos(h_e^a, c_e) + cos(h_e^b, c_e))`` (no gradient through them; 1 if ``anchor_gate=False``).

Missing modalities (``impute="zero"``): an item lacking ``m`` has no ``m`` view (presence ``False``;
its zero feature row has no ``Ŝ_m`` neighbour but itself), and ``G_m`` keeps it so: the
collaborative part is ``Ĉ_m``, the co-occurrence graph among the items having ``m`` (2.4 on ``R``
without the others' interactions), so its ``H_m^I`` row is not filled from its behaviour neighbours
and its row reaches no item having ``m`` (not a neighbour imputation: the row's self part would
still be the ID row under a bias-only gate). A user takes modality ``m`` from its items that have it
(``H_m^U = R̂_m H_m^I``, ``Ĥ_m`` on ``Â_m``; none: no ``m`` view), and a term reads only real views.
``anchor`` aligns ``H_m`` on the rows where modality ``m`` is present (A1; A2 scores a row with its
present views; A3 a pair on the rows where both are present); ``perturb`` on ``H_m`` likewise;
``perturb`` and ``align`` (and ``um``) on the fused ``S`` leave out a node with no modality at all
(its ``S`` row is 0, e.g. with one modality).

``extended_branch``: GUME's ``Ĥ = mean_m LGN(Â, [E_U^(m); H_m^I], L_ui)`` (3.6,
:class:`prismrec.nn.ExtendedBranch`), ``um = um_weight·[InfoNCE(Ĥ_U[u], S_U[u]; τ_um) + Noise(S_U)[u]
+ Noise(Ĥ_U)[u]]`` (SIGER's noise rule) and ``reg2 = reg2_weight·½‖Ĥ_I[i]‖²/B``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from prismrec.data.features import fusion_presence
from prismrec.graph import UserItemGraph, knn_graph
from prismrec.graph.cooccurrence import infused_graphs
from prismrec.losses import CountedRows, anchored_infonce, counted_rows, gathered_rows, half_sq, output_bpr_terms
from prismrec.losses import paired_views_infonce, rows_infonce, user_modality_alignment
from prismrec.models import register
from prismrec.nn.content import multiview_content_hook
from prismrec.nn import ExtendedBranch, ExtendedBranchConfig, MultiViewConfig, MultiViewEncoder, NoiseSource
from prismrec.nn.multiview_checks import check_siger_config, siger_betas
from prismrec.nn.presence import node_columns
from prismrec.nn.propagation import batch_node_rows
from prismrec.recommender import Output, Recommender


@dataclass
class SIGERConfig(ExtendedBranchConfig, MultiViewConfig):
    """SIGER's settings (``modalities``: >= 1; A3 needs >= 2); ``um_*``, ``reg2`` act only with
    ``extended_branch``. Grids (``metadata``): ALGORITHMS.md §5.3 (the three λ one at a time)."""

    n_ui_layers: int = field(default=2, metadata={"grid": [2, 3]})
    """``L_ui``, LightGCN depth of the behaviour view."""
    n_sem_layers: int = field(default=1, metadata={"grid": [1, 2]})
    """``L_s``, propagation steps on each infused graph ``G_m``."""
    co_k: int = field(default=10, metadata={"grid": [5, 10, 20]})
    """``k_c``, neighbours per item in the co-occurrence graph ``Ĉ``."""
    co_score: Literal["count", "cosine"] = "count"
    """Co-occurrence score ``q_ij``: common users, or ``O_ij / sqrt(n_i n_j)`` (2.4)."""
    co_weight: Literal["binary", "score"] = "binary"
    """Weight of a kept ``Ĉ`` entry before normalisation: 1, or the score ``q_ij``."""
    beta: float = field(default=0.5, metadata={"grid": [0.1, 0.3, 0.5, 0.7, 0.9]})
    """``β`` in ``[0, 1]``: ``G_m = (1 − β) Ŝ_m + β Ĉ`` (0 = raw semantic graphs, 1 = ``Ĉ`` only)."""
    beta_per_modality: bool = False
    """Use one ``β_m`` per modality (``beta_modalities``, in ``modalities`` order) instead of ``beta``."""
    beta_modalities: list[float] | None = None
    """``β_m`` per modality; only with ``beta_per_modality``."""
    renormalize_after_mix: bool = False
    """Re-apply the 2.2 row-degree normalisation to ``G_m`` after mixing."""
    fusion: Literal["mgcn", "mean"] = "mgcn"
    """``S`` = MGCN's behaviour-aware fuser (2.8), or the plain mean of the ``H_m``."""
    eps: float = field(default=0.1, metadata={"grid": [0.01, 0.05, 0.1, 0.2]})
    """``ε``, noise scale of the perturbation views."""
    perturb_mode: Literal["modulus", "fixed"] = "modulus"
    """Noise magnitude per row (2.12): ``ρ = ε‖x‖(‖x‖/m)^γ``, or ``ε`` (GUME)."""
    gamma: float = field(default=1.0, metadata={"grid": [-1.0, -0.5, 0.0, 0.5, 1.0, 2.0]})
    """``γ`` of the personal intensity ``ρ/‖x‖ = ε(‖x‖/m)^γ`` (5.2); 0 = uniform relative noise
    (the former ``modulus``), −2 = the former ``inverse``."""
    perturb_at: Literal["output", "layers"] = "output"
    """Perturb the finished views, or add noise after every ``G_m`` propagation (SimGCL)."""
    perturb_target: Literal["fused", "per_modality"] = "fused"
    """Views of the fused ``S``, or of each ``H_m`` (``L_P`` then averaged over modalities)."""
    lambda_p: float = field(default=0.01, metadata={"grid": [1e-3, 1e-2, 1e-1]})
    """``λ_P``, weight of the perturbation InfoNCE ``L_P`` (0 = views never computed)."""
    lambda_a: float = field(default=0.01, metadata={"grid": [1e-3, 1e-2, 1e-1]})
    """``λ_A``, weight of the anchor InfoNCE ``L_A``."""
    lambda_b: float = field(default=0.01, metadata={"grid": [1e-3, 1e-2, 1e-1]})
    """``λ_B``, weight of the standard behaviour-semantics InfoNCE ``L_B``."""
    tau_p: float = field(default=0.2, metadata={"grid": [0.1, 0.2, 0.4]})
    """``τ_P``."""
    tau_a: float = field(default=0.2, metadata={"grid": [0.1, 0.2, 0.4]})
    """``τ_A``."""
    tau_b: float = field(default=0.2, metadata={"grid": [0.1, 0.2, 0.4]})
    """``τ_B``."""
    reg_weight: float = field(default=1e-5, metadata={"grid": [1e-5, 1e-4]})
    """``λ_reg``, weight of ``half_sq(z_u, z_i, z_j)``."""
    anchor_form: Literal["A1", "A2", "A3"] = "A1"
    """``L_A``: per-modality anchored InfoNCE, joint multi-positive, or anchor-gated cross-modal."""
    anchor_gate: bool = True
    """A3 row weights ``σ(Σ cos(h^m, c))``; False = unit weights (cross-modal InfoNCE ablation)."""
    detach_anchor: bool = True
    """Stop the gradient through the behaviour anchors ``C`` in ``L_A``."""
    extended_branch: bool = False
    """Add GUME's extended modality branch ``Ĥ`` with its ``um`` and ``reg2`` terms."""


@register
class SIGER(Recommender):
    """SIGER; ``out.aux``: ``behavior`` C, ``modality`` S, ``modality_views`` H (``K x N x d``); in
    training also ``extended`` Ĥ (``extended_branch``) and ``purified`` H⁰ (``perturb_at="layers"``)."""

    name = "siger"
    Config = SIGERConfig
    item_sizes = ("knn_k", "co_k")
    # Cold items: the forward with the item's ID row imputed from its warm neighbours on S_m
    content_id_rows = "impute"
    content_item_embeddings = multiview_content_hook
    train_defaults = {"lr_decay": 0.96, "lr_decay_epochs": 50}

    @classmethod
    def check_settings(cls, config) -> None:
        check_siger_config(config)

    @classmethod
    def check_dataset(cls, config, dataset) -> None:
        super().check_dataset(config, dataset)
        siger_betas(config, cls.used_modalities(config, dataset))

    def __init__(self, dataset, config: SIGERConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.modalities = self.used_modalities(config, dataset)
        self.betas = siger_betas(config, self.modalities)
        # 2 + 3. Ŝ_m, Ĉ (built only when used; Ĉ_m under a mask) and G_m = (1 − β_m) Ŝ_m + β_m Ĉ.
        present = fusion_presence(dataset, self.modalities)
        graphs = infused_graphs([knn_graph(dataset.features[m], config.knn_k) for m in self.modalities],
                                dataset.train, self.betas, config.co_k, config.co_score, config.co_weight,
                                config.renormalize_after_mix, present)
        # 1, 4, 5. C on the plain Â, H_m on the G_m, S (under a mask: present modalities only); Ĥ.
        self.encoder = MultiViewEncoder(
            UserItemGraph(dataset.train), graphs, [dataset.features[m] for m in self.modalities],
            self.n_users, config.embedding_size, config.n_ui_layers, config.n_sem_layers, config.train_features,
            fusion="behavior_aware" if config.fusion == "mgcn" else "mean", present_items=present)
        self.extended = ExtendedBranch(self.n_users, len(self.modalities), config.embedding_size, config.n_ui_layers) \
            if config.extended_branch else None
        self.reset_parameters()
        self.noise = NoiseSource(config.eps, config.perturb_mode, config.gamma)  # seeded after the init

    # ----------------------------------------------------------------------------------- views
    def forward(self, rows=None) -> Output:  # rows (batch_loss): S's gradient for these node ids alone
        c = self.encoder.behavior_view()                         # 1. C on the plain Â
        # H_m⁰ once: the noisy views of perturb_at="layers" start from it too (noise after G_m)
        noisy_layers = self.training and self.config.perturb_at == "layers" and self.config.lambda_p > 0
        h0 = self.encoder.purified() if noisy_layers else None
        h = self.encoder.modality_views(purified=h0)            # 4. H_m on G_m
        s = self.encoder.fuse(h, c) if rows is None else self.encoder.fuse_for_rows(h, c, rows)  # 5. S
        z = c + s                                                #    Z = C + S
        aux = {"behavior": c, "modality": s, "modality_views": h}
        if noisy_layers:
            aux["purified"] = h0
        if self.training and self.extended is not None:  # Ĥ only feeds the loss
            aux["extended"] = self.extended(self.encoder.modality_adjacencies, h, self.encoder.present)
        return Output.of_nodes(z, self.n_users, aux)

    def perturbation_views(self, out: Output, nodes: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Two independent views: ``S', S''`` (each ``1 x N x d``) or the ``H_m', H_m''``
        (``K x N x d``); with ``nodes`` (node ids) their rows ``nodes`` alone, the noise drawn as
        for every row (the same values)."""
        fused = self.config.perturb_target == "fused"
        if self.config.perturb_at == "output":  # noise on the finished views
            clean = out.aux["modality"].unsqueeze(0) if fused else out.aux["modality_views"]
            present = self.encoder.views_presence(fused)  # modulus's mean row norm over the real views' rows
            masks = [None] * len(clean) if present is None else present
            return tuple(torch.stack([self.noise(x, nodes, p, draw_all=True) for x, p in zip(clean, masks)])
                         for _ in range(2))
        purified = out.aux.get("purified")  # inside the propagation, from the forward's H_m⁰
        noisy = (self.encoder.modality_views(self.noise, purified) for _ in range(2))
        behavior = out.aux["behavior"]
        if nodes is not None:  # the fuser is per node: it runs on the rows alone
            noisy, behavior = (h.index_select(1, nodes) for h in noisy), behavior.index_select(0, nodes)
        return tuple(self.encoder.fuse(h, behavior, nodes).unsqueeze(0) if fused else h for h in noisy)

    # ------------------------------------------------------------------------------------ loss
    def perturbation_loss(self, out: Output, rows: tuple[CountedRows, ...]) -> torch.Tensor:
        """``L_P = Σ_r InfoNCE(V'[r], V''[r]; τ_P)``, averaged over the views ``V`` (``S`` or each
        ``H_m``), the views built for the rows ``r`` alone."""
        nodes, local = gathered_rows(rows)
        present = self.encoder.views_presence(self.config.perturb_target == "fused")
        return paired_views_infonce(*self.perturbation_views(out, nodes), local, self.config.tau_p,
                                    node_columns(present, nodes))

    def anchor_loss(self, semantic: torch.Tensor, behavior: torch.Tensor, rows) -> torch.Tensor:
        """``L_A`` in the configured ``anchor_form`` (module docstring), summed over ``rows``."""
        cfg = self.config
        anchor = behavior.detach() if cfg.detach_anchor else behavior
        return anchored_infonce(semantic, anchor, rows, cfg.tau_a, cfg.anchor_form, cfg.anchor_gate,
                                self.encoder.presence())

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        cfg, (u, i, _), n_u = self.config, batch, self.n_users
        c, s, h = out.aux["behavior"], out.aux["modality"], out.aux["modality_views"]
        items = i + n_u
        rows = (counted_rows(u), counted_rows(items))  # user rows, item rows of the N x d views

        def weighted(weight: float, term) -> torch.Tensor:  # a zero-weight term is never computed
            return weight * term() if weight else c.new_zeros(())

        terms = {
            **output_bpr_terms(out, batch, cfg.reg_weight, "half_sq"),
            "perturb": weighted(cfg.lambda_p, lambda: self.perturbation_loss(out, rows)),
            "anchor": weighted(cfg.lambda_a, lambda: self.anchor_loss(h, c, rows)),
            "align": weighted(cfg.lambda_b, lambda: rows_infonce(s, c, rows, cfg.tau_b, self.encoder.fused_presence())),
        }
        if self.extended is not None:  # GUME's um and reg2 on Ĥ, with SIGER's noise rule
            ext = out.aux["extended"]
            terms["um"] = cfg.um_weight * user_modality_alignment(ext[:n_u], s[:n_u], u, cfg.um_tau, self.noise,
                                                                  self.encoder.fused_presence())
            terms["reg2"] = cfg.reg2_weight * half_sq(ext[items])
        return terms

    def batch_loss(self, batch) -> dict[str, torch.Tensor]:  # loss(batch, forward()): S's rows u, i, j are read
        return self.loss(batch, self(batch_node_rows(batch, self.n_users, self.n_items)[0]))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, modalities={self.modalities}, betas={self.betas}"

