"""GUME — Lin et al., CIKM'24 (arXiv 2407.12338); ALGORITHMS.md 3.6.

GUME is MGCN (``models/mgcn.py``) on an enhanced user-item graph, plus an extended modality
branch with its own user tables and extra alignment / uniformity losses.

1. Graphs: ``Ŝ_m`` as MGCN. Item-item links ``B_II(i, j) = 1`` iff ``j ∈ ∩_m N_m(i)``, ``j ≠ i``
   (neighbour sets of the ``Ŝ_m``; binary, directed). ``A⁺ = [[0, R], [Rᵀ, γ·B_II]]`` normalised
   with its row sums: ``Â⁺``, ``R̂⁺ = Â⁺[:n_U, n_U:]`` (2.1, ``γ = 1``).
2. Purifier (2.8): ``H_m⁰ = E_I ⊙ σ((F_m W_m + b_m) G_m + g_m)``.
3. Behaviour ("extended ID"): ``C = LGN(Â⁺, [E_U; E_I], L_ui)``.
4. Explicit modality: ``H_m^I = Ŝ_m^{L_ii} H_m⁰``, ``H_m^U = R̂⁺ H_m^I``, ``H_m = [H_m^U; H_m^I]``.
5. Extended modality: ``Ĥ_m = LGN(Â⁺, [E_U^(m); H_m^I], L_ui)`` with a learnable user table
   ``E_U^(m)`` per modality; ``Ĥ = mean_m Ĥ_m``.
6. Fuser (2.8) on the ``H_m`` with gates on ``C``: ``M``. Output ``Z = C + M``.
7. Loss (each term logged under its name)::

     bpr   L_BPR(Z)
     reg   reg1·half_sq(z_u, z_i, z_j)
     vt    vt·mean_{a<b} [ |var(H_a) − var(H_b)| + |mean(H_a) − mean(H_b)| ]   (whole matrices)
     bm    bm·[InfoNCE(M_U[u], C_U[u]; τ_bm) + InfoNCE(M_I[i], C_I[i]; τ_bm)]
     um    um·[InfoNCE(Ĥ_U[u], M_U[u]; τ_um) + Noise(M_U)[u] + Noise(Ĥ_U)[u]]
     reg2  reg2·½‖Ĥ_I[i]‖²_F / B

   ``Noise(X)[u] = InfoNCE(X'[u], X''[u]; τ_um)`` with ``X', X''`` two views of the whole user
   matrix ``X`` from :func:`prismrec.nn.perturb` (``ε = 0.1``, ``fixed``).

Defaults: the common settings of the reference plus its **Baby** row. The reference's other
per-dataset rows (``n_ii_layers``, ``bm_tau``, ``um_weight``, ``um_tau``, ``vt_weight``):

| Dataset     | L_ii | τ_bm | um   | τ_um | vt    |
|-------------|------|------|------|------|-------|
| Baby        | 2    | 0.4  | 0.01 | 0.1  | 0.1   |
| Sports      | 1    | 0.2  | 0.01 | 0.1  | 0.01  |
| Clothing    | 1    | 0.2  | 0.1  | 0.2  | 0.001 |
| Electronics | 1    | 0.2  | 0.1  | 0.2  | 0.1   |

GUME needs at least two modalities (its links and its VT term compare modalities); with more
than two, ``B_II`` intersects all neighbour sets and VT averages over the modality pairs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import scipy.sparse as sp
import torch
from torch import nn

from prismrec.graph import bipartite_adjacency, intersection_links
from prismrec.losses import bpr_loss, half_sq, infonce, l2_reg
from prismrec.models import register
from prismrec.models.mgcn import MGCN
from prismrec.nn import lightgcn, perturb
from prismrec.recommender import Output


@dataclass
class GUMETerms:
    """GUME's loss terms beyond MGCN's (``vt``, ``um``, ``reg2``) and its noise views; shared by
    ``GUMEConfig`` and EGRA's ``backbone="gume"``."""

    reg2_weight: float = 0.1
    """``reg2``, weight of ``½‖Ĥ_I[i]‖² / B`` on the extended item rows."""
    vt_weight: float = 0.1
    """``vt``, weight of the modality mean/variance gap (Baby 0.1; Sports 0.01; Clothing 0.001)."""
    um_weight: float = 0.01
    """``um``, weight of the user-modality terms (Baby, Sports 0.01; Clothing, Electronics 0.1)."""
    um_tau: float = 0.1
    """``τ_um`` (Baby, Sports 0.1; Clothing, Electronics 0.2)."""
    noise_eps: float = 0.1
    """``ε`` of the noise views (2.12)."""
    noise_mode: Literal["fixed", "modulus", "relative", "inverse"] = "fixed"
    """Noise magnitude rule (2.12); GUME's is ``fixed``."""


