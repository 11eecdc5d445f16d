"""Graph builders: every graph is sparse, built in blocks, and cached by content."""

from prismrec.graph.bipartite import bipartite_adjacency, user_item_block
from prismrec.graph.cache import GraphCache, cache_key, default_cache_dir
from prismrec.graph.cooccurrence import cooccurrence_graph
from prismrec.graph.knn import intersection_links, knn_graph, knn_neighbors, symmetrize
from prismrec.graph.ops import degree_sensitive_edge_sample, mix, sym_normalize
from prismrec.graph.sparse import SparseOperator, to_torch_csr

__all__ = [
    "GraphCache",
    "SparseOperator",
    "bipartite_adjacency",
    "cache_key",
    "cooccurrence_graph",
    "default_cache_dir",
    "degree_sensitive_edge_sample",
    "intersection_links",
    "knn_graph",
    "knn_neighbors",
    "mix",
    "sym_normalize",
    "symmetrize",
    "to_torch_csr",
    "user_item_block",
]
