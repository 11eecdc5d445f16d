"""GUME — Lin et al., CIKM'24 (arXiv 2407.12338); ALGORITHMS.md 3.6.

GUME is MGCN's multi-view encoder (:class:`prismrec.nn.MultiViewEncoder`) on an enhanced
user-item graph, plus an extended modality branch (:class:`prismrec.nn.ExtendedBranch`) with its
own user tables and extra alignment / uniformity losses.

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
   A row repeated in ``u`` or ``i`` is scored once in ``bm`` and in ``um``'s first InfoNCE, weighted
   by its count (:class:`prismrec.losses.CountedRows`); the noise terms draw noise for every row.

   Missing modalities (``impute="zero"``): a user takes modality ``m`` from its items that have it
   (``H_m^U = R̂⁺_m H_m^I`` and ``Ĥ_m`` on ``Â⁺_m``, both over those items; a user with none has no
   ``m`` view). ``vt``'s mean and variance of ``H_m`` run over the rows where ``m`` is present (a
   zero-filled item's ``H_m`` row is not a sample of the view); ``bm`` and ``um`` leave out a node
   with no modality at all (its ``M`` and ``Ĥ`` rows are 0).

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

from dataclasses import dataclass, field
from typing import Literal

import torch

from prismrec.data.features import fusion_presence
from prismrec.graph import UserItemGraph, knn_graph, shared_neighbor_links
from prismrec.losses import bpr_terms, counted_rows, half_sq, moment_gap, output_bpr_terms, rows_infonce
from prismrec.losses import user_modality_alignment
from prismrec.models import register
from prismrec.nn.content import multiview_content_hook
from prismrec.nn import ExtendedBranch, GUMETermsConfig, MultiViewConfig, MultiViewEncoder, NoiseSource
from prismrec.nn import check_multiview_config
from prismrec.nn.propagation import batch_node_rows
from prismrec.recommender import Output, Recommender


@dataclass
class GUMEConfig(GUMETermsConfig, MultiViewConfig):
    """GUME's settings (``modalities``: at least two). The reference publishes no search grid;
    the grids below are the values of its per-dataset rows (module docstring's table)."""

    n_ui_layers: int = 3
    """``L_ui``, LightGCN depth on ``Â⁺`` (behaviour and extended modality branches)."""
    n_ii_layers: int = field(default=2, metadata={"grid": [1, 2]})
    """``L_ii``, propagation steps on each ``Ŝ_m`` (Baby 2; Sports, Clothing, Electronics 1)."""
    gamma: float = 1.0
    """``γ``, weight of the item-item block ``B_II`` in ``A⁺`` (0 = plain ``Â``)."""
    reg_weight: float = 1e-5
    """``reg1``, weight of the batch L2 term on ``z_u, z_i, z_j``."""
    reg_form: Literal["half_sq", "emb_norm"] = "half_sq"
    """L2 form of ``reg`` (2.10); the reference uses ``half_sq``."""
    bm_weight: float = 0.01
    """``bm``, weight of the behaviour-modality InfoNCE."""
    bm_tau: float = field(default=0.4, metadata={"grid": [0.2, 0.4]})
    """``τ_bm`` (Baby 0.4; others 0.2)."""
    um_weight: float = field(default=0.01, metadata={"grid": [0.01, 0.1]})
    """``um``, weight of the user-modality terms (Baby, Sports 0.01; Clothing, Electronics 0.1)."""
    um_tau: float = field(default=0.1, metadata={"grid": [0.1, 0.2]})
    """``τ_um`` (Baby, Sports 0.1; Clothing, Electronics 0.2)."""
    vt_weight: float = field(default=0.1, metadata={"grid": [0.001, 0.01, 0.1]})
    """``vt``, weight of the modality mean/variance gap (Baby, Electronics 0.1; Sports 0.01;
    Clothing 0.001)."""


@register
class GUME(Recommender):
    """GUME; ``out.aux``: ``behavior`` ``C``, ``modality`` ``M``, ``modality_views`` ``H``
    (``K x N x d``) and, in training mode only, ``extended`` ``Ĥ`` (all users first)."""

    name = "gume"
    Config = GUMEConfig
    min_modalities = 2  # B_II: the links every modality's kNN graph shares
    # Cold items: the forward with the item's ID row imputed from its warm neighbours on S_m
    content_id_rows = "impute"
    content_item_embeddings = multiview_content_hook
    train_defaults = {"lr_decay": 0.96, "lr_decay_epochs": 50}

    @classmethod
    def check_settings(cls, config) -> None:
        check_multiview_config(config, bm_tau=config.bm_tau, um_tau=config.um_tau)
        # γ < 0 gave items negative degrees in Â⁺, taken as 0 (cut off); ε < 0 was named 'eps'
        cls.require_at_least(config, gamma=0, noise_eps=0)

    def __init__(self, dataset, config: GUMEConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.modalities = self.used_modalities(config, dataset)
        d = config.embedding_size
        # 1. Ŝ_m; B_II = links shared by every modality's kNN graph; Â⁺ (R̂⁺ its user-item block).
        knn = [knn_graph(dataset.features[m], config.knn_k) for m in self.modalities]
        links = shared_neighbor_links(knn)
        self.n_item_links = int(links.nnz)
        # 2-4, 6. ID tables, purifiers and fuser on Â⁺ and the Ŝ_m; 5. the extended branch. When
        # some modality rows were zero-filled (impute="zero") both weigh only a node's present
        # modalities, and users take modality m from their items that have it (Â⁺_m).
        self.encoder = MultiViewEncoder(
            UserItemGraph(dataset.train, links, config.gamma), knn, [dataset.features[m] for m in self.modalities],
            self.n_users, d, config.n_ui_layers, config.n_ii_layers, config.train_features,
            present_items=fusion_presence(dataset, self.modalities),
        )
        self.extended = ExtendedBranch(self.n_users, len(self.modalities), d, config.n_ui_layers)
        self.reset_parameters()
        self.noise = NoiseSource(config.noise_eps, config.noise_mode)  # seeded after the init

    def forward(self) -> Output:
        c = self.encoder.behavior_view()                         # 3. C on Â⁺
        h = self.encoder.modality_views()                        # 4. H_m, users via R̂⁺
        m = self.encoder.fuse(h, c)                              # 6. M = fuse(H | C)
        z = c + m
        aux = {"behavior": c, "modality": m, "modality_views": h}
        if self.training:  # 5. Ĥ only feeds the loss; scoring uses Z = C + M
            aux["extended"] = self.extended(self.encoder.modality_adjacencies, h, self.encoder.present)
        return Output.of_nodes(z, self.n_users, aux)

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        cfg, n_u = self.config, self.n_users
        u, i, _ = batch
        c, m, ext = out.aux["behavior"], out.aux["modality"], out.aux["extended"]
        i_rows = i + n_u  # item rows of the N x d views
        counted = (counted_rows(u), counted_rows(i_rows))  # each distinct row once, with its count
        return {
            **output_bpr_terms(out, batch, cfg.reg_weight, cfg.reg_form),
            "bm": cfg.bm_weight * rows_infonce(m, c, counted, cfg.bm_tau, self.encoder.fused_presence()),
            "vt": cfg.vt_weight * moment_gap(out.aux["modality_views"], self.encoder.presence()),
            "um": cfg.um_weight * user_modality_alignment(ext[:n_u], m[:n_u], u, cfg.um_tau, self.noise,
                                                          self.encoder.fused_presence()),
            "reg2": cfg.reg2_weight * half_sq(ext[i_rows]),
        }

    def batch_loss(self, batch) -> dict[str, torch.Tensor]:
        # vt reads the whole H (computed in full); every other term reads rows u, i, j of Z, M, C
        # and Ĥ: C's and Ĥ's last layers and the per-node fuser run for the batch's distinct rows
        # only. Same terms and gradients as loss(batch, forward()); the um noise is drawn for the
        # same rows in the same order (its "fixed" magnitude needs no statistic of all users).
        cfg = self.config
        rows, (at_u, at_i, at_j) = batch_node_rows(batch, self.n_users, self.n_items)
        c = self.encoder.behavior_rows(rows)                                  # C[rows]
        h = self.encoder.modality_views()                                     # H (all of it: vt)
        m = self.encoder.fuse(h.index_select(1, torch.from_numpy(rows).to(h.device)), c, rows)  # M[rows]
        ext = self.extended.rows(self.encoder.modality_adjacencies, h, rows, self.encoder.presence(rows))  # Ĥ[rows]
        z = c + m
        zij = z.index_select(0, torch.cat([at_i, at_j]))  # [z_i; z_j]
        return {
            **bpr_terms(z.index_select(0, at_u), zij, cfg.reg_weight, cfg.reg_form),
            "bm": cfg.bm_weight * rows_infonce(m, c, (counted_rows(at_u), counted_rows(at_i)), cfg.bm_tau,
                                               self.encoder.fused_presence(rows)),
            "vt": cfg.vt_weight * moment_gap(h, self.encoder.presence()),
            "um": cfg.um_weight * user_modality_alignment(ext, m, at_u, cfg.um_tau, self.noise,
                                                          self.encoder.fused_presence(rows)),
            "reg2": cfg.reg2_weight * half_sq(ext.index_select(0, at_i)),
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, modalities={self.modalities}, item_links={self.n_item_links}"
