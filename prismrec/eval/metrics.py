"""Full-ranking top-K metrics, exact and vectorised (ALGORITHMS.md 1.4).

Definitions are MMRec's (``src/utils/metrics.py``): per-user values averaged over the users with
at least one held-out positive; NDCG's ideal DCG and MAP's normaliser use ``min(|T_u|, K)``.
Masked items score ``-inf``; ties are broken by the lower item id. The hot path is batched: one
score block per user batch, masking by one fill, ``torch.topk``, hits by one gather.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from prismrec.errors import ConfigError

METRIC_NAMES = ("recall", "ndcg", "precision", "map", "hit")
"""Every metric the evaluator computes at each cut-off ``K`` (keys ``<name>@K``)."""


def check_cut_offs(ks: Sequence[int], n_items: int, dataset: str, option: str, fix: str = "") -> None:
    """Refuse a cut-off ``K`` the user gave that is above the dataset's item count.

    Such a top-K list cannot be filled: every item is ranked and ``precision@K`` counts slots
    that hold no item, so the numbers read as if measured at K while they are not. ``option``
    names where the cut-off came from (``--ks``, ``--metric``, ``topk``); ``fix``, when given,
    replaces the default advice.
    """
    over = sorted({int(k) for k in ks if int(k) > n_items})
    if over:
        raise ConfigError(
            f"{option}: cut-off {', '.join(map(str, over))} is above the {n_items:,} items of {dataset}; "
            + (fix or f"give cut-offs from 1 to {n_items:,}"))


def ranked_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each row's top-``k`` scores, ordered by (score desc, item id asc).

    ``torch.topk`` is exact except for ties, whose order it leaves open. Rows whose top ``k + 1``
    values contain a tie (rare with float scores, common with masked ``-inf`` rows) are re-ranked
    with a stable full sort, which puts the lower id first.
    """
    n = scores.shape[1]
    k = min(k, n)
    values, idx = torch.topk(scores, min(k + 1, n), dim=1)
    tied = (values[:, 1:] == values[:, :-1]).any(dim=1)
    idx = idx[:, :k]
    if tied.any():
        rows = tied.nonzero().squeeze(1)
        order = torch.sort(scores[rows], dim=1, descending=True, stable=True).indices
        idx[rows] = order[:, :k]
    return idx


