"""Exact, vectorised full-ranking evaluation."""

from prismrec.eval.evaluator import Evaluator
from prismrec.eval.groups import popularity_groups, restrict_items
from prismrec.eval.metrics import evaluate_ranking, metrics_from_hits, rank_metrics, ranked_topk

__all__ = ["Evaluator", "popularity_groups", "restrict_items", "evaluate_ranking", "metrics_from_hits", "rank_metrics", "ranked_topk"]
