"""DRAGON — Zhou et al., "Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal
Recommendation" (arXiv 2301.12097; official hongyurain/DRAGON, MMRec ``dragon.py``).

A **heterogeneous** user–item graph learns dual (user and item) representations per modality;
two **homogeneous** graphs — a user–user co-occurrence graph and a modality item–item kNN graph
— then enhance the users and the items.

1. Per modality ``m`` (``F_m`` the raw, frozen features), user preference table ``P_m`` and a
   two-layer encoder; rows L2-normalised, then ``L_ui`` propagation steps over ``Â`` (2.1),
   **summed** (not averaged; :class:`prismrec.nn.modality_gcn.ModalityGraphEncoder`)::

       X_m  = W_2 leaky_relu(F_m W_1 + b_1) + b_2          d_m -> 4d -> d
       G⁰_m = nrm([P_m; X_m])                              N x d, users first
       G_m  = Σ_{l=0..L_ui} Â^l G⁰_m                       (reference: G⁰ + ÂG⁰ + Â²G⁰)

2. Modality fusion (``construction``), with per-user modality weights ``w_u ∈ R^M``
   (initialised ``softmax(xavier_normal)``, then free)::

       cat:           U = [w_u1 G_1^U ‖ ... ‖ w_uM G_M^U],   I = [G_1^I ‖ ... ‖ G_M^I]   (M·d)
       weighted_sum:  U = Σ_m w_um G_m^U,                    I = Σ_m G_m^I               (d)
       weighted_max:  U = max_m w_um G_m^U,                  I = Σ_m G_m^I               (d)

3. Homogeneous graphs. Items: ``S = Σ_m α_m Ŝ_m^bin`` (2.3: binary kNN of the raw features, self
   included), frozen; ``α`` by name for an image + text pair (image 0.1, text 0.9: reference
   ``mm_image_weight``; :mod:`prismrec.nn.roles`), else ``mm_weights``. Users: ``W_UU``, each
   user's top-``k_u`` co-occurring users (common training items, 2.4 on the users) aggregated
   with ``softmax`` of the counts; a user with fewer than ``k_u`` neighbours has its list padded
   by random repeats, drawn afresh each epoch (reference)::

       Z_U = U + W_UU U,          Z_I = I + S^{L_ii} I

   Evaluation uses the latest epoch's ``W_UU`` (as the reference); ``user_pad = "none"`` makes
   it the same every epoch.

4. Loss (reference): ``L = −mean log₂ σ(z_u·z_i − z_u·z_j)`` (base-2 BPR) plus
   ``λ·(Σ_m mean(P_m[u]²) + mean(w²))`` (``mean(w²)`` for ``cat`` and ``weighted_sum`` only).

5. Content path (cold items, :meth:`DRAGON.content_item_embeddings`): DRAGON has no item ID
   table (its item side comes from the features ``X_m`` and the frozen feature graph ``S``). A cold
   item has no edge in ``Â``, so ``G_m^I[c] = nrm(X_m[c])`` (the ``l = 0`` term) and ``z_c = I_c +
   (S^{L_ii} I)_c``: the forward's rows are content-only, returned as they are (no ``--id-rows``).

Missing modalities (a dataset loaded with ``impute="zero"``): modality ``m`` is carried only
through the items that have it. Step 1 propagates over ``Â_m``, the user–item graph without the
items lacking ``m``, normalised by the same rule (a user's ``G_m^U`` is its ``P_m`` plus its items
having ``m``); ``Ŝ_m^bin`` is the kNN graph among the items having ``m`` (a zero-filled row would
take ``k`` tied neighbours at weight ``1/k``), and ``S`` mixes each item's row over its present
modalities (:func:`prismrec.nn.fusion.present_mix`). An item lacking ``m`` and a user with no
training item having ``m`` have no modality-``m`` view: in step 2 ``cat`` zeroes its block, the
sums (and ``weighted_max``'s max) run over the present ones, the sums renormalised
(:mod:`prismrec.nn.fusion`). Step 3's homogeneous graphs then fill such a block from the
neighbours' real ones (``W_UU U``, ``S^{L_ii} I``): DRAGON's own neighbour imputation, reading no
zero-filled row. Under ``mean``/``neighbour`` imputation the filled rows take part.

Reference code details left out because they have no effect there: the modality-feature
embedding copies and ``image_trs``/``text_trs`` (built, never used in the forward), the dropped
edge lists ``edge_index_dropv/t`` (passed to the GCN but unused), ``MLP_v``/``MLP_t``/``MLP_user``
and ``weight_i`` (unused by ``cat``; ``weighted_sum`` only regularises it). For ``weighted_sum``
and ``weighted_max`` the reference adds the modality tensors in place (``representation +=
t_rep`` aliases ``v_rep``), so its users see ``v + t`` in the first slot; ours implements the
stated sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from prismrec.checks import check_choices
from prismrec.data.features import fusion_presence
from prismrec.graph import SparseOperator, bipartite_adjacency, cooccurrence_graph
from prismrec.graph.neighbour_sampling import softmax_neighbour_graph
from prismrec.losses import added, bpr_loss
from prismrec.models import register
from prismrec.nn.fusion import present_max, present_mean, present_mix
from prismrec.nn.modality_gcn import ModalityGraphEncoder
from prismrec.nn.present_graphs import modality_operators, present_knn_graphs, present_nodes
from prismrec.nn.presence import split_nodes, zero_missing
from prismrec.nn.propagation import propagate
from prismrec.nn.roles import role_weights
from prismrec.recommender import Output, Recommender

REFERENCE_IMAGE_WEIGHT = 0.1
"""``α`` of the image-like modality of an image + text pair (reference ``mm_image_weight``)."""


@dataclass
class DRAGONConfig:
    modalities: list[str] | None = None
    """Modalities used; ``None`` = all present, canonical order. Their graph weights go by name
    (``mm_weights``), never by position."""
    embedding_size: int = 64
    """``d``: preference tables and encoded features (reference ``dim_latent = 64``); the final
    representations have ``M·d`` columns with ``construction = "cat"``."""
    hidden_size: int = 256
    """Width of the encoder's hidden layer (reference ``4·dim_latent``)."""
    n_ui_layers: int = 2
    """``L_ui``: propagation steps over the user–item graph (reference: two ``conv_embed_1``)."""
    n_ii_layers: int = 1
    """``L_ii``: propagation steps over the item–item graph ``S`` (reference ``n_mm_layers``)."""
    knn_k: int = 10
    """``k`` neighbours per item in each modality's binary kNN graph (self included)."""
    mm_weights: list[float] | None = None
    """``α_m`` mixing the modality kNN graphs, in ``modalities`` order; non-negative, summing to 1.
    ``None``: 0.1 for the image-like and 0.9 for the text-like modality of an image + text pair
    (reference ``mm_image_weight = 0.1``), 1 for a single modality; required for any other
    modalities (e.g. ``[0.5, 0.5]`` for text + audio)."""
    user_knn_k: int = 40
    """``k_u``: co-occurring users aggregated per user (reference ``self.k = 40``); at most the number
    of users (the default is cut to it on a smaller dataset)."""
    user_pad: Literal["resample", "none"] = "resample"
    """Users with fewer than ``k_u`` neighbours: ``resample`` pads the list with random repeats
    drawn each epoch (reference), ``none`` uses the neighbours as they are (deterministic)."""
    user_aggr: Literal["softmax", "mean"] = "softmax"
    """Weights of the user–user graph: ``softmax`` of co-occurrence counts (reference) or mean."""
    construction: Literal["cat", "weighted_sum", "weighted_max"] = "cat"
    """Modality fusion of step 2 (reference default ``cat``)."""
    reg_weight: float = field(default=1e-3, metadata={"grid": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]})
    """``λ`` of the preference/weight L2 term; Baby 1e-3 (official README); MMRec grid shown.
    The learning rate (train ``lr``, default 1e-4 here) is searched over {1e-1, ..., 1e-5}."""
    bpr_log2: bool = True
    """Reference BPR uses ``log₂`` (the natural-log BPR divided by ``ln 2``); ``False``: ``ln``."""


