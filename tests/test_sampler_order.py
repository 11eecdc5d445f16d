"""The sampler's first negatives looked up in user order (``sample_negatives(users, order)``) give
the batches of the lookups in shuffled order, draw for draw."""

import numpy as np
import pytest
import scipy.sparse as sp

from prismrec.data import BPRSampler
from prismrec.data import sampler as sampler_module


@pytest.mark.parametrize("bitset", [True, False], ids=["bit-set", "binary-search"])
def test_user_order_lookups_draw_the_same_batches(bitset, monkeypatch):
    if not bitset:
        monkeypatch.setattr(sampler_module, "BITSET_MAX_PAIRS", 0)
    rng = np.random.default_rng(0)
    dense = rng.random((50, 31)) < 0.4  # dense enough that many first draws are rejected
    dense[:, 0] = dense[:, 1] = False  # every user keeps negatives, item 0 and 1 never trained on
    dense[np.flatnonzero(dense.sum(1) == 0), 2] = True
    train = sp.csr_matrix(dense.astype(np.float32))

    def epochs(shuffled_lookups: bool):
        s = BPRSampler(train, 16, "all_items", seed=5)
        if shuffled_lookups:
            plain = s.sample_negatives
            s.sample_negatives = lambda users, order=None: plain(users)
        return [tuple(t.tolist() for t in b) for _ in range(4) for b in s.epoch()]

    got, want = epochs(False), epochs(True)
    assert got == want
    u, j = np.concatenate([b[0] for b in got]), np.concatenate([b[2] for b in got])
    assert not dense[u, j].any() and len(u) == 4 * train.nnz
