"""The cold-item and missing-modality commands end to end: build --cold-items, split-cold,
train, evaluate --mode cold|all."""

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.data.synthetic import write_planted_dataset

runner = CliRunner()


def test_split_cold_train_and_evaluate_cold(tmp_path):
    write_planted_dataset(tmp_path / "planted", n_users=120, n_items=100, per_user=12, seed=2)
    made = runner.invoke(app, ["split-cold", "planted", "--fraction", "0.2", "--out", "pc", "--data-dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    assert "10 cold items in valid, 10 in test" in made.output and (tmp_path / "pc" / "pc.inter").is_file()
    again = runner.invoke(app, ["split-cold", "planted", "--out", "pc", "--data-dir", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.output
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--model", "mgcn", "--dataset", "pc", "--data-dir", str(tmp_path),
                                  "--set", "epochs=2", "--set", "threads=1", "--out", str(run), "--quiet"])
    assert trained.exit_code == 0, trained.output
    for mode in ("cold", "all"):
        result = runner.invoke(app, ["evaluate", "--run", str(run), "--mode", mode, "--strategy", "knn",
                                     "--data-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert "10 cold items ranked among" in result.output and "random" in result.output
        written = json.loads((run / f"evaluation-test-{mode}.json").read_text())
        assert set(written) == {"model", "native", "popularity", "random", "meta"}
        assert written["meta"]["strategy"] == "knn" and written["model"]["items"] == 10
    bad = runner.invoke(app, ["evaluate", "--run", str(run), "--mode", "cold", "--strategy", "magic"])
    assert bad.exit_code == 2 and "--strategy 'magic'" in bad.output
    # MGCN's own content path, its ID rows zeroed instead of its documented imputation
    for id_rows in ("model", "zero"):
        own = runner.invoke(app, ["evaluate", "--run", str(run), "--mode", "cold", "--strategy", "hook",
                                  "--id-rows", id_rows, "--data-dir", str(tmp_path)])
        assert own.exit_code == 0, own.output
        written = json.loads((run / "evaluation-test-cold.json").read_text())
        assert written["meta"]["strategy"] == "hook" and written["meta"]["id_rows"] == id_rows
    bad = runner.invoke(app, ["evaluate", "--run", str(run), "--mode", "cold", "--id-rows", "guess"])
    assert bad.exit_code == 2 and "--id-rows 'guess'" in bad.output


def test_evaluate_cold_on_an_ordinary_dataset_says_how_to_make_one(tmp_path):
    write_planted_dataset(tmp_path / "planted", n_users=60, n_items=50, per_user=10, seed=2)
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--model", "bpr", "--dataset", "planted", "--data-dir", str(tmp_path),
                                  "--set", "epochs=1", "--set", "threads=1", "--out", str(run), "--quiet"])
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--mode", "cold", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no cold items in test" in result.output and "split-cold" in result.output


def test_build_cold_items_and_impute_options(tmp_path):
    rng = np.random.default_rng(0)
    pairs = sorted({(f"u{u}", f"i{rng.integers(40)}") for u in range(60) for _ in range(10)})
    pd.DataFrame(pairs, columns=["user", "item"]).to_csv(tmp_path / "raw.csv", index=False)
    items = sorted({i for _, i in pairs})
    np.savez(tmp_path / "img.npz", ids=np.array(items[1:]), vectors=rng.normal(size=(len(items) - 1, 4)))
    result = runner.invoke(app, ["build", "--interactions", str(tmp_path / "raw.csv"), "--out", str(tmp_path / "b"),
                                 "--min-count", "3", "--cold-items", "0.1", "--item-features",
                                 f"image={tmp_path / 'img.npz'}", "--missing-features", "mean", "--impute", "zero"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["impute"] == "zero" and len(manifest["cold_items"]["test"]) == 2
    assert not np.load(tmp_path / "b" / "image_mask.npy")[0]
    bad = runner.invoke(app, ["build", "--interactions", str(tmp_path / "raw.csv"), "--out", str(tmp_path / "c"),
                              "--cold-items", "0.9"])
    assert bad.exit_code == 2 and "(0, 0.5]" in bad.output
    tiny = runner.invoke(app, ["build", "--interactions", str(tmp_path / "raw.csv"), "--out", str(tmp_path / "c"),
                               "--cold-items", "1e-9"])  # was 2 cold items, silently
    assert tiny.exit_code == 2 and "--cold-items / --fraction 1e-09 makes 0 of the 38 items cold" in tiny.output, tiny.output
    assert "give at least 0.053" in tiny.output and not (tmp_path / "c").exists()
