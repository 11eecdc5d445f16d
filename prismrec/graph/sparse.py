"""Sparse matrices as torch operators.

Format choice (``benchmarks/sparse_format.py``, baby graph, 2 CPU threads): ``torch.sparse.mm``
with CSR and int32 indices is the fastest forward (~2.7 ms vs 4.1 ms CSR/int64, 12-19 ms COO,
5.8 ms SciPy); torch's own CSR backward rebuilds a transpose on every call and costs ~15x the
forward. :class:`SparseOperator` therefore keeps the transpose (or reuses the matrix itself when
it is symmetric) and implements the backward as one more CSR product.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn


def to_torch_csr(matrix: sp.spmatrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """Convert a SciPy matrix to a float32 torch CSR tensor with int32 indices."""
    m = sp.csr_matrix(matrix, dtype=np.float32)
    m.sort_indices()
    with warnings.catch_warnings():  # "CSR support is in beta": we rely only on sparse.mm
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int32)),
            torch.from_numpy(m.indices.astype(np.int32)),
            torch.from_numpy(m.data.astype(np.float32)),
            size=m.shape,
            device=device,
            check_invariants=False,  # built from a sorted SciPy CSR: valid by construction
        )


def spmm(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``matrix @ dense`` for a CSR ``matrix``. On CPU the product is written straight into a
    fresh output: ``torch.sparse.mm`` zero-fills a temporary and copies it over (two more passes
    over the ``n x d`` result)."""
    if dense.device.type != "cpu":
        return torch.sparse.mm(matrix, dense)
    out = dense.new_empty((matrix.shape[0], dense.shape[1]))
    return torch.addmm(out, matrix, dense, beta=0, out=out)  # beta=0: out's contents are ignored


class _SpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op: "SparseOperator", dense: torch.Tensor) -> torch.Tensor:  # noqa: D401
        ctx.op = op
        return spmm(op.matrix, dense)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, spmm(ctx.op.transpose, grad.contiguous())


class SparseOperator(nn.Module):
    """A fixed sparse matrix ``A`` usable as ``A @ X`` with a fast, exact backward ``Aᵀ @ G``.

    Build it once per graph; ``symmetric=None`` checks symmetry itself (then no transpose is
    stored). The operator is not a parameter: no gradient flows into its values. It is a module
    whose matrices are **non-persistent buffers**, so ``model.to(device)`` moves every graph a
    model holds while ``state_dict()`` (``model.pt``) never contains one: graphs are rebuilt
    from the dataset.
    """

    def __init__(
        self,
        matrix: sp.spmatrix,
        device: torch.device | str = "cpu",
        symmetric: bool | None = None,
    ) -> None:
        super().__init__()
        m = sp.csr_matrix(matrix, dtype=np.float32)
        if symmetric is None:
            symmetric = m.shape[0] == m.shape[1] and abs(m - m.T).max() <= 1e-7 if m.nnz else True
        self.shape = m.shape
        self.nnz = m.nnz
        self.symmetric = bool(symmetric)
        self.register_buffer("matrix", to_torch_csr(m, device), persistent=False)
        if not self.symmetric:  # a symmetric matrix is its own transpose: stored once
            self.register_buffer("_transpose", to_torch_csr(m.T, device), persistent=False)
        self._host: sp.csr_matrix | None = None  # SciPy view of the matrix, made by row_block

    @property
    def transpose(self) -> torch.Tensor:
        """``Aᵀ`` as a CSR tensor (the matrix itself when symmetric)."""
        return self.matrix if self.symmetric else self._transpose

    def row_block(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``A[rows]`` and ``A[rows]ᵀ`` as CSR tensors on the operator's device.

        For products restricted to a batch's rows: the cost follows those rows' entries, not
        ``nnz``. SciPy slices and transposes (C loops)."""
        if self._host is None:
            m = self.matrix.cpu()
            self._host = sp.csr_matrix(
                (m.values().numpy(), m.col_indices().numpy(), m.crow_indices().numpy()), shape=self.shape
            )
        block = self._host[rows]
        return to_torch_csr(block, self.matrix.device), to_torch_csr(block.T, self.matrix.device)

    def __matmul__(self, dense: torch.Tensor) -> torch.Tensor:
        if dense.requires_grad:
            return _SpMM.apply(self, dense)
        return spmm(self.matrix, dense)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        """``A @ dense`` (the same as the ``@`` operator)."""
        return self @ dense

    def extra_repr(self) -> str:
        return f"shape={self.shape}, nnz={self.nnz}, symmetric={self.symmetric}"
