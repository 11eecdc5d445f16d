"""FREEDOM — Zhou & Shen, MM'23 (arXiv 2211.06924); ALGORITHMS.md 3.4.

"A tale of two graphs": a **frozen** item–item graph built once from raw modality features, and
a **denoised** user–item graph whose edges are pruned afresh every epoch.

1. Item–item graph (2.3), built once, never updated: per modality ``m`` the binary kNN graph of
   the raw features ``F_m`` (self included, ``k`` neighbours, ``Ŝ_m^bin = D^-1/2 B_m D^-1/2``,
   every kept entry ``1/k``), mixed with convex weights::

       S = Σ_m α_m Ŝ_m^bin          α = 0.1 image, 0.9 text — ``image_weight``, ``mm_weights``

   The weights go to modalities **by name** (:mod:`prismrec.nn.roles`): with an image-like
   and a text-like modality (``image``/``visual``, ``text``/``title``, in any order) the image
   one gets ``image_weight``, the text one the rest. Any other pair (lfm2k's text + audio,
   tiktok's image + audio) or more than two modalities has no reference weighting: ``mm_weights``
   must then be given (a :class:`~prismrec.errors.ConfigError` says so); one modality gets 1.
   Missing modalities (``impute="zero"``): an item's row weighs only the modalities it has
   (:func:`prismrec.nn.fusion.present_mix`; its zero-filled row's neighbours are mere ties).

2. Degree-sensitive edge pruning (2.6), redrawn in ``on_epoch_start``: keep
   ``⌊|E|·(1−ρ)⌋`` training edges drawn without replacement ``∝ 1/sqrt(d_u d_i)`` and rebuild the
   normalised adjacency ``Â_ρ`` from them. Training forwards use ``Â_ρ``; evaluation uses the
   full ``Â``.

3. Forward::

       h            = S^{L_ii} E_I                          item ID embeddings over S
       [Y_U; Y_I]   = LGN(Â_ρ or Â, [E_U; E_I], L_ui)         LightGCN layer mean (2.7)
       Z_U = Y_U,   Z_I = Y_I + h

   Auxiliaries of the eval-mode forward (``N x d``, users first; the loss needs none, so training
   forwards skip them): ``behavior = [Y_U; Y_I]`` and ``modality = [0; h]`` (the item–item view
   has no user rows), so ``Z = behavior + modality``.

4. Loss, with ``P_m = F_m W_m + b_m`` (``d_m -> d``, features fine-tuned in the reference)::

       L = L_BPR(z_u, z_i, z_j) + λ·Σ_m BPR(z_u, P_m[i], P_m[j])

   No L2 term. The modality terms are logged one per modality as ``mm_bpr_<modality>``.

5. Content path (cold items, :meth:`FREEDOM.content_item_embeddings`): the frozen graph ``S`` is
   built from the raw features alone, so it links a new item to trained ones. The item's ID row
   ``E_I[c]`` is imputed as the ``S``-weighted mean of its warm neighbours' rows, then the
   forward above computes ``z_c = Y_c + (S^{L_ii} E_I)_c`` (the paper does not treat cold items;
   the graph is its, the imputation our choice; ``--id-rows zero`` drops the ID row instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import nn

from prismrec.checks import require_fraction
from prismrec.data.features import fusion_presence
from prismrec.graph import SparseOperator, bipartite_adjacency, degree_sensitive_edge_sample, knn_graph
from prismrec.losses import bpr_loss
from prismrec.models import register
from prismrec.nn.roles import role_weights
from prismrec.nn import IdEmbedding, lightgcn
from prismrec.nn.content import content_forward_rows
from prismrec.nn.encoders import Projector
from prismrec.nn.fusion import present_mix
from prismrec.nn.propagation import propagate
from prismrec.recommender import Output, Recommender


@dataclass
class FREEDOMConfig:
    """FREEDOM's settings (ALGORITHMS.md 3.4); the drop ratio and modality-term weight carry their search grids."""

    modalities: list[str] | None = None
    """Modalities used (graphs and modality BPR terms); ``None`` = all present, canonical order.
    Their graph weights go by name (``image_weight``), never by position."""
    embedding_size: int = 64
    """``d``: ID embeddings and projected features (the reference's ``feat_embed_dim``) alike."""
    knn_k: int = 10
    """``k`` neighbours per item in each modality's binary kNN graph (self included)."""
    image_weight: float = 0.1
    """``α`` of the image-like modality of an image + text pair (reference ``mm_image_weight``);
    the text-like one gets ``1 − image_weight``. Used only when ``mm_weights`` is None."""
    mm_weights: list[float] | None = None
    """``α_m`` mixing the modality graphs, in ``modalities`` order; non-negative, summing to 1.
    ``None``: by name (``image_weight``) for an image + text pair, 1 for a single modality;
    required for any other modalities (e.g. ``[0.5, 0.5]`` for text + audio, which validation
    selected on lfm2k: ``benchmarks/results/freedom_grid.md``)."""
    n_ui_layers: int = 2
    """``L_ui``: LightGCN layers on the user–item graph."""
    n_ii_layers: int = 1
    """``L_ii``: propagation steps of the item ID embeddings over ``S``."""
    drop_ratio: float = field(default=0.8, metadata={"grid": [0.8, 0.9]})
    """``ρ``: fraction of training edges **dropped** each epoch; grid {0.8, 0.9}; 0 = no pruning."""
    reg_weight: float = field(default=1e-4, metadata={"grid": [0.0, 1e-5, 1e-4, 1e-3]})
    """``λ`` of the modality BPR terms; reference grid {0, 1e-5, 1e-4, 1e-3}."""
    train_features: bool = True
    """Fine-tune the raw feature matrices inside ``P_m`` (reference code) or keep them frozen (no
    gradient, not in the optimiser, not saved: saves the features' gradient and Adam moments,
    ~3.2 GiB at Electronics size). The item–item graph is built from the raw features either way
    and never changes."""

    def __post_init__(self) -> None:
        """Refuse an ``image_weight`` outside [0, 1], even where unused, and one that ``mm_weights``
        replaces (it was ignored: ``mm_weights`` gives every modality's weight)."""
        require_fraction("image_weight", self.image_weight)
        default = next(f.default for f in fields(self) if f.name == "image_weight")
        if self.mm_weights is not None and self.image_weight != default:
            raise ValueError(
                f"image_weight={self.image_weight} only acts when mm_weights is not set, but mm_weights="
                f"{list(self.mm_weights)} gives every modality's weight: drop image_weight or mm_weights")


