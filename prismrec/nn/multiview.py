"""The MGCN family's multi-view encoder (ALGORITHMS.md 3.5, 3.6, §5, §6).

MGCN, GUME, SIGER and EGRA share one skeleton and differ in the graphs it runs on and in their
losses. :class:`MultiViewEncoder` is that skeleton; each model builds its graphs (``graph/``)
and passes them in (the user-item graph as a :class:`~prismrec.graph.UserItemGraph`, from which
the encoder builds ``Â`` and, under a mask, each ``Â_m``):

```
C     = LGN(Â, [E_U; E_I], L_ui)                         behaviour view (Â: plain or enhanced)
C_I  += γ_b·S_b^{L_ii} E_I                                optional item graph S_b (EGRA "separate")
H_m⁰  = E_I ⊙ σ((F_m W_m + b_m) G_m + g_m)               purifier (2.8), one per modality
H_m^I = S_m^{L_ii} H_m⁰                                   item-item view (S_m: Ŝ_m, or SIGER's G_m)
H_m   = [R̂ H_m^I; H_m^I]                                  users by R̂ = Â[:n_U, n_U:]
M     = fuse(H_1..H_K | C)   or   mean_m H_m              behaviour-aware fuser (2.8)
```

**Missing modalities.** Given an item presence mask (``present_items``, ``n_I x K``:
:func:`prismrec.data.features.fusion_presence`, ``False`` where an item's modality was
zero-filled), the fuser and GUME's extended branch weigh only each node's present modalities
(:mod:`prismrec.nn.fusion`: ``α`` a softmax over them, ``/(K_present + 1)``, means over them).
A missing item's ``H_m^I`` row is no view of its content: its zero feature row has no ``Ŝ_m``
neighbour but itself, so the row is its ID row under a gate made of the purifier's biases
(SIGER's ``G_m`` adds its co-occurring items' rows). Users therefore take modality ``m`` from
their items that have it: ``H_m^U = R̂_m H_m^I`` and the extended branch runs on ``Â_m``, the
adjacency normalised by the same rule over those items alone
(:meth:`~prismrec.graph.UserItemGraph.over_items`, :func:`present_adjacencies`); a
user with none has no ``m`` view (its presence is ``False``, its ``H_m^U`` row 0). Without a mask
the unmasked formulas run unchanged. The models pass :meth:`MultiViewEncoder.presence` (per
modality view) and :meth:`MultiViewEncoder.fused_presence` (per fused row) to the ``present``
masks of their contrastive and alignment terms (:mod:`prismrec.losses`), so a missing view is
neither pulled toward nor contrasted against a real one.

:class:`MultiViewConfig` holds the settings every model of the family exposes (flat ``--set``
keys: a model's config inherits the fields and may redeclare a default); their checks are in
:mod:`prismrec.nn.multiview_checks`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from prismrec.graph.bipartite import UserItemGraph, user_item_block
from prismrec.graph.sparse import SparseOperator
from prismrec.nn.embedding import IdEmbedding
from prismrec.nn.encoders import Purifier
from prismrec.nn.fusion import BehaviorAwareFuser, present_mean
from prismrec.nn.presence import for_missing_modalities, node_columns, node_presence
from prismrec.nn.propagation import lightgcn, lightgcn_distinct, propagate, user_item_parts


@dataclass
class MultiViewConfig:
    """Settings shared by the MGCN family (a model's config inherits them)."""

    modalities: list[str] | None = None
    """Feature names used, in order; ``None`` = every modality of the dataset (canonical order)."""
    embedding_size: int = 64
    """``d``, width of the ID embeddings and of every view."""
    n_ui_layers: int = 2
    """``L_ui``, LightGCN depth of the behaviour view."""
    knn_k: int = 10
    """``k`` of the modality kNN graphs ``Ŝ_m`` (self included)."""
    reg_weight: float = 1e-4
    """``λ_reg``, weight of the batch L2 term on the final rows ``z_u, z_i, z_j``."""
    train_features: bool = True
    """Fine-tune the raw feature matrices (MGCN reference: True); False keeps them frozen: no
    gradient, not in the optimiser, not saved in checkpoints (saves three copies of every ``F_m``,
    its gradient and Adam's two moments: ~3.2 GiB at Electronics size, 4096-d + 384-d)."""


def present_adjacencies(train: sp.spmatrix, present_items: np.ndarray | None, item_links: sp.spmatrix | None = None,
                        gamma: float = 1.0) -> list[sp.csr_matrix | None] | None:
    """``Â_m`` per modality (``present_items``' column order): :func:`~prismrec.graph.bipartite_adjacency`
    of ``train`` (and ``γ·item_links``) without the items lacking ``m``
    (:meth:`~prismrec.graph.bipartite.UserItemGraph.over_items`); ``None`` for a modality every
    item has, and ``None`` in all without a mask. For LightGCN's ``Â``,
    ``R̂_m[u, i] = 1/sqrt(d_u^m d_i)`` with ``d_u^m`` the user's items that have ``m``."""
    return for_missing_modalities(present_items, train.shape[1], UserItemGraph(train, item_links, gamma).over_items)


class MultiViewEncoder(nn.Module):
    """ID tables, purifiers and fuser of the MGCN family, over graphs given by the model.

    Args:
        graph: the user-item graph, LightGCN's or an enhanced one with an item-item block
            (:class:`~prismrec.graph.bipartite.UserItemGraph`): the encoder builds ``Â`` and,
            under a presence mask, each ``Â_m`` from it.
        item_graphs: one normalised item-item graph ``S_m`` per modality.
        features: the raw feature matrices ``F_m``, in the order of ``item_graphs``.
        n_users: ``n_U``.
        dim: ``d``.
        n_ui_layers, n_ii_layers: ``L_ui`` and ``L_ii``.
        train_features: fine-tune the ``F_m`` copies (else frozen, not saved).
        fusion: ``behavior_aware`` (MGCN's fuser) or ``mean`` (``M = mean_m H_m``; the fuser
            is still built, so the initialisation does not depend on the switch).
        present_items: optional ``n_I x K`` bool item presence (modality order of ``features``;
            :func:`prismrec.data.features.fusion_presence`): a ``False`` modality gets no weight
            in the item's fused row. Kept as the ``K x N`` buffer ``present`` (users first: a
            user has ``m`` if one of its training items has; not saved); ``None`` = every modality
            present (the unmasked formulas).
        behavior_item_graph: optional normalised item-item graph ``S_b`` (``n_I`` square) whose
            ``L_ii``-step propagation of ``E_I`` is added to the item rows of ``C``:
            ``C_I += γ_b·S_b^{L_ii} E_I`` (EGRA's ``graph_fusion="separate"``); ``None``: ``C`` as is.
        behavior_item_weight: ``γ_b``.

    Nothing is drawn at construction but the layers' default init: the owning model calls
    :meth:`reset_parameters` (``E_U, E_I``, purifiers, fuser, in that order).
    """

    def __init__(
        self,
        graph: UserItemGraph,
        item_graphs: Sequence[sp.spmatrix],
        features: Sequence[torch.Tensor],
        n_users: int,
        dim: int,
        n_ui_layers: int,
        n_ii_layers: int,
        train_features: bool = True,
        fusion: Literal["behavior_aware", "mean"] = "behavior_aware",
        present_items: np.ndarray | torch.Tensor | None = None,
        behavior_item_graph: sp.spmatrix | None = None,
        behavior_item_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if len(item_graphs) != len(features) or not features:
            raise ValueError(f"one item graph per modality feature is needed, got {len(item_graphs)} graphs "
                             f"and {len(features)} feature matrices")
        if n_ui_layers < 0 or n_ii_layers < 0:
            raise ValueError(f"layer counts must be >= 0, got n_ui_layers={n_ui_layers}, n_ii_layers={n_ii_layers}")
        if fusion not in ("behavior_aware", "mean"):
            raise ValueError(f"fusion must be 'behavior_aware' or 'mean', got {fusion!r}")
        self.n_users, self.n_ui_layers, self.n_ii_layers, self.fusion = n_users, n_ui_layers, n_ii_layers, fusion
        adjacency = graph.adjacency()
        self.adjacency = SparseOperator(adjacency)                                        # Â
        self.user_item = SparseOperator(user_item_block(adjacency, n_users), symmetric=False)  # R̂
        self.item_graphs = nn.ModuleList(SparseOperator(g, symmetric=False) for g in item_graphs)  # S_m
        n_items = adjacency.shape[0] - n_users
        if present_items is not None and tuple(np.shape(present_items)) != (n_items, len(features)):
            raise ValueError(f"present_items must be n_items x K = {n_items} x {len(features)}, "
                             f"got {tuple(np.shape(present_items))}")
        present = node_presence(present_items, n_users)
        # Â_m, R̂_m per modality (Â, R̂ themselves where every item has m): the users'
        # H_m^U = R̂_m H_m^I and the extended branch read only the items having m; users without
        # such an item have no m view
        graphs = present_adjacencies(graph.train, present_items, graph.item_links, graph.gamma) or [None] * len(features)
        blocks = [None if g is None else user_item_block(g, n_users) for g in graphs]
        self.modality_adjacencies = nn.ModuleList(self.adjacency if g is None else SparseOperator(g) for g in graphs)
        self.modality_user_items = nn.ModuleList(
            self.user_item if b is None else SparseOperator(b, symmetric=False) for b in blocks)
        for k, b in enumerate(blocks):
            if b is not None:
                present[k, :n_users] = torch.from_numpy(np.diff(b.indptr) > 0)
        self.register_buffer("present", present, persistent=False)                       # K x N
        # nodes with no present modality (a fused row of 0): only then a mask for the fused views
        fused = None if present is None or bool(present.any(dim=0).all()) else present.any(dim=0)
        self.register_buffer("fused_present", fused, persistent=False)                    # N
        self.behavior_item_graph = None if behavior_item_graph is None else \
            SparseOperator(behavior_item_graph, symmetric=False)                          # S_b
        self.behavior_item_weight = float(behavior_item_weight)                           # γ_b
        self.user_emb = IdEmbedding(n_users, dim)                                          # E_U
        self.item_emb = IdEmbedding(n_items, dim)                                          # E_I
        self.purifiers = nn.ModuleList(Purifier(f, dim, trainable_features=train_features) for f in features)
        self.fuser = BehaviorAwareFuser(dim, len(features))

    def reset_parameters(self) -> None:
        """Draw ``E_U``, ``E_I`` (Xavier), then every purifier and the fuser (default init)."""
        self.user_emb.reset_parameters()
        self.item_emb.reset_parameters()
        for purifier in self.purifiers:
            purifier.reset_parameters()
        self.fuser.reset_parameters()

    def behavior_view(self) -> torch.Tensor:
        """``C = LGN(Â, [E_U; E_I], L_ui)`` (``N x d``, users first), with ``γ_b·S_b^{L_ii} E_I``
        added to its item rows when the encoder has a ``behavior_item_graph``."""
        c = lightgcn(self.adjacency, torch.cat([self.user_emb.weight, self.item_emb.weight]), self.n_ui_layers)
        if self.behavior_item_graph is None:
            return c
        return torch.cat([c[: self.n_users], c[self.n_users :] + self.behavior_item_term()])

    def behavior_item_term(self) -> torch.Tensor:
        """``γ_b·S_b^{L_ii} E_I`` (``n_I x d``), the item graph's addition to ``C_I``."""
        return self.behavior_item_weight * propagate(self.behavior_item_graph, self.item_emb.weight, self.n_ii_layers)

    def purified(self) -> torch.Tensor:
        """``H_m⁰`` (purifier 2.8) of every modality, stacked ``K x n_I x d``."""
        return torch.stack([purifier(self.item_emb.weight) for purifier in self.purifiers])

    def item_views(self, noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   purified: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """``H_m^I = S_m^{L_ii} H_m⁰`` (``n_I x d``), modality by modality; ``noise`` and
        ``purified`` as in :meth:`modality_views`."""
        items = None if self.present is None else self.present[:, self.n_users :]
        for k, (purifier, graph) in enumerate(zip(self.purifiers, self.item_graphs)):
            step = noise if noise is None or items is None else partial(noise, present=items[k])
            start = purifier(self.item_emb.weight) if purified is None else purified[k]          # H_m⁰
            yield propagate(graph, start, self.n_ii_layers, step)                                 # S_m^{L_ii} H_m⁰

    def modality_views(self, noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       purified: torch.Tensor | None = None) -> torch.Tensor:
        """``H_m = [R̂_m H_m^I; H_m^I]``, ``H_m^I = S_m^{L_ii} H_m⁰``, stacked ``K x N x d``
        (``R̂_m = R̂`` without a mask).

        ``noise`` (optional) is applied after every ``S_m`` product (SIGER's SimGCL-style
        ``perturb_at = "layers"``); with a presence mask it is called as ``noise(x, present=p)``,
        ``p`` the items where modality ``m`` is present (a :class:`prismrec.nn.NoiseSource` then
        takes its mean row norm over them). ``purified`` (optional): the ``H_m⁰`` already
        computed (:meth:`purified`), e.g. shared by a clean view and its noisy ones."""
        return _stacked([(user_item @ h, h)                                     # [H_m^U; H_m^I]
                         for user_item, h in zip(self.modality_user_items, self.item_views(noise, purified))])

    def behavior_rows(self, rows: np.ndarray) -> torch.Tensor:
        """``C[rows]`` (:meth:`behavior_view`) for sorted distinct node ids ``rows`` (users first):
        the last layer is propagated for those rows only
        (:func:`prismrec.nn.propagation.lightgcn_distinct`)."""
        x0 = torch.cat([self.user_emb.weight, self.item_emb.weight])
        c = lightgcn_distinct(self.adjacency, x0, self.n_ui_layers, rows)
        if self.behavior_item_graph is None:
            return c
        split = int(np.searchsorted(rows, self.n_users))
        items = torch.from_numpy(rows[split:] - self.n_users).to(c.device)
        return torch.cat([c[:split], c[split:] + self.behavior_item_term().index_select(0, items)])

    def modality_view_rows(self, rows: np.ndarray) -> torch.Tensor:
        """``H[:, rows]`` (``K x len(rows) x d``) for sorted distinct node ids ``rows``: every
        ``H_m^I`` is computed in full (``S_m`` mixes all items), the user rows ``R̂_m[u] H_m^I``
        only for the users among ``rows``, and nothing else is built for the other nodes."""
        return _stacked([user_item_parts(user_item, h, rows, self.n_users)
                         for user_item, h in zip(self.modality_user_items, self.item_views())])

    def fused_rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``C[rows]`` and ``M[rows]`` for sorted distinct node ids ``rows`` (the row paths of a
        loss that reads only a batch's rows of ``C``, ``M`` and ``Z = C + M``): ``C``'s last layer,
        the users' ``H_m`` rows and the per-node fuser run for those rows alone."""
        c = self.behavior_rows(rows)
        return c, self.fuse(self.modality_view_rows(rows), c, rows)

    def fuse_for_rows(self, views: torch.Tensor, behavior: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """:meth:`fuse` of every node (``views``, ``behavior`` hold all of them), for a loss that reads
        the rows ``rows`` (sorted distinct node ids) and a statistic of all rows without gradient
        (SIGER's modulus noise, its mean row norm): the same values, the per-node fuser run with
        its gradient (and its backward) for ``rows`` alone and without gradient for the others."""
        others = np.ones(behavior.shape[0], dtype=bool)
        others[rows] = False
        others = np.flatnonzero(others)

        def fused(ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:  # ids, the fuser on their rows
            at = torch.from_numpy(ids).to(behavior.device)
            return at, self.fuse(views.index_select(1, at), behavior.index_select(0, at), ids)

        with torch.no_grad():
            whole = behavior.new_empty(behavior.shape).index_copy_(0, *fused(others))
        return whole.index_copy(0, *fused(rows))

    def presence(self, rows: np.ndarray | torch.Tensor | None = None) -> torch.Tensor | None:
        """``present`` (``K x N``), its columns ``rows`` (node ids, users first) when given, or
        ``None`` without a mask."""
        return node_columns(self.present, rows)

    def fused_presence(self, rows: np.ndarray | torch.Tensor | None = None) -> torch.Tensor | None:
        """``N`` bool: the nodes with at least one present modality (a node with none fuses to a
        row of 0, which holds no view), its entries ``rows`` (node ids, users first) when given;
        ``None`` without a mask or when every node has a modality (the common case: one modality
        of several missing leaves the fused row a real view)."""
        return node_columns(self.fused_present, rows)

    def views_presence(self, fused: bool) -> torch.Tensor | None:
        """Presence of the rows of the fused view (``1 x N``: a node with no modality has none) or
        of the modality views (``K x N``); ``None`` when every row holds a view."""
        if not fused:
            return self.presence()
        present = self.fused_presence()
        return None if present is None else present.unsqueeze(0)

    def fuse(self, views: torch.Tensor, behavior: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        """``M = fuse(H_1..H_K | C)`` (2.8), or ``mean_m H_m`` with ``fusion="mean"``, over each
        node's present modalities. ``views`` and ``behavior`` hold every node, or the rows
        ``rows`` (sorted distinct node ids) of the row paths."""
        present = self.presence(rows)
        if self.fusion == "behavior_aware":
            return self.fuser(views, behavior, present)
        return views.mean(dim=0) if present is None else present_mean(views, present)


def _stacked(views: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """``K x N x d`` from each view's row blocks (``[H_m^U; H_m^I]``): every block joined in one
    copy, not each view joined and then the views stacked."""
    return torch.cat([block for parts in views for block in parts]).unflatten(0, (len(views), -1))


class ExtendedBranch(nn.Module):
    """GUME's extended modality branch (3.6): ``Ĥ = mean_m LGN(Â_m, [E_U^(m); H_m^I], L_ui)``.

    One learnable user table ``E_U^(m)`` per modality; the item rows are the modality views'
    item rows ``H_m^I`` and the graphs the encoder's ``modality_adjacencies``: its ``Â`` (``Â⁺``
    in GUME), or under a mask ``Â_m`` over the items that have ``m``.
    """

    def __init__(self, n_users: int, n_modalities: int, dim: int, n_layers: int) -> None:
        super().__init__()
        self.n_users, self.n_layers = n_users, n_layers
        self.user_tables = nn.ModuleList(IdEmbedding(n_users, dim) for _ in range(n_modalities))

    def reset_parameters(self) -> None:
        """Draw every ``E_U^(m)`` (Xavier), in modality order."""
        for table in self.user_tables:
            table.reset_parameters()

    def forward(self, adjacencies: Sequence[SparseOperator], views: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        """``Ĥ`` (``N x d``) from the graphs ``Â_m`` (one per modality,
        :attr:`MultiViewEncoder.modality_adjacencies`) and the stacked modality views ``H``
        (``K x N x d``, users first); ``present`` (optional ``K x N`` bool,
        :meth:`MultiViewEncoder.presence`): the mean runs over each node's present modalities."""
        return self._mean(lightgcn, adjacencies, views, present)

    def rows(self, adjacencies: Sequence[SparseOperator], views: torch.Tensor, rows: np.ndarray,
             present: torch.Tensor | None = None) -> torch.Tensor:
        """``Ĥ[rows]`` for sorted distinct node ids ``rows`` (``present``: their ``K x len(rows)``
        presence, or ``None``): each branch's last layer is propagated for those rows only
        (:func:`prismrec.nn.propagation.lightgcn_distinct`)."""
        return self._mean(partial(lightgcn_distinct, distinct=rows), adjacencies, views, present)

    def _mean(self, lgn: Callable, adjacencies: Sequence[SparseOperator], views: torch.Tensor,
              present: torch.Tensor | None) -> torch.Tensor:
        """``mean_m lgn(Â_m, [E_U^(m); H_m^I], L_ui)`` over each node's present modalities."""
        items = views[:, self.n_users :]
        branches = [lgn(adjacency, torch.cat([users.weight, items[k]]), self.n_layers)
                    for k, (users, adjacency) in enumerate(zip(self.user_tables, adjacencies))]
        return present_mean(torch.stack(branches), present)


@dataclass
class ExtendedBranchConfig:
    """Settings of the extended branch's terms (``um``, ``reg2``); a model's config inherits them."""

    um_weight: float = 0.01
    """``um``, weight of the user-modality terms (GUME Baby, Sports 0.01; Clothing, Electronics 0.1)."""
    um_tau: float = 0.1
    """``τ_um`` (GUME Baby, Sports 0.1; Clothing, Electronics 0.2)."""
    reg2_weight: float = 0.1
    """``reg2``, weight of ``½‖Ĥ_I[i]‖² / B`` on the extended item rows."""


@dataclass
class GUMETermsConfig(ExtendedBranchConfig):
    """GUME's terms beyond MGCN's (``vt``, ``um``, ``reg2``) and its noise views; GUME's config
    and EGRA's (``backbone="gume"``) inherit them."""

    vt_weight: float = 0.1
    """``vt``, weight of the modality mean/variance gap (Baby 0.1; Sports 0.01; Clothing 0.001)."""
    noise_eps: float = 0.1
    """``ε`` of the noise views (2.12)."""
    noise_mode: Literal["fixed", "modulus"] = "fixed"
    """Noise magnitude rule (2.12); GUME's is ``fixed``."""
