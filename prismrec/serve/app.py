"""An HTTP endpoint over a finished run: ``prismrec serve --run DIR`` (needs ``prismrec[serve]``).

``GET /health``                     the run being served (model, dataset, counts, validation score)
``GET /recommend/{user}?k=10``      one user's top ``k``
``POST /recommend`` ``{"users": [0, 5], "k": 10}``   several users in one scoring pass

Answers carry only real items: a list shorter than ``k`` (the user has seen nearly everything)
is returned short rather than padded. A bad request (unknown user, bad ``k``) is HTTP 422 with
the same message as the Python API.
"""

from __future__ import annotations

from prismrec.serve.recommend import RunRecommender

try:
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("serving needs FastAPI: pip install 'prismrec[serve]'") from exc


class Request(BaseModel):
    users: list[int]
    k: int = 10


def create_app(recommender: RunRecommender) -> FastAPI:
    """A FastAPI application answering from ``recommender`` (its forward is computed once)."""
    run = recommender.run
    app = FastAPI(title="prismrec", description=f"{run.config.model} on {run.config.dataset}")

    def answer(users: list[int], k: int) -> list[dict]:
        try:
            items, scores = recommender.recommend(users, k)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        keep = items >= 0
        return [
            {"user": u, "items": row[ok].tolist(), "scores": [float(s) for s in values[ok]]}
            for u, row, values, ok in zip(users, items, scores, keep)
        ]

    @app.get("/health")
    def health() -> dict:
        return {
            "model": run.config.model,
            "dataset": run.config.dataset,
            "run": str(run.run_dir),
            "n_users": recommender.n_users,
            "n_items": recommender.n_items,
            "exclude": recommender.exclude_mode,
            "valid": run.metrics.get("valid"),
        }

    @app.get("/recommend/{user}")
    def recommend_one(user: int, k: int = 10) -> dict:
        return answer([user], k)[0]

    @app.post("/recommend")
    def recommend_many(request: Request) -> dict:
        return {"recommendations": answer(request.users, request.k)}

    return app
