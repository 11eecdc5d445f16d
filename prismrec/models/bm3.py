"""BM3 — Zhou et al., "Bootstrap Latent Representations for Multi-modal Recommendation", WWW'23
(arXiv 2207.05969); official code enoche/BM3 (also MMRec ``bm3.py``).

Self-supervised: **no negative items**. One online encoder, one shared predictor; the "target"
views are the online outputs themselves, stop-gradient and corrupted by dropout (no momentum
encoder, no augmented graphs).

1. Encoder — LightGCN over the normalised user–item graph ``Â`` (2.1, 2.7), plus a residual of
   the item ID embeddings::

       [Y_U; Y_I] = LGN(Â, [E_U; E_I], L)
       h_U = Y_U,   h_I = Y_I + E_I
       h_m = F_m W_m + b_m                      projected item features of modality m

2. Predictor ``g(x) = x W_p + b_p`` (``d -> d``), shared by users, items and every modality;
   targets are dropout-corrupted, stop-gradient copies (``ρ`` = ``dropout``)::

       ĥ = Dropout_ρ(sg(h))       for h ∈ {h_U, h_I, h_m}   (one mask per distinct batch row)

3. Loss for a batch of observed pairs ``(u, i)`` — ``j`` is ignored; ``cos`` per row, mean over
   the batch::

       L_rec   = (1 − cos(g(h_U)[u], ĥ_I[i])) + (1 − cos(g(h_I)[i], ĥ_U[u]))    graph reconstruction
       L_align = Σ_m 1 − cos(g(h_m)[i], ĥ_I[i])                                   inter-modality alignment
       L_mask  = Σ_m 1 − cos(g(h_m)[i], ĥ_m[i])                                   intra-modality masking
       L_reg   = (‖h_U‖_F + ‖h_I‖_F) / n_I                                        whole matrices (MMRec EmbLoss)
       L = L_rec + λ_reg·L_reg + λ_cl·(L_align + L_mask)

   Logged as ``rec``, ``reg``, ``align_<m>`` and ``mask_<m>`` (each already weighted).

4. Scores: ``ŷ_ui = g(h_U)_u · g(h_I)_i`` — the predictor is applied at inference too, so the
   output rows are ``g(h)``; the encoder output ``h = [h_U; h_I]`` is the auxiliary ``encoder``.

The reference treats its two modalities (image, text) identically, so any number works here
(zero = the ID-only bootstrap). The reference drops out whole matrices and then gathers the
batch rows; here only the batch's distinct rows are corrupted (and projected), which gives the
same distribution (duplicates share a mask) at a fraction of the cost. Masks are drawn from
torch's global generator, for the distinct users, the distinct items, then each modality's
distinct items (see :meth:`BM3.unit_target`). Features are fine-tuned as in the reference
(``train_features``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from prismrec.checks import require_fraction
from prismrec.graph import SparseOperator, bipartite_adjacency
from prismrec.losses import cosine_terms, unit_rows
from prismrec.models import register
from prismrec.nn import lightgcn
from prismrec.nn.encoders import Projector
from prismrec.nn.residual_encoder import residual_encoder_rows, unique
from prismrec.recommender import Output, Recommender


@dataclass
class BM3Config:
    """BM3 settings; defaults are the official best values for Baby (enoche/BM3 README), grids
the reference configuration's (MMRec ``BM3.yaml``)."""

    modalities: list[str] | None = None
    """Modalities with a projector and alignment/masking terms; ``None`` = all present
    (canonical order), ``[]`` = the ID-only bootstrap."""
    embedding_size: int = 64
    """``d``: ID embeddings, projected features (the reference's ``feat_embed_dim``) and predictor."""
    n_layers: int = field(default=1, metadata={"grid": [1, 2]})
    """``L``, LightGCN layers of the encoder; reference grid {1, 2} (Baby best: 1)."""
    dropout: float = field(default=0.5, metadata={"grid": [0.3, 0.5]})
    """``ρ``, dropout rate that corrupts the target views; reference grid {0.3, 0.5} (Baby best: 0.5)."""
    reg_weight: float = field(default=0.1, metadata={"grid": [0.1, 0.01]})
    """``λ_reg`` of ``(‖h_U‖_F + ‖h_I‖_F) / n_I``; reference grid {0.1, 0.01} (Baby best: 0.1)."""
    cl_weight: float = 2.0
    """``λ_cl`` of the alignment and masking terms (fixed at 2.0 in the reference)."""
    train_features: bool = True
    """Fine-tune the raw feature matrices inside the projectors (reference) or keep them frozen."""
    feature_norm: Literal["none", "l2", "standardize"] = "none"
    """Rescale each modality's raw features first (``none`` = the reference's raw values; the
    files' scales differ by 1000x, e.g. lfm2k's VGGish audio, row norms ~1500)."""


