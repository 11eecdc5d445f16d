"""Optional tracking: MLflow against a real local store, TensorBoard event files read back
(each skipped without its package)."""

import pytest

from prismrec.experiment.config import resolve_config
from prismrec.experiment.runs import run_experiment




def test_a_run_is_tracked_in_a_local_store(planted, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from prismrec.experiment.tracking import MlflowTracker

    tracker = MlflowTracker(str(tmp_path / "store"))
    cfg = resolve_config("lightgcn", "planted", {"epochs": 3, "threads": 1})
    run_id = tracker.start(cfg.to_dict(), "lightgcn-planted")
    out = tmp_path / "run"
    metrics = run_experiment(cfg, [1], out, dataset=planted, progress=False, log=lambda m: None,
                             on_epoch_end=tracker.epoch)
    tracker.finish(metrics, out)
    client = mlflow.tracking.MlflowClient(tracker.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "3" and run.data.params["model"] == "lightgcn"
    history = client.get_metric_history(run_id, "valid_recall_at_20")
    assert [m.step for m in history] == [0, 1, 2]
    assert run.data.metrics["final_test_recall_at_20"] == pytest.approx(metrics["test"]["recall@20"])
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"run.log", "curves.png", "metrics.json"} <= names
    assert (tmp_path / "store" / "mlflow.db").is_file()


def test_cli_train_track_folder(planted_dir, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from typer.testing import CliRunner

    from prismrec.cli import app

    result = CliRunner().invoke(app, ["train", "--model", "bpr", "--dataset", "planted", "--set", "epochs=2",
                                      "--set", "threads=1", "--out", str(tmp_path / "r"), "--quiet",
                                      "--track", str(tmp_path / "store"), "--data-dir", str(planted_dir.parent)])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("tracked in MLflow"))
    run_id = line.split()[-1]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["model"] == "bpr"
    assert "final_valid_recall_at_20" in run.data.metrics


def test_cli_train_track_tensorboard(planted_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from typer.testing import CliRunner

    from prismrec.cli import app

    result = CliRunner().invoke(app, ["train", "--model", "lightgcn", "--dataset", "planted", "--set", "epochs=3",
                                      "--set", "threads=1", "--out", str(tmp_path / "r"), "--quiet",
                                      "--track", f"tensorboard:{tmp_path / 'tb'}", "--data-dir", str(planted_dir.parent)])
    assert result.exit_code == 0, result.output
    assert any(line.startswith("tracked in TensorBoard") for line in result.output.splitlines())
    events = EventAccumulator(str(tmp_path / "tb" / "r"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("valid_recall@20")] == [0, 1, 2]
    assert "final_test/recall@20" in scalars and any(t.startswith("loss") for t in scalars)
    metrics = __import__("json").loads((tmp_path / "r" / "metrics.json").read_text())
    assert events.Scalars("final_test/recall@20")[0].value == pytest.approx(metrics["test"]["recall@20"], rel=1e-6)


def test_track_tensorboard_needs_a_folder():
    from prismrec.errors import ConfigError
    from prismrec.experiment.tracking import make_tracker

    with pytest.raises(ConfigError, match="needs a folder"):
        make_tracker("tensorboard:")


def test_an_unreachable_mlflow_server_is_one_line(planted_dir, tmp_path, monkeypatch):
    """Was MLflow's traceback, after minutes of retries."""
    pytest.importorskip("mlflow")
    from typer.testing import CliRunner

    from prismrec.cli import app

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once, not after MLflow's retries
    result = CliRunner().invoke(app, ["train", "--model", "bpr", "--dataset", str(planted_dir), "--out",
                                      str(tmp_path / "run"), "--set", "epochs=1", "--set", "threads=1", "--quiet",
                                      "--track", "http://127.0.0.1:1"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: --track http://127.0.0.1:1: MLflow at http://127.0.0.1:1 cannot be used")
    assert not (tmp_path / "run").exists()
