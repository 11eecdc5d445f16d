"""SIGER (arXiv 2508.06154); ALGORITHMS.md §5. Everything past the abstract is **proposed**.

MGCN (``models/mgcn.py``) whose semantic item-item graphs receive collaborative signal, trained
with modulus-scaled noise views and a dual (anchor + standard) alignment.

1. Behaviour ``C = LGN(Â, [E_U; E_I], L_ui)`` on the plain user-item graph (MGCN's view).
2. ``Ĉ``: row top-``k_c`` of ``O = RᵀR`` (2.4); ``Ŝ_m``: weighted kNN of ``F_m`` (2.2).
3. Collaborative infusion ``G_m = (1 − β_m) Ŝ_m + β_m Ĉ``; no renormalisation (both are normalised).
4. ``H_m^I = G_m^{L_s} H_m⁰`` (purifier 2.8), ``H_m^U = R̂ H_m^I``, ``H_m = [H_m^U; H_m^I]``:
   MGCN's ``modality_views`` with ``G_m`` in place of ``Ŝ_m``.
5. ``S = fuse(H_1..H_K | C)`` (2.8) or ``mean_m H_m``; ``Z = C + S``, score ``z_u·z_i``. Aux:
   ``behavior`` C, ``fused`` S, ``semantic`` H (``K x N x d``), ``extended`` Ĥ (extended branch).

Loss (``r`` = the batch's user rows ``u``, then item rows ``i``; zero-weight terms are not computed)::

    bpr      L_BPR(Z)                         reg    λ_reg·half_sq(z_u, z_i, z_j)
    perturb  λ_P Σ_r InfoNCE(S'[r], S''[r]; τ_P),   S', S'' = perturb(S, ε, perturb_mode)
    anchor   λ_A L_A (anchor_form)            align  λ_B Σ_r InfoNCE(S[r], C[r]; τ_B)

``modulus`` noise has ``ρ_e = ε‖s_e‖₂`` (the same relative noise for every node); ``perturb_at``
and ``perturb_target`` move it into the ``G_m`` propagation (SimGCL) or onto each ``H_m``.

Anchor forms, ``c = sg(C)`` when ``detach_anchor``, each summed over ``r``:
``A1`` ``(1/K) Σ_m InfoNCE(H_m[r], c[r]; τ_A)``;
``A2`` ``ℓ_e = −log[exp(Σ_m cos(h_e^m, c_e)/τ_A) / Σ_e' exp(Σ_m cos(h_e^m, c_e')/τ_A)]``;
``A3`` mean over modality pairs ``a < b`` of ``InfoNCE(H_a[r], H_b[r]; τ_A)`` with row weights
``σ(cos(h_e^a, c_e) + cos(h_e^b, c_e))`` (no gradient through them; 1 if ``anchor_gate=False``).

``extended_branch``: GUME's ``Ĥ = mean_m LGN(Â, [E_U^(m); H_m^I], L_ui)`` (3.6), ``um =
um_weight·[InfoNCE(Ĥ_U[u], S_U[u]; τ_um) + Noise(S_U)[u] + Noise(Ĥ_U)[u]]`` (SIGER's noise rule)
and ``reg2 = reg2_weight·½‖Ĥ_I[i]‖²/B``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal, get_args, get_origin, get_type_hints

import torch
import torch.nn.functional as F
from torch import nn

from prismrec.graph import SparseOperator, cooccurrence_graph, mix, sym_normalize
from prismrec.losses import bpr_loss, half_sq, infonce, joint_infonce
from prismrec.models import register
from prismrec.models.gume import GUME
from prismrec.models.mgcn import MGCN
from prismrec.nn import perturb
from prismrec.recommender import Output


@dataclass
class SIGERConfig:
    modalities: list[str] | None = None
    """Feature names used (>= 1; A3 needs >= 2), in order; ``None`` = every modality present."""
    embedding_size: int = 64
    """``d``, width of the ID embeddings and of every view."""
    n_ui_layers: int = 2
    """``L_ui``, LightGCN depth of the behaviour view; grid {2, 3}."""
    n_sem_layers: int = 1
    """``L_s``, propagation steps on each infused graph ``G_m``; grid {1, 2}."""
    knn_k: int = 10
    """``k`` of the semantic kNN graphs ``Ŝ_m`` (self included)."""
    co_k: int = 10
    """``k_c``, neighbours per item in the co-occurrence graph ``Ĉ``; grid {5, 10, 20}."""
    co_score: Literal["count", "cosine"] = "count"
    """Co-occurrence score ``q_ij``: common users, or ``O_ij / sqrt(n_i n_j)`` (2.4)."""
    co_weight: Literal["binary", "score"] = "binary"
    """Weight of a kept ``Ĉ`` entry before normalisation: 1, or the score ``q_ij``."""
    beta: float = 0.5
    """``β`` in ``[0, 1]``: ``G_m = (1 − β) Ŝ_m + β Ĉ`` (0 = raw semantic graphs, 1 = ``Ĉ`` only)."""
    beta_per_modality: bool = False
    """Use one ``β_m`` per modality from ``beta_modalities`` instead of the shared ``beta``."""
    beta_modalities: list[float] | None = None
    """``β_m`` per modality, in ``modalities`` order; only with ``beta_per_modality``."""
    renormalize_after_mix: bool = False
    """Re-apply the 2.2 row-degree normalisation to ``G_m`` after mixing."""
    fusion: Literal["mgcn", "mean"] = "mgcn"
    """``S`` = MGCN's behaviour-aware fuser (2.8), or the plain mean of the ``H_m``."""
    eps: float = 0.1
    """``ε``, noise scale of the perturbation views; grid {0.01, 0.05, 0.1, 0.2}."""
    perturb_mode: Literal["modulus", "relative", "inverse", "fixed"] = "modulus"
    """Noise magnitude per row (2.12): ``ε‖x‖``, ``ε‖x‖/mean‖x‖``, ``ε·mean‖x‖/‖x‖``, ``ε``."""
    perturb_at: Literal["output", "layers"] = "output"
    """Perturb the finished views, or add noise after every ``G_m`` propagation (SimGCL)."""
    perturb_target: Literal["fused", "per_modality"] = "fused"
    """Views of the fused ``S``, or of each ``H_m`` (``L_P`` then averaged over modalities)."""
    lambda_p: float = 0.01
    """``λ_P``, weight of the perturbation InfoNCE ``L_P`` (0 = views never computed)."""
    lambda_a: float = 0.01
    """``λ_A``, weight of the anchor InfoNCE ``L_A``."""
    lambda_b: float = 0.01
    """``λ_B``, weight of the standard behaviour-semantics InfoNCE ``L_B``."""
    tau_p: float = 0.2
    """``τ_P``; grid {0.1, 0.2, 0.4}."""
    tau_a: float = 0.2
    """``τ_A``; grid {0.1, 0.2, 0.4}."""
    tau_b: float = 0.2
    """``τ_B``; grid {0.1, 0.2, 0.4}."""
    reg_weight: float = 1e-5
    """``λ_reg``, weight of ``half_sq(z_u, z_i, z_j)``; grid {1e-5, 1e-4}."""
    anchor_form: Literal["A1", "A2", "A3"] = "A1"
    """``L_A``: per-modality anchored InfoNCE, joint multi-positive, or anchor-gated cross-modal."""
    anchor_gate: bool = True
    """A3 row weights ``σ(Σ cos(h^m, c))``; False = unit weights (cross-modal InfoNCE ablation)."""
    detach_anchor: bool = True
    """Stop the gradient through the behaviour anchors ``C`` in ``L_A``."""
    extended_branch: bool = False
    """Add GUME's extended modality branch ``Ĥ`` with its ``um`` and ``reg2`` terms."""
    um_weight: float = 0.01
    """``um`` weight (``extended_branch`` only; GUME's Baby value)."""
    um_tau: float = 0.1
    """``τ_um`` (``extended_branch`` only; GUME's Baby value)."""
    reg2_weight: float = 0.1
    """``reg2`` weight on ``½‖Ĥ_I[i]‖²/B`` (``extended_branch`` only)."""
    train_features: bool = True
    """Fine-tune the raw feature matrices (MGCN reference: True)."""

    n_ii_layers = property(lambda self: self.n_sem_layers, doc="MGCN's name for ``L_s`` (read by the backbone).")