def _rows_coo(matrix: sp.csr_matrix, rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(local row, column) index pairs of the given CSR rows."""
    block = matrix[rows]
    local = np.repeat(np.arange(len(rows)), np.diff(block.indptr))
    return (
        torch.from_numpy(local).to(device),
        torch.from_numpy(block.indices.astype(np.int64)).to(device),
    )


def _flat_index(matrix: sp.csr_matrix, rows: np.ndarray, device) -> torch.Tensor:
    """Positions ``b * n_items + i`` of the entries ``(rows[b], i)`` of ``matrix`` in a flattened
    ``len(rows) x n_items`` block."""
    r, c = _rows_coo(matrix, rows, device)
    return r * matrix.shape[1] + c


def mask_items(scores: torch.Tensor, exclude: sp.csr_matrix, rows: np.ndarray) -> torch.Tensor:
    """Set ``scores[b, i] = -inf`` for every item ``i`` of row ``rows[b]`` of ``exclude`` (in place;
    ``scores`` contiguous)."""
    if exclude.nnz:
        scores.view(-1).index_fill_(0, _flat_index(exclude, rows, scores.device), -torch.inf)
    return scores


class UserBatches:
    """The users of ``truth`` with at least one positive, in batches of ``batch_size``, with what
    ranking a batch needs that does not depend on the scores: its user ids on ``device``, the
    positions of its masked (``exclude``) and truth entries in its flattened ``B x n_items`` score
    block, and its truth counts. Built once per split (an :class:`~prismrec.eval.Evaluator` ranks
    the same split every epoch), in memory linear in the two matrices' entries."""

    def __init__(self, truth: sp.csr_matrix, exclude: sp.csr_matrix | None, batch_size: int,
                 device: torch.device | str = "cpu") -> None:
        truth = sp.csr_matrix(truth)
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
            if exclude.shape != truth.shape:
                raise ValueError(f"exclude shape {exclude.shape} != truth shape {truth.shape}")
        n_truth = np.diff(truth.indptr)
        self.users = np.flatnonzero(n_truth > 0)
        self.n_items = truth.shape[1]
        self.batches = []
        for start in range(0, len(self.users), batch_size):
            rows = self.users[start : start + batch_size]
            self.batches.append((
                torch.from_numpy(rows).to(device),
                _flat_index(exclude, rows, device) if exclude is not None and exclude.nnz else None,
                _flat_index(truth, rows, device),
                torch.from_numpy(n_truth[rows]).to(device),
            ))


def batch_hits(scores: torch.Tensor, masked: torch.Tensor | None, truth: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean ``B x k`` hit matrix of the top-``k`` ranking of ``scores`` (contiguous, modified in
    place), whose flattened positions ``masked`` are excluded (set to ``-inf``) and ``truth`` are
    the positives (a batch of :class:`UserBatches`)."""
    if masked is not None:
        scores.view(-1).index_fill_(0, masked, -torch.inf)
    top = ranked_topk(scores, k)
    # torch.topk ranks NaN above every number, so a NaN left after masking is in its row's top.
    if torch.isnan(scores.gather(1, top[:, :1])).any():
        raise FloatingPointError(
            "NaN in model scores: the model diverged (lower the learning rate or check inputs)"
        )
    # Hits: the batch's truth as a B x n_items indicator (a quarter of the score block's bytes),
    # read at each top-k entry.
    is_truth = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    is_truth[truth] = True
    return is_truth.view(scores.shape).gather(1, top)


def metrics_from_hits(
    hits: torch.Tensor, n_truth: torch.Tensor, ks: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Per-user metric values (float64) at every ``K`` from a ``B x max(ks)`` hit matrix."""
    h = hits.to(torch.float64)
    n = n_truth.to(torch.float64)
    ranks = torch.arange(1, h.shape[1] + 1, dtype=torch.float64, device=h.device)
    discount = 1.0 / torch.log2(ranks + 1.0)
    ideal = torch.cumsum(discount, 0)
    found_at_rank = torch.cumsum(h, 1)  # hits within the top r: whole numbers, exact in any order
    gain, precision_gain = h * discount, h * (found_at_rank / ranks)
    out = {}
    for k in ks:
        found = found_at_rank[:, min(k, h.shape[1]) - 1]  # k may exceed the item count
        cap = torch.clamp(n, max=k)  # min(|T_u|, K)
        out[f"recall@{k}"] = found / n
        out[f"precision@{k}"] = found / k
        out[f"hit@{k}"] = (found > 0).to(torch.float64)
        out[f"ndcg@{k}"] = gain[:, :k].sum(1) / ideal[cap.long() - 1]
        out[f"map@{k}"] = precision_gain[:, :k].sum(1) / cap
    return out


def evaluate_ranking(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    truth: sp.csr_matrix,
    exclude: sp.csr_matrix | None,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 4096,
    per_user: bool = False,
    device: torch.device | str = "cpu",
    batches: UserBatches | None = None,
) -> dict:
    """Metrics of the ranking ``score_fn(users)`` over all items, for users with truth.

    ``score_fn`` maps a LongTensor of user ids to a fresh ``B x n_items`` score tensor (it is
    modified in place). Returns ``{"recall@K": mean, ...}`` with ``"users"`` (the count of
    evaluated users); with ``per_user=True`` also ``"per_user"``: user ids and their values.
    ``batches``: the :class:`UserBatches` of ``truth`` and ``exclude`` when the caller keeps them
    (then ``truth``, ``exclude``, ``batch_size`` and ``device`` are not read).
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    plan = batches if batches is not None else UserBatches(truth, exclude, batch_size, device)
    users = plan.users
    names: list[str] = []
    blocks: list[torch.Tensor] = []  # per user batch: metrics x users, kept on the scores' device
    for ids, masked, positives, n_truth in plan.batches:
        scores = score_fn(ids).contiguous()
        if scores.shape != (len(ids), plan.n_items):
            raise ValueError(
                f"score_fn returned shape {tuple(scores.shape)}, expected {(len(ids), plan.n_items)}"
            )
        values = metrics_from_hits(batch_hits(scores, masked, positives, ks[-1]), n_truth, ks)
        names = list(values)
        blocks.append(torch.stack(list(values.values())))
    result: dict = {"users": int(len(users))}
    # one copy to the host for the whole evaluation (on a GPU each copy waits for the device)
    per = dict(zip(names, torch.cat(blocks, dim=1).cpu().numpy())) if blocks else {}
    for k in ks:
        for metric in METRIC_NAMES:
            name = f"{metric}@{k}"
            result[name] = float(per[name].mean()) if len(users) else 0.0
    if per_user:
        result["per_user"] = {"user": users, **per}
    return result


def rank_metrics(
    scores: torch.Tensor,
    truth: sp.csr_matrix,
    exclude: sp.csr_matrix | None,
    ks: Sequence[int] = (10, 20),
    per_user: bool = False,
) -> dict:
    """Top-K metrics of a full ``users x items`` score matrix (public entry point).

    ``truth`` holds each user's held-out positives, ``exclude`` the items to mask (typically the
    training items), both CSR of the same shape as ``scores``. Keys ``recall@K``, ``ndcg@K``,
    ``precision@K``, ``map@K``, ``hit@K`` and ``users``.
    """
    if tuple(scores.shape) != tuple(truth.shape):
        raise ValueError(f"scores shape {tuple(scores.shape)} != truth shape {truth.shape}")
    return evaluate_ranking(
        lambda u: scores[u],  # advanced indexing copies: masking cannot touch `scores`
        truth,
        exclude,
        ks=ks,
        per_user=per_user,
        device=scores.device,
    )
