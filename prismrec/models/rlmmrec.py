"""RLMultimodalRec — "Gated Multimodal Graph Learning for Personalized Recommendation"
(arXiv 2506.00107; ALGORITHMS.md §4). Everything past the abstract is **proposed**.

1. Projection: ``x̃_i^m = W_m f_i^m + b_m`` (``d_m -> d``) per modality, features frozen.
2. Gate, two modalities (``v``, ``t`` = first and second selected modality):
   ``g_i = σ(W_g [ṽ_i ; t̃_i] + b_g)`` — element-wise (``W_g ∈ R^{d×2d}``) or scalar
   (``R^{1×2d}``); more than two modalities: ``g_i = softmax_m(W_g [x̃_i^1; ...; x̃_i^M])`` per
   dimension (or per item).
3. Fusion: ``m_i = g_i ⊙ ṽ_i + (1 − g_i) ⊙ t̃_i`` (generally ``Σ_m g_i^m ⊙ x̃_i^m``).
4. Inputs: ``e_i⁰ = e_i^{id} + m_i`` (``item_input = "sum"``), ``e_u⁰ = e_u^{id}``.
5. Encoder: ``[Z_U; Z_I] = LGN(Â, [E_U; E⁰_I], L = 2)`` — two LightGCN layers, no nonlinearity.
6. Score ``z_u · z_i``; aux ``gate`` (per-item modality weights, for the gate analysis).

Missing modalities (a dataset loaded with ``impute="zero"``): an item's missing modality gets no
weight in the fusion, the others are renormalised (gate, mean; ``concat`` zeroes its block), see
:mod:`prismrec.nn.fusion`; under ``mean``/``neighbour`` imputation the filled rows take part.

Loss: ``L_BPR(Z) + λ·[half_sq(e_u⁰, e_i⁰, e_j⁰) + ½(Σ_m ‖W_m‖²_F + ‖W_g‖²_F)]``.

Content path (cold items, :meth:`RLMultimodalRec.content_item_embeddings`): the abstract's
cold-start claim rests on steps 1-3, which need only the item's features. The forward runs with
the item's ID row removed (``e_i^{id} = 0``): ``e_c⁰ = m_c`` (``sum``, ``content_only``) or
``W_o[0; m_c]`` (``concat_linear``), and a cold item has no edge, so ``z_c = e_c⁰ / (L + 1)``.
``--id-rows impute`` fills ``e_c^{id}`` from its warm neighbours on the features' cosine kNN graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from prismrec.checks import refuse_unused
from prismrec.graph import SparseOperator, bipartite_adjacency
from prismrec.losses import added, bpr_loss, half_sq
from prismrec.errors import ConfigError
from prismrec.models import register
from prismrec.nn.roles import describe_roles, modality_role
from prismrec.nn import IdEmbedding, Projector, lightgcn
from prismrec.nn.content import content_forward_rows, feature_knn
from prismrec.data.features import fusion_presence
from prismrec.nn.fusion import GatedFusion, present_mean
from prismrec.recommender import Output, Recommender


@dataclass
class RLMultimodalRecConfig:
    modalities: list[str] | None = None
    """Modalities to fuse (default: all present; the first two play ``v`` and ``t``)."""
    embedding_size: int = 64
    """``d``."""
    n_layers: int = 2
    """LightGCN depth ``L`` (paper: two layers); ablation {1, 2, 3}."""
    reg_weight: float = field(default=1e-4, metadata={"grid": [1e-5, 1e-4, 1e-3]})
    """``λ``; grid {1e-5, 1e-4, 1e-3} (ALGORITHMS.md §4; the learning rate's {1e-4, 5e-4, 1e-3} is
    the model's ``train_grid``; ``n_layers`` {1, 2, 3} is an ablation, not searched)."""
    gate: Literal["vector", "scalar"] = "vector"
    """Element-wise gate (``W_g ∈ R^{d×2d}``) or one weight per item (``R^{1×2d}``)."""
    fusion: Literal["gate", "concat", "mean", "visual_only", "text_only", "first_only", "second_only"] = "gate"
    """How modalities are combined: learned gate, ``W_o[ṽ; t̃]``, plain mean, or one modality:
    ``visual_only`` / ``text_only`` keep the image-like / text-like one **by name**
    (:mod:`prismrec.nn.roles`; an error if there is none), ``first_only`` / ``second_only``
    the first / second of ``modalities`` as listed (any names)."""
    item_input: Literal["sum", "content_only", "concat_linear"] = "sum"
    """``e_i⁰ = e_i^{id} + m_i``, ``= m_i`` (no item ID embedding), or ``W_o[e_i^{id}; m_i]``."""
    train_features: bool = False
    """Fine-tune the raw feature matrices."""
    feature_norm: Literal["none", "l2", "standardize"] = "standardize"
    """Rescale each raw feature matrix before projection: ``standardize`` (per column: mean 0,
    std 1), ``l2`` (unit rows) or ``none`` (MMRec's raw features). Validation (1 seed,
    ``benchmarks/results/feature_scaling.md``) selects ``standardize`` on lfm2k (valid R@20 .423
    vs .161 raw: raw VGGish audio, row norms ~1500, collapses the model) and ``none`` on tiktok
    (.088 vs .073); no scaling wins both, and ``standardize`` has the smallest worst-case loss
    (−17 % on tiktok, against −62 % for ``none`` and −24 % for ``l2``). Tune it per dataset."""

    def __post_init__(self) -> None:
        """Refuse a ``gate`` form changed with another ``fusion`` (it was ignored)."""
        refuse_unused(self, ("gate",), self.fusion == "gate", "fusion=gate")


@register
class RLMultimodalRec(Recommender):
    name = "rlmmrec"
    Config = RLMultimodalRecConfig
    content_id_rows = "zero"
    train_grid = {"lr": [1e-4, 5e-4, 1e-3]}  # ALGORITHMS.md §4

    @classmethod
    def check_settings(cls, config) -> None:
        cls.require_at_least(config, embedding_size=1, n_layers=0)

    @classmethod
    def used_modalities(cls, config, dataset) -> list[str]:
        """The selected modalities (``second_only`` needs two), or the one a ``*_only`` fusion keeps."""
        minimum = 2 if config.fusion == "second_only" else cls.min_modalities
        return single_modality(cls.select_modalities(dataset, config.modalities, minimum, cls.name), config.fusion)

    def __init__(self, dataset, config: RLMultimodalRecConfig) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        # One selected modality (or a *_only fusion) is the single-modality variant: m = x̃.
        self.modalities = names = self.used_modalities(config, dataset)
        d = config.embedding_size
        self.adjacency = SparseOperator(bipartite_adjacency(dataset.train), symmetric=True)
        self.user_emb = IdEmbedding(self.n_users, d)
        self.item_emb = IdEmbedding(self.n_items, d)
        self.projectors = nn.ModuleDict(
            {m: Projector(dataset.features[m], d, config.train_features, config.feature_norm) for m in names}
        )
        self.fuser = None
        if len(names) > 1 and config.fusion == "gate":
            self.fuser = GatedFusion(len(names), d, scalar=config.gate == "scalar")
        elif len(names) > 1 and config.fusion == "concat":
            self.fuser = nn.Linear(len(names) * d, d)
        self.item_mixer = nn.Linear(2 * d, d) if config.item_input == "concat_linear" else None
        present = fusion_presence(dataset, names)  # n_I x M, or None: nothing zero-filled
        self.register_buffer("present", None if present is None else torch.from_numpy(present), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.user_emb.reset_parameters()
        self.item_emb.reset_parameters()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def content(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Steps 1-3: fused content ``m`` (``n_I x d``) and the gate weights (or None)."""
        projected = [self.projectors[m]() for m in self.modalities]
        present = self.present
        if present is not None and self.config.fusion != "gate":  # a missing modality's block is 0
            projected = [x * present[:, k : k + 1].to(x.dtype) for k, x in enumerate(projected)]
        if len(projected) == 1:
            return projected[0], None
        if self.config.fusion == "gate":
            return self.fuser(projected, present)
        if self.config.fusion == "concat":
            return self.fuser(torch.cat(projected, dim=1)), None
        return present_mean(torch.stack(projected), None if present is None else present.T), None

    def forward(self) -> Output:
        m, gate = self.content()
        if self.config.item_input == "sum":
            items0 = self.item_emb.weight + m
        elif self.config.item_input == "content_only":
            items0 = m
        else:
            items0 = self.item_mixer(torch.cat([self.item_emb.weight, m], dim=1))
        z = lightgcn(self.adjacency, torch.cat([self.user_emb.weight, items0]), self.config.n_layers)
        aux = {"items0": items0}
        if gate is not None:
            aux["gate"] = gate
        z_u, z_i = z.split([self.n_users, self.n_items])  # not two slices: one concatenation back, no zero fills
        return Output(z_u, z_i, aux)

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        u, i, j = batch
        items0 = out.aux["items0"]
        weights = [p.linear.weight for p in self.projectors.values()]
        weights += [mod.weight for mod in (self.fuser, self.item_mixer) if isinstance(mod, nn.Linear)]
        if isinstance(self.fuser, GatedFusion):
            weights.append(self.fuser.linear.weight)
        # ½‖e_u‖² + ½‖x_i‖² + ½‖x_j‖² per row as two gathers (index_select: scatter-add backward)
        rows = self.user_emb.weight.index_select(0, u), items0.index_select(0, torch.cat([i, j]))
        reg = half_sq(*rows) + 0.5 * added(w.pow(2).sum() for w in weights)  # halving is exact (losses.half_sq)
        return {
            "bpr": bpr_loss(*out.bpr_rows(batch)),
            "reg": self.config.reg_weight * reg,
        }

    def content_item_embeddings(self, items, out, id_rows=None):
        """``Z_I`` rows of ``items`` from their gated, fused features (module docstring)."""
        graphs = lambda: feature_knn([p.features for p in self.projectors.values()])  # noqa: E731
        return content_forward_rows(self, self.item_emb.weight, items, id_rows or self.content_id_rows, graphs)


def single_modality(names: list[str], fusion: str) -> list[str]:
    """The modalities a ``fusion`` keeps: all, one by position (``first_only``, ``second_only``) or
    one by role (``visual_only``, ``text_only``; :class:`ConfigError` unless exactly one fits)."""
    if fusion in ("first_only", "second_only"):
        return names[:1] if fusion == "first_only" else names[1:2]
    if fusion not in ("visual_only", "text_only"):
        return names
    role = "image" if fusion == "visual_only" else "text"
    kept = [m for m in names if modality_role(m) == role]
    if len(kept) != 1:
        raise ConfigError(
            f"rlmmrec: fusion={fusion} keeps the {role}-like modality, but {names} have {len(kept)} "
            f"({describe_roles()}); use fusion=first_only or second_only, or --set modalities=[<one name>]"
        )
    return kept
