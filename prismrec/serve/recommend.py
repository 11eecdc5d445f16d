"""Top-k item recommendations from a finished run.

:class:`RunRecommender` rebuilds a run with :func:`prismrec.experiment.export.load_run` (best-
validation weights, train split checked against the recorded fingerprint), runs **one** eval-mode
forward and answers ``recommend(users, k)`` from it: the model's own scores
(:meth:`Recommender.score`), the user's known items masked, ranked by (score desc, item id asc) as
the evaluator ranks. What counts as known is ``exclude``:

- ``seen`` (default): every item of the user in the train, valid and test splits: what a deployed
  recommender should not suggest again;
- ``train``: the training items only (the evaluation protocol's mask);
- ``none``: nothing masked.

A user with fewer than ``k`` unmasked items gets them all; the remaining slots hold item ``-1``
with score ``-inf``. A bad request (unknown user, bad ``k``) is a :class:`ServeError` (a
``ValueError``). Users are scored in blocks of at most ``batch_size`` rows and ``SCORE_BLOCK``
scores, so one request's memory is bounded whatever the item count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from prismrec.errors import ServeError
from prismrec.eval.metrics import mask_items, ranked_topk
from prismrec.serve.ids import USER_MAP, IdMaps

EXCLUDE = ("seen", "train", "none")
SCORE_BLOCK = 2**24
"""Most scores (users x items) computed at once: 64 MiB of float32 per block."""


class RunRecommender:
    """Recommend items with the model of a finished single-seed run directory."""

    def __init__(self, run_dir: str | Path, data_dir=None, exclude: str = "seen", batch_size: int = 4096) -> None:
        from prismrec.experiment.export import load_run

        if exclude not in EXCLUDE:
            raise ServeError(f"exclude must be one of {list(EXCLUDE)}, got {exclude!r}")
        self.run = load_run(run_dir, data_dir)
        ds = self.run.dataset
        self.n_users, self.n_items = ds.n_users, ds.n_items
        self.exclude_mode = exclude
        self.exclude: sp.csr_matrix | None = None
        if exclude == "seen":
            self.exclude = (ds.train + ds.valid + ds.test).tocsr()
        elif exclude == "train":
            self.exclude = ds.train
        self.batch_size = max(1, min(int(batch_size), SCORE_BLOCK // max(self.n_items, 1)))
        self.ids = IdMaps.load(getattr(ds, "path", None), self.n_users, self.n_items)
        with torch.no_grad():
            self.out = self.run.model()

    def recommend(self, users: Sequence[int], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(items, scores)``, each ``len(users) x k``: row ``b`` is user ``users[b]``'s top ``k``."""
        users = np.asarray(users)
        if users.ndim != 1 or (users.size and not np.issubdtype(users.dtype, np.integer)):
            raise ServeError(f"users must be a 1-D list of integer user ids, got {users.tolist()!r}")
        bad = users[(users < 0) | (users >= self.n_users)]
        if bad.size:
            raise ServeError(
                f"unknown user id(s) {bad[:5].tolist()}{' ...' if bad.size > 5 else ''}: "
                f"{self.run.config.dataset} has user ids 0..{self.n_users - 1}"
            )
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.n_items:
            raise ServeError(f"k must be an integer in 1..{self.n_items} (the item count), got {k!r}")
        items = np.empty((len(users), k), dtype=np.int64)
        scores = np.empty((len(users), k), dtype=np.float32)
        model = self.run.model
        with torch.no_grad():
            for start in range(0, len(users), self.batch_size):
                rows = users[start : start + self.batch_size]
                block = model.score(torch.from_numpy(rows.astype(np.int64)), self.out).float().contiguous()
                if self.exclude is not None:
                    mask_items(block, self.exclude, rows)
                top = ranked_topk(block, k)
                values = block.gather(1, top)
                top[values == -torch.inf] = -1
                items[start : start + len(rows)] = top.cpu().numpy()
                scores[start : start + len(rows)] = values.cpu().numpy()
        return items, scores

    def recommend_raw(self, users: Sequence[str], k: int = 10) -> tuple[list[list[str]], list[list[float]]]:
        """Like :meth:`recommend` with the dataset's raw ids (from ``prismrec build``'s id maps)
        for users and items; short lists are returned short (no padding).

        Raises :class:`ServeError` when the dataset has no id maps or a user is unknown."""
        if self.ids is None:
            raise ServeError(f"dataset {self.run.config.dataset} has no {USER_MAP} / i_id_mapping.csv "
                             "(written by prismrec build): use internal ids")
        items, scores = self.recommend(self.ids.users(users), k)
        return self.ids.items(items), [[float(s) for s, i in zip(row, ids) if i >= 0]
                                       for row, ids in zip(scores, items)]
