"""DA-MRS — Xv et al., KDD'24 (arXiv 2406.12501), "Improving Multi-modal Recommender Systems by
Denoising and Aligning Multi-modal Content and User Feedback"; the **LightGCN backbone** variant
the paper reports as "DA-MRS+LightGCN" (official XMUDM/DA-MRS ``src/models/lightgcn.py``).

Views ``v ∈ V`` = the item modalities ``m`` plus one behaviour view ``b``.

1. Denoised item–item graphs (built once, frozen):

   - modality ``m`` (DIIG): a pair ``(i, j)`` is a candidate only if *every* modality finds it at
     least averagely similar, ``cos_m'(i, j) >= mean(cos_m')`` for all ``m'``; row ``i`` keeps its
     top-``k`` candidates by ``cos_m`` (``knn_k``), binary, ``Ŝ_m = D^-1/2 B_m D^-1/2`` with row
     degrees (:func:`prismrec.graph.consistent.consistent_knn_graphs`);
   - behaviour ``b``: ``O = RᵀR`` co-interaction counts, off-diagonal entries ``>= 2`` kept, the
     top-``k_b`` per row (``behavior_k``) plus a self loop, binary, ``Ŝ_b = D^-1/2 B_b D^-1/2``.

2. Forward::

       [Y_U; Y_I] = LGN(Â, [E_U; E_I], L_ui)                 LightGCN layer mean (2.7)
       h_v        = Ŝ_v^{L_mm} E_I                            for every view v ∈ V
       h          = 1/|V| Σ_v h_v                             (over an item's present views)
       Z_U = Y_U,   Z_I = Y_I + h

3. Denoised feedback (BPR re-weighting, weights without gradient). For a triple ``(u, i, j)``
   and ``p_v(u, x) = σ(y_u · nrm(h_v[x]))``::

       w⁺ = clip(mean_v p_v(u,i) · exp(-var_v p_v(u,i))², 0, 1)        (var: unbiased, over V)
       w⁻ = clip(max_v p_v(u,i) - p̄⁻, 0, 1) · 1[mean_v p_v(u,i) < p̄⁻], p̄⁻ = mean over v and the
            batch of p_v(u, j)
       L_BPR = -mean_b [ w⁺ log σ(ŷ_ui - ŷ_uj) + w⁻ log σ(ŷ_uj - ŷ_ui) ]       ŷ = z_u · z_i

   (``w⁻`` flips a positive that every view scores below the average negative.)

4. Alignment, over the batch's distinct users ``U_B`` and items ``I_B`` (positives and negatives):

   - neighbour discrimination (the paper's alignment guided by graded item relations, AI), per
     view ``x``: ``q_v(i, ·) = softmax_j cos(h_v[i], h_v[j])``;
     the multi-view positives ``P_x(i)`` = top-``K`` of ``Σ_v q_v(i, ·) + q_x(i, ·)``, the
     single-view positives ``Q_x(i)`` = top-``K`` of ``q_x(i, ·)`` outside ``P_x(i)`` (no gradient
     through the choice); with ``e(i, j) = exp(cos(h_x[i], h_x[j]) / τ)`` and ``T = Σ_j e(i, j)``
     over all items::

         L_ND^x = mean_i [ -log(Σ_{P_x(i)} e / T + ε) - log(Σ_{Q_x(i)} e / (T - Σ_{P_x(i)} e) + ε) ]
         L_ND   = 1/|V| Σ_x L_ND^x                                       ε = 1e-9

   - preference KL between behaviour and content (alignment guided by user preference, AU):
     ``a_ui = y_u · nrm(Y_I[i])``, ``c_ui = y_u · nrm(h[i])`` for ``u ∈ U_B, i ∈ I_B``, Bernoulli
     ``p = σ(a)``, ``q = σ(c)``::

         L_KL = mean_ui [ KL(p || q) + KL(q || p) ] = mean_ui (σ(a) - σ(c)) (a - c)

     (the symmetric Bernoulli KL collapses to this exactly: ``log σ(a) - log σ(-a) = a``; it is
     computed in that form, which cannot overflow).

5. ``L = L_BPR + λ_ND L_ND + λ_KL L_KL``; no L2 term (the reference reads ``reg_weight`` but never
   uses it). Terms logged as ``bpr``, ``neighbor``, ``kl`` (weights applied).

Missing modalities (``impute="zero"``): ``h`` averages only the views an item has (the
behaviour view always; :func:`prismrec.nn.fusion.present_mean`), since a zero-filled feature
row's kNN neighbours are mere ties; without zero-filled rows nothing changes.

The reference builds the modality graphs from dense ``n x n`` similarities and a per-item Python
loop; ours are blocked (memory ``O(n·k)`` besides one block). With three views the reference's
pseudo-label score ``q_1 + q_2 + 2 q_x`` is the ``Σ_v q_v + q_x`` above, which generalises it to any
number of modalities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from prismrec.graph import SparseOperator, bipartite_adjacency, knn_graph
from prismrec.graph.cooccurrence import behavior_item_graph
from prismrec.graph.consistent import consistent_knn_graphs
from prismrec.losses import bpr_loss, denoised_bpr, neighbour_discrimination, symmetric_bernoulli_kl
from prismrec.models import register
from prismrec.nn import IdEmbedding, lightgcn
from prismrec.nn.fusion import present_mean
from prismrec.nn.presence import view_presence
from prismrec.nn.propagation import propagate
from prismrec.recommender import Output, Recommender


@dataclass
class DAMRSConfig:
    """DA-MRS (LightGCN backbone) settings; defaults are the official code's for Baby
    (``src/configs/model/LightGCN.yaml``), grids the values listed there."""

    modalities: list[str] | None = None
    """Modalities with a denoised item–item graph (one view each); ``None`` = all present."""
    embedding_size: int = 64
    """``d``, the ID embedding width."""
    n_ui_layers: int = field(default=2, metadata={"grid": [1, 2, 3]})
    """``L_ui``: LightGCN layers on the user–item graph (Baby: 2)."""
    n_mm_layers: int = field(default=1, metadata={"grid": [1, 2]})
    """``L_mm``: propagation steps of the item ID embeddings over each item–item graph."""
    knn_k: int = field(default=10, metadata={"grid": [3, 5, 10, 15, 20]})
    """``k``: neighbours per item in each modality graph (at most; fewer consistent candidates)."""
    behavior_k: int = 2
    """``k_b``: co-interaction neighbours per item in the behaviour graph (the official README
    builds Baby's with ``build_iib_graph.py --topk=2``; the script's own default is 10)."""
    min_cooccurrence: int = 2
    """Least number of shared training users for a behaviour edge (reference: 2)."""
    neighbor_weight: float = field(default=1e-3, metadata={"grid": [0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0]})
    """``λ_ND``, weight of the neighbour discrimination (AI; Baby: 0.001); 0 switches it off."""
    kl_weight: float = field(default=1.0, metadata={"grid": [0.0, 0.01, 0.1, 1.0, 10.0]})
    """``λ_KL``, weight of the preference KL (AU; Baby: 1); 0 switches it off."""
    n_pseudo_positives: int = 10
    """``K``: multi-view and single-view pseudo-positive neighbours per item (reference: 10 on
    Amazon, ``knn_k`` in its TikTok copy)."""
    temperature: float = 0.2
    """``τ`` of the neighbour discrimination."""
    denoise_graphs: bool = True
    """Modality graphs restricted to cross-modally consistent pairs (DIIG); ``False``: each
    modality's plain binary top-``k`` graph (self included), the paper's IIG ablation."""
    behavior_graph: bool = True
    """Use the behaviour item–item graph as a view; ``False`` leaves the modality views only."""
    denoise_feedback: bool = True
    """Re-weight the BPR term by ``w⁺``/``w⁻`` (the denoised BPR); ``False``: plain BPR (``w⁺=1, w⁻=0``,
    as the reference's TikTok copy hard-codes)."""


@register
class DAMRS(Recommender):
    name = "damrs"
    Config = DAMRSConfig
    item_sizes = ("knn_k", "behavior_k")
    # The official run settings (overall.yaml): batch 4096, at most 500 epochs, patience 25.
    train_defaults = {"batch_size": 4096, "epochs": 500, "patience": 25}

    @classmethod
    def check_settings(cls, config) -> None:
        cls.require_at_least(
            config, embedding_size=1, n_ui_layers=0, n_mm_layers=0, knn_k=1, behavior_k=1,
            min_cooccurrence=1, n_pseudo_positives=1, neighbor_weight=0.0, kl_weight=0.0,
        )
        if not config.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {config.temperature}")

    @classmethod
    def check_dataset(cls, config, dataset) -> None:
        super().check_dataset(config, dataset)
        if config.neighbor_weight > 0 and 2 * config.n_pseudo_positives > dataset.n_items:
            raise ValueError(
                f"n_pseudo_positives={config.n_pseudo_positives} needs at least twice as many items "
                f"({dataset.n_items} here): lower it or set neighbor_weight=0"
            )
        modalities = cls.used_modalities(config, dataset)
        if config.denoise_feedback and len(modalities) + int(config.behavior_graph) < 2:
            raise ValueError(
                "denoise_feedback weighs feedback by the variance across views and needs at least two "
                f"(modalities {modalities}, behavior_graph={config.behavior_graph}): add a modality, "
                "set behavior_graph=true or denoise_feedback=false"
            )

    def __init__(self, dataset, config: DAMRSConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.modalities = self.used_modalities(config, dataset)

        # Ŝ_m (DIIG, or plain kNN for the IIG ablation) and Ŝ_b, frozen.
        features = [dataset.features[m] for m in self.modalities]
        if config.denoise_graphs:
            graphs = consistent_knn_graphs(features, config.knn_k)
        else:
            graphs = [knn_graph(f, config.knn_k, weight="binary") for f in features]
        if config.behavior_graph:
            graphs.append(behavior_item_graph(dataset.train, config.behavior_k, config.min_cooccurrence))
        self.view_names = list(self.modalities) + (["behavior"] if config.behavior_graph else [])
        self.item_graphs = torch.nn.ModuleList(SparseOperator(g) for g in graphs)
        present = view_presence(dataset, self.modalities, extra_views=int(config.behavior_graph))  # |V| x n_I
        self.register_buffer("present", present, persistent=False)  # the behaviour view (if any) always present
        self.adjacency = SparseOperator(bipartite_adjacency(dataset.train), symmetric=True)  # Â

        self.user_emb = IdEmbedding(self.n_users, config.embedding_size)  # E_U
        self.item_emb = IdEmbedding(self.n_items, config.embedding_size)  # E_I
        self.reset_parameters()

    def forward(self) -> Output:
        e_i = self.item_emb.weight
        y = lightgcn(self.adjacency, torch.cat([self.user_emb.weight, e_i]), self.config.n_ui_layers)
        views = torch.stack([propagate(graph, e_i, self.config.n_mm_layers) for graph in self.item_graphs])  # h_v
        h = present_mean(views, self.present)  # 1/|V| Σ_v h_v (over an item's present views)
        y_u, y_i = y.split([self.n_users, self.n_items])  # not two slices: one concatenation back, no zero fills
        out = Output(y_u, y_i + h)
        if self.training:  # the loss's views
            out.aux.update(cf_item=y_i, views=views, content=h)
        else:  # eval/export: behaviour and modality parts of Z (users first)
            out.aux.update(behavior=y, modality=torch.cat([h.new_zeros(self.n_users, h.shape[1]), h]))
        return out

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        u, i, j = batch
        cfg = self.config
        zu, zi, zj = out.bpr_rows(batch)
        views, y_i = out.aux["views"], out.aux["cf_item"]
        if cfg.denoise_feedback:
            w_pos, w_neg = self.feedback_weights(out.user.index_select(0, u), views, i, j)
            terms = {"bpr": denoised_bpr(zu, zi, zj, w_pos, w_neg)}
        else:
            terms = {"bpr": bpr_loss(zu, zi, zj)}
        users = torch.unique(u)  # U_B
        items = torch.unique(torch.cat([i, j]))  # I_B
        if cfg.neighbor_weight > 0:
            terms["neighbor"] = cfg.neighbor_weight * neighbour_discrimination(
                views, items, cfg.n_pseudo_positives, cfg.temperature)
        if cfg.kl_weight > 0:
            y_u = out.user.index_select(0, users)
            a = y_u @ F.normalize(y_i.index_select(0, items), dim=1).T  # behaviour preference logits
            c = y_u @ F.normalize(out.aux["content"].index_select(0, items), dim=1).T  # content's
            terms["kl"] = cfg.kl_weight * symmetric_bernoulli_kl(a, c)
        return terms

    @torch.no_grad()
    def feedback_weights(self, y_u, views, i, j) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w⁺, w⁻)`` of each triple (no gradient): agreement of the views on the positive."""
        p = torch.sigmoid((y_u * F.normalize(views[:, i], dim=-1)).sum(-1))  # |V| x B, p_v(u, i)
        n_mean = torch.sigmoid((y_u * F.normalize(views[:, j], dim=-1)).sum(-1)).mean()  # p̄⁻
        p_mean, p_var, p_max = p.mean(0), p.var(0), p.amax(0)
        w_pos = (p_mean * torch.exp(-p_var).pow(2)).clamp(0, 1)
        w_neg = ((p_max - n_mean) * (p_mean < n_mean)).clamp(0, 1)
        return w_pos, w_neg
