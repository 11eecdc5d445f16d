"""Slow but obvious reference for the ranking metrics: one user at a time, plain Python.

Written from the definitions in ALGORITHMS.md 1.4 (MMRec's ``utils/metrics.py``), sharing no
code with ``prismrec.eval``.
"""

import math

import numpy as np


def reference_metrics(scores: np.ndarray, truth: np.ndarray, exclude: np.ndarray, ks) -> dict:
    """``scores``, ``truth``, ``exclude``: dense users x items arrays (bool for the last two)."""
    totals = {}
    n_users = 0
    for u in range(scores.shape[0]):
        positives = set(np.flatnonzero(truth[u]).tolist())
        if not positives:
            continue
        n_users += 1
        candidates = [i for i in range(scores.shape[1])]
        key = lambda i: (-(float("-inf") if exclude[u, i] else float(scores[u, i])), i)  # noqa: E731
        ranking = sorted(candidates, key=key)
        for k in ks:
            top = ranking[:k]
            hits = [1 if i in positives else 0 for i in top]
            n = len(positives)
            found = sum(hits)
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(n, k)))
            ap, seen = 0.0, 0
            for r, h in enumerate(hits):
                if h:
                    seen += 1
                    ap += seen / (r + 1)
            values = {
                f"recall@{k}": found / n,
                f"precision@{k}": found / k,
                f"ndcg@{k}": dcg / idcg,
                f"map@{k}": ap / min(n, k),
                f"hit@{k}": 1.0 if found else 0.0,
            }
            for name, v in values.items():
                totals[name] = totals.get(name, 0.0) + v
    return {name: v / n_users for name, v in totals.items()} | {"users": n_users}