@dataclass
class GUMEConfig(GUMETerms):
    modalities: list[str] | None = None
    """Feature names used (at least two), in order; ``None`` = every modality of the dataset."""
    embedding_size: int = 64
    """``d``, width of the ID embeddings and of every view."""
    n_ui_layers: int = 3
    """``L_ui``, LightGCN depth on ``Â⁺`` (behaviour and extended modality branches)."""
    n_ii_layers: int = 2
    """``L_ii``, propagation steps on each ``Ŝ_m`` (Baby 2; Sports, Clothing, Electronics 1)."""
    knn_k: int = 10
    """``k`` of the modality kNN graphs (self included)."""
    gamma: float = 1.0
    """``γ``, weight of the item-item block ``B_II`` in ``A⁺`` (0 = plain ``Â``)."""
    reg_weight: float = 1e-5
    """``reg1``, weight of the batch L2 term on ``z_u, z_i, z_j``."""
    reg_form: Literal["half_sq", "emb_norm"] = "half_sq"
    """L2 form of ``reg`` (2.10); the reference uses ``half_sq``."""
    bm_weight: float = 0.01
    """``bm``, weight of the behaviour-modality InfoNCE."""
    bm_tau: float = 0.4
    """``τ_bm`` (Baby 0.4; others 0.2)."""
    train_features: bool = True
    """Fine-tune the raw feature matrices (reference: True); False keeps them frozen."""


