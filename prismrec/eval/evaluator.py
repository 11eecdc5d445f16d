"""Evaluate a Recommender on a split (ALGORITHMS.md 1.4)."""

from __future__ import annotations

from typing import Sequence

import scipy.sparse as sp
import torch

from prismrec.eval.cold import evaluate_cold
from prismrec.eval.groups import restrict_items
from prismrec.eval.metrics import UserBatches, evaluate_ranking
from prismrec.recommender import Output, Recommender, eval_mode


class Evaluator:
    """Full-ranking evaluation of a model on ``valid`` or ``test``.

    Validation masks the training items; test masks the training items only
    (``mask_valid_at_test=False``, MMRec, so validation positives count as misses) or also the
    validation items (``True``, Cornac/RecBole practice).
    """

    def __init__(
        self,
        dataset,
        ks: Sequence[int] = (5, 10, 20, 50),
        batch_size: int = 4096,
        mask_valid_at_test: bool = False,
    ) -> None:
        self.dataset = dataset
        self.ks = tuple(ks)
        self.batch_size = int(batch_size)
        self.mask_valid_at_test = bool(mask_valid_at_test)
        self._exclude = {
            "valid": dataset.train,
            "test": (dataset.train + dataset.valid).tocsr() if mask_valid_at_test else dataset.train,
        }
        self._batches: dict[tuple[str, str], UserBatches] = {}  # per split and device, built at first use

    def user_batches(self, split: str, device) -> UserBatches:
        """The split's :class:`~prismrec.eval.metrics.UserBatches` on ``device``, kept: every
        epoch's validation reuses the same masked and truth positions."""
        key = (split, str(device))
        if key not in self._batches:
            self._batches[key] = UserBatches(self.dataset.split(split), self.exclude(split), self.batch_size, device)
        return self._batches[key]

    def exclude(self, split: str) -> sp.csr_matrix:
        """The items masked when ranking for ``split``."""
        if split not in self._exclude:
            raise ValueError(f"can evaluate 'valid' or 'test', not {split!r}")
        return self._exclude[split]

    @torch.no_grad()
    def evaluate(
        self,
        model: Recommender,
        split: str,
        out: Output | None = None,
        per_user: bool = False,
        items=None,
    ) -> dict:
        """Metrics of ``model`` on ``split``; one eval-mode forward reused for all user batches.

        ``items`` (ids) restricts the truth to those items: every item is still ranked, and only
        users with at least one such positive count (e.g. the long-tail group's metrics).
        """
        exclude = self.exclude(split)
        truth = self.dataset.split(split)
        if items is not None:
            truth = restrict_items(truth, items)
        with eval_mode(model):
            out = model() if out is None else out
            return evaluate_ranking(
                lambda users: model.score(users, out),
                truth,
                exclude,
                ks=self.ks,
                batch_size=self.batch_size,
                per_user=per_user,
                device=model.device,
                batches=self.user_batches(split, model.device) if items is None else None,
            )

    @torch.no_grad()
    def evaluate_cold(
        self,
        model: Recommender,
        split: str,
        out: Output | None = None,
        mode: str = "cold",
        per_user: bool = False,
        cold_items=None,
    ) -> dict:
        """Metrics of ``model`` on the cold items of ``split`` (:mod:`prismrec.eval.cold`).

        ``cold_items`` defaults to ``dataset.cold(split)``. ``out`` is the forward output to score
        with; give one whose cold item rows come from content (:mod:`prismrec.coldstart`), since a
        cold item's ID embedding was never trained.
        """
        items = self.dataset.cold(split) if cold_items is None else cold_items
        with eval_mode(model):
            out = model() if out is None else out
            return evaluate_cold(
                lambda users: model.score(users, out), self.dataset.split(split), self.exclude(split),
                items, mode, ks=self.ks, batch_size=self.batch_size, per_user=per_user, device=model.device,
            )
