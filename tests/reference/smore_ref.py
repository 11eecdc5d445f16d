"""Dense SMORE, rebuilt from the reference code's formulas (kennethorq/SMORE, MMRec smore.py).

Plain torch for tiny inputs, nothing from prismrec: the normalised adjacency and ``R`` are dense;
the modality graphs are ``build_sim`` + ``build_knn_normalized_graph`` (dense cosine, top-k
values kept, ``sym`` normalisation with row sums); ``max_pool_fusion`` takes the max over the
union of stored entries (absent = −inf); the rest follows ``forward`` and ``calculate_loss``
for two modalities (image, text).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.reference.dense import bipartite, layer_mean, steps


def norm_adj(r: torch.Tensor) -> torch.Tensor:
    a = bipartite(r)
    d = a.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return d[:, None] * a * d[None, :]


def knn_normalized(features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dense graph, stored mask)`` of ``build_knn_normalized_graph(build_sim(F), k, 'sym')``."""
    x = features / features.norm(p=2, dim=-1, keepdim=True)
    sim = x @ x.T
    val, ind = torch.topk(sim, k, dim=-1)
    g = torch.zeros_like(sim).scatter_(1, ind, val)
    stored = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, ind, True)
    deg = g.sum(1)
    d = deg.pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return d[:, None] * g * d[None, :], stored


def max_pool_fusion(graphs) -> torch.Tensor:
    values = torch.stack([torch.where(m, g, torch.full_like(g, float("-inf"))) for g, m in graphs])
    best = values.max(0).values
    return torch.where(torch.isinf(best), torch.zeros_like(best), best)


def spectrum(image_feats, text_feats, k_v, k_t, k_f):
    d = image_feats.shape[1]
    fv = torch.fft.rfft(image_feats, dim=1, norm="ortho")
    ft = torch.fft.rfft(text_feats, dim=1, norm="ortho")
    cv, ct, cf = (torch.view_as_complex(w) for w in (k_v, k_t, k_f))
    image_conv = torch.fft.irfft(fv * cv, n=d, dim=1, norm="ortho")
    text_conv = torch.fft.irfft(ft * ct, n=d, dim=1, norm="ortho")
    fusion_conv = torch.fft.irfft(ft * fv * cf, n=d, dim=1, norm="ortho")
    return image_conv, text_conv, fusion_conv


def lin(x, wb):
    w, b = wb
    return x @ w.T + (b if b is not None else 0.0)


def smore_forward(r, features, p, image_k, text_k, n_ui_layers, n_layers):
    """``(users, items, side, content)`` of the reference ``forward(adj, train=True)``, dropout 0."""
    n_users = r.shape[0]
    adj = norm_adj(r)
    rmat = adj[:n_users, n_users:]
    image_adj, image_mask = knn_normalized(features[0], image_k)
    text_adj, text_mask = knn_normalized(features[1], text_k)
    fusion_adj = max_pool_fusion([(image_adj, image_mask), (text_adj, text_mask)])

    image_feats = lin(p["image_emb"], p["image_trs"])
    text_feats = lin(p["text_emb"], p["text_trs"])
    image_conv, text_conv, fusion_conv = spectrum(image_feats, text_feats, p["k_v"], p["k_t"], p["k_f"])
    item_id = p["item"]
    image_item = item_id * torch.sigmoid(lin(image_conv, p["gate_v"]))
    text_item = item_id * torch.sigmoid(lin(text_conv, p["gate_t"]))
    fusion_item = item_id * torch.sigmoid(lin(fusion_conv, p["gate_f"]))

    content = layer_mean(adj, torch.cat([p["user"], item_id]), n_ui_layers)

    def view(graph, h):
        h = steps(graph, h, n_layers)
        return torch.cat([rmat @ h, h])

    image_embeds = view(image_adj, image_item)
    text_embeds = view(text_adj, text_item)
    fusion_embeds = view(fusion_adj, fusion_item)

    def query(x, q):
        return lin(torch.tanh(lin(x, q[0])), q[1])

    agg_image = torch.softmax(query(fusion_embeds, p["query_v"]), dim=-1) * image_embeds
    agg_text = torch.softmax(query(fusion_embeds, p["query_t"]), dim=-1) * text_embeds
    image_prefer = torch.sigmoid(lin(content, p["prefer_v"]))
    text_prefer = torch.sigmoid(lin(content, p["prefer_t"]))
    fusion_prefer = torch.sigmoid(lin(content, p["prefer_f"]))
    side = torch.stack([image_prefer * agg_image, text_prefer * agg_text, fusion_prefer * fusion_embeds]).mean(0)
    all_embeds = content + side
    return all_embeds[:n_users], all_embeds[n_users:], side, content


def info_nce(view1, view2, temperature):
    view1, view2 = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    pos = torch.exp((view1 * view2).sum(dim=-1) / temperature)
    ttl = torch.exp(view1 @ view2.T / temperature).sum(dim=1)
    return torch.mean(-torch.log(pos / ttl))


def smore_loss(users_e, items_e, side, content, users, pos, neg, reg_weight, cl_weight, temperature=0.2):
    """``(mf_loss, emb_loss, cl_weight·cl_loss)`` of ``calculate_loss`` (batch size = len(users))."""
    n_users = users_e.shape[0]
    u, i, j = users_e[users], items_e[pos], items_e[neg]
    reg = (0.5 * (u**2).sum() + 0.5 * (i**2).sum() + 0.5 * (j**2).sum()) / len(users)
    mf = -torch.mean(F.logsigmoid((u * i).sum(1) - (u * j).sum(1)))
    side_u, side_i = side[:n_users], side[n_users:]
    content_u, content_i = content[:n_users], content[n_users:]
    cl = info_nce(side_i[pos], content_i[pos], temperature) + info_nce(side_u[users], content_u[users], temperature)
    return mf, reg_weight * reg, cl_weight * cl
