"""The content-addressed graph cache: kNN graphs are computed once per (features, k, self loops)."""

import numpy as np
import pytest
import scipy.sparse as sp

import prismrec.graph.knn as knn
from prismrec.graph.cache import cache_dir, cached_graph


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "graphs"
    monkeypatch.setenv("PRISMREC_GRAPH_CACHE", str(folder))
    return folder


@pytest.fixture
def builds(monkeypatch):
    """Counts the top-k computations (the cached part)."""
    calls = []
    real = knn._topk_cosine

    def counted(*args):
        calls.append(args[1:])
        return real(*args)

    monkeypatch.setattr(knn, "_topk_cosine", counted)
    return calls


def features(n=40, d=6, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    x[3] = 0.0  # a zero row: cosine 0 with everything, kept neighbours are explicit zeros
    x[5, :3], x[5, 3:] = 1.0, 0.0
    x[6, :3], x[6, 3:] = 0.0, 1.0  # orthogonal to row 5
    return x


def same(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return (a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.indptr, b.indptr)
            and np.array_equal(a.indices, b.indices) and np.array_equal(a.data, b.data))


@pytest.mark.parametrize("weight, normalize, self_loops", [
    ("cosine", True, "force"), ("binary", True, "force"), ("cosine", False, "exclude"), ("binary", False, "force"),
])
def test_cached_graph_equals_a_fresh_build_entry_for_entry(cache, builds, weight, normalize, self_loops):
    x = features()
    fresh = knn.knn_graph(x, 5, weight=weight, normalize=normalize, self_loops=self_loops, cache=False)
    first = knn.knn_graph(x, 5, weight=weight, normalize=normalize, self_loops=self_loops, cache=True)
    again = knn.knn_graph(x, 5, weight=weight, normalize=normalize, self_loops=self_loops, cache=True)
    assert len(builds) == 2  # the uncached one and the first cached one; the last was read
    assert same(first, fresh) and same(again, fresh)
    assert fresh.nnz == 40 * 5 and len(list(cache.glob("*.npz"))) == 1


def test_weights_and_normalisation_share_one_topk_entry(cache, builds):
    x = features()
    variants = [knn.knn_graph(x, 4, weight=w, normalize=nz, cache=True)
                for w in ("cosine", "binary") for nz in (True, False)]
    assert len(builds) == 1 and len(list(cache.glob("*.npz"))) == 1
    assert not same(variants[0], variants[1]) and not same(variants[0], variants[2])


@pytest.mark.filterwarnings("ignore:.*non-positive degree")
def test_other_content_k_or_self_loops_is_another_entry(cache, builds):
    x = features()
    knn.knn_graph(x, 4, cache=True)
    changed = x.copy()
    changed[7, 2] += 1e-3
    knn.knn_graph(changed, 4, cache=True)
    knn.knn_graph(x, 3, cache=True)
    knn.knn_graph(x, 4, self_loops="exclude", cache=True)
    knn.knn_graph(x.astype(np.float64), 4, cache=True)  # other bytes, other entry
    assert len(builds) == 5 and len(list(cache.glob("*.npz"))) == 5
    knn.knn_graph(changed, 4, cache=True)
    assert len(builds) == 5


def test_default_caches_large_inputs_only(cache, builds, monkeypatch):
    x = features()
    knn.knn_graph(x, 4)
    assert not cache.exists()  # 40 * 40 * 6 multiply-adds: below the threshold
    monkeypatch.setattr(knn, "CACHE_MIN_WORK", 40 * 40 * 6)
    knn.knn_graph(x, 4)
    knn.knn_graph(x, 4)
    assert len(builds) == 2 and len(list(cache.glob("*.npz"))) == 1


def test_off_writes_nothing(tmp_path, monkeypatch, builds):
    monkeypatch.setenv("PRISMREC_GRAPH_CACHE", "off")
    monkeypatch.chdir(tmp_path)
    assert cache_dir() is None
    knn.knn_graph(features(), 4, cache=True)
    knn.knn_graph(features(), 4, cache=True)
    assert len(builds) == 2 and not list(tmp_path.iterdir())


def test_default_folder_follows_prismrec_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("PRISMREC_GRAPH_CACHE", raising=False)
    monkeypatch.setenv("PRISMREC_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path / "graphs"


def test_damaged_entry_is_rebuilt_and_replaced(cache, builds):
    x = features()
    good = knn.knn_graph(x, 4, cache=True)
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable.*rebuilt and replaced"):
        again = knn.knn_graph(x, 4, cache=True)
    assert same(again, good) and len(builds) == 2
    assert same(knn.knn_graph(x, 4, cache=True), good) and len(builds) == 2  # the replacement is read


def test_unwritable_cache_warns_and_still_returns_the_graph(tmp_path, monkeypatch, builds):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PRISMREC_GRAPH_CACHE", str(blocker / "graphs"))
    with pytest.warns(UserWarning, match="cannot be written.*PRISMREC_GRAPH_CACHE"):
        graph = knn.knn_graph(features(), 4, cache=True)
    assert same(graph, knn.knn_graph(features(), 4, cache=False))


def test_a_failed_build_leaves_no_entry(cache):
    def broken():
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        cached_graph("test/1", [features()], {}, broken)
    assert not cache.exists() or not list(cache.iterdir())
    built = cached_graph("test/1", [features()], {}, lambda: sp.identity(3, format="csr", dtype=np.float32))
    assert list(p.suffix for p in cache.iterdir()) == [".npz"]  # no temporary left beside it
    assert next(cache.iterdir()).stat().st_mode & 0o777 == 0o644  # readable by all who share the cache
    assert same(built, cached_graph("test/1", [features()], {}, lambda: None))
