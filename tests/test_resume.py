"""Resume after ``kill -9``: a killed run, rerun with the same command, ends with metrics.json and
model.pt byte-identical to an uninterrupted run (LightGCN; SIGER, which draws noise from its own
generator), for `train`, `tune` and `compare` alike."""

import copy
import os
import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from prismrec.experiment.config import resolve_config
from prismrec.experiment.rundir import RunDir
from prismrec.experiment.runs import run_experiment
from prismrec.models import get_model
from prismrec.train import fit, seed_everything

SETTINGS = {"epochs": 6, "threads": 1, "patience": 100}
KILL_AT = 3  # killed during epoch 3's end-of-epoch hook: the checkpoint after epoch 2 is the last

# Trains like `prismrec train` would, and SIGKILLs itself at the end of epoch KILL_AT (before that
# epoch's checkpoint): no clean-up of any kind runs, as with `kill -9`.
SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from prismrec.data import load_dataset
    from prismrec.experiment.config import resolve_config
    from prismrec.experiment.runs import run_experiment

    data, out, model, kill_at, settings = sys.argv[1:6]
    def hook(row):
        if row["epoch"] == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
    cfg = resolve_config(model, "planted", json.loads(settings))
    run_experiment(cfg, [3], out, dataset=load_dataset(data), progress=False, on_epoch_end=hook)
""")


def train_script(planted_dir, out, model, tmp_path, kill_at):
    """Run SCRIPT in a fresh process; return it (finished, or killed by SIGKILL)."""
    script = tmp_path / "train_and_kill.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), str(planted_dir), str(out), model, str(kill_at),
                           json.dumps(SETTINGS)], capture_output=True, text=True)


@pytest.mark.parametrize("model", ["lightgcn", "siger"])
def test_kill_9_then_rerun_is_bit_identical(planted, planted_dir, tmp_path, model):
    cfg = resolve_config(model, "planted", SETTINGS)
    reference = tmp_path / "uninterrupted"
    run_experiment(cfg, [3], reference, dataset=planted, progress=False, log=lambda m: None)

    out = tmp_path / "killed"
    proc = train_script(planted_dir, out, model, tmp_path, KILL_AT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / "RUNNING").is_file() and not (out / "FINISHED").exists()
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()
    assert RunDir(out).load_checkpoint()["epoch"] == KILL_AT  # epochs 0..2 are safe
    # the same command again, in a new process: it resumes and finishes
    proc = train_script(planted_dir, out, model, tmp_path, -1)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from the checkpoint after epoch {KILL_AT - 1}" in proc.stderr
    assert json.loads((out / "timing.json").read_text())["resumed_at_epoch"] == KILL_AT
    for name in ("metrics.json", "model.pt"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert (out / "FINISHED").read_bytes() == (reference / "FINISHED").read_bytes()
    assert not (out / "checkpoint.pt").exists() and not (out / "RUNNING").exists()


@pytest.mark.parametrize("model, piece", [("lightgcn", "sampler"), ("lightgcn", "rng"), ("siger", "generators"),
                                          ("lightgcn", "optimizer")])
def test_every_part_of_the_checkpoint_is_needed(planted, model, piece):
    """Resuming from the full checkpoint reproduces the uninterrupted run exactly; dropping one
    part of it (the sampler's RNG, the global RNGs, the model's noise generator, Adam's moments)
    does not - so the kill test above would catch a missing part."""
    cfg = resolve_config(model, "planted", {**SETTINGS, "epochs": 4})

    def build():
        seed_everything(cfg.train.seed)
        return get_model(model)(planted, cfg.params)

    saved = {}

    def keep(state):  # a copy: the live state goes on changing after the callback
        if state["epoch"] == 2:
            saved.update(copy.deepcopy(state))

    full = build()
    fit(full, planted, cfg.train, progress=False, checkpoint=keep)
    want = full.state_dict()

    resumed = build()
    fit(resumed, planted, cfg.train, progress=False, resume=dict(saved))
    assert all((resumed.state_dict()[k] == want[k]).all() for k in want)

    broken = dict(saved)
    if piece == "sampler":
        broken["sampler"] = np.random.default_rng(0).bit_generator.state
    elif piece == "rng":
        from prismrec.train.trainer import rng_states

        seed_everything(12345)
        broken["rng"] = rng_states()
    elif piece == "generators":
        assert saved["generators"], "SIGER holds a noise generator"
        broken["generators"] = {}
    elif piece == "optimizer":
        broken["optimizer"] = {"state": {}, "param_groups": saved["optimizer"]["param_groups"]}
    other = build()
    fit(other, planted, cfg.train, progress=False, resume=broken)
    assert not all((other.state_dict()[k] == want[k]).all() for k in want)


TUNE_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from prismrec.data import load_dataset
    import prismrec.experiment.search as search

    data, out, settings = sys.argv[1:4]
    real = search.run_experiment
    def killing(cfg, seeds, folder, **kw):
        if folder.name == "trial-0":
            inner = kw["on_epoch_end"]
            def hook(row):
                inner(row)
                if row["epoch"] == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            kw["on_epoch_end"] = hook
        return real(cfg, seeds, folder, **kw)
    search.run_experiment = killing
    search.tune("lightgcn", "planted", ["lr=1e-3..1e-1:log"], 1, out, json.loads(settings),
                dataset=load_dataset(data), final_seeds=[1], log=lambda m: None)
""")


