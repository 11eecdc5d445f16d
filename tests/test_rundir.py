"""Run-directory protocol (prismrec.experiment.rundir): finished vs unfinished vs mixed, reruns,
overwrite, checkpoints, damaged files, multi-seed parents, divergence."""

import hashlib
import json
import os

import pytest
import torch

from prismrec.errors import RunError, TrainingDiverged
from prismrec.experiment.config import resolve_config
from prismrec.experiment.export import export_representations, load_run
from prismrec.experiment.rundir import RunDir
from prismrec.experiment.runs import run_experiment

QUIET = dict(progress=False, log=lambda message: None)


def lightgcn(**settings):
    return resolve_config("lightgcn", "planted", {"epochs": 3, "threads": 1, **settings})


class Killed(BaseException):
    """Stands in for a kill: nothing of the run's own clean-up runs (it is not an Exception)."""


def kill_at(epoch):
    def hook(row):
        if row["epoch"] == epoch:
            raise Killed

    return hook


def rehash(path):
    """Record the current files in FINISHED: a consistent directory whose file was edited on purpose."""
    marker = json.loads((path / "FINISHED").read_text())
    marker["files"] = {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in marker["files"]}
    (path / "FINISHED").write_text(json.dumps(marker))


@pytest.fixture(scope="module")
def finished(planted, tmp_path_factory):
    """A finished single-seed LightGCN run and its returned metrics."""
    out = tmp_path_factory.mktemp("finished") / "run"
    return out, run_experiment(lightgcn(), [1], out, dataset=planted, **QUIET)


def test_layout_of_a_finished_run(finished):
    out, metrics = finished
    assert {p.name for p in out.iterdir()} == {"config.yaml", "history.csv", "model.pt", "metrics.json",
                                               "timing.json", "FINISHED", "run.log", "curves.png"}
    # no RUNNING, no checkpoint; run.log and curves.png are informative, not hashed (below)
    recorded = json.loads((out / "metrics.json").read_text())
    # nothing machine-dependent in metrics.json: timings live in timing.json
    assert not {"seconds", "median_train_s", "median_eval_s", "peak_rss_mb"} & set(recorded)
    assert {"seconds", "median_train_s", "median_eval_s", "peak_rss_mb"} <= set(json.loads((out / "timing.json").read_text()))
    assert {k: v for k, v in metrics.items() if k not in ("timing", "seconds")} == recorded
    marker = json.loads((out / "FINISHED").read_text())
    assert marker["identity"]["seed"] == 1 and set(marker["files"]) == {"config.yaml", "metrics.json", "model.pt"}
    RunDir(out).verify()


