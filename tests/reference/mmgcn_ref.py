"""Dense MMGCN, rebuilt from the reference code's formulas (weiyinwei/MMGCN, MMRec mmgcn.py).

Plain torch for tiny inputs: the message passing over ``edge_index`` (both directions, no self
loops, ``aggr = 'mean'``) is a dense neighbour mean; layers use concatenation (the reference's
``concate = 'False'`` is a truthy string) and the ID embedding in every layer. Nothing from
prismrec is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def edge_index_of(r: torch.Tensor) -> torch.Tensor:
    """The reference's edge_index: (user, n_users + item) pairs, then the reversed pairs."""
    users, items = r.nonzero(as_tuple=True)
    edges = torch.stack([users, items + r.shape[0]])
    return torch.cat([edges, edges[[1, 0]]], dim=1)


def mean_message_passing(x: torch.Tensor, edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """``out_i = mean_{(j -> i) ∈ edges} x_j`` (PyG ``aggr='mean'``, empty neighbourhood -> 0)."""
    src, dst = edge_index
    dense = torch.zeros(n, n, dtype=x.dtype)
    dense[dst, src] = 1.0
    deg = dense.sum(1, keepdim=True)
    return torch.where(deg > 0, (dense @ x) / deg.clamp_min(1), torch.zeros_like(deg))


def gcn_forward(features, id_embedding, edge_index, p) -> torch.Tensor:
    """The reference ``GCN.forward`` (three layers written out as in the reference)."""
    n = id_embedding.shape[0]
    temp = features @ p["mlp"][0].T + p["mlp"][1] if p["mlp"] is not None else features
    x = torch.cat([p["preference"], temp])
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    for layer in range(3):
        w = p["conv"][layer]
        lw, lb = p["linear"][layer]
        gw, gb = p["gate"][layer]
        h = F.leaky_relu(mean_message_passing(x @ w, edge_index, n))
        x_hat = F.leaky_relu(x @ lw.T + lb) + id_embedding
        x = F.leaky_relu(torch.cat([h, x_hat], dim=1) @ gw.T + gb)
    return x


def mmgcn_forward(r, id_embedding, features, params) -> torch.Tensor:
    """``representation = Σ_m GCN_m / num_modal`` (``N x d``, users first)."""
    edge_index = edge_index_of(r)
    reps = [gcn_forward(f, id_embedding, edge_index, p) for f, p in zip(features, params)]
    return sum(reps) / len(reps)


def mmgcn_loss(out, id_embedding, first_preference, n_users, users, pos, neg, reg_weight):
    """The reference ``calculate_loss``: BPR through ``score @ [1, -1]`` plus its L2 term."""
    user_tensor = users.repeat_interleave(2)
    item_tensor = torch.stack([pos + n_users, neg + n_users]).t().contiguous().view(-1)
    score = (out[user_tensor] * out[item_tensor]).sum(1).view(-1, 2)
    weight = torch.tensor([[1.0], [-1.0]], dtype=out.dtype)
    loss = -torch.mean(torch.log(torch.sigmoid(score @ weight)))
    reg = (id_embedding[user_tensor] ** 2 + id_embedding[item_tensor] ** 2).mean()
    reg = reg + (first_preference**2).mean()
    return loss, reg_weight * reg
