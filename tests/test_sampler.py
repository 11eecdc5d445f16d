import numpy as np
import pytest
import scipy.sparse as sp

from prismrec.data import BPRSampler
from prismrec.data import sampler as sampler_module


def dense_toy(seed=0, n_users=12, n_items=9, density=0.6):
    rng = np.random.default_rng(seed)
    m = rng.random((n_users, n_items)) < density
    m[:, 0] = False  # item 0 is never a training item
    m[m.sum(1) == n_items - 1, 1] = False  # every user keeps a negative in the train pool
    m[np.flatnonzero(m.sum(1) == 0), 2] = True
    return sp.csr_matrix(m.astype(np.float32))


@pytest.mark.parametrize("pool", ["train_items", "all_items"])
def test_negatives_never_positive_and_cover_the_pool(pool):
    train = dense_toy()
    dense = train.toarray() > 0
    sampler = BPRSampler(train, batch_size=7, negative_pool=pool, seed=3)
    seen = np.zeros_like(dense)
    pairs = set()
    for _ in range(200):
        batches = list(sampler.epoch())
        u = np.concatenate([b[0].numpy() for b in batches])
        i = np.concatenate([b[1].numpy() for b in batches])
        j = np.concatenate([b[2].numpy() for b in batches])
        assert len(u) == train.nnz and all(len(b[0]) <= 7 for b in batches)
        assert dense[u, i].all()  # positives are training pairs
        assert not dense[u, j].any()  # negatives never are
        pairs |= set(zip(u.tolist(), i.tolist()))
        seen[u, j] = True
    assert len(pairs) == train.nnz  # every training pair, once per epoch
    pool_items = np.flatnonzero(dense.any(0)) if pool == "train_items" else np.arange(dense.shape[1])
    # exhaustively: every (user, pool item) non-positive was drawn at least once, nothing else
    allowed = ~dense
    allowed[:, np.setdiff1d(np.arange(dense.shape[1]), pool_items)] = False
    assert (seen == allowed).all()


@pytest.mark.parametrize("bitset", [True, False], ids=["bit-set", "binary-search"])
def test_is_positive_matches_dense(bitset, monkeypatch):
    if not bitset:
        monkeypatch.setattr(sampler_module, "BITSET_MAX_PAIRS", 0)
    for seed, shape in ((1, (12, 9)), (4, (13, 17))):  # 108 and 221 pairs: partial last bytes
        train = dense_toy(seed, *shape)
        s = BPRSampler(train)
        assert (s._bits is not None) == bitset
        u, i = np.meshgrid(np.arange(train.shape[0]), np.arange(train.shape[1]), indexing="ij")
        assert (s.is_positive(u.ravel(), i.ravel()).reshape(u.shape) == (train.toarray() > 0)).all()


def test_bit_set_and_binary_search_draw_the_same_batches(monkeypatch):
    train = dense_toy(3, 40, 23, density=0.5)
    def three_epochs():
        s = BPRSampler(train, 16, seed=5)
        return [tuple(t.tolist() for t in b) for _ in range(3) for b in s.epoch()]

    fast = three_epochs()
    monkeypatch.setattr(sampler_module, "BITSET_MAX_PAIRS", 0)
    assert fast == three_epochs()


def test_same_seed_same_batches():
    train = dense_toy(2)
    a = [tuple(t.tolist() for t in b) for b in BPRSampler(train, 5, seed=9).epoch()]
    b = [tuple(t.tolist() for t in b) for b in BPRSampler(train, 5, seed=9).epoch()]
    c = [tuple(t.tolist() for t in b) for b in BPRSampler(train, 5, seed=10).epoch()]
    assert a == b and a != c


def test_user_with_every_item_is_an_error():
    train = sp.csr_matrix(np.array([[1, 1, 1], [1, 0, 0]], dtype=np.float32))
    with pytest.raises(ValueError, match="user 0 interacted with every item"):
        BPRSampler(train)
    with pytest.raises(ValueError, match="negative_pool"):
        BPRSampler(sp.csr_matrix(np.array([[1, 0]], dtype=np.float32)), negative_pool="popular")


@pytest.mark.parametrize("pool", ["train_items", "all_items"])
def test_cold_items_are_never_negatives(tmp_path, pool):
    from prismrec.data import load_dataset
    from prismrec.data.derive import split_cold
    from prismrec.data.synthetic import write_planted_dataset

    src = write_planted_dataset(tmp_path / "planted", n_users=60, n_items=50, per_user=8, seed=1)
    data = load_dataset(split_cold(src, tmp_path / "planted-cold", fraction=0.2, seed=2))
    cold = data.cold()
    drawn = np.concatenate([b[2].numpy() for _ in range(5)
                            for b in BPRSampler(data.train, 64, pool, seed=3, exclude=cold).epoch()])
    assert len(cold) == 10 and not np.isin(drawn, cold).any()
    if pool == "all_items":  # without the exclusion the pool holds them, and they are drawn
        plain = BPRSampler(data.train, 64, pool, seed=3)
        assert np.isin(np.concatenate([b[2].numpy() for b in plain.epoch()]), cold).any()
    with pytest.raises(ValueError, match="outside"):
        BPRSampler(data.train, negative_pool=pool, exclude=np.array([data.n_items]))
