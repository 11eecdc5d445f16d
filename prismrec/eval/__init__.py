"""Exact, vectorised full-ranking evaluation."""

from prismrec.eval.cold import COLD_MODES, evaluate_cold
from prismrec.eval.evaluator import Evaluator
from prismrec.eval.groups import popularity_buckets, popularity_groups, popularity_order, restrict_items
from prismrec.eval.metrics import METRIC_NAMES, check_cut_offs, evaluate_ranking, metrics_from_hits, rank_metrics, ranked_topk

__all__ = [
    "COLD_MODES", "METRIC_NAMES", "Evaluator", "check_cut_offs", "evaluate_cold", "evaluate_ranking", "metrics_from_hits", "popularity_buckets", "popularity_groups",
    "popularity_order", "rank_metrics", "ranked_topk", "restrict_items",
]
