"""MMGCN — Wei et al., MM'19; reference code weiyinwei/MMGCN, MMRec ``mmgcn.py``; ALGORITHMS.md 3.7.

Multi-modal graph convolution: **one GCN per modality** over the user–item graph, each with its
own user preference table, so every modality learns its own view of the users; the modality
outputs are averaged.

Per modality ``m`` (``P_m ∈ R^{n_U × d'_m}`` user preferences, ``E ∈ R^{N × d}`` ID embeddings
shared by the modalities, ``ρ`` = leaky ReLU with slope 0.01; :class:`prismrec.nn.modality_gcn.ModalityGCN`)::

    X⁰     = nrm([P_m; F̃_m])              F̃_m = F_m W⁰ + b⁰ (``d_m -> d'_m``, the reference's
                                            256-d MLP for its image modality) or F_m itself
    Hˡ     = ρ( Agg(X^{l-1} Wˡ) )          Agg = D^-1 A (mean over neighbours) or A (sum)  — eq. 1
    X̂ˡ     = ρ( X^{l-1} Uˡ + uˡ ) + E      the ID embedding joins every layer          — eq. 5
    Xˡ     = ρ( Gˡ [Hˡ ; X̂ˡ] + gˡ )        (``concat = False``: ρ(Gˡ Hˡ + gˡ + X̂ˡ))
    Z_m    = X^L                            L = 3 layers

    Z = mean_m Z_m   (``combine = "sum"``: Σ_m Z_m),   ŷ_ui = z_u · z_i

Loss::

    L = L_BPR(Z) + λ·[ mean(E[u]², E[i]², E[j]²) + mean(P_1²) ]

with the user row counted once per (positive, negative) pair, as the reference does, and ``P_1``
the preference table of the modality in the image part (``reg_preferences = "all"`` takes every
modality's).

Parts by name (:mod:`prismrec.nn.roles`): the reference gives its image modality the 256-d MLP and
the L2 on ``P_1``, its text modality raw features. Here the image-like modality of an image + text
pair (either order) plays the image part; a single modality plays it too. Any other modalities
(lfm2k's text + audio, tiktok's image + audio, ml100k's text + genre, or more than two) have no
part by name: ``modality_roles`` says which part each plays, or ``latent_dims`` (with
``reg_preferences = "all"``) sets the widths directly (a ConfigError says so).

Missing modalities (a dataset loaded with ``impute="zero"``): modality ``m``'s GCN aggregates
over ``A_m``, the user–item graph without the items lacking ``m`` (mean: ``D_m^-1 A_m``, a user
averages its items that have ``m``), so a zero-filled row reaches no user; an item lacking ``m``
and a user with no training item having ``m`` have no ``Z_m`` (presence ``False``), and the mean
(or sum) of the ``Z_m`` runs over each node's present ones, renormalised
(:mod:`prismrec.nn.fusion`). Under ``mean``/``neighbour`` imputation the filled rows take part.

Content path (cold items, :meth:`MMGCN.content_item_embeddings`): every modality's GCN starts
from the item's features ``F̃_m``. The forward runs with the item's ID row removed
(``E[c] = 0``); a cold item has no edge, so ``Hˡ = 0`` and each layer transforms its own
features: ``Xˡ = ρ(Gˡ[0; ρ(X^{l-1}Uˡ + uˡ)] + gˡ)`` (our reading; the paper does not evaluate
cold items). ``--id-rows impute`` fills ``E[c]`` from its warm neighbours on the features'
cosine kNN graph.

Reference-code facts kept as defaults (each a switch): the ID table ``E`` and the preference
tables ``P_m`` are plain tensors in the reference, never handed to the optimiser, so they stay
at their random Xavier-normal initialisation (``train_embeddings = False``); the reference's
``concate = 'False'`` is a non-empty string, i.e. true, so layers concatenate; the layer count
argument is ignored and three layers always run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np
import torch
from torch import nn

from prismrec.checks import check_choices
from prismrec.data.features import fusion_presence
from prismrec.graph import SparseOperator
from prismrec.graph.walk import random_walk_adjacency
from prismrec.losses import bpr_loss
from prismrec.models import register
from prismrec.nn.fusion import present_mean
from prismrec.nn.present_graphs import modality_operators, present_nodes
from prismrec.nn.modality_gcn import ModalityGCN
from prismrec.nn.presence import node_columns
from prismrec.nn.propagation import batch_node_rows, few_rows
from prismrec.nn.content import content_forward_rows, feature_knn
from prismrec.nn.embedding import register_table
from prismrec.nn.roles import modality_parts
from prismrec.recommender import Output, Recommender

LATENT_DIM = 256
"""Width of the reference's feature MLP (its first, visual, modality only)."""


