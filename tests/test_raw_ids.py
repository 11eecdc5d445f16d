"""Raw ids in `recommend` / `serve`: a dataset built by `prismrec build` keeps its source ids in
u_id_mapping.csv / i_id_mapping.csv; recommendations taken and returned in raw ids round-trip
through those maps to the internal-id answers."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.data import load_dataset
from prismrec.data.build import build_dataset
from prismrec.errors import ServeError
from prismrec.experiment.config import resolve_config
from prismrec.experiment.runs import run_experiment
from prismrec.serve import RunRecommender


def raw_interactions(seed=0, n=3000, n_users=120, n_items=90):
    rng = np.random.default_rng(seed)
    # zero-padded raw ids: they must come back as written ("007"), not as numbers (7)
    pairs = {(f"{rng.zipf(1.3) % n_users:03d}", f"item-{rng.zipf(1.2) % n_items}") for _ in range(n)}
    return pd.DataFrame(sorted(pairs), columns=["user", "item"])


@pytest.fixture(scope="module")
def built_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    raw_interactions().to_csv(root / "raw.csv", index=False)
    folder = build_dataset(root / "raw.csv", root / "data" / "toy", min_count=5, seed=7)
    run = root / "run"
    run_experiment(resolve_config("lightgcn", "toy", {"epochs": 2, "threads": 1}), [1], run,
                   dataset=load_dataset(folder), progress=False, log=lambda m: None)
    return run, folder


def test_raw_recommendations_round_trip_through_the_maps(built_run):
    run, folder = built_run
    rec = RunRecommender(run, folder.parent)
    users = pd.read_csv(folder / "u_id_mapping.csv", sep="\t", dtype=str)
    items = pd.read_csv(folder / "i_id_mapping.csv", sep="\t", dtype=str)
    raw_of_item = dict(zip(items.itemID.astype(int), items.item))
    chosen = users.sample(5, random_state=0)
    raw_items, raw_scores = rec.recommend_raw(chosen.user.tolist(), 7)
    internal, scores = rec.recommend(chosen.userID.astype(int).tolist(), 7)
    for row_raw, row_scores, row, row_s in zip(raw_items, raw_scores, internal, scores):
        assert row_raw == [raw_of_item[i] for i in row if i >= 0]
        assert row_scores == pytest.approx([s for s, i in zip(row_s, row) if i >= 0])
    assert all(u.isdigit() and len(u) == 3 for u in users.user)  # "007" kept as text
    with pytest.raises(ServeError, match="unknown raw user id"):
        rec.recommend_raw(["no-such-user"], 3)


def test_an_id_map_with_a_repeated_raw_id_is_refused(built_run, tmp_path):
    import shutil

    run, folder = built_run
    copy = shutil.copytree(folder, tmp_path / "data" / folder.name)
    lines = (copy / "u_id_mapping.csv").read_text().splitlines()
    lines[2] = lines[1].split("\t")[0] + "\t" + lines[2].split("\t")[1]  # two userIDs, one raw id
    (copy / "u_id_mapping.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ServeError, match=r"u_id_mapping\.csv: raw id '.*' is listed twice \(lines 2 and 3\)"):
        RunRecommender(run, copy.parent).recommend_raw(["no-such-user"], 3)  # was silently one of the two


def test_cli_recommend_raw_ids_csv(built_run, tmp_path):
    run, folder = built_run
    users = pd.read_csv(folder / "u_id_mapping.csv", sep="\t", dtype=str)
    first, second = users.user.iloc[0], users.user.iloc[3]
    out = tmp_path / "recs.csv"
    result = CliRunner().invoke(app, ["recommend", "--run", str(run), "--users", f"{first},{second}", "--k", "4",
                                      "--raw-ids", "--out", str(out), "--data-dir", str(folder.parent)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out, dtype=str)
    assert set(frame.user) == {first, second} and frame.item.str.startswith("item-").all()
    expected, _ = RunRecommender(run, folder.parent).recommend_raw([first], 4)
    assert frame[frame.user == first].item.tolist() == expected[0]
    bad = CliRunner().invoke(app, ["recommend", "--run", str(run), "--users", "nobody", "--raw-ids",
                                   "--data-dir", str(folder.parent)])
    assert bad.exit_code == 2 and "error:" in bad.output and "nobody" in bad.output


def test_http_raw_ids(built_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from prismrec.serve.app import create_app

    run, folder = built_run
    rec = RunRecommender(run, folder.parent)
    client = TestClient(create_app(rec, raw_ids=True).app)
    user = rec.ids.raw_users[2]
    got = client.get(f"/recommend/{user}", params={"k": 5}).json()
    assert got["user"] == user and got["items"] == rec.recommend_raw([user], 5)[0][0]
    many = client.post("/recommend", json={"users": [user], "k": 5}).json()["recommendations"]
    assert many[0]["items"] == got["items"]
    assert client.get("/recommend/nobody").status_code == 422
    assert client.post("/recommend", json={"users": [3], "k": 5}).status_code == 422  # raw ids are strings
    assert client.get("/health").json()["ids"] == "raw"
