"""Dense reference of DA-MRS on a LightGCN backbone (official XMUDM/DA-MRS ``src/models/lightgcn.py``).

Written from the official formulas with plain torch on dense matrices: dense ``n x n`` cosine
matrices masked at their means, a per-item loop for the top-k, the co-interaction matrix counted
densely, the reference's ``compute_normalized_laplacian`` (binary degrees + 1e-7), its
``label_prediction``/``generate_pesudo_labels``/``neighbor_discrimination``/``KL``/
``get_weight_modal``/``bpr_loss`` as written there (generalised from its three views to any
number: pseudo-label score ``Σ_v q_v + q_x``, which is ``q_1 + q_2 + q_x + q_x`` for three).
Ties in a top-k go to the lower index (``torch.topk`` leaves them unspecified).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.reference.dense import bipartite, layer_mean, steps


def stable_topk(row: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries, ties to the lower index."""
    return torch.sort(row, descending=True, stable=True).indices[:k]


def laplacian(rows: list[int], cols: list[int], n: int) -> torch.Tensor:
    """The reference's ``compute_normalized_laplacian``: binary row sums + 1e-7, ``d_i^-½ d_j^-½``."""
    adj = torch.zeros(n, n)
    adj[rows, cols] = 1.0
    r_inv_sqrt = (1e-7 + adj.sum(1)).pow(-0.5)
    return adj * r_inv_sqrt[:, None] * r_inv_sqrt[None, :]


def modality_graphs(features: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """``get_knn_adj_mat``: sims zeroed where any modality is below its mean, per-row top-k."""
    sims = []
    for f in features:
        unit = f / f.norm(p=2, dim=-1, keepdim=True)
        sims.append(unit @ unit.T)
    masks = [s < s.mean() for s in sims]
    for s in sims:
        for mask in masks:
            s[mask] = 0
    n = sims[0].shape[0]
    rows, cols = [], [[] for _ in sims]
    for i in range(n):
        count = int((sims[0][i] != 0).sum())
        take = min(count, k)
        rows += [i] * take
        for m, s in enumerate(sims):
            cols[m] += stable_topk(s[i], take).tolist()
    return [laplacian(rows, c, n) for c in cols]


def session_graph(train: torch.Tensor, k: int, min_count: int = 2) -> torch.Tensor:
    """``build_iib_graph.py`` + ``get_session_adj``: self + top-k items sharing >= 2 users."""
    counts = train.T @ train
    counts.fill_diagonal_(0)
    counts[counts < min_count] = 0
    n = counts.shape[0]
    rows, cols = [], []
    for i in range(n):
        rows.append(i)
        cols.append(i)
        take = min(int((counts[i] != 0).sum()), k)
        for j in stable_topk(counts[i], take).tolist():
            rows.append(i)
            cols.append(j)
    return laplacian(rows, cols, n)


def norm_adj(train: torch.Tensor) -> torch.Tensor:
    """``get_norm_adj_mat``: ``D^-½ A D^-½`` of the bipartite graph (degrees + 1e-7)."""
    a = bipartite(train)
    d = (a.sum(1) + 1e-7).pow(-0.5)
    return d[:, None] * a * d[None, :]


def damrs_reference(train, features, user_emb, item_emb, batch, *, knn_k, behavior_k, n_ui_layers,
                    n_mm_layers, kl_weight, neighbor_weight, n_pos, temperature=0.2):
    """Forward and loss terms of the official model; ``features`` = modalities in the model's
    order, the session (behaviour) view last. Returns a dict of tensors."""
    n_u = train.shape[0]
    graphs = modality_graphs([f.clone() for f in features], knn_k) + [session_graph(train, behavior_k)]

    # forward
    allemb = layer_mean(norm_adj(train), torch.cat([user_emb, item_emb]), n_ui_layers)
    user_g, item_g = allemb[:n_u], allemb[n_u:]
    hs = [steps(g, item_emb.clone(), n_mm_layers) for g in graphs]
    h_mean = sum(hs) / len(hs)

    users, pos, neg = batch
    u_id = torch.unique(users)
    i_id = torch.unique(torch.cat([pos, neg]))

    # neighbour discrimination
    def label_prediction(emb, aug):
        return F.softmax(F.normalize(emb, dim=1) @ F.normalize(aug, dim=1).T, dim=1)

    probs = [label_prediction(h[i_id], h) for h in hs]
    nd = []
    for x, h in enumerate(hs):
        positive = sum(probs) + probs[x]
        mm_pos = torch.topk(positive, n_pos, dim=-1).indices
        prob = probs[x].clone()
        prob.scatter_(1, mm_pos, 0)
        s_pos = torch.topk(prob, n_pos, dim=-1).indices
        n_aug = F.normalize(h, dim=1)
        n_emb = F.normalize(h[i_id], dim=1)
        emb2 = n_emb.reshape(-1, 1, n_emb.shape[1]).tile(1, n_pos, 1)
        mm_score = torch.exp((emb2 * n_aug[mm_pos]).sum(2) / temperature).sum(1)
        s_score = torch.exp((emb2 * n_aug[s_pos]).sum(2) / temperature).sum(1)
        ttl = torch.exp(n_emb @ n_aug.T / temperature).sum(1)
        cl = -torch.log(mm_score / ttl + 10e-10) - torch.log(s_score / (ttl - mm_score) + 10e-10)
        nd.append(cl.mean())
    neighbor = sum(nd) / len(nd)

    # preference KL
    def kl(p1, p2):
        return p1 * torch.log(p1) - p1 * torch.log(p2) + (1 - p1) * torch.log(1 - p1) - (1 - p1) * torch.log(1 - p2)

    p_g = torch.sigmoid(user_g[u_id] @ F.normalize(item_g[i_id], dim=-1).T)
    p_t = torch.sigmoid(user_g[u_id] @ F.normalize(h_mean[i_id], dim=-1).T)
    kl_loss = torch.mean(kl(p_g, p_t) + kl(p_t, p_g))

    # feedback weights (get_weight_modal)
    ug = user_g[users]
    p_tensor = torch.sigmoid(torch.stack([(ug * F.normalize(h[pos], dim=-1)).sum(1) for h in hs]))
    n_tensor = torch.sigmoid(torch.stack([(ug * F.normalize(h[neg], dim=-1)).sum(1) for h in hs]))
    p_var = torch.var(p_tensor, dim=0).detach()
    p_mean = torch.mean(p_tensor, dim=0).detach()
    p_max = torch.max(p_tensor, dim=0).values
    n_mean = torch.mean(n_tensor).detach()
    pos_weight = torch.clamp(p_mean * torch.exp(-p_var).pow(2.0), 0, 1).detach()
    mask = torch.zeros_like(p_mean)
    mask[p_mean < n_mean] = 1
    neg_weight = torch.clamp((p_max - n_mean) * mask, 0, 1).detach()

    # weighted BPR
    ia = item_g + h_mean
    ps = (ug * ia[pos]).sum(1)
    ns = (ug * ia[neg]).sum(1)
    bpr = -torch.mean(torch.log(torch.sigmoid(ps - ns)) * pos_weight + torch.log(torch.sigmoid(ns - ps)) * neg_weight)

    total = bpr + neighbor_weight * neighbor + kl_weight * kl_loss
    return {
        "user": user_g, "item": ia, "graphs": graphs, "views": hs, "bpr": bpr, "neighbor": neighbor,
        "kl": kl_loss, "total": total, "pos_weight": pos_weight, "neg_weight": neg_weight,
    }
