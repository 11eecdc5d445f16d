"""Dense LATTICE, rebuilt from the reference code's formulas (CRIPAC-DIG/LATTICE, MMRec lattice.py).

Plain torch on dense matrices, for tiny inputs only: ``n × n`` similarities, ``topk`` +
``scatter`` sparsification, a dense ``D^-1/2 A D^-1/2`` "laplacian", the dense
``D^-1 (A + I)`` user–item matrix and a stacked layer mean. Nothing from prismrec is used.
"""

from __future__ import annotations

import torch

from tests.reference.dense import bipartite, layer_mean, steps


def build_sim(context: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Cosine similarity of every pair of rows (reference ``build_sim``; ``eps`` > 0 keeps a zero
    row at similarity 0 instead of NaN)."""
    context_norm = context / torch.norm(context, p=2, dim=-1, keepdim=True).clamp_min(eps)
    return context_norm @ context_norm.T


def build_knn_neighbourhood(adj: torch.Tensor, topk: int) -> torch.Tensor:
    """Keep each row's ``topk`` largest entries (values kept), zero elsewhere."""
    knn_val, knn_ind = torch.topk(adj, topk, dim=-1)
    return torch.zeros_like(adj).scatter(-1, knn_ind, knn_val)


def compute_normalized_laplacian(adj: torch.Tensor) -> torch.Tensor:
    """``D^-1/2 A D^-1/2`` with row sums ``D`` (inf -> 0)."""
    rowsum = adj.sum(-1)
    d_inv_sqrt = rowsum.pow(-0.5)
    d_inv_sqrt = torch.where(torch.isinf(d_inv_sqrt), torch.zeros_like(d_inv_sqrt), d_inv_sqrt)
    d = torch.diag(d_inv_sqrt)
    return d @ adj @ d


def norm_adj_self_loops(r: torch.Tensor) -> torch.Tensor:
    """``D^-1 (A + I)`` for ``A = [[0, R], [Rᵀ, 0]]`` (reference ``normalized_adj_single``)."""
    a = bipartite(r)
    a = a + torch.eye(a.shape[0], dtype=r.dtype)
    rowsum = a.sum(1)
    d_inv = 1.0 / rowsum
    d_inv = torch.where(torch.isinf(d_inv), torch.zeros_like(d_inv), d_inv)
    return torch.diag(d_inv) @ a


def lattice_forward(
    r: torch.Tensor,
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    raw_feats: list[torch.Tensor],
    trs: list[tuple[torch.Tensor, torch.Tensor]],
    modal_weight: torch.Tensor,
    topk: int,
    lambda_coeff: float,
    n_ui_layers: int,
    n_ii_layers: int,
    present: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference ``forward(adj, build_item_graph=True)`` with ``cf_model = 'lightgcn'``.

    ``trs`` are the ``(weight, bias)`` of each modality's ``nn.Linear`` (``weight`` is
    ``d_f × d_m``); ``raw_feats`` are the (fine-tuned) feature tables. Returns the user and item
    embeddings and the item graph ``S``.

    ``present`` (``n x M`` bool, prismrec's mask-aware extension, not in the reference): modality
    ``m``'s graphs link only items that have it (the learned top-``k`` among them) and row ``i``
    weighs its modalities ``α_m p_im / Σ_m' α_m' p_im'``.
    """
    weight = torch.softmax(modal_weight, dim=0)
    if present is not None:
        return _masked_forward(r, user_emb, item_emb, raw_feats, trs, weight, topk, lambda_coeff,
                               n_ui_layers, n_ii_layers, present)
    learned, original = 0, 0
    for m, (feats, (w, b)) in enumerate(zip(raw_feats, trs)):
        projected = feats @ w.T + b
        learned_m = build_knn_neighbourhood(build_sim(projected), topk)
        # the frozen graph comes from the raw features at construction time (no gradient)
        original_m = compute_normalized_laplacian(build_knn_neighbourhood(build_sim(feats.detach()), topk))
        if len(raw_feats) == 1:
            learned, original = learned_m, original_m
        else:
            learned = learned + weight[m] * learned_m
            original = original + weight[m] * original_m
    learned = compute_normalized_laplacian(learned)
    item_adj = (1 - lambda_coeff) * learned + lambda_coeff * original
    return _propagate(r, user_emb, item_emb, item_adj, n_ui_layers, n_ii_layers)


def _masked_forward(r, user_emb, item_emb, raw_feats, trs, weight, topk, lambda_coeff, n_ui_layers,
                    n_ii_layers, present):
    """``lattice_forward`` with a presence mask (its docstring)."""
    row_weight = weight.unsqueeze(0) * present.to(weight.dtype)
    row_weight = row_weight / row_weight.sum(dim=1, keepdim=True).clamp_min(1e-12)
    learned, original = 0, 0
    for m, (feats, (w, b)) in enumerate(zip(raw_feats, trs)):
        keep = present[:, m]
        pair = (keep.unsqueeze(1) & keep.unsqueeze(0)).to(weight.dtype)
        sim = build_sim(feats @ w.T + b).masked_fill(~keep.unsqueeze(0), float("-inf"))
        learned_m = build_knn_neighbourhood(sim, topk) * pair
        original_m = compute_normalized_laplacian(build_knn_neighbourhood(build_sim(feats.detach(), 1e-12), topk))
        learned = learned + row_weight[:, m : m + 1] * learned_m
        original = original + row_weight[:, m : m + 1] * (original_m * pair)
    item_adj = (1 - lambda_coeff) * compute_normalized_laplacian(learned) + lambda_coeff * original
    return _propagate(r, user_emb, item_emb, item_adj, n_ui_layers, n_ii_layers)


def _propagate(r, user_emb, item_emb, item_adj, n_ui_layers, n_ii_layers):
    """The forward's propagation given the item graph ``S`` (``item_adj``)."""
    h = steps(item_adj, item_emb, n_ii_layers)
    all_emb = layer_mean(norm_adj_self_loops(r), torch.cat([user_emb, item_emb]), n_ui_layers)
    n_users = user_emb.shape[0]
    u, i = all_emb[:n_users], all_emb[n_users:]
    i = i + h / torch.norm(h, p=2, dim=1, keepdim=True).clamp_min(1e-12)
    return u, i, item_adj


def lattice_loss(u_emb, i_emb, users, pos, neg, reg_weight):
    """Reference ``bpr_loss``: ``-mean logσ(pos − neg)`` and ``reg·(½Σu² + ½Σi² + ½Σj²)/B``."""
    users_e, pos_e, neg_e = u_emb[users], i_emb[pos], i_emb[neg]
    pos_scores = (users_e * pos_e).sum(1)
    neg_scores = (users_e * neg_e).sum(1)
    regularizer = 0.5 * (users_e**2).sum() + 0.5 * (pos_e**2).sum() + 0.5 * (neg_e**2).sum()
    regularizer = regularizer / len(users)
    mf_loss = -torch.nn.functional.logsigmoid(pos_scores - neg_scores).mean()
    return mf_loss, reg_weight * regularizer
