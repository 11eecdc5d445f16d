"""Exact, vectorised full-ranking evaluation."""

from prismrec.eval.evaluator import Evaluator
from prismrec.eval.metrics import evaluate_ranking, metrics_from_hits, rank_metrics, ranked_topk

__all__ = ["Evaluator", "evaluate_ranking", "metrics_from_hits", "rank_metrics", "ranked_topk"]