def test_killed_tune_trial_resumes_mid_training(planted, planted_dir, tmp_path):
    from prismrec.experiment.search import tune

    settings = {"epochs": 4, "threads": 1}
    reference = tune("lightgcn", "planted", ["lr=1e-3..1e-1:log"], 1, tmp_path / "ref", settings,
                     dataset=planted, final_seeds=[1], log=lambda m: None)
    script = tmp_path / "tune_and_kill.py"
    script.write_text(TUNE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(planted_dir), str(tmp_path / "t"), json.dumps(settings)],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert RunDir(tmp_path / "t" / "trial-0").load_checkpoint()["epoch"] == 2
    logged = []
    again = tune("lightgcn", "planted", ["lr=1e-3..1e-1:log"], 1, tmp_path / "t", settings,
                 dataset=planted, final_seeds=[1], log=logged.append)
    # the killed worker's trial is marked interrupted; its retry (trial 1, same parameters) takes
    # over its run directory and resumes from the checkpoint
    assert any("trial 0 was interrupted" in m for m in logged)
    assert any("resuming from the checkpoint after epoch 1" in m for m in logged)
    assert [t["state"] for t in again["trials"]] == ["interrupted", "complete"]
    assert {k: again["trials"][1][k] for k in ("params", "valid")} == {k: reference["trials"][0][k] for k in ("params", "valid")}
    assert again["final"] == reference["final"]
    for name in ("metrics.json", "model.pt"):
        assert (tmp_path / "t" / "trial-1" / name).read_bytes() == (tmp_path / "ref" / "trial-0" / name).read_bytes()


def test_compare_resumes_a_killed_cell(planted, planted_dir, tmp_path):
    from prismrec.experiment.compare import run_compare

    settings = {"epochs": 3}
    cell = tmp_path / "cmp" / "planted" / "lightgcn" / "seed-5"

    class Killed(BaseException):
        pass

    def kill(row):
        if row["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):  # the cell as a killed `prismrec train` leaves it
        run_experiment(resolve_config("lightgcn", "planted", settings), [5], cell, dataset=planted,
                       progress=False, on_epoch_end=kill, log=lambda m: None)
    logged = []
    results = run_compare(["lightgcn"], ["planted"], [5], tmp_path / "cmp", settings, str(planted_dir.parent),
                          log=logged.append)
    assert any("seed 5: resuming" in m for m in logged), logged
    assert json.loads((cell / "timing.json").read_text())["resumed_at_epoch"] == 1
    reference = run_experiment(resolve_config("lightgcn", "planted", settings), [5], tmp_path / "ref",
                               dataset=planted, progress=False, log=lambda m: None)
    assert results["cells"]["planted"]["lightgcn"]["per_seed"]["5"]["test"] == reference["test"]
    assert (cell / "model.pt").read_bytes() == (tmp_path / "ref" / "model.pt").read_bytes()


STAGE_ONE = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import prismrec.experiment.pretrained as pretrained
    from prismrec.data import load_dataset
    from prismrec.experiment.config import resolve_config

    data, cache, kill_at, settings = sys.argv[1:5]
    train = pretrained.run_experiment
    def hook(row):
        if row["epoch"] == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
    pretrained.run_experiment = lambda *a, **k: train(*a, on_epoch_end=hook, **k)
    cfg = resolve_config("mgcn", "planted", json.loads(settings))
    print(pretrained._train_cached(cfg, load_dataset(data), 3, Path(cache)))
""")


def test_a_killed_stage_one_run_resumes_and_its_cache_entry_appears_only_when_finished(planted, planted_dir, tmp_path):
    """EGRA's stage 1 (``pretrained=auto``) under ``kill -9``: the rerun resumes the partial run from
    its checkpoint and ends with the uninterrupted run's model; temporaries of dead processes
    left by earlier versions are removed, a live process's are not."""
    from prismrec.experiment.pretrained import _train_cached

    cfg = resolve_config("mgcn", "planted", SETTINGS)
    reference = _train_cached(cfg, planted, 3, tmp_path / "reference")
    script = tmp_path / "stage_one.py"
    script.write_text(STAGE_ONE)
    cache = tmp_path / "cache"

    def stage_one(kill_at):
        return subprocess.run([sys.executable, str(script), str(planted_dir), str(cache), str(kill_at),
                               json.dumps(SETTINGS)], capture_output=True, text=True)

    assert stage_one(KILL_AT).returncode == -signal.SIGKILL
    entry = cache / reference.name
    partial = cache / f".{entry.name}.partial"
    assert not entry.exists() and RunDir(partial).load_checkpoint()["epoch"] == KILL_AT
    dead, live = cache / f".{entry.name}.999999999.tmp", cache / f".{entry.name}.{os.getpid()}.tmp"
    dead.mkdir(), live.mkdir()
    proc = stage_one(-1)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from the checkpoint after epoch {KILL_AT - 1}" in proc.stderr
    assert proc.stdout.strip() == str(entry) and not partial.exists()
    assert (entry / "model.pt").read_bytes() == (reference / "model.pt").read_bytes()
    assert not dead.exists() and live.exists()
