"""Dense DRAGON, rebuilt from the reference code's formulas (hongyurain/DRAGON, MMRec dragon.py).

Plain torch for tiny inputs, nothing from prismrec: the message passing over ``edge_index``
(both directions, ``aggr='add'``, ``deg^-1/2[row]·deg^-1/2[col]``) is a dense normalised
adjacency; the item graph is the reference's ``get_knn_adj_mat`` (dense cosine top-k, ones,
``(row_sum + 1e-7)^-1/2`` on both sides) mixed ``w·image + (1−w)·text``; the user graph is the
``generate-u-u-matrix`` dictionary (co-occurrence counts, sorted by count) cut to ``k`` with
softmax weights (users with fewer than ``k`` neighbours: their neighbours as they are, i.e. the
model's ``user_pad = "none"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.reference.dense import steps


def edge_propagation(r: torch.Tensor) -> torch.Tensor:
    """Dense ``Â`` of the reference ``Base_gcn``: ``Â[dst, src] = deg_src^-1/2 deg_dst^-1/2``."""
    n_users, n_items = r.shape
    n = n_users + n_items
    users, items = r.nonzero(as_tuple=True)
    row = torch.cat([users, items + n_users])
    col = torch.cat([items + n_users, users])
    deg = torch.zeros(n, dtype=torch.float64).index_add_(0, row, torch.ones(len(row), dtype=torch.float64))
    norm = deg[row].pow(-0.5) * deg[col].pow(-0.5)
    a = torch.zeros(n, n, dtype=torch.float64)
    a[col, row] = norm  # message x_row -> col (PyG source_to_target)
    return a


def knn_adj(features: torch.Tensor, k: int) -> torch.Tensor:
    """The reference ``get_knn_adj_mat`` + ``compute_normalized_laplacian``, dense."""
    x = features / features.norm(dim=-1, keepdim=True)
    sim = x @ x.T
    _, knn = torch.topk(sim, k, dim=-1)
    adj = torch.zeros_like(sim)
    adj.scatter_(1, knn, 1.0)
    d = (1e-7 + adj.sum(-1)).pow(-0.5)
    return d[:, None] * adj * d[None, :]


def user_graph(r: torch.Tensor, k: int) -> torch.Tensor:
    """Dense ``n_U x n_U`` aggregation of ``User_Graph_sample`` with softmax weights."""
    counts = r @ r.T
    counts.fill_diagonal_(0)
    n = counts.shape[0]
    w = torch.zeros_like(counts)
    for u in range(n):
        nbrs = [v for v in range(n) if counts[u, v] > 0]
        nbrs.sort(key=lambda v: (-float(counts[u, v]), v))
        nbrs = nbrs[:k]
        if nbrs:
            idx = torch.tensor(nbrs)
            w[u, idx] = torch.softmax(counts[u, idx], dim=0)
    return w


def gcn(a, features, preference, w1, b1, w2, b2):
    """The reference ``GCN.forward``: ``x + h + h_1`` with ``h = Âx``, ``h_1 = Âh``."""
    temp = F.leaky_relu(features @ w1.T + b1) @ w2.T + b2
    x = F.normalize(torch.cat([preference, temp]))
    h = a @ x
    h_1 = a @ h
    return h + x + h_1


def dragon_forward(r, features, params, weight_u, mm_image_weight=0.1, knn_k=10, user_k=40, n_mm_layers=1):
    """``(user, item)`` of the reference forward with ``construction = 'cat'`` (two modalities)."""
    n_users = r.shape[0]
    a = edge_propagation(r)
    reps = [gcn(a, f, *p) for f, p in zip(features, params)]
    v_rep, t_rep = reps
    representation = torch.cat([v_rep, t_rep], dim=1)
    user_rep = torch.cat([v_rep[:n_users, :, None], t_rep[:n_users, :, None]], dim=2)
    user_rep = weight_u.transpose(1, 2) * user_rep
    user_rep = torch.cat([user_rep[:, :, 0], user_rep[:, :, 1]], dim=1)
    item_rep = representation[n_users:]
    mm_adj = mm_image_weight * knn_adj(features[0], knn_k) + (1 - mm_image_weight) * knn_adj(features[1], knn_k)
    h = steps(mm_adj, item_rep, n_mm_layers)
    h_u1 = user_graph(r, user_k) @ user_rep
    return user_rep + h_u1, item_rep + h


def dragon_loss(user, item, preferences, weight_u, users, pos, neg, reg_weight):
    """The reference ``calculate_loss`` split into its BPR and regularisation terms."""
    pos_scores = (user[users] * item[pos]).sum(1)
    neg_scores = (user[users] * item[neg]).sum(1)
    bpr = -torch.mean(torch.log2(torch.sigmoid(pos_scores - neg_scores)))
    reg = reg_weight * sum((p[users] ** 2).mean() for p in preferences)
    reg = reg + reg_weight * (weight_u**2).mean()
    return bpr, reg