class _NoisyGraph:
    """``G_m`` whose every product is followed by a fresh noise draw (``perturb_at = "layers"``)."""

    def __init__(self, graph: SparseOperator, noise) -> None:
        self.graph, self.noise = graph, noise

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise(self.graph @ x)


@register
class SIGER(MGCN):
    """SIGER; ``out.aux``: ``behavior`` C, ``fused`` S, ``semantic`` H (``K x N x d``)."""

    name = "siger"
    Config = SIGERConfig
    train_defaults = {"lr_decay": 0.96, "lr_decay_epochs": 50}

    def __init__(self, dataset, config: SIGERConfig) -> None:
        super().__init__(dataset, config)  # Ŝ_m (kept by behavior_graph), Â, R̂, E, purifiers, fuser
        self.betas = self._modality_betas(config)
        # 2 + 3. G_m = (1 − β_m) Ŝ_m + β_m Ĉ replaces MGCN's Ŝ_m (Ĉ is built only when used).
        co = None
        if any(b > 0 for b in self.betas):
            co = cooccurrence_graph(dataset.train, config.co_k, score=config.co_score, weight=config.co_weight)
        for m, semantic, beta in zip(self.modalities, self._semantic_graphs, self.betas):
            g = semantic if co is None else mix([semantic, co], [1.0 - beta, beta])
            if config.renormalize_after_mix:
                g = sym_normalize(g, warn_nonpositive=True)
            setattr(self, self._graph_attr(m), SparseOperator(g, symmetric=False))
        del self._semantic_graphs
        if config.extended_branch:  # GUME's E_U^(m), one user table per modality
            tables = (torch.empty(self.n_users, config.embedding_size) for _ in self.modalities)
            self.extended_user_emb = nn.ParameterList(nn.Parameter(nn.init.xavier_uniform_(t)) for t in tables)
        # Own noise generator, seeded from the global RNG after every init: one seed fixes the run.
        self._noise_seed = int(torch.randint(0, 2**62, ()).item())
        self._noise_generator: torch.Generator | None = None
        self._layer_noise = None

    @staticmethod
    def _check_config(config: SIGERConfig) -> None:
        MGCN._check_config(config)
        for key, annotation in get_type_hints(SIGERConfig).items():  # Literal switches
            allowed, value = get_args(annotation), getattr(config, key)
            if get_origin(annotation) is Literal and value not in allowed:
                raise ValueError(f"siger: {key} must be one of {list(allowed)}, got {value!r}")
        if not 0.0 <= config.beta <= 1.0:
            raise ValueError(f"siger: beta must be in [0, 1] (G_m = (1-β)Ŝ_m + βĈ), got {config.beta}")
        if config.beta_per_modality != (config.beta_modalities is not None):
            raise ValueError("siger: set beta_modalities (one β per modality) exactly when beta_per_modality=true")
        for key in ("eps", "lambda_p", "lambda_a", "lambda_b", "reg_weight", "um_weight", "reg2_weight"):
            if getattr(config, key) < 0:
                raise ValueError(f"siger: {key} must be >= 0, got {getattr(config, key)}")
        for key in ("co_k", "tau_p", "tau_a", "tau_b", "um_tau"):
            if getattr(config, key) <= 0:
                raise ValueError(f"siger: {key} must be > 0, got {getattr(config, key)}")
        if config.perturb_at == "layers" and config.n_sem_layers < 1:
            raise ValueError("siger: perturb_at='layers' adds noise after G_m products; needs n_sem_layers >= 1")

    def _modality_betas(self, config: SIGERConfig) -> list[float]:
        """``β_m`` per modality, checked once the modalities are known (A3 needs two)."""
        k = len(self.modalities)
        if config.anchor_form == "A3" and k < 2:
            raise ValueError(f"siger: anchor_form='A3' contrasts modalities and needs at least 2, got {self.modalities}")
        betas = [float(b) for b in config.beta_modalities] if config.beta_per_modality else [config.beta] * k
        if len(betas) != k or not all(0.0 <= b <= 1.0 for b in betas):
            raise ValueError(f"siger: beta_modalities needs one β in [0, 1] per modality {self.modalities}, got {betas}")
        return betas

    def behavior_graph(self, dataset, knn):
        """1. MGCN's plain ``Â``; the raw ``Ŝ_m`` are kept for the collaborative infusion."""
        self._semantic_graphs = knn
        return super().behavior_graph(dataset, knn)

    def item_graph(self, modality: str):
        """``G_m``; inside :meth:`noisy_semantic_views` every product is followed by noise."""
        graph = super().item_graph(modality)  # MGCN's attribute, now holding G_m
        return graph if self._layer_noise is None else _NoisyGraph(graph, self._layer_noise)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for table in getattr(self, "extended_user_emb", ()):
            nn.init.xavier_uniform_(table)

    # ----------------------------------------------------------------------------------- views
    def fuse(self, semantic: torch.Tensor, behavior: torch.Tensor) -> torch.Tensor:
        """5. ``S = fuse(H_1..H_K | C)`` (2.8) or ``mean_m H_m``."""
        return self.fuser(semantic, behavior) if self.config.fusion == "mgcn" else semantic.mean(dim=0)

    extended_view = GUME.extended_view  # Ĥ = mean_m LGN(Â, [E_U^(m); H_m^I], L_ui)

    def forward(self) -> Output:
        c = self.behavior_view()                                 # 1. C on the plain Â
        h = self.modality_views()                                # 4. H_m on G_m
        s = self.fuse(h, c)                                      # 5. S
        z = c + s                                                #    Z = C + S
        aux = {"behavior": c, "fused": s, "semantic": h}
        if self.training and self.config.extended_branch:  # Ĥ only feeds the loss
            aux["extended"] = self.extended_view(h)
        return Output(z[: self.n_users], z[self.n_users :], aux)

    def noise(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """One noise view of ``x`` (or of ``x[rows]``, 2.12): ``x + ρ·δ``, ``ρ`` by ``perturb_mode``, ``ε = eps``."""
        if self._noise_generator is None or self._noise_generator.device != x.device:
            self._noise_generator = torch.Generator(device=x.device).manual_seed(self._noise_seed)
        return perturb(x, self.config.eps, self.config.perturb_mode, generator=self._noise_generator, rows=rows)

    def noisy_semantic_views(self) -> torch.Tensor:
        """``H_m`` with noise after every ``G_m`` product (``perturb_at = "layers"``), ``K x N x d``."""
        self._layer_noise = self.noise
        try:
            return self.modality_views()
        finally:
            self._layer_noise = None

    def perturbation_views(self, out: Output) -> tuple[torch.Tensor, ...]:
        """Two independent views: ``S', S''`` (each ``1 x N x d``) or the ``H_m', H_m''`` (``K x N x d``)."""
        fused = self.config.perturb_target == "fused"
        if self.config.perturb_at == "output":  # noise on the finished views
            clean = out.aux["fused"].unsqueeze(0) if fused else out.aux["semantic"]
            return tuple(torch.stack([self.noise(x) for x in clean]) for _ in range(2))
        noisy = (self.noisy_semantic_views() for _ in range(2))  # noise inside the propagation
        return tuple(self.fuse(h, out.aux["behavior"]).unsqueeze(0) if fused else h for h in noisy)

    # ------------------------------------------------------------------------------------ loss
    def perturbation_loss(self, out: Output, rows) -> torch.Tensor:
        """``L_P = Σ_r InfoNCE(V'[r], V''[r]; τ_P)``, averaged over the views ``V`` (``S`` or each ``H_m``)."""
        first, second = self.perturbation_views(out)
        return sum(infonce(a[r], b[r], self.config.tau_p) for a, b in zip(first, second) for r in rows) / len(first)

    def anchor_loss(self, semantic: torch.Tensor, behavior: torch.Tensor, rows) -> torch.Tensor:
        """``L_A`` in the configured ``anchor_form`` (module docstring), summed over ``rows``."""
        cfg = self.config
        anchor = behavior.detach() if cfg.detach_anchor else behavior
        if cfg.anchor_form == "A1":
            return sum(infonce(h[r], anchor[r], cfg.tau_a) for h in semantic for r in rows) / len(semantic)
        if cfg.anchor_form == "A2":
            return sum(joint_infonce(semantic[:, r], anchor[r], cfg.tau_a) for r in rows)
        pairs = list(itertools.combinations(range(len(semantic)), 2))
        total = 0.0
        for (a, b), r in itertools.product(pairs, rows):
            ha, hb, c = semantic[a][r], semantic[b][r], anchor[r]
            gate = torch.sigmoid(F.cosine_similarity(ha, c) + F.cosine_similarity(hb, c)) if cfg.anchor_gate else None
            total = total + infonce(ha, hb, cfg.tau_a, gate)
        return total / len(pairs)

    def extended_loss(self, out: Output, u: torch.Tensor, i_rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """GUME's ``um`` and ``reg2`` terms on ``Ĥ`` (``extended_branch``)."""
        cfg, ext = self.config, out.aux["extended"]
        users_ext, users_s = ext[: self.n_users], out.aux["fused"][: self.n_users]
        noise_nce = [infonce(self.noise(x, u), self.noise(x, u), cfg.um_tau) for x in (users_s, users_ext)]
        um = infonce(users_ext[u], users_s[u], cfg.um_tau) + sum(noise_nce)
        return {"um": cfg.um_weight * um, "reg2": cfg.reg2_weight * half_sq(ext[i_rows])}

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        cfg, (u, i, _) = self.config, batch
        zu, zi, zj = out.bpr_rows(batch)
        c, s, h = out.aux["behavior"], out.aux["fused"], out.aux["semantic"]
        rows = (u, i + self.n_users)  # user rows, item rows of the N x d views

        def weighted(weight: float, term) -> torch.Tensor:  # a zero-weight term is never computed
            return weight * term() if weight else zu.new_zeros(())

        terms = {
            "bpr": bpr_loss(zu, zi, zj),
            "reg": cfg.reg_weight * half_sq(zu, zi, zj),
            "perturb": weighted(cfg.lambda_p, lambda: self.perturbation_loss(out, rows)),
            "anchor": weighted(cfg.lambda_a, lambda: self.anchor_loss(h, c, rows)),
            "align": weighted(cfg.lambda_b, lambda: sum(infonce(s[r], c[r], cfg.tau_b) for r in rows)),
        }
        if cfg.extended_branch:
            terms.update(self.extended_loss(out, u, rows[1]))
        return terms

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, betas={self.betas}"