@register
class FREEDOM(Recommender):
    name = "freedom"
    Config = FREEDOMConfig
    content_id_rows = "impute"

    @classmethod
    def check_settings(cls, config) -> None:
        cls.require_at_least(config, embedding_size=1, knn_k=1, n_ui_layers=0, n_ii_layers=0)
        require_fraction("drop_ratio", config.drop_ratio, "the fraction of training edges dropped", high_open=True)

    @classmethod
    def check_dataset(cls, config, dataset) -> None:
        super().check_dataset(config, dataset)
        role_weights(cls.name, cls.used_modalities(config, dataset), config.mm_weights, config.image_weight)

    def __init__(self, dataset, config: FREEDOMConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.modalities = self.used_modalities(config, dataset)
        # α_m in modalities order: mm_weights (checked), or by name (module docstring)
        self.mm_weights = role_weights(self.name, self.modalities, config.mm_weights, config.image_weight)
        d = config.embedding_size

        # S = Σ_m α_m Ŝ_m^bin from the raw features, frozen (2.3).
        graphs = [knn_graph(dataset.features[m], config.knn_k, weight="binary") for m in self.modalities]
        present = fusion_presence(dataset, self.modalities)  # n_I x K, or None: nothing zero-filled
        self.item_graph = SparseOperator(present_mix(graphs, self.mm_weights, present))
        # Â (evaluation) and the training edges Â_ρ is drawn from (2.1, 2.6).
        self.train_matrix = dataset.train.tocsr()
        self.adjacency = SparseOperator(bipartite_adjacency(self.train_matrix), symmetric=True)
        self.train_adjacency: SparseOperator | None = None  # Â_ρ, set by on_epoch_start
        # Edge pruning draws from the run's seed (seed_everything -> torch.manual_seed), one
        # stream per epoch, so a run is reproducible and an epoch's graph does not depend on
        # how many epochs came before it in this process.
        self.pruning_seed = int(torch.initial_seed())

        self.user_emb = IdEmbedding(self.n_users, d)  # E_U
        self.item_emb = IdEmbedding(self.n_items, d)  # E_I
        # P_m = F_m W_m + b_m (PyTorch's default Linear init, as the reference).
        self.projectors = nn.ModuleDict(
            {m: Projector(dataset.features[m], d, config.train_features) for m in self.modalities}
        )
        self.reset_parameters()  # E_U, E_I, then each P_m

    def on_epoch_start(self, epoch: int) -> None:
        """Redraw the pruned training graph ``Â_ρ`` (degree-sensitive, 2.6) for this epoch."""
        if self.config.drop_ratio <= 0.0:
            self.train_adjacency = self.adjacency
            return
        rng = np.random.default_rng([self.pruning_seed, int(epoch)])
        kept = degree_sensitive_edge_sample(self.train_matrix, self.config.drop_ratio, rng)
        self.train_adjacency = SparseOperator(bipartite_adjacency(kept), self.device, symmetric=True)

    def forward(self) -> Output:
        if self.training:
            if self.train_adjacency is None:  # a training forward before any on_epoch_start
                self.on_epoch_start(0)
            adjacency = self.train_adjacency
        else:
            adjacency = self.adjacency
        h = propagate(self.item_graph, self.item_emb.weight, self.config.n_ii_layers)  # h = S^{L_ii} E_I
        y = lightgcn(adjacency, torch.cat([self.user_emb.weight, self.item_emb.weight]), self.config.n_ui_layers)
        out = Output(y[: self.n_users], y[self.n_users :] + h)
        if not self.training:  # the loss reads no auxiliary: build them for eval/export only
            out.aux["behavior"] = y
            out.aux["modality"] = torch.cat([h.new_zeros(self.n_users, h.shape[1]), h])
        return out

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        u, i, j = batch
        zu, zi, zj = out.bpr_rows(batch)
        terms = {"bpr": bpr_loss(zu, zi, zj)}
        items = torch.cat([i, j])
        for m, projector in self.projectors.items():
            # P_m[i], P_m[j]: project only the batch rows (same values and gradients as
            # indexing the full n_I x d projection, at a fraction of the cost).
            p = projector.linear(projector.features[items])
            p_i, p_j = p[: len(i)], p[len(i) :]
            terms[f"mm_bpr_{m}"] = self.config.reg_weight * bpr_loss(zu, p_i, p_j)
        return terms

    def content_item_embeddings(self, items, out, id_rows=None):
        """Step 5: ``Z_I`` rows of ``items`` with their ID rows imputed over the frozen ``S``."""
        return content_forward_rows(self, self.item_emb.weight, items, id_rows or self.content_id_rows,
                                    [self.item_graph])

