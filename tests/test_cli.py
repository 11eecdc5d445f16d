import json

import yaml
from typer.testing import CliRunner

from prismrec.cli import app

runner = CliRunner()


def test_train_writes_the_run_directory(planted_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", "--model", "lightgcn", "--dataset", str(planted_dir), "--set", "epochs=2",
         "--set", "n_layers=2", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert {"config.yaml", "metrics.json", "history.csv", "model.pt"} <= {p.name for p in out.iterdir()}
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["params"]["n_layers"] == 2 and config["train"]["epochs"] == 2
    assert config["protocol"]["split_fingerprints"]["train"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"valid", "test", "best_epoch", "epochs"} <= set(metrics)
    assert "recall@20" in metrics["test"]


def test_unknown_set_key_is_an_error(planted_dir, tmp_path):
    result = runner.invoke(
        app, ["train", "--model", "lightgcn", "--dataset", str(planted_dir), "--set", "layers=2"]
    )
    assert result.exit_code == 2
    assert "unknown setting(s) layers" in result.output and "n_layers" in result.output


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["train", "--model", "bpr", "--dataset", "nope", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "not found" in result.output


def test_datasets_lists_counts(planted_dir):
    result = runner.invoke(app, ["datasets", "--data-dir", str(planted_dir.parent)])
    assert result.exit_code == 0, result.output
    assert "planted" in result.output and "image (16)" in result.output


def test_compare_is_resumable(planted_dir, tmp_path):
    args = ["compare", "--models", "bpr,lightgcn", "--datasets", "planted", "--n-seeds", "2",
            "--out", str(tmp_path), "--data-dir", str(planted_dir.parent), "--set", "epochs=2",
            "--set", "lightgcn.n_layers=1"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    results = json.loads((tmp_path / "results.json").read_text())
    cell = results["cells"]["planted"]["lightgcn"]
    assert set(cell["per_seed"]) == {"999", "1000"} and cell["epochs"] == [2, 2]
    assert "± " in (tmp_path / "results.md").read_text()
    stamp = (tmp_path / "planted/bpr/seed-999/metrics.json").stat().st_mtime
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and second.output.count("skipped") == 4
    assert (tmp_path / "planted/bpr/seed-999/metrics.json").stat().st_mtime == stamp
    # a changed setting is a different configuration: the cells are retrained, not reused
    third = runner.invoke(app, args[:-1] + ["lightgcn.n_layers=2"])
    assert third.exit_code == 0 and third.output.count("skipped") == 2
    # report-only summarises what is finished and trains nothing
    fourth = runner.invoke(app, args[:-1] + ["lightgcn.n_layers=3", "--report-only"])
    assert fourth.exit_code == 0 and fourth.output.count(": not run") == 2
    assert fourth.output.count("training") == 0
    assert "not run or failed" in (tmp_path / "results.md").read_text()


def test_compare_of_a_dataset_path_keeps_its_cells_under_out(planted_dir, tmp_path):
    """``--datasets /abs/planted`` made the cell ``out / "/abs/planted" / ...``, i.e. the run folders
    went into the dataset's own folder (and a later compare with another --out reused them)."""
    out = tmp_path / "cmp"
    before = sorted(p.name for p in planted_dir.iterdir())
    result = runner.invoke(app, ["compare", "--models", "bpr", "--datasets", str(planted_dir), "--n-seeds", "1",
                                 "--out", str(out), "--set", "epochs=1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in planted_dir.iterdir()) == before
    assert (out / "planted" / "bpr" / "seed-999" / "FINISHED").is_file()
    assert "done before" in runner.invoke(app, ["compare", "--models", "bpr", "--datasets", str(planted_dir),
                                                "--n-seeds", "1", "--out", str(out), "--set", "epochs=1"]).output
    other = tmp_path / "elsewhere" / "planted"
    other.parent.mkdir()
    other.symlink_to(planted_dir)
    clash = runner.invoke(app, ["compare", "--models", "bpr", "--datasets", f"{planted_dir},{other}",
                                "--n-seeds", "1", "--out", str(out), "--set", "epochs=1"])
    assert clash.exit_code == 2 and "share the cell folder" in clash.output