@register
class DRAGON(Recommender):
    name = "dragon"
    Config = DRAGONConfig
    content_id_rows = None  # no item ID table
    train_defaults = {"lr": 1e-4}  # official README, Baby (and Sports)

    @classmethod
    def check_settings(cls, config) -> None:
        cls.require_at_least(config, embedding_size=1, hidden_size=1, n_ui_layers=0, n_ii_layers=0, knn_k=1,
                             user_knn_k=1)
        check_choices(config, cls.name)

    @classmethod
    def check_dataset(cls, config, dataset) -> None:
        super().check_dataset(config, dataset)
        # A k_u one sets above the users was cut to their number, silently; the reference's 40 on a
        # smaller dataset still is (every user is then a neighbour).
        if config.user_knn_k > dataset.n_users and config.user_knn_k != DRAGONConfig.user_knn_k:
            raise ValueError(f"user_knn_k={config.user_knn_k} exceeds the number of users ({dataset.n_users})")
        role_weights(cls.name, cls.used_modalities(config, dataset), config.mm_weights, REFERENCE_IMAGE_WEIGHT)

    def __init__(self, dataset, config: DRAGONConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.modalities = self.used_modalities(config, dataset)
        self.mm_weights = role_weights(self.name, self.modalities, config.mm_weights, REFERENCE_IMAGE_WEIGHT)
        d = config.embedding_size

        # Heterogeneous graph Â (2.1); Â_m over the items having m where some item lacks it.
        present_items = fusion_presence(dataset, self.modalities)  # n_I x M, or None without a mask
        self.adjacency = SparseOperator(bipartite_adjacency(dataset.train), symmetric=True)
        self.adjacencies = modality_operators(bipartite_adjacency, dataset.train, present_items, self.adjacency,
                                              len(self.modalities))
        # Item–item graph S = Σ_m α_m Ŝ_m^bin of the raw features, frozen (2.3).
        graphs = present_knn_graphs([dataset.features[m] for m in self.modalities],
                                    [config.knn_k] * len(self.modalities), present_items, weight="binary")
        self.item_graph = SparseOperator(present_mix(graphs, self.mm_weights, present_items))
        # User co-occurrence counts, top-k_u per user (2.4 on Rᵀ); W_UU is drawn from them.
        self.user_k = min(config.user_knn_k, self.n_users)
        self.user_scores = cooccurrence_graph(dataset.train.T.tocsr(), self.user_k, score="count", weight="score",
                                              normalize=False)
        self.user_graph: SparseOperator | None = None  # W_UU of the current epoch
        self.padding_seed = int(torch.initial_seed())  # padding draws: one stream per epoch

        self.encoders = nn.ModuleDict({m: ModalityGraphEncoder(dataset.features[m], self.n_users, d, config.hidden_size)
                                       for m in self.modalities})
        self.user_modality_weights = nn.Parameter(torch.zeros(self.n_users, len(self.modalities)))  # w
        self.register_buffer("present", present_nodes(dataset.train, present_items), persistent=False)  # M x N
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Encoders as the reference (``P_m`` Xavier-normal, linear layers PyTorch's default), then
        ``w = softmax(xavier_normal(n_U x M x 1))`` over modalities."""
        super().reset_parameters()
        n, m = self.user_modality_weights.shape
        with torch.no_grad():
            std = math.sqrt(2.0 / (n + m))  # Xavier-normal of an n x M x 1 tensor
            self.user_modality_weights.copy_(torch.softmax(torch.randn(n, m) * std, dim=1))

    def on_epoch_start(self, epoch: int) -> None:
        """Draw this epoch's user–user graph ``W_UU`` (the padding of short neighbour lists)."""
        rng = np.random.default_rng([self.padding_seed, int(epoch)])
        graph = softmax_neighbour_graph(
            self.user_scores, self.user_k, pad=self.config.user_pad, aggr=self.config.user_aggr, rng=rng
        )
        self.user_graph = SparseOperator(graph, self.device, symmetric=False)

    def fuse(self, reps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 2: user and item representations ``U``, ``I`` from the modality views ``G_m``; a
        node's missing modality (``present``) has no block in ``cat`` and no part in the others."""
        views = torch.stack(reps)                                                 # M x N x d
        users = self.user_modality_weights.T.unsqueeze(-1) * views[:, : self.n_users]  # w_um G_m^U
        items = views[:, self.n_users :]                                          # G_m^I
        present_users, present_items = split_nodes(self.present, self.n_users)
        if self.config.construction == "cat":
            users, items = zero_missing(users, present_users), zero_missing(items, present_items)
            return torch.cat(list(users), dim=1), torch.cat(list(items), dim=1)
        items = present_mean(items, present_items, "sum")                         # Σ_m G_m^I
        if self.config.construction == "weighted_sum":
            return present_mean(users, present_users, "sum"), items               # Σ_m w_um G_m^U
        return present_max(users, present_users), items                           # max_m w_um G_m^U

    def forward(self) -> Output:
        if self.user_graph is None:  # a forward before any on_epoch_start
            self.on_epoch_start(0)
        reps = [enc(graph, self.config.n_ui_layers)                       # G_m
                for enc, graph in zip(self.encoders.values(), self.adjacencies)]
        u, i = self.fuse(reps)                                            # U, I
        z_u = u + self.user_graph @ u                                     # Z_U = U + W_UU U
        z_i = i + propagate(self.item_graph, i, self.config.n_ii_layers)  # Z_I = I + S^{L_ii} I
        aux = {} if self.training else {f"modality_{m}": g for m, g in zip(self.encoders, reps)}  # G_m
        return Output(z_u, z_i, aux)

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        u, _, _ = batch
        bpr = bpr_loss(*out.bpr_rows(batch)) / (math.log(2.0) if self.config.bpr_log2 else 1.0)  # log₂ or ln
        reg = added(enc.preference(u).square().mean() for enc in self.encoders.values())
        if self.config.construction in ("cat", "weighted_sum"):
            reg = reg + self.user_modality_weights.square().mean()
        return {"bpr": bpr, "reg": self.config.reg_weight * reg}

    def content_item_embeddings(self, items, out, id_rows=None):
        """Step 5: the eval forward's rows of ``items``, computed from features only."""
        return out.item.index_select(0, items.to(out.item.device)).clone()