@register
class GUME(MGCN):
    """GUME; ``out.aux``: ``behavior`` ``C``, ``modality`` ``M``, ``explicit`` ``H`` (``K x N x d``)
    and, in training mode only, ``extended`` ``Ĥ`` (all users first)."""

    name = "gume"
    Config = GUMEConfig
    train_defaults = {"lr_decay": 0.96, "lr_decay_epochs": 50}
    min_modalities = 2

    def __init__(self, dataset, config: GUMEConfig) -> None:
        super().__init__(dataset, config)  # graphs (via behavior_graph), ID tables, purifiers, fuser
        # 5. One learnable user table E_U^(m) per modality for the extended modality branch.
        self.extended_user_emb = nn.ParameterList(
            nn.Parameter(torch.empty(self.n_users, config.embedding_size)) for _ in self.modalities
        )
        for table in self.extended_user_emb:
            nn.init.xavier_uniform_(table)
        # Noise views draw from their own generator, seeded from torch's global RNG after every
        # parameter is initialised: one seed fixes the run and the init is unchanged.
        self._noise_seed = int(torch.randint(0, 2**62, ()).item())
        self._noise_generator: torch.Generator | None = None

    def behavior_graph(self, dataset, knn: list[sp.csr_matrix]) -> sp.csr_matrix:
        """1. ``Â⁺`` with ``B_II`` = the intersection of every modality's kNN neighbour sets."""
        links = knn[0]
        for other in knn[1:]:
            links = intersection_links(links, other)  # binary, directed, no self-links
        self.n_item_links = int(links.nnz)
        return bipartite_adjacency(dataset.train, links, gamma=self.config.gamma)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for table in getattr(self, "extended_user_emb", ()):
            nn.init.xavier_uniform_(table)

    def forward(self) -> Output:
        c = self.behavior_view()                                 # 3. C on Â⁺
        h = self.modality_views()                                # 4. H_m, users via R̂⁺
        m = self.fuser(h, c)                                     # 6. M = fuse(H | C)
        z = c + m
        aux = {"behavior": c, "modality": m, "explicit": h}
        if self.training:  # Ĥ only feeds the loss; scoring uses Z = C + M
            aux["extended"] = self.extended_view(h)
        return Output(z[: self.n_users], z[self.n_users :], aux)

    def extended_view(self, explicit: torch.Tensor) -> torch.Tensor:
        """5. ``Ĥ = mean_m LGN(Â⁺, [E_U^(m); H_m^I], L_ui)`` (``N x d``)."""
        items = explicit[:, self.n_users :]
        branches = [
            lightgcn(self.adjacency, torch.cat([users, items[k]]), self.config.n_ui_layers)
            for k, users in enumerate(self.extended_user_emb)
        ]
        return torch.stack(branches).mean(dim=0)

    # ------------------------------------------------------------------------------------ loss
    @staticmethod
    def vt_gap(explicit: torch.Tensor) -> torch.Tensor:
        """``mean_{a<b} |var(H_a) − var(H_b)| + |mean(H_a) − mean(H_b)|`` over whole matrices."""
        var = explicit.flatten(1).var(dim=1)  # unbiased, as torch.var in the reference
        mean = explicit.flatten(1).mean(dim=1)
        gaps = [
            (var[a] - var[b]).abs() + (mean[a] - mean[b]).abs()
            for a, b in itertools.combinations(range(explicit.shape[0]), 2)
        ]
        return torch.stack(gaps).mean()

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._noise_generator is None or self._noise_generator.device != device:
            self._noise_generator = torch.Generator(device=device).manual_seed(self._noise_seed)
        return self._noise_generator

    def noise_nce(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``InfoNCE(X'[rows], X''[rows]; τ_um)`` for two noise views ``X', X''`` of ``x``."""
        cfg = self.config
        gen = self._generator(x.device)
        first, second = (perturb(x, cfg.noise_eps, cfg.noise_mode, generator=gen, rows=rows) for _ in range(2))
        return infonce(first, second, cfg.um_tau)

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        cfg = self.config
        u, i, _ = batch
        zu, zi, zj = out.bpr_rows(batch)
        c, m = out.aux["behavior"], out.aux["modality"]
        i_rows = i + self.n_users  # item rows of the N x d views
        return {
            "bpr": bpr_loss(zu, zi, zj),
            "reg": cfg.reg_weight * l2_reg(cfg.reg_form, zu, zi, zj),
            "bm": cfg.bm_weight
            * (infonce(m[u], c[u], cfg.bm_tau) + infonce(m[i_rows], c[i_rows], cfg.bm_tau)),
            **self.extension_terms(out, u, i_rows),
        }

    def extension_terms(self, out: Output, u: torch.Tensor, i_rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """GUME's ``vt``, ``um`` and ``reg2`` terms (what it adds to MGCN's losses)."""
        cfg = self.config
        m, ext = out.aux["modality"], out.aux["extended"]
        users_m, users_ext = m[: self.n_users], ext[: self.n_users]
        return {
            "vt": cfg.vt_weight * self.vt_gap(out.aux["explicit"]),
            "um": cfg.um_weight
            * (
                infonce(ext[u], m[u], cfg.um_tau)
                + self.noise_nce(users_m, u)
                + self.noise_nce(users_ext, u)
            ),
            "reg2": cfg.reg2_weight * half_sq(ext[i_rows]),
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, item_links={self.n_item_links}"