def test_rerun_same_config_is_nothing_to_do_and_another_config_is_refused(finished, planted):
    out, metrics = finished
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    notes = []
    again = run_experiment(lightgcn(), [1], out, dataset=planted, progress=False, log=notes.append)
    assert "nothing to do" in notes[0] and again["test"] == metrics["test"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten
    with pytest.raises(RunError, match="another configuration or seed.*--overwrite.*new --out"):
        run_experiment(lightgcn(n_layers=1), [1], out, dataset=planted, **QUIET)
    with pytest.raises(RunError, match="--overwrite"):
        run_experiment(lightgcn(), [2], out, dataset=planted, **QUIET)  # another seed
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_overwrite_replaces_only_the_runs_files(planted, tmp_path):
    out = tmp_path / "run"
    run_experiment(lightgcn(), [1], out, dataset=planted, **QUIET)
    (out / "notes.txt").write_text("mine")
    (out / "export").mkdir()  # derived from the old run: goes with it
    other = run_experiment(lightgcn(n_layers=1), [1], out, dataset=planted, overwrite=True, **QUIET)
    assert load_run(out, planted_dir_of(planted)).config.params.n_layers == 1
    assert other["test"] == json.loads((out / "metrics.json").read_text())["test"]
    assert (out / "notes.txt").read_text() == "mine" and not (out / "export").exists()


def planted_dir_of(dataset):
    return dataset.path.parent


def test_out_that_is_a_file_is_refused(planted, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(RunError, match="is a file.*--out"):
        run_experiment(lightgcn(), [1], target, dataset=planted, **QUIET)


def test_killed_run_is_unfinished_for_readers_and_resumes(planted, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Killed):
        run_experiment(lightgcn(), [1], out, dataset=planted, on_epoch_end=kill_at(1), **QUIET)
    assert (out / "RUNNING").is_file() and (out / "checkpoint.pt").is_file() and not (out / "FINISHED").exists()
    for read in (lambda: load_run(out, planted_dir_of(planted)),
                 lambda: export_representations(out, data_dir=planted_dir_of(planted))):
        with pytest.raises(RunError, match="unfinished.*rerun the same command to resume"):
            read()
    with pytest.raises(RunError, match="unfinished run with another configuration.*--overwrite"):
        run_experiment(lightgcn(n_layers=1), [1], out, dataset=planted, **QUIET)
    notes = []
    resumed = run_experiment(lightgcn(), [1], out, dataset=planted, progress=False, log=notes.append)
    assert "resuming from the checkpoint after epoch 0" in notes[0]
    assert resumed["timing"]["resumed_at_epoch"] == 1 and resumed["epochs"] == 3
    assert not (out / "checkpoint.pt").exists() and not (out / "RUNNING").exists()
    history = (out / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2"]  # epoch 1 once, redone
    load_run(out, planted_dir_of(planted))


def test_keep_checkpoints(planted, tmp_path):
    run_experiment(lightgcn(), [1], tmp_path / "run", dataset=planted, keep_checkpoints=True, **QUIET)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2  # after the last-but-one epoch


def test_mixed_broken_and_unsafe_directories_are_precise_errors(finished, planted, tmp_path):
    import shutil

    src, _ = finished
    data_dir = planted_dir_of(planted)

    def copy(name):
        shutil.copytree(src, tmp_path / name)
        return tmp_path / name

    mixed = copy("mixed")  # a rerun's new config.yaml beside the old model and metrics
    (mixed / "config.yaml").write_text((mixed / "config.yaml").read_text().replace("n_layers: 3", "n_layers: 1"))
    with pytest.raises(RunError, match="config.yaml changed after the run finished.*mixes files of different runs"):
        load_run(mixed, data_dir)

    broken = copy("broken")
    (broken / "config.yaml").write_text("model: [lightgcn\n  dataset: {")
    rehash(broken)
    with pytest.raises(RunError, match="config.yaml is not valid YAML"):
        load_run(broken, data_dir)

    missing = copy("missing")
    (missing / "model.pt").unlink()
    with pytest.raises(RunError, match="model.pt is missing"):
        load_run(missing, data_dir)

    evil = copy("evil")

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"user_emb": Payload()}, evil / "model.pt")
    rehash(evil)
    with pytest.raises(RunError, match="not a tensor file prismrec can load safely") as info:
        load_run(evil, data_dir)
    message = str(info.value)
    assert "Unsupported global" in message and "print" in message
    assert "weights_only=False" not in message and "safe_globals" not in message and "trust" not in message

    no_marker = copy("legacy")
    (no_marker / "FINISHED").unlink()
    with pytest.raises(RunError, match="no FINISHED marker"):
        load_run(no_marker, data_dir)


def test_multi_seed_parent_lists_unfinished_seeds_and_readers_refuse(planted, tmp_path):
    from prismrec.experiment.significance import paired_test

    out = tmp_path / "multi"
    seen = []

    def kill_second_seed(row):
        seen.append(row["epoch"])
        if len(seen) == 5:  # seed 1: epochs 0, 1, 2; seed 2: epochs 0, 1 -> killed
            raise Killed

    with pytest.raises(Killed):
        run_experiment(lightgcn(), [1, 2], out, dataset=planted, on_epoch_end=kill_second_seed, **QUIET)
    assert RunDir(out).unfinished_seeds() == ["seed-2 (running)"]
    assert json.loads((out / "RUNNING").read_text())["seeds"] == {"1": "finished", "2": "training"}
    with pytest.raises(RunError, match="multi-seed run .* is not finished; unfinished seeds: seed-2"):
        export_representations(out, data_dir=planted_dir_of(planted))
    with pytest.raises(RunError, match="unfinished seeds: seed-2"):
        paired_test(out, out / "seed-1", data_dir=planted_dir_of(planted))
    stamp = (out / "seed-1" / "model.pt").stat().st_mtime_ns
    metrics = run_experiment(lightgcn(), [1, 2], out, dataset=planted, **QUIET)
    assert (out / "seed-1" / "model.pt").stat().st_mtime_ns == stamp  # the finished seed is kept
    assert set(metrics["per_seed"]) == {"1", "2"} and RunDir(out).unfinished_seeds() == []
    exported = export_representations(out, tmp_path / "exp", data_dir=planted_dir_of(planted))
    assert {p.name for p in exported.glob("seed-*")} == {"seed-1", "seed-2"}
    # a finished parent whose seed folders changed afterwards is refused, never read as a subset
    (out / "seed-2").rename(tmp_path / "seed-2")
    with pytest.raises(RunError, match=r"finished with seed-1, seed-2, but seed-2 is missing: restore"):
        RunDir(out).finished_runs()
    (tmp_path / "seed-2").rename(out / "seed-7")
    with pytest.raises(RunError, match=r"seed-2 is missing; seed-7 is not one of them"):
        paired_test(out, out / "seed-1", data_dir=planted_dir_of(planted))
    # ... and so is a rerun of the same command: was "nothing to do" with seed-2 gone
    with pytest.raises(RunError, match=r"seed-2 is missing; seed-7 is not one of them.*retrain it with --overwrite"):
        run_experiment(lightgcn(), [1, 2], out, dataset=planted, **QUIET)
    (out / "seed-7").rename(out / "seed-2")
    (out / "seed-2" / "model.pt").write_bytes(b"damaged")
    with pytest.raises(RunError, match=r"seed-2/model\.pt changed after the run finished"):
        run_experiment(lightgcn(), [1, 2], out, dataset=planted, **QUIET)


def test_a_diverging_loss_stops_the_run_and_marks_it_failed(planted, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="diverged at epoch 0.*more than 1e\\+06 times the first batch's"):
        run_experiment(resolve_config("bpr", "planted", {"lr": 1e9, "epochs": 3, "threads": 1}), [1], out,
                       dataset=planted, **QUIET)
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"
    assert (out / "FAILED").is_file() and not (out / "RUNNING").exists() and not (out / "checkpoint.pt").exists()
    with pytest.raises(RunError, match="failed: .*diverged"):
        load_run(out, planted_dir_of(planted))


def test_divergence_guard_rule():
    from prismrec.train.trainer import DIVERGENCE_FACTOR, _DivergenceGuard

    guard = _DivergenceGuard()
    terms = {"bpr": torch.tensor(0.7)}
    guard.check(0.7, terms, 0, 0)  # first batch: the reference, at least 1
    guard.check(0.9 * DIVERGENCE_FACTOR, terms, 3, 5)  # large but under the bound: training goes on
    with pytest.raises(TrainingDiverged, match="epoch 3, batch 6"):
        guard.check(1.1 * DIVERGENCE_FACTOR, terms, 3, 6)
    with pytest.raises(TrainingDiverged, match="loss term\\(s\\) reg became non-finite"):
        guard.check(float("inf"), {"bpr": torch.tensor(0.7), "reg": torch.tensor(float("inf"))}, 0, 1)


def test_compare_checks_every_model_dataset_and_setting_before_training(planted_dir, tmp_path):
    from prismrec.errors import PrismrecError
    from prismrec.experiment.compare import run_compare

    data_dir = str(planted_dir.parent)
    for models, datasets, overrides, message in (
        (["bpr", "nosuchmodel"], ["planted"], {}, "nosuchmodel"),
        (["bpr", "lightgcn"], ["planted", "nosuchdata"], {}, "nosuchdata"),
        (["bpr", "lightgcn"], ["planted"], {"lightgcn.n_layer": 2}, "n_layer"),
        (["bpr", "lightgcn"], ["planted"], {"vbpr.lr": 0.1}, "vbpr"),
    ):
        with pytest.raises((PrismrecError, KeyError), match=message):
            run_compare(models, datasets, [1], tmp_path / "cmp", overrides, data_dir, log=lambda m: None)
        assert not (tmp_path / "cmp").exists()  # nothing trained, nothing written


def test_a_checkpoint_that_does_not_fit_is_a_clear_error(planted, tmp_path):
    from prismrec.experiment.rundir import save_torch

    out = tmp_path / "run"
    with pytest.raises(Killed):
        run_experiment(lightgcn(), [1], out, dataset=planted, on_epoch_end=kill_at(1), **QUIET)
    state = RunDir(out).load_checkpoint()
    state["model"] = {f"renamed.{k}": v for k, v in state["model"].items()}  # e.g. the model's code changed
    save_torch(out / "checkpoint.pt", state)
    with pytest.raises(RunError, match="cannot resume: the checkpoint does not fit.*--overwrite"):
        run_experiment(lightgcn(), [1], out, dataset=planted, **QUIET)
    (out / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(RunError, match="checkpoint.pt is not a tensor file prismrec can load safely"):
        run_experiment(lightgcn(), [1], out, dataset=planted, **QUIET)
    run_experiment(lightgcn(), [1], out, dataset=planted, overwrite=True, **QUIET)
    RunDir(out).verify()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(planted, tmp_path):
    """A model that rejects its settings (or a Ctrl-C in epoch 0) leaves no unfinished run behind
    that would make the corrected command be refused as 'another configuration'."""
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="n_layers"):
        run_experiment(lightgcn(n_layers=-1), [1], out, dataset=planted, **QUIET)
    assert not out.exists()
    with pytest.raises(Killed):
        run_experiment(lightgcn(), [1, 2], out, dataset=planted, on_epoch_end=kill_at(0), **QUIET)
    assert not out.exists()
    run_experiment(lightgcn(n_layers=1), [1], out, dataset=planted, **QUIET)
    RunDir(out).verify()


def test_a_run_that_another_live_process_is_training_is_not_resumed_twice(tmp_path):
    """Two `prismrec train` with the same --out at once both 'resumed' the run: they trained into
    one folder, the slower one ended with "RUNNING is unreadable ... damaged; rerun with --overwrite"
    and left a stray checkpoint; --overwrite would have cleared the live run's files."""
    import subprocess
    import sys

    run = RunDir(tmp_path / "run")
    ident = {"config_digest": "abc", "seed": 1}
    assert run.prepare(ident) == "new"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "prismrec"])
    try:
        marker = json.loads((run.path / "RUNNING").read_text())
        (run.path / "RUNNING").write_text(json.dumps({**marker, "pid": other.pid}))
        for overwrite in (False, True):
            with pytest.raises(RunError, match=rf"being trained by process {other.pid} on this machine: wait"):
                run.prepare(ident, overwrite=overwrite)
        assert (run.path / "RUNNING").is_file()
    finally:
        other.kill()
        other.wait()
    assert run.prepare(ident) == "resume"  # its writer is gone: this process takes the run over
    assert json.loads((run.path / "RUNNING").read_text())["pid"] == os.getpid()
