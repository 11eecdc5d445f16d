"""Recommendations from a finished run (prismrec.serve, `prismrec recommend`)."""

import asyncio
import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.experiment.config import resolve_config
from prismrec.errors import RunError, ServeError
from prismrec.experiment.runs import run_experiment
from prismrec.models import get_model
from prismrec.serve import RunRecommender

runner = CliRunner()


@pytest.fixture(scope="module")
def lightgcn_run(planted, planted_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "lightgcn"
    cfg = resolve_config("lightgcn", "planted", {"epochs": 2, "lr": 0.01})
    run_experiment(cfg, [5], str(run), dataset=planted, progress=False)  # a str path works too
    return run, cfg


@pytest.fixture(scope="module")
def recommenders(lightgcn_run, planted_dir):
    run, _ = lightgcn_run
    return {e: RunRecommender(run, planted_dir.parent, exclude=e) for e in ("seen", "train", "none")}


def reference(planted, cfg, run, users, k, exclude):
    """Per user: the saved model's scores, known items dropped, sorted by (-score, item id)."""
    model = get_model("lightgcn")(planted, cfg.params)
    model.load_state_dict(torch.load(run / "model.pt"))
    model.eval()
    with torch.no_grad():
        out = model()
    splits = {"seen": (planted.train, planted.valid, planted.test), "train": (planted.train,), "none": ()}[exclude]
    result = []
    for u in users:
        known = {int(i) for m in splits for i in m[u].indices}
        scores = (out.user[u] @ out.item.T).tolist()
        ranked = sorted((i for i in range(planted.n_items) if i not in known), key=lambda i: (-scores[i], i))[:k]
        result.append([(i, scores[i]) for i in ranked] + [(-1, -math.inf)] * (k - len(ranked)))
    return result


@pytest.mark.parametrize("exclude", ["seen", "train", "none"])
def test_recommendations_match_a_brute_force_ranking(recommenders, lightgcn_run, planted, exclude):
    run, cfg = lightgcn_run
    users = [0, 7, 7, planted.n_users - 1, 42]
    items, scores = recommenders[exclude].recommend(users, k=15)
    assert items.shape == scores.shape == (5, 15) and items.dtype == np.int64
    for b, expected in enumerate(reference(planted, cfg, run, users, 15, exclude)):
        assert items[b].tolist() == [i for i, _ in expected]
        np.testing.assert_allclose(scores[b], [s for _, s in expected], rtol=1e-5, atol=1e-6)


def test_seen_items_are_never_recommended(recommenders, planted):
    seen = (planted.train + planted.valid + planted.test).tocsr()
    users = np.arange(planted.n_users)
    items, _ = recommenders["seen"].recommend(users, k=20)
    for u in users:
        assert not set(items[u].tolist()) & set(seen[u].indices.tolist())


def test_short_lists_are_padded_with_minus_one(recommenders, planted):
    seen = (planted.train + planted.valid + planted.test).tocsr()
    k = planted.n_items
    items, scores = recommenders["seen"].recommend([3, 11], k=k)
    for b, u in enumerate([3, 11]):
        n_free = k - seen[u].nnz
        assert sorted(items[b, :n_free].tolist()) == sorted(set(range(k)) - set(seen[u].indices.tolist()))
        assert (items[b, n_free:] == -1).all() and np.isneginf(scores[b, n_free:]).all()
        assert np.isfinite(scores[b, :n_free]).all()


def test_batched_scoring_equals_one_block(lightgcn_run, recommenders, planted_dir):
    run, _ = lightgcn_run
    small = RunRecommender(run, planted_dir.parent, batch_size=7)
    users = list(range(0, 60, 3))
    (items, scores), (items_ref, scores_ref) = small.recommend(users, 10), recommenders["seen"].recommend(users, 10)
    np.testing.assert_array_equal(items, items_ref)
    np.testing.assert_allclose(scores, scores_ref, rtol=1e-6)  # GEMM blocking may round differently


@pytest.mark.parametrize(
    "users, k, message",
    [
        ([0, 300, -1], 10, r"unknown user id\(s\) \[300, -1\].*user ids 0\.\.299"),
        ([0.5], 10, "integer user ids"),
        ([[0, 1]], 10, "1-D list"),
        ([0], 0, r"k must be an integer in 1\.\.200"),
        ([0], 201, r"k must be an integer in 1\.\.200"),
        ([0], 2.5, "k must be an integer"),
    ],
)
def test_bad_requests_are_clear_errors(recommenders, users, k, message):
    with pytest.raises(ServeError, match=message):
        recommenders["seen"].recommend(users, k)


def test_bad_exclude_and_multi_seed_run_are_clear_errors(lightgcn_run, planted, planted_dir, tmp_path):
    run, _ = lightgcn_run
    with pytest.raises(ValueError, match=r"exclude must be one of \['seen', 'train', 'none'\]"):
        RunRecommender(run, planted_dir.parent, exclude="test")
    multi = tmp_path / "multi"
    run_experiment(resolve_config("bpr", "planted", {"epochs": 1}), [1, 2], multi, dataset=planted, progress=False)
    with pytest.raises(RunError, match="multi-seed run: pass one of its seed directories \\(seed-1, seed-2\\)"):
        RunRecommender(multi, planted_dir.parent)
    assert RunRecommender(multi / "seed-2", planted_dir.parent).recommend([0], 3)[0].shape == (1, 3)


def test_cli_writes_csv_and_prints(lightgcn_run, recommenders, planted_dir, tmp_path):
    run, _ = lightgcn_run
    csv = tmp_path / "recs.csv"
    args = ["recommend", "--run", str(run), "--users", "4,9", "--k", "5", "--data-dir", str(planted_dir.parent)]
    result = runner.invoke(app, [*args, "--out", str(csv)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(csv)
    items, scores = recommenders["seen"].recommend([4, 9], 5)
    assert frame.columns.tolist() == ["user", "rank", "item", "score"]
    assert frame["user"].tolist() == [4] * 5 + [9] * 5 and frame["rank"].tolist() == [1, 2, 3, 4, 5] * 2
    assert frame["item"].tolist() == items.ravel().tolist()
    np.testing.assert_allclose(frame["score"], scores.ravel(), rtol=1e-6)

    printed = runner.invoke(app, [*args, "--exclude", "train"])
    assert printed.exit_code == 0, printed.output
    assert " ".join(map(str, recommenders["train"].recommend([9], 5)[0][0])) in printed.output

    everyone = runner.invoke(app, [*args[:4], "all", *args[5:], "--out", str(csv)])
    assert everyone.exit_code == 0 and len(pd.read_csv(csv)) == 300 * 5
    one = runner.invoke(app, [*args[:4], "4", *args[5:-4], "--k", "1", *args[-2:], "--out", str(csv)])
    assert " ".join(one.output.split()) == f"1 recommendation for 1 user written to {csv}"  # was "1 recommendations for 1 users"

    bad = runner.invoke(app, [*args[:4], "4,x", *args[5:]])
    assert bad.exit_code == 2 and "--users must be comma-separated integer ids or 'all'" in bad.output


@pytest.mark.parametrize(
    "users, extra, message",
    [
        ("", [], "--users '' names no user"),
        (" , ", [], "names no user"),
        ("4", ["--out", "{tmp}/missing/recs.csv"], r"the folder .*missing does not exist"),
        ("4", ["--out", "{tmp}"], "is a directory; give a file path"),
        ("4", ["--k", "0"], r"Invalid value for '--k'"),
        ("4", ["--k", "201"], r"--k 201 is above the 200 items of planted; give --k from 1 to 200$"),  # was "k must be"
        ("4", ["--exclude", "test"], "--exclude 'test': choose one of seen, train, none"),
        ("4,1000", [], r"unknown user id\(s\) \[1000\]"),
    ],
)
def test_cli_recommend_bad_input_is_one_line(lightgcn_run, planted_dir, tmp_path, users, extra, message):
    run, _ = lightgcn_run
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    result = runner.invoke(app, ["recommend", "--run", str(run), "--users", users, "--data-dir", str(planted_dir.parent),
                                 *extra])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("error: ")
    import re

    assert re.search(message, lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_http_app(recommenders, planted):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient  # needs httpx2 (or httpx with older Starlette)

    from prismrec.serve.app import create_app

    client = TestClient(create_app(recommenders["seen"]))
    health = client.get("/health").json()
    assert (health["model"], health["dataset"], health["exclude"]) == ("lightgcn", "planted", "seen")
    assert (health["n_users"], health["n_items"]) == (planted.n_users, planted.n_items)

    items, scores = recommenders["seen"].recommend([12, 3], 6)
    one = client.get("/recommend/12", params={"k": 6}).json()
    assert one["user"] == 12 and one["items"] == items[0].tolist()
    np.testing.assert_allclose(one["scores"], scores[0], rtol=1e-6)
    many = client.post("/recommend", json={"users": [12, 3], "k": 6}).json()["recommendations"]
    assert [r["user"] for r in many] == [12, 3] and many[1]["items"] == items[1].tolist()

    # A list shorter than k is returned short, never padded with -1 / -inf (not JSON).
    seen = (planted.train + planted.valid + planted.test).tocsr()
    full = client.get("/recommend/3", params={"k": planted.n_items}).json()
    assert len(full["items"]) == planted.n_items - seen[3].nnz and -1 not in full["items"]

    bad = client.get("/recommend/300")
    assert bad.status_code == 422 and "unknown user id(s) [300]" in bad.json()["detail"]
    assert client.post("/recommend", json={"users": [1], "k": 0}).status_code == 422
    assert client.post("/recommend", json={"users": "x"}).status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"users": [True], "k": 5},  # JSON true is not user 1
        {"users": [1], "k": 10.0},  # 10.0 is not an int
        {"users": [1.0], "k": 5},
        {"users": ["1"], "k": 5},
        {"users": [1], "k": "5"},
        {"users": [1], "k": 5, "extra": 1},
        {"users": [1], "k": True},
    ],
)
def test_http_strict_types(recommenders, body):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from prismrec.serve.app import create_app

    response = TestClient(create_app(recommenders["seen"])).post("/recommend", json=body)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("raw", [b'{"users": [1], "k": NaN}', b'{"users": [Infinity]}', b'{"users": [1], "k": -Infinity}'])
def test_http_nan_and_infinity_are_422_not_500(recommenders, raw):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from prismrec.serve.app import create_app

    client = TestClient(create_app(recommenders["seen"]), raise_server_exceptions=False)
    response = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "valid integer" in response.text, response.text  # was a 500


@pytest.mark.parametrize("path", ["/recommend/true", "/recommend/1.0", "/recommend/1?k=10.0", "/recommend/1?k=true",
                                  "/recommend/-1", "/recommend/1?k=0"])
def test_http_get_strict_whole_numbers(recommenders, path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from prismrec.serve.app import create_app

    response = TestClient(create_app(recommenders["seen"])).get(path)
    assert response.status_code == 422 and response.json()["detail"], response.text
    if path == "/recommend/-1":  # a whole number, out of the id range: said so (was "must be a whole number")
        assert "whole number" not in response.text and "-1" in response.text, response.text


def test_http_limits(recommenders):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from prismrec.serve.app import ServeLimits, create_app

    limits = ServeLimits(max_users=10, max_k=20, max_items=100, max_body_bytes=2048)
    client = TestClient(create_app(recommenders["seen"], limits))
    assert client.get("/health").json()["limits"] == {"max_users": 10, "max_k": 20, "max_items": 100,
                                                      "max_body_bytes": 2048}
    assert client.post("/recommend", json={"users": list(range(10)), "k": 10}).status_code == 200  # at the limits
    too_many = client.post("/recommend", json={"users": list(range(11)), "k": 1})
    assert too_many.status_code == 413 and "11 users in one request; this server answers at most 10" in too_many.text
    big_k = client.get("/recommend/1", params={"k": 21})
    assert big_k.status_code == 422 and "k=21 is over this server's limit of 20" in big_k.text
    too_much = client.post("/recommend", json={"users": list(range(6)), "k": 20})
    assert too_much.status_code == 413 and "120 items in one answer" in too_much.text
    body = client.post("/recommend", content=b'{"users": [' + b"1, " * 1000 + b'1], "k": 1}',
                       headers={"content-type": "application/json"})
    assert body.status_code == 413 and "request body over 2048 bytes" in body.text

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(100):
            yield b"1, " * 10
    chunked = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    sent = []  # a Content-Length that is not a number is a bad request (400), not a body too large (413)

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)
    asyncio.run(client.app(  # the middleware itself: HTTP clients refuse to send such a header
        {"type": "http", "method": "POST", "path": "/recommend", "headers": [(b"content-length", b"12x")]},
        receive, send))
    assert sent[0]["status"] == 400 and b"Content-Length '12x' is not a number of bytes" in sent[1]["body"]
    with pytest.raises(ServeError, match="max_users must be a whole number >= 1"):
        ServeLimits(max_users=0)


def test_cli_serve_refuses_what_is_not_a_finished_run(tmp_path, lightgcn_run, planted_dir):
    pytest.importorskip("uvicorn")
    result = runner.invoke(app, ["serve", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "is not a finished run directory" in " ".join(result.output.split())
    run, _ = lightgcn_run
    result = runner.invoke(app, ["serve", "--run", str(run), "--exclude", "all", "--data-dir", str(planted_dir.parent)])
    assert result.exit_code == 2 and "--exclude 'all': choose one of" in result.output
    for port in ("99999", "0", "http"):
        result = runner.invoke(app, ["serve", "--run", str(run), "--port", port])
        assert result.exit_code == 2 and result.output.startswith("error: Invalid value for '--port'"), result.output
        assert len(result.output.strip().splitlines()) == 1