@register
class BM3(Recommender):
    """BM3; needs no negatives (``uses_negatives = False``): the ``j`` of a batch is ignored."""

    name = "bm3"
    min_modalities = 0  # modalities=[]: the ID-only bootstrap
    Config = BM3Config
    uses_negatives: ClassVar[bool] = False
    """The loss reads only observed pairs ``(u, i)``; a trainer may skip negative sampling."""

    @classmethod
    def check_settings(cls, config) -> None:
        cls.require_at_least(config, embedding_size=1, n_layers=0)
        require_fraction("dropout", config.dropout, "the fraction of target entries zeroed", high_open=True)

    def __init__(self, dataset, config: BM3Config) -> None:
        super().__init__(dataset, config)
        self.check_dataset(config, dataset)
        self.modalities = self.used_modalities(config, dataset)
        d = config.embedding_size
        self.adjacency = SparseOperator(bipartite_adjacency(dataset.train), symmetric=True)  # Â
        self.user_emb = nn.Parameter(torch.empty(self.n_users, d))  # E_U
        self.item_emb = nn.Parameter(torch.empty(self.n_items, d))  # E_I
        self.predictor = nn.Linear(d, d)  # g
        # h_m = F_m W_m + b_m, features fine-tuned as in the reference.
        self.projectors = nn.ModuleDict(
            {
                m: Projector(dataset.features[m], d, config.train_features, normalize=config.feature_norm)
                for m in self.modalities
            }
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reference init: Xavier-uniform ID tables, Xavier-normal weights, default biases."""
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)
        self.predictor.reset_parameters()
        nn.init.xavier_normal_(self.predictor.weight)
        for projector in self.projectors.values():
            projector.reset_parameters()
            nn.init.xavier_normal_(projector.linear.weight)

    def encode(self) -> torch.Tensor:
        """``h = [h_U; h_I] = LGN(Â, [E_U; E_I], L) + [0; E_I]`` (``N x d``)."""
        h = lightgcn(self.adjacency, torch.cat([self.user_emb, self.item_emb]), self.config.n_layers)
        # + [0; E_I] as one full-size add: its backward passes the gradient through, where slicing
        # h and concatenating would zero-fill and copy two N x d gradients.
        return h + F.pad(self.item_emb, (0, 0, self.n_users, 0))

    def forward(self) -> Output:
        h = self.encode()
        return Output.of_nodes(self.predictor(h), self.n_users, {"encoder": h})  # g(h): scored

    def loss(self, batch, out: Output) -> dict[str, torch.Tensor]:
        online = out.user.index_select(0, batch[0]), out.item.index_select(0, batch[1])  # g(h)[u], g(h)[i]
        h = out.aux["encoder"]
        users, u_at = torch.unique(batch[0], return_inverse=True)
        items, i_at = torch.unique(batch[1], return_inverse=True)
        rows = h.index_select(0, torch.cat([users, items + self.n_users]))
        # ‖h_U‖_F and ‖h_I‖_F from one pass of row sums of squares (no N x d slices in backward).
        squares = h.pow(2).sum(dim=1)
        norms = squares[: self.n_users].sum().sqrt(), squares[self.n_users :].sum().sqrt()
        return self._terms(norms, rows, (users, u_at, items, i_at), online)

    def batch_loss(self, batch) -> dict[str, torch.Tensor]:
        # The loss reads g(h) at the batch's rows only: the predictor is applied to the distinct
        # users and items of the batch, not to all N rows; the encoder, its residual, the rows and
        # the norms of h are one autograd node (nn.residual_encoder). Same terms and gradients. No
        # fallback for a batch that touches nearly every row (lfm2k): the full path gathers the
        # same rows.
        users, u_at = unique(batch[0], self.n_users)
        items, i_at = unique(batch[1], self.n_items)
        index = torch.cat([users, items + self.n_users])
        # h[index], ‖h_U‖, ‖h_I‖ of h = encode()
        rows, norm_u, norm_i = residual_encoder_rows(self.user_emb, self.item_emb, self.adjacency,
                                                     self.config.n_layers, index)
        # split, not two slices: its backward is one concatenation, where each slice's would
        # zero-fill a copy of g and the two copies be added
        g_u, g_i = self.predictor(rows).split([len(users), len(items)])
        online = g_u.index_select(0, u_at), g_i.index_select(0, i_at)
        return self._terms((norm_u, norm_i), rows, (users, u_at, items, i_at), online)

    def _terms(self, norms: tuple, rows: torch.Tensor, distinct: tuple, online: tuple) -> dict[str, torch.Tensor]:
        """The loss terms from ``norms = (‖h_U‖_F, ‖h_I‖_F)`` of the encoder output ``h``, its
        ``rows`` at the batch's distinct users then items, ``distinct = (users, u_at, items,
        i_at)`` (``torch.unique`` of ``u`` and ``i`` with their inverses) and the batch's online
        rows ``(g(h)[u], g(h)[i])``."""
        cfg = self.config
        users, u_at, items, i_at = distinct
        # batch[2] (negatives) is not used. Targets and modality views are computed for the
        # batch's distinct rows only; duplicates share one dropout mask, as they do when the
        # reference drops out whole matrices and then gathers.
        # Targets enter the cosines as unit rows, normalised once per distinct row (losses.cosine_terms).
        target_u = self.unit_target(rows[: len(users)]).index_select(0, u_at)  # ĥ_U[u], unit
        target_i = self.unit_target(rows[len(users) :]).index_select(0, i_at)  # ĥ_I[i], unit
        online_u, online_i = online
        (rec_u,), (rec_i,) = cosine_terms(online_u, [target_i]), cosine_terms(online_i, [target_u])
        terms = {
            "rec": rec_u + rec_i,  # (1 − mean cos(g(h_U)[u], ĥ_I[i])) + (1 − mean cos(g(h_I)[i], ĥ_U[u]))
            # MMRec EmbLoss over the whole encoder output, divided by the last table's rows (n_I).
            "reg": cfg.reg_weight * (norms[0] + norms[1]) / self.n_items,
        }
        for m, projector in self.projectors.items():
            h_m = projector.linear(projector.features.index_select(0, items))  # h_m of the distinct items
            target_m = self.unit_target(h_m).index_select(0, i_at)  # ĥ_m[i], unit
            online_m = self.predictor(h_m).index_select(0, i_at)  # g(h_m)[i]
            # λ_cl (1 − mean cos(g(h_m)[i], ĥ_I[i])) and λ_cl (1 − mean cos(g(h_m)[i], ĥ_m[i]))
            terms[f"align_{m}"], terms[f"mask_{m}"] = cosine_terms(online_m, [target_i, target_m], cfg.cl_weight)
        return terms

    def unit_target(self, rows: torch.Tensor) -> torch.Tensor:
        """``unit_rows(Dropout_ρ(sg(rows)))``: each entry kept with probability ``1 − ρ`` (the mask
        ``torch.rand(rows.shape) >= ρ`` from torch's global generator, about 3x faster on CPU than
        the ``bernoulli_`` behind ``F.dropout``), then each row scaled to unit norm, as the cosines
        read it. Inverted dropout's ``1/(1 − ρ)`` is left out: the normalisation removes it (exactly
        for ρ = 0.5, a power of two; up to rounding otherwise), so it would be one more pass."""
        rows = rows.detach()
        p = self.config.dropout
        if p == 0.0:
            return unit_rows(rows)
        # the mask as floats in place (1.0 kept, 0.0 dropped), multiplied into the rows
        return unit_rows(torch.rand(rows.shape, device=rows.device).ge_(p).mul_(rows))
