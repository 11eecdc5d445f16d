"""Which sparse format should propagation use? ``torch.sparse.mm`` on the baby user-item graph.

Measures one ``Â @ X`` (X: N x 64) and one 3-layer forward + backward for COO, CSR with int64 and
int32 indices, SciPy CSR, and prismrec's :class:`SparseOperator` (CSR int32 with a stored
transpose for the backward). Writes ``results/sparse_format.{json,md}``.

    python -m benchmarks.sparse_format
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from benchmarks.common import machine, median_time, write
from prismrec.data import load_dataset
from prismrec.graph import SparseOperator, bipartite_adjacency


def main() -> None:
    data = load_dataset("baby")
    adj = bipartite_adjacency(data.train)
    coo = adj.tocoo()
    index = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    formats = {
        "torch COO": torch.sparse_coo_tensor(index, torch.from_numpy(coo.data), adj.shape).coalesce(),
        "torch CSR int64": torch.sparse_coo_tensor(index, torch.from_numpy(coo.data), adj.shape).coalesce().to_sparse_csr(),
        "torch CSR int32 (SparseOperator)": SparseOperator(adj, symmetric=True),
    }
    x = torch.randn(adj.shape[0], 64)
    xs = x.numpy()
    rows = {}
    for name, m in formats.items():
        mm = (lambda m=m: m @ x) if isinstance(m, SparseOperator) else (lambda m=m: torch.sparse.mm(m, x))

        def three_layers(m=m):
            x0 = x.clone().requires_grad_()
            h = x0
            for _ in range(3):
                h = (m @ h) if isinstance(m, SparseOperator) else torch.sparse.mm(m, h)
            h.sum().backward()

        rows[name] = {"spmm_ms": 1e3 * median_time(mm, 21)["median"],
                      "3_layer_fwd_bwd_ms": 1e3 * median_time(three_layers, 9)["median"]}
    csr = sp.csr_matrix(adj)
    rows["SciPy CSR (no autograd)"] = {"spmm_ms": 1e3 * median_time(lambda: csr @ xs, 21)["median"],
                                       "3_layer_fwd_bwd_ms": None}
    md = [f"# Sparse format for propagation (baby graph: {adj.shape[0]} nodes, {adj.nnz} entries, d=64)", "",
          f"{machine()}", "", "| format | A@X ms (median) | 3 layers fwd+bwd ms (median) |", "|---|---|---|"]
    for name, r in rows.items():
        fb = "—" if r["3_layer_fwd_bwd_ms"] is None else f"{r['3_layer_fwd_bwd_ms']:.1f}"
        md.append(f"| {name} | {r['spmm_ms']:.2f} | {fb} |")
    write("sparse_format", {"machine": machine(), "nodes": adj.shape[0], "nnz": adj.nnz, "results": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
