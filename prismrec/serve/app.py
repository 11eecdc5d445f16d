"""An HTTP endpoint over a finished run: ``prismrec serve --run DIR`` (needs ``prismrec[serve]``).

``GET /health``                     the run being served (model, dataset, counts, validation score, limits)
``GET /recommend/{user}?k=10``      one user's top ``k``
``POST /recommend`` ``{"users": [0, 5], "k": 10}``   several users in one scoring pass

With ``raw_ids`` (``prismrec serve --raw-ids``; the dataset was built by ``prismrec build``, whose
``u_id_mapping.csv`` / ``i_id_mapping.csv`` it reads), users and items are the source data's ids,
as strings: ``GET /recommend/A1HK2FQW6KXQB2?k=10``, ``POST /recommend``
``{"users": ["A1HK2FQW6KXQB2"], "k": 10}``; the answers' ``items`` are raw item ids.

Answers carry only real items: a list shorter than ``k`` (the user has seen nearly everything)
is returned short rather than padded. A bad request (unknown user, a ``k`` that is not a whole
number in range, a JSON ``true`` or ``10.0`` where an integer belongs) is HTTP 422 with the same
message as the Python API. Requests over the server's :class:`ServeLimits` (too many users, too
many items in one answer, a body too large) are HTTP 413, so one request can neither exhaust the
server's memory nor hold its workers for long.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass

from prismrec.errors import ServeError
from prismrec.serve.recommend import RunRecommender

try:
    from fastapi import FastAPI, HTTPException
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("serving needs FastAPI: pip install 'prismrec[serve]'") from exc


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on one request; the defaults keep an answer under ~3 MB of JSON."""

    max_users: int = 1000
    """Most users in one ``POST /recommend`` (more: 413)."""
    max_k: int = 1000
    """Largest ``k`` (more: 422)."""
    max_items: int = 100_000
    """Most recommended items in one answer, ``len(users) * k`` (more: 413)."""
    max_body_bytes: int = 1_000_000
    """Largest request body (more: 413, refused before it is parsed)."""

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServeError(f"serving limit {key} must be a whole number >= 1, got {value!r}")


class Request(BaseModel):
    """Body of ``POST /recommend``: JSON integers only (``true`` and ``10.0`` are refused)."""

    model_config = ConfigDict(extra="forbid")

    users: list[StrictInt]
    k: StrictInt = 10


class RawRequest(BaseModel):
    """Body of ``POST /recommend`` on a ``--raw-ids`` server: raw user ids as JSON strings."""

    model_config = ConfigDict(extra="forbid")

    users: list[StrictStr]
    k: StrictInt = 10


def _json_safe(value):
    """``value`` with every NaN or infinite float written as text (``"nan"``): JSON cannot hold them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


async def _invalid_request(request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 answer, with the offending inputs made JSON-safe: a body with ``NaN`` or
    ``Infinity`` (which Python's JSON parser accepts) made the default handler fail with a 500."""
    return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(exc.errors()))})


_WHOLE = re.compile(r"-?[0-9]{1,18}")  # a sign: -1 is a whole number, refused as an id by its range


def _whole_number(text: str, what: str) -> int:
    """A path or query value that must be written as a whole number (``10``, not ``10.0``/``true``)."""
    if not _WHOLE.fullmatch(text):
        raise HTTPException(status_code=422, detail=f"{what} must be a whole number such as 10, got {text!r}")
    return int(text)


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413 before the app parses it.

    The declared ``Content-Length`` is checked first; a chunked body is read up to the limit and
    replayed to the app, so an endless body is cut off after ``max_bytes``.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and not declared.isdigit():
            return await self._refuse(send, 400, f"Content-Length {declared.decode(errors='replace')!r} is not a "
                                                 "number of bytes; send the body's length in bytes")
        if declared is not None and int(declared) > self.max_bytes:
            return await self._refuse(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return None
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await self._refuse(send)
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, send, status: int = 413, detail: str = "") -> None:
        detail = detail or f"request body over {self.max_bytes} bytes; send fewer users per request"
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def create_app(recommender: RunRecommender, limits: ServeLimits | None = None, raw_ids: bool = False):
    """An ASGI application answering from ``recommender`` (its forward is computed once).

    ``raw_ids``: users and items are the dataset's raw ids (a :class:`ServeError` when the
    dataset has no id maps).

    Returns the FastAPI app wrapped in :class:`BodyLimit`; the FastAPI object is its ``.app``.
    """
    limits = limits or ServeLimits()
    run = recommender.run
    if raw_ids and recommender.ids is None:
        raise ServeError(f"--raw-ids: dataset {run.config.dataset} has no u_id_mapping.csv / "
                         "i_id_mapping.csv (written by prismrec build); serve internal ids instead")
    app = FastAPI(title="prismrec", description=f"{run.config.model} on {run.config.dataset}")
    app.add_exception_handler(RequestValidationError, _invalid_request)

    def answer(users: list[int], k: int) -> list[dict]:
        if len(users) > limits.max_users:
            raise HTTPException(status_code=413, detail=(
                f"{len(users)} users in one request; this server answers at most {limits.max_users} "
                "(split the request, or start it with a larger --max-users)"))
        if k > limits.max_k:
            raise HTTPException(status_code=422, detail=(
                f"k={k} is over this server's limit of {limits.max_k} items per user (--max-k)"))
        if len(users) * k > limits.max_items:
            raise HTTPException(status_code=413, detail=(
                f"{len(users)} users x k={k} = {len(users) * k} items in one answer; this server returns at "
                f"most {limits.max_items} (--max-items): ask for fewer users or a smaller k"))
        try:
            if raw_ids:
                items, scores = recommender.recommend_raw(users, k)
                return [{"user": u, "items": row, "scores": values}
                        for u, row, values in zip(users, items, scores)]
            items, scores = recommender.recommend(users, k)
        except ServeError as exc:
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
            "ids": "raw" if raw_ids else "internal",
            "valid": run.metrics.get("valid"),
            "limits": asdict(limits),
        }

    if raw_ids:
        @app.get("/recommend/{user}")
        def recommend_one_raw(user: str, k: str = "10") -> dict:
            """One user's top k; the user and the items are the dataset's raw ids."""
            return answer([user], _whole_number(k, "k"))[0]

        @app.post("/recommend")
        def recommend_many_raw(request: RawRequest) -> dict:
            """Several users' top k in one scoring pass; raw ids (JSON strings) in and out."""
            return {"recommendations": answer(request.users, request.k)}
    else:
        @app.get("/recommend/{user}")
        def recommend_one(user: str, k: str = "10") -> dict:
            """One user's top k; internal ids (0-based integers)."""
            return answer([_whole_number(user, "user")], _whole_number(k, "k"))[0]

        @app.post("/recommend")
        def recommend_many(request: Request) -> dict:
            """Several users' top k in one scoring pass; internal ids (JSON integers)."""
            return {"recommendations": answer(request.users, request.k)}

    return BodyLimit(app, limits.max_body_bytes)
