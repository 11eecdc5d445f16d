"""Dense reference of LGMRec (AAAI'24), written from the official code's formulas
(georgeguo-cn/LGMRec, MMRec ``lgmrec.py``).

Plain torch, dense matrices, no prismrec code. Random draws follow the reference's order:
Gumbel noise for (items, users) of each modality in turn, then hyperedge dropout for (items,
users) of each modality in turn. The contrastive loss is written in the reference's
exp / sum / log form, over all rows of the key view and summed over the batch. ``noise=False``
replaces the Gumbel-softmax by ``softmax(logits / τ)`` and skips dropout (prismrec's
deterministic evaluation).
"""

import itertools

import torch
import torch.nn.functional as F

from tests.reference.dense import bipartite, layer_mean, steps


def normalized_adjacency(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D^-1/2 A D^-1/2, row sums of A)`` with degrees ``+1e-7`` as in the reference."""
    a = bipartite(train)
    degree = (a > 0).sum(1).to(train.dtype)
    d = (degree + 1e-7) ** -0.5
    return d[:, None] * a * d[None, :], degree


def ssl_triple_loss(emb1, emb2, all_emb, tau):
    n1, n2, na = F.normalize(emb1), F.normalize(emb2), F.normalize(all_emb)
    pos = torch.exp((n1 * n2).sum(dim=1) / tau)
    total = torch.exp(n1 @ na.T / tau).sum(dim=1)
    return -torch.log(pos / total).sum()


def lgmrec_reference(train, params: dict, modalities: list, batch, cfg: dict, noise: bool = True) -> dict:
    """Final rows, hypergraph views and loss terms of one batch.

    ``params``: ``user_emb``, ``item_emb`` and per modality ``feat_<m>``, ``w_<m>`` (``d_m x d``),
    ``v_<m>`` (``d_m x A``). ``cfg``: ``n_ui_layers``, ``n_mm_layers``, ``n_hyper_layer``,
    ``keep_rate``, ``alpha``, ``cl_weight``, ``reg_weight``, ``tau``, ``cf_model``.
    """
    n_users = params["user_emb"].shape[0]
    tau = cfg["tau"]
    adj, degree = normalized_adjacency(train)
    num_inters = (1.0 / (degree + 1e-7))[:n_users, None]

    hyper_edges = {}
    for m in modalities:
        i_hyper = params[f"feat_{m}"] @ params[f"v_{m}"]
        u_hyper = train @ i_hyper
        if noise:
            hyper_edges[m] = (
                F.gumbel_softmax(i_hyper, tau, dim=1, hard=False),
                F.gumbel_softmax(u_hyper, tau, dim=1, hard=False),
            )
        else:
            hyper_edges[m] = (torch.softmax(i_hyper / tau, dim=1), torch.softmax(u_hyper / tau, dim=1))

    ego = torch.cat([params["user_emb"], params["item_emb"]])
    cge = ego if cfg["cf_model"] == "mf" else layer_mean(adj, ego, cfg["n_ui_layers"])

    mge = 0
    for m in modalities:
        item_feats = params[f"feat_{m}"] @ params[f"w_{m}"]
        user_feats = (train @ item_feats) * num_inters
        mge = mge + F.normalize(steps(adj, torch.cat([user_feats, item_feats]), cfg["n_mm_layers"]))
    lge = cge + mge

    views = {}
    for m in modalities:
        i_hyper, u_hyper = hyper_edges[m]
        if noise:
            i_hyper = F.dropout(i_hyper, 1 - cfg["keep_rate"])
            u_hyper = F.dropout(u_hyper, 1 - cfg["keep_rate"])
        i_ret = cge[n_users:]
        for _ in range(cfg["n_hyper_layer"]):
            lat = i_hyper.T @ i_ret
            i_ret = i_hyper @ lat
            u_ret = u_hyper @ lat
        views[m] = (u_ret, i_ret)
    ghe = sum(torch.cat(views[m]) for m in modalities)
    all_embs = lge + cfg["alpha"] * F.normalize(ghe)
    u_embs, i_embs = all_embs[:n_users], all_embs[n_users:]

    users, pos, neg = batch
    u_g, p_g, n_g = u_embs[users], i_embs[pos], i_embs[neg]
    bpr = -torch.mean(F.logsigmoid((u_g * p_g).sum(1) - (u_g * n_g).sum(1)))
    hcl = 0
    for a, b in itertools.combinations(modalities, 2):
        (ua, ia), (ub, ib) = views[a], views[b]
        hcl = hcl + ssl_triple_loss(ua[users], ub[users], ub, tau) + ssl_triple_loss(ia[pos], ib[pos], ib, tau)
    reg = (torch.norm(u_g, p=2) + torch.norm(p_g, p=2) + torch.norm(n_g, p=2)) / n_g.shape[0]
    out = {
        "user": u_embs,
        "item": i_embs,
        "cge": cge,
        "bpr": bpr,
        "hcl": cfg["cl_weight"] * hcl,
        "reg": cfg["reg_weight"] * reg,
    }
    out["total"] = out["bpr"] + out["hcl"] + out["reg"]
    return out
