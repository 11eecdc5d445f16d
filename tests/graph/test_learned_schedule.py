"""The rebuild machinery of learned graphs (graph/learned.py): top-k among kept rows, reused
patterns, frozen edge lists, the once-per-epoch schedule."""

import numpy as np
import torch

from prismrec.graph import knn_graph, learned
from prismrec.graph.learned import EdgeGraph, EdgeList, EpochGraph, KnnPatterns, knn_edges


def _features(n=30, d=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_knn_edges_among_kept_rows_is_the_subset_graph_mapped_back():
    x = _features()
    keep = torch.zeros(30, dtype=torch.bool)
    keep[[1, 4, 5, 9, 20, 29]] = True
    rows, cols = knn_edges(x, 10, keep=keep)  # k capped at the 6 kept rows
    sub_rows, sub_cols = knn_edges(x[keep], 6)
    kept = torch.nonzero(keep).squeeze(1)
    assert torch.equal(rows, kept[sub_rows]) and torch.equal(cols, kept[sub_cols])
    assert keep[rows].all() and keep[cols].all() and rows.numel() == 36


def test_patterns_are_searched_again_only_when_the_matrix_changed(monkeypatch):
    calls = []
    real = learned.knn_edges
    monkeypatch.setattr(learned, "knn_edges", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    patterns, x = KnnPatterns(4), _features()
    first = patterns("a", x)
    again = patterns("a", x.clone())
    assert len(calls) == 1 and all(torch.equal(p, q) for p, q in zip(first, again))
    patterns("b", x)  # another key: its own search
    x[0] += 1.0
    patterns("a", x)
    assert len(calls) == 3
    patterns.clear()
    patterns("b", x)
    assert len(calls) == 4
    patterns.to("cpu")  # a device move forgets the patterns
    assert patterns.cache == {} and patterns.state_dict() == {}


def test_edge_list_keeps_edges_between_kept_nodes_and_is_never_saved():
    graph = knn_graph(_features(), 4)
    keep = np.arange(30) % 3 != 0
    edges = EdgeList(graph, keep)
    rows, cols = edges.rows.numpy(), edges.cols.numpy()
    assert keep[rows].all() and keep[cols].all()
    dense = graph.toarray()
    np.testing.assert_array_equal(edges.values.numpy(), dense[rows, cols])
    full = EdgeList(graph)
    assert full.rows.numel() == graph.nnz == 120 and full.rows.dtype == torch.int64
    expected = (dense != 0) & keep[:, None] & keep[None, :]
    assert len(rows) == expected.sum() and full.state_dict() == {}


def test_epoch_graph_builds_once_per_epoch_with_gradient_and_afresh_in_evaluation():
    weight = torch.tensor([1.0, 2.0], requires_grad=True)
    builds = []

    def build():
        builds.append(torch.is_grad_enabled())
        return EdgeGraph(torch.tensor([0, 1]), torch.tensor([1, 0]), weight * 1.0, 2)

    schedule = EpochGraph(grad=True)
    first = schedule.graph(build, training=True)
    assert first.values.requires_grad and not schedule.current.values.requires_grad
    assert schedule.graph(build, training=True) is schedule.current and builds == [True]
    kept = schedule.current
    evaluated = schedule.graph(build, training=False)
    assert not evaluated.values.requires_grad and schedule.current is kept and builds == [True, False]
    schedule.expire()
    assert schedule.current is None
    schedule.graph(build, training=True)
    assert len(builds) == 3 and schedule.current is not kept
    schedule.to("cpu")  # a device move: the kept graph was on the old device
    assert schedule.current is None
    frozen = EpochGraph(grad=False)
    assert not frozen.graph(build, training=True).values.requires_grad and builds[-1] is False
