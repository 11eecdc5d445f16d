"""Graph builders: every graph is sparse and built in blocks (memory ``O(n·k)``, never ``n²``)."""

from prismrec.graph.bipartite import UserItemGraph, bipartite_adjacency, restrict_items, user_item_block
from prismrec.graph.cooccurrence import cooccurrence_graph
from prismrec.graph.enhanced import pretrained_links, shared_neighbor_links
from prismrec.graph.knn import intersection_links, knn_columns, knn_graph, knn_neighbors, symmetrize
from prismrec.graph.ops import degree_sensitive_edge_sample, mix, modality_weights, sym_normalize
from prismrec.graph.sparse import SparseOperator, to_torch_csr

__all__ = [
    "SparseOperator",
    "UserItemGraph",
    "bipartite_adjacency",
    "cooccurrence_graph",
    "degree_sensitive_edge_sample",
    "intersection_links",
    "knn_columns",
    "knn_graph",
    "knn_neighbors",
    "mix",
    "modality_weights",
    "pretrained_links",
    "restrict_items",
    "shared_neighbor_links",
    "sym_normalize",
    "symmetrize",
    "to_torch_csr",
    "user_item_block",
]