@dataclass
class MMGCNConfig:
    modalities: list[str] | None = None
    """Modalities, one GCN each; ``None`` = all present, canonical order."""
    embedding_size: int = 64
    """``d``: ID embeddings and every layer's output (reference ``dim_x``)."""
    latent_dims: list[int] | None = None
    """``d'_m`` per modality (in ``modalities`` order): width of the MLP ``F_m -> F̃_m``, or 0 to
    feed the raw features. ``None`` = the reference: 256 for the modality in the image part, raw
    for those in the text part (``modality_roles``)."""
    modality_roles: list[str] | None = None
    """The reference part (``image`` or ``text``) each modality plays, in ``modalities`` order: the
    image part gets the 256-d MLP (unless ``latent_dims``) and the L2 on its preference table
    (``reg_preferences = "first"``). ``None`` = by name (an image-like + text-like pair, in either
    order; a single modality plays the image part); required for other modalities unless
    ``latent_dims`` is given and ``reg_preferences = "all"`` (e.g. ``[image,text]``)."""
    n_layers: int = 3
    """``L``: graph convolution layers per modality (the reference always runs 3)."""
    aggr: Literal["mean", "add"] = "mean"
    """Neighbour aggregation of eq. 1: mean (reference ``aggr_mode``) or sum."""
    concat: bool = True
    """Combine ``Hˡ`` and ``X̂ˡ`` by concatenation (reference, see module docstring) or sum."""
    has_id: bool = True
    """Add the ID embedding ``E`` in every layer (eq. 5)."""
    combine: Literal["mean", "sum"] = "mean"
    """Combine the modality outputs by their mean (reference code) or sum (the paper's text)."""
    reg_weight: float = field(default=1e-5, metadata={"grid": [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1],
                                                      "only_with": {"train_embeddings": True}})
    """``λ``; reference default 1e-5 (``weight_decay``), MMRec grid {0, 1e-5, ..., 0.1}."""
    reg_preferences: Literal["first", "all"] = "first"
    """Preference tables in the L2 term: the first (in ``modalities`` order) of the modalities in
    the image part (the reference's visual table; ``modality_roles``) or all."""
    train_embeddings: bool = field(default=False, metadata={"grid": [False, True]})
    """Train ``E`` and ``P_m`` (``True``) or keep them at their random initialisation, as the
    reference code does (they are never given to its optimiser). The grid is ours: with untrained
    tables the L2 term has no gradient, so ``reg_weight``'s grid alone searches nothing (its
    ``only_with``: a search varies it with trained tables only)."""


