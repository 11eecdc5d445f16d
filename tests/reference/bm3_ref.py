"""Dense reference of BM3 (WWW'23), written from the official code's formulas (enoche/BM3).

Plain torch, dense matrices, no prismrec code: the adjacency is normalised with the reference's
``(degree + 1e-7)^-1/2``, propagation stacks and averages the layers, dropout targets are drawn
with ``F.dropout`` on whole matrices in the reference's order (users, items, then each modality
in the order given), and the regulariser is MMRec's ``EmbLoss`` (sum of Frobenius norms divided
by the row count of the last table).
"""

import torch
import torch.nn.functional as F

from tests.reference.dense import bipartite, layer_mean


def normalized_adjacency(train: torch.Tensor) -> torch.Tensor:
    """``D^-1/2 A D^-1/2`` of ``A = [[0, R], [Rᵀ, 0]]`` with degrees ``+1e-7`` (reference)."""
    a = bipartite(train)
    d = ((a > 0).sum(1).to(train.dtype) + 1e-7) ** -0.5
    return d[:, None] * a * d[None, :]


def emb_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec ``EmbLoss``: ``Σ ‖X‖_2 / rows(last)``."""
    return sum(torch.norm(e, p=2) for e in embeddings) / embeddings[-1].shape[0]


def bm3_forward(train, user_emb, item_emb, n_layers):
    """Online encoder: LightGCN layer mean (stacked) plus the item ID residual."""
    n_users = user_emb.shape[0]
    mean = layer_mean(normalized_adjacency(train), torch.cat([user_emb, item_emb]), n_layers)
    return mean[:n_users], mean[n_users:] + item_emb


def bm3_reference(train, params: dict, modalities: list, users, items, n_layers, dropout, reg_weight, cl_weight,
                  masks: dict | None = None):
    """Scores and loss terms of one batch.

    ``params``: ``user_emb``, ``item_emb``, ``pred_w``, ``pred_b`` (``nn.Linear`` layout) and per
    modality ``feat_<m>``, ``w_<m>``, ``b_<m>``. ``masks``: whole-matrix 0/1 dropout masks
    (``user``, ``item`` and each modality), applied as ``F.dropout`` applies its own draw,
    ``x · M / (1 − p)``; ``None`` draws them with ``F.dropout`` as the reference does. Returns a
    dict with ``user``/``item`` (the scored rows, predictor applied), every loss piece, and
    ``total``.
    """
    def drop(x, key):
        return F.dropout(x, dropout) if masks is None else x * masks[key] / (1 - dropout)

    def predictor(x):
        return x @ params["pred_w"].T + params["pred_b"]

    u_ori, i_ori = bm3_forward(train, params["user_emb"], params["item_emb"], n_layers)
    feats_online = {m: params[f"feat_{m}"] @ params[f"w_{m}"].T + params[f"b_{m}"] for m in modalities}
    with torch.no_grad():
        u_target = drop(u_ori.clone(), "user")
        i_target = drop(i_ori.clone(), "item")
        feats_target = {m: drop(feats_online[m].clone(), m) for m in modalities}
    u_online, i_online = predictor(u_ori)[users], predictor(i_ori)[items]
    u_target, i_target = u_target[users], i_target[items]
    out = {"user": predictor(u_ori), "item": predictor(i_ori)}
    out["ui"] = 1 - F.cosine_similarity(u_online, i_target, dim=-1).mean()
    out["iu"] = 1 - F.cosine_similarity(i_online, u_target, dim=-1).mean()
    out["reg"] = reg_weight * emb_loss(u_ori, i_ori)
    cl = 0.0
    for m in modalities:
        online = predictor(feats_online[m])[items]
        target = feats_target[m][items]
        out[f"align_{m}"] = 1 - F.cosine_similarity(online, i_target, dim=-1).mean()
        out[f"mask_{m}"] = 1 - F.cosine_similarity(online, target, dim=-1).mean()
        cl = cl + out[f"align_{m}"] + out[f"mask_{m}"]
    out["total"] = out["ui"] + out["iu"] + out["reg"] + cl_weight * cl
    return out
