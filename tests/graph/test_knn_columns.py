"""``knn_columns``: the neighbour lists of ``knn_graph``, computed and kept on the features' device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prismrec.graph import knn_columns, knn_graph, knn_neighbors


@pytest.mark.parametrize("self_loops", ["force", "exclude"])
@pytest.mark.parametrize("block_size", [None, 3])
def test_knn_columns_are_knn_graph_neighbours(self_loops, block_size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((17, 5)).astype(np.float32)
    x[4] = x[2]  # exact ties: the lower column wins in both
    x[9] = 0.0  # a zero row: every similarity 0
    got = knn_columns(torch.from_numpy(x), 4, block_size=block_size, self_loops=self_loops)
    want = knn_neighbors(knn_graph(x, 4, block_size=block_size, self_loops=self_loops, cache=False))
    assert got.dtype == torch.int64 and got.shape == (17, 4)
    np.testing.assert_array_equal(got.numpy(), want)


def test_knn_columns_checks_its_arguments():
    with pytest.raises(ValueError, match="k must be between 1 and 3"):
        knn_columns(np.ones((3, 2), dtype=np.float32), 4)
    with pytest.raises(ValueError, match="self_loops"):
        knn_columns(np.ones((3, 2), dtype=np.float32), 2, self_loops="keep")