@register
class MMGCN(Recommender):
    """MMGCN; ``out.aux["modality_<m>"]`` holds each modality's ``Z_m`` in evaluation."""

    name = "mmgcn"
    Config = MMGCNConfig
    content_id_rows = "zero"

    @classmethod
    def check_settings(cls, config) -> None:
        cls.require_at_least(config, embedding_size=1, n_layers=1)
        check_choices(config, cls.name)

    @classmethod
    def check_dataset(cls, config, dataset) -> None:
        super().check_dataset(config, dataset)
        cls.feature_widths(config, cls.used_modalities(config, dataset))

    @classmethod
    def feature_widths(cls, config, modalities: list[str]) -> tuple[list[int], list[str] | None]:
        """Each modality's feature-MLP width (0: raw features) and, where a setting depends on it,
        the reference part each plays (``image``/``text``; else None)."""
        parts = None
        if config.latent_dims is None or config.reg_preferences == "first":
            parts = modality_parts(cls.name, modalities, config.modality_roles,
                                   settings="feature MLP (latent_dims) and preference L2 (reg_preferences)")
        latent = config.latent_dims
        if latent is None:
            latent = [LATENT_DIM if part == "image" else 0 for part in parts]
        if len(latent) != len(modalities) or any(int(x) < 0 for x in latent):
            raise ValueError(
                f"latent_dims needs one non-negative width per modality ({', '.join(modalities)}), "
                f"0 for raw features; got {latent}"
            )
        return latent, parts

    def __init__(self, dataset, config: MMGCNConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.modalities = self.used_modalities(config, dataset)
        n = len(self.modalities)
        latent, parts = self.feature_widths(config, self.modalities)
        d = config.embedding_size
        walk = partial(random_walk_adjacency, normalize=config.aggr == "mean")
        self.adjacency = SparseOperator(walk(dataset.train), symmetric=config.aggr == "add")
        # A_m over the items having m where some item lacks it (impute="zero"), else A itself
        present_items = fusion_presence(dataset, self.modalities)  # n_I x M, or None
        self.graphs = modality_operators(walk, dataset.train, present_items, self.adjacency, n)
        register_table(self, "id_emb", torch.empty(self.n_users + self.n_items, d), config.train_embeddings)  # E
        self.gcns = nn.ModuleDict({
            m: ModalityGCN(dataset.features[m], self.n_users, d, int(width), config.n_layers, config.concat,
                           config.train_embeddings)
            for m, width in zip(self.modalities, latent)
        })
        self.register_buffer("present", present_nodes(dataset.train, present_items), persistent=False)  # M x N
        # P_1 of the L2 term: the first modality in the image part (none without one), or every table
        self.regularised = (list(self.modalities) if config.reg_preferences == "all"
                            else [m for m, part in zip(self.modalities, parts) if part == "image"][:1])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.id_emb)
        for gcn in self.gcns.values():
            gcn.reset_parameters()

    def forward(self) -> Output:
        views, z = self.views_and_mean()
        out = Output.of_nodes(z, self.n_users)
        if not self.training:
            out.aux.update({f"modality_{m}": v for m, v in views.items()})
        return out

    def views_and_mean(self, rows: np.ndarray | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Each modality's ``Z_m`` and their mean ``Z`` over each node's present ones; with
        ``rows`` (sorted distinct node ids), those rows alone."""
        ids = self.id_emb if self.config.has_id else None
        views = {m: gcn(graph, ids, rows) for (m, gcn), graph in zip(self.gcns.items(), self.graphs)}  # Z_m
        present = node_columns(self.present, rows)
        return views, present_mean(torch.stack(list(views.values())), present, self.config.combine)

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        return self.terms(batch, *out.bpr_rows(batch))

    def batch_loss(self, batch) -> dict[str, torch.Tensor]:
        # The loss reads rows u, i, j of Z only: each GCN's last layer and the mean are computed
        # for the batch's distinct nodes alone (unless they are nearly all nodes, as lightgcn_rows);
        # the terms and gradients of loss(batch, forward()).
        rows, at = batch_node_rows(batch, self.n_users, self.n_items)
        if not few_rows(rows, self.n_users + self.n_items):
            return self.loss(batch, self())
        _, z = self.views_and_mean(rows)
        return self.terms(batch, *(z.index_select(0, a) for a in at))

    def terms(self, batch, zu: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss from the batch's rows ``Z[u], Z[i], Z[j]`` (and ``E``'s, ``P_m``)."""
        u, i, j = batch
        e_u = self.id_emb.index_select(0, u)
        e_ij = self.id_emb.index_select(0, torch.cat([i, j]) + self.n_users)
        # mean over the 2B (user, item) rows of E[user]² + E[item]²: each user row counts twice
        reg = e_u.square().mean() + e_ij.square().mean()
        for m in self.regularised:
            reg = reg + self.gcns[m].preference.square().mean()
        return {"bpr": bpr_loss(zu, zi, zj), "reg": self.config.reg_weight * reg}

    def content_item_embeddings(self, items, out, id_rows=None):
        """``Z_I`` rows of ``items`` from their features, without their ID rows (module docstring)."""
        graphs = lambda: feature_knn([gcn.features for gcn in self.gcns.values()])  # noqa: E731
        return content_forward_rows(self, self.id_emb.data[self.n_users :], items,
                                    id_rows or self.content_id_rows, graphs)
