"""Recommendations from finished runs (the API behind ``prismrec recommend``)."""

from prismrec.serve.recommend import EXCLUDE, RunRecommender

__all__ = ["EXCLUDE", "RunRecommender"]
