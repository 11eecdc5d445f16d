"""Cold-item evaluation modes (the cold-item protocol of :mod:`prismrec.data.derive`).

A cold item has no training interaction; its held-out interactions lie in one split. Two modes
rank them with the exact metrics of :mod:`prismrec.eval.metrics`, over the users with at least
one positive among the split's cold items (only those positives count as truth):

* ``cold``: the candidates are the split's cold items only (the "new arrivals" shelf): how well a
  model orders new items for a user, unaffected by how it ranks warm items.
* ``all``: every item is a candidate (training items masked as usual): whether new items reach a
  user's top-K at all, next to warm ones.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from prismrec.eval.groups import restrict_items
from prismrec.eval.metrics import evaluate_ranking

COLD_MODES = ("cold", "all")


def evaluate_cold(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    truth: sp.csr_matrix,
    exclude: sp.csr_matrix | None,
    cold_items: np.ndarray,
    mode: str = "cold",
    ks: Sequence[int] = (10, 20),
    batch_size: int = 4096,
    per_user: bool = False,
    device: torch.device | str = "cpu",
) -> dict:
    """Metrics of the ranking ``score_fn(users)`` (``B x n_items``) restricted to ``cold_items``.

    ``truth`` is the split's users x items matrix, ``exclude`` the items masked for every user (as
    :func:`~prismrec.eval.metrics.evaluate_ranking`). ``mode="cold"`` ranks the ``cold_items``
    columns only (ties to the lower item id, as everywhere); ``"all"`` ranks every item. Returns
    ``evaluate_ranking``'s dict plus ``"items"`` (the number of cold items).
    """
    if mode not in COLD_MODES:
        raise ValueError(f"mode must be one of {COLD_MODES}, got {mode!r}")
    cold = np.unique(np.asarray(cold_items, dtype=np.int64))
    if not len(cold):
        raise ValueError("no cold items to evaluate: the dataset has no cold-item split")
    truth = restrict_items(sp.csr_matrix(truth), cold)
    if mode == "all":
        result = evaluate_ranking(score_fn, truth, exclude, ks, batch_size, per_user, device)
    else:
        columns = torch.from_numpy(cold)

        def cold_scores(users: torch.Tensor) -> torch.Tensor:
            scores = score_fn(users)
            return scores.index_select(1, columns.to(scores.device))

        sub_exclude = sp.csr_matrix(exclude)[:, cold] if exclude is not None else None
        result = evaluate_ranking(cold_scores, truth[:, cold], sub_exclude, ks, batch_size, per_user, device)
    result["items"] = int(len(cold))
    return result
