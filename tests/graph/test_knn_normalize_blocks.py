"""The kNN builder's row normalisation goes through float64 in row blocks (no whole float64 copy
of a large feature matrix) and gives the same bits as the whole-matrix computation."""

import torch

from prismrec.graph import knn


def test_blocked_row_normalisation_is_bit_identical(monkeypatch):
    x = torch.randn(1000, 48, generator=torch.Generator().manual_seed(0)) * 1e3
    x[7] = 0  # a zero row stays zero
    whole = x.double()
    expected = (whole / torch.linalg.vector_norm(whole, dim=1, keepdim=True).clamp_min(1e-12)).float()
    monkeypatch.setattr(knn, "_BLOCK_BYTES", 8 * 48 * 64)  # blocks of 64 rows
    got = knn._row_normalize(x)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert not got[7].any()
