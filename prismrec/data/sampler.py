"""Vectorised BPR triple sampling (ALGORITHMS.md 1.3).

Each epoch every training pair ``(u, i)`` appears once, in a fresh random order, with one negative
``j`` drawn uniformly from the negative pool and rejected (and redrawn, all rejected draws at once)
while ``(u, j)`` is a training pair. No per-interaction Python loop.

Cold items (a cold-item split, :mod:`prismrec.data.derive`) are never negatives: an item drawn
as a negative is pushed down for that user, so ``all_items`` would train the held-out cold set
towards the bottom of every ranking (a leak of the evaluation items into training). Pass
``exclude=dataset.cold()``; ``train_items`` never contains them anyway (they have no training row).
"""

from __future__ import annotations

from typing import Iterator, Literal

import numpy as np
import scipy.sparse as sp
import torch

NegativePool = Literal["train_items", "all_items"]
BITSET_MAX_PAIRS = 1 << 28
"""Largest ``n_users x n_items`` for which membership of a ``(u, j)`` pair is a lookup in a bit
set of all pairs (at most 32 MiB; tiktok 7.4 MiB, baby 17 MiB): one random byte read per draw,
where a binary search over the sorted training keys costs ~17 (tiktok: 59,541 negatives per
epoch in ~3 ms instead of ~21 ms). Larger grids keep the search; both give the same answer."""


class BPRSampler:
    """Draws shuffled ``(users, positives, negatives)`` batches from a training CSR matrix."""

    def __init__(
        self,
        train: sp.csr_matrix,
        batch_size: int = 2048,
        negative_pool: NegativePool = "train_items",
        seed: int = 999,
        exclude: np.ndarray | None = None,
    ) -> None:
        """``exclude``: item ids never drawn as negatives, whatever the pool (the dataset's cold
        items, ``dataset.cold()``)."""
        train = sp.csr_matrix(train)
        train.sort_indices()
        self.n_items = train.shape[1]
        self.batch_size = int(batch_size)
        self.users = np.repeat(np.arange(train.shape[0], dtype=np.int64), np.diff(train.indptr))
        self.items = train.indices.astype(np.int64)
        # Sorted keys u * n_items + i: membership of (u, j) is one searchsorted.
        self._keys = self.users * self.n_items + self.items
        self._bits = pair_bits(self._keys, train.shape[0] * self.n_items)
        if negative_pool == "train_items":
            self.pool = np.unique(self.items)
        elif negative_pool == "all_items":
            self.pool = np.arange(self.n_items, dtype=np.int64)
        else:
            raise ValueError(f"negative_pool must be 'train_items' or 'all_items', got {negative_pool!r}")
        if exclude is not None and len(exclude):
            excluded = np.asarray(exclude, dtype=np.int64)
            if excluded.min() < 0 or excluded.max() >= self.n_items:
                raise ValueError(f"exclude holds item ids outside [0, {self.n_items}): "
                                 f"{int(excluded.min())}..{int(excluded.max())}")
            self.pool = np.setdiff1d(self.pool, excluded)
        degree = np.diff(train.indptr)
        full = np.flatnonzero(degree >= len(self.pool))
        if len(full):
            raise ValueError(
                f"user {int(full[0])} interacted with every item of the negative pool "
                f"({len(self.pool)} items), so no negative can be drawn ({len(full)} such users). "
                "Use negative_pool='all_items' or remove these users."
            )
        self.rng = np.random.default_rng(seed)

    def get_state(self) -> dict:
        """The random generator's state (plain ints and strings), for training checkpoints."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Restore :meth:`get_state`: the following epochs draw exactly what they would have."""
        self.rng.bit_generator.state = state

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Vectorised test of whether each ``(users[k], items[k])`` is a training pair."""
        keys = users * self.n_items + items
        if self._bits is not None:
            return (self._bits[keys >> 3] >> (keys & 7).astype(np.uint8)) & 1 == 1
        pos = np.searchsorted(self._keys, keys)
        pos = np.minimum(pos, len(self._keys) - 1)
        return self._keys[pos] == keys

    def sample_negatives(self, users: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
        """One uniform negative per user entry, never a training positive of that user.

        ``order``, when given, says that ``users`` is ``self.users[order]`` (an epoch's shuffle):
        the first draws are then looked up in the training pairs' own (user-sorted) order, each
        user's bits read together, instead of at random over the whole bit set (on tiktok, 7.4 MiB:
        a cache miss per draw). The same draws, the same answers."""
        negatives = self.pool[self.rng.integers(0, len(self.pool), size=len(users))]
        if order is None:
            positive = self.is_positive(users, negatives)
        else:
            by_user = np.empty_like(negatives)
            by_user[order] = negatives
            positive = self.is_positive(self.users, by_user)[order]
        todo = np.flatnonzero(positive)
        while len(todo):
            negatives[todo] = self.pool[self.rng.integers(0, len(self.pool), size=len(todo))]
            todo = todo[self.is_positive(users[todo], negatives[todo])]
        return negatives

    def epoch(self, device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield one epoch of ``(u, i, j)`` LongTensor batches. With a non-CPU ``device`` the
        epoch's triples are copied there at once (from pinned memory on CUDA, without blocking)
        and the batches are slices of that copy: one transfer an epoch instead of three a batch."""
        order = self.rng.permutation(len(self.users))
        users, items = self.users[order], self.items[order]
        negatives = self.sample_negatives(users, order)
        if device is None or torch.device(device).type == "cpu":
            u, i, j = (torch.from_numpy(a) for a in (users, items, negatives))
        else:
            triples = torch.from_numpy(np.stack((users, items, negatives)))
            if torch.device(device).type == "cuda":
                triples = triples.pin_memory()
            u, i, j = triples.to(device, non_blocking=True)
        for start in range(0, len(users), self.batch_size):
            stop = start + self.batch_size
            yield u[start:stop], i[start:stop], j[start:stop]


def pair_bits(keys: np.ndarray, n_pairs: int) -> np.ndarray | None:
    """The bit set of the sorted distinct pair ``keys`` (bit ``k`` of byte ``k >> 3``, least
    significant first), or ``None`` when ``n_pairs`` exceeds :data:`BITSET_MAX_PAIRS`."""
    if n_pairs > BITSET_MAX_PAIRS:
        return None
    bits = np.zeros((n_pairs + 7) // 8, dtype=np.uint8)
    if len(keys):
        byte = keys >> 3
        starts = np.flatnonzero(np.r_[True, byte[1:] != byte[:-1]])  # keys sorted: bytes in runs
        bits[byte[starts]] = np.bitwise_or.reduceat((1 << (keys & 7)).astype(np.uint8), starts)
    return bits
