"""Representation export (prismrec.experiment.export, `prismrec export`)."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.data.synthetic import write_planted_dataset
from prismrec.eval.metrics import evaluate_ranking
from prismrec.experiment.config import resolve_config
from prismrec.errors import DatasetError, RunError
from prismrec.experiment.export import export_representations
from prismrec.experiment.runs import run_experiment
from prismrec.models import get_model

runner = CliRunner()


@pytest.fixture(scope="module")
def freedom_run(planted, planted_dir, tmp_path_factory):
    """A finished 2-epoch FREEDOM run on the planted data (dataset recorded by name)."""
    run = tmp_path_factory.mktemp("runs") / "freedom"
    cfg = resolve_config("freedom", "planted", {"epochs": 2, "lr": 0.01})
    run_experiment(cfg, [7], run, dataset=planted, progress=False)
    return run, cfg


def test_export_arrays_and_description(freedom_run, planted, planted_dir):
    run, cfg = freedom_run
    out = export_representations(run, data_dir=planted_dir.parent)
    assert out == run / "export"
    names = {p.name for p in out.iterdir()}
    assert names == {
        "representations.json", "user.npy", "item.npy",
        "user.behavior.npy", "item.behavior.npy", "user.modality.npy", "item.modality.npy",
    }
    user, item = np.load(out / "user.npy"), np.load(out / "item.npy")
    assert user.shape == (planted.n_users, 64) and item.shape == (planted.n_items, 64)
    assert user.dtype == np.float32 and item.dtype == np.float32

    # item.npy is the eval-mode forward of the saved model.
    model = get_model("freedom")(planted, cfg.params)
    model.load_state_dict(torch.load(run / "model.pt"))
    model.eval()
    with torch.no_grad():
        ref = model()
    np.testing.assert_array_equal(item, ref.item.numpy())
    np.testing.assert_array_equal(user, ref.user.numpy())
    np.testing.assert_array_equal(np.load(out / "item.behavior.npy"), ref.aux["behavior"][planted.n_users :].numpy())
    np.testing.assert_allclose(
        np.load(out / "item.behavior.npy") + np.load(out / "item.modality.npy"), item, atol=1e-6
    )

    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((out / "representations.json").read_text())
    assert meta["source_model"] == "freedom" and meta["dataset"] == "planted"
    assert meta["run_dir"] == str(run.resolve()) and meta["seed"] == 7
    assert meta["config_digest"] == cfg.digest() == meta["recorded_config_digest"]
    assert meta["best_epoch"] == metrics["best_epoch"]
    assert meta["valid_recall@20"] == metrics["valid"]["recall@20"]
    assert meta["train_fingerprint"] == planted.fingerprint("train")
    assert (meta["n_users"], meta["n_items"]) == (planted.n_users, planted.n_items)
    assert meta["arrays"]["item.npy"]["shape"] == [planted.n_items, 64]
    assert meta["arrays"]["user.behavior.npy"]["rows"] == "users"
    assert set(meta["arrays"]) == names - {"representations.json"}

    # The exported vectors reproduce the run's recorded validation score.
    u, i = torch.from_numpy(user), torch.from_numpy(item)
    valid = evaluate_ranking(lambda users: u[users] @ i.T, planted.valid, planted.train, ks=(20,))
    assert valid["recall@20"] == pytest.approx(metrics["valid"]["recall@20"], abs=1e-6)


def test_mismatched_train_split_is_an_error(freedom_run, tmp_path):
    run, _ = freedom_run
    other = write_planted_dataset(tmp_path / "other" / "planted", seed=1)  # same name, other split
    with pytest.raises(RunError, match="train split mismatch.*--data-dir"):
        export_representations(run, tmp_path / "out", data_dir=other.parent)
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()  # no dataset there: the error says the run needs it (was only "not found in")
    with pytest.raises(DatasetError, match=r"run .* was trained on dataset 'planted', which is needed to use it "
                                           r"\(give --data-dir the folder holding it\): dataset 'planted' not found"):
        export_representations(run, tmp_path / "out", data_dir=tmp_path / "empty")


def _rehash(run):
    """Record the current files in the FINISHED marker (a consistent directory, edited on purpose)."""
    import hashlib

    marker = json.loads((run / "FINISHED").read_text())
    marker["files"] = {name: hashlib.sha256((run / name).read_bytes()).hexdigest() for name in marker["files"]}
    (run / "FINISHED").write_text(json.dumps(marker))


def test_tampered_fingerprint_and_failed_run(freedom_run, planted_dir, tmp_path):
    run, _ = freedom_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["protocol"]["split_fingerprints"]["train"] = "0123456789abcdef"
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    # An edited config.yaml beside the old model is a mixed run ...
    with pytest.raises(RunError, match="config.yaml changed after the run finished.*--overwrite"):
        export_representations(copy, data_dir=planted_dir.parent)
    # ... and a consistent directory whose recorded train split differs is refused too.
    _rehash(copy)
    with pytest.raises(RunError, match="fingerprint 0123456789abcdef"):
        export_representations(copy, data_dir=planted_dir.parent)
    (copy / "metrics.json").write_text(json.dumps({"status": "failed", "error": "NaN"}))
    _rehash(copy)
    with pytest.raises(RunError, match="did not finish"):
        export_representations(copy, data_dir=planted_dir.parent)
    with pytest.raises(RunError, match="not a finished run directory"):
        export_representations(tmp_path, data_dir=planted_dir.parent)


def test_multi_seed_run_exports_every_seed(freedom_run, planted, planted_dir, tmp_path):
    cfg = resolve_config("vbpr", "planted", {"epochs": 1})
    run_experiment(cfg, [3, 4], tmp_path / "run", dataset=planted, progress=False)
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "notes.txt").write_text("the user's own file")
    export_representations(freedom_run[0], tmp_path / "exported", data_dir=planted_dir.parent)  # an earlier export
    out = export_representations(tmp_path / "run", tmp_path / "exported", data_dir=planted_dir.parent)
    # the earlier run's arrays are gone (they sat beside the new index); other files are kept
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "representations.json", "seed-3", "seed-4"]
    index = json.loads((out / "representations.json").read_text())
    assert index["source_model"] == "vbpr" and set(index["seeds"]) == {"3", "4"}
    items = []
    for seed in (3, 4):
        meta = json.loads((out / f"seed-{seed}" / "representations.json").read_text())
        assert meta["seed"] == seed and meta["skipped_aux"] == {}
        assert set(meta["arrays"]) == {"user.npy", "item.npy"}  # VBPR has no auxiliaries
        items.append(np.load(out / f"seed-{seed}" / "item.npy"))
        assert items[-1].shape == (planted.n_items, 128)  # [e_i ; W f_i + b]
    assert not np.array_equal(*items)


def test_cli_export(freedom_run, planted_dir, tmp_path):
    run, _ = freedom_run
    out = tmp_path / "cli"
    result = runner.invoke(
        app, ["export", "--run", str(run), "--out", str(out), "--data-dir", str(planted_dir.parent)]
    )
    assert result.exit_code == 0, result.output
    assert "representations written to" in result.output
    assert (out / "item.npy").is_file() and (out / "representations.json").is_file()

    other = write_planted_dataset(tmp_path / "other" / "planted", seed=1)
    result = runner.invoke(app, ["export", "--run", str(run), "--data-dir", str(other.parent)])
    assert result.exit_code == 2 and "train split mismatch" in result.output


def test_evaluate_run_overall_and_long_tail(freedom_run, planted, planted_dir):
    from prismrec.experiment.evaluate import evaluate_run

    run, _ = freedom_run
    result = evaluate_run(run, "test", data_dir=planted_dir.parent)
    recorded = json.loads((run / "metrics.json").read_text())["test"]
    assert result["all"]["recall@20"] == pytest.approx(recorded["recall@20"], abs=1e-7)
    assert result["tail"]["items"] == int(planted.n_items * 0.8)
    assert result["tail"]["items"] + result["head"]["items"] == planted.n_items
    assert 0 < result["tail"]["users"] <= result["all"]["users"]
    assert json.loads((run / "evaluation-test.json").read_text())["meta"]["grouping"] == "popularity"
    only = evaluate_run(run, "valid", grouping="none", data_dir=planted_dir.parent)
    assert set(only) == {"all", "meta"}
    with pytest.raises(ValueError, match="grouping must be one of"):
        evaluate_run(run, grouping="genre", data_dir=planted_dir.parent)


def test_cli_evaluate(freedom_run, planted_dir):
    run, _ = freedom_run
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--data-dir", str(planted_dir.parent)])
    assert result.exit_code == 0, result.output
    assert "tail" in result.output and "head" in result.output
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--tail-share", "1.5", "--data-dir", str(planted_dir.parent)])
    assert result.exit_code == 2 and "tail-share" in result.output.replace("_", "-")


def test_finished_runs_orders_seed_folders_numerically(tmp_path):
    from prismrec.experiment.rundir import RunDir

    for name in ("seed-1000", "seed-999", "seed-2", "seed-x", "seed-5"):
        (tmp_path / name).mkdir()
    assert [d.path.name for d in RunDir(tmp_path).seed_dirs()] == ["seed-2", "seed-5", "seed-999", "seed-1000", "seed-x"]
