"""compare --workers N: cells in parallel processes give the same results as one after another."""

import json
import os
import signal
import subprocess
import sys
import time

from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.experiment.compare import Cell, run_compare
from prismrec.experiment.rundir import RunDir

runner = CliRunner()
SETTINGS = ["--set", "epochs=2", "--set", "lightgcn.n_layers=1", "--set", "threads=1"]


def _metrics(root, dataset="planted"):
    return {str(p.relative_to(root)): json.loads(p.read_text())
            for p in sorted((root / dataset).glob("*/seed-*/metrics.json"))}


def test_two_workers_equal_one_after_another(planted_dir, tmp_path):
    common = ["compare", "--models", "lightgcn", "--datasets", "planted", "--seeds", "1,2",
              "--data-dir", str(planted_dir.parent), *SETTINGS]
    sequential = runner.invoke(app, common + ["--out", str(tmp_path / "seq")])
    assert sequential.exit_code == 0, sequential.output
    parallel = runner.invoke(app, common + ["--out", str(tmp_path / "par"), "--workers", "2"])
    assert parallel.exit_code == 0, parallel.output
    seq, par = _metrics(tmp_path / "seq"), _metrics(tmp_path / "par")
    assert len(seq) == 2 and seq == par  # every cell's metrics.json, equal
    for seed in (1, 2):  # and the trained weights, bit for bit
        cell = f"planted/lightgcn/seed-{seed}/model.pt"
        assert (tmp_path / "seq" / cell).read_bytes() == (tmp_path / "par" / cell).read_bytes()
    summary = {k: json.loads((tmp_path / k / "results.json").read_text())["cells"]["planted"]["lightgcn"]
               for k in ("seq", "par")}
    assert summary["seq"]["mean"] == summary["par"]["mean"]  # timings differ; the metrics do not


def test_threads_are_split_between_workers(tmp_path):
    cell = Cell("planted", "bpr", 1, tmp_path / "c", {"epochs": 2}, "d")
    cmd = cell.command(None, threads=3)
    assert cmd[cmd.index("--seeds") + 1] == "1"
    assert "threads=3" in cmd and "epochs=2" in cmd
    assert not any(a.startswith("threads=") for a in cell.command(None, threads=None))


def test_a_failing_cell_does_not_stop_the_others(planted_dir, tmp_path):
    results = run_compare(["bpr", "lightgcn"], ["planted"], [1], tmp_path / "cmp",
                          {"epochs": 1, "lightgcn.n_layers": 1, "bpr.lr": 1e12}, str(planted_dir.parent),
                          log=lambda m: None, workers=2)
    assert results["failures"] == [("planted", "bpr", 1)]
    assert "mean" in results["cells"]["planted"]["lightgcn"]


def test_a_killed_parallel_compare_leaves_resumable_cells(planted_dir, tmp_path):
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "prismrec", "compare", "--models", "lightgcn", "--datasets", "planted",
           "--seeds", "1,2", "--data-dir", str(planted_dir.parent), "--out", str(out), "--workers", "2",
           "--set", "epochs=100000", "--set", "patience=100000", "--set", "threads=1"]  # never finishes by itself
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    cells = [out / "planted" / "lightgcn" / f"seed-{s}" for s in (1, 2)]
    deadline = time.time() + 120
    while time.time() < deadline and not all((c / "checkpoint.pt").is_file() for c in cells):
        time.sleep(0.2)
    assert all((c / "checkpoint.pt").is_file() for c in cells), proc.stdout.read() if proc.poll() is not None else ""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=150)  # each cell gets up to 30 s to stop after SIGINT, then is killed
    assert proc.returncode != 0
    time.sleep(0.5)
    for cell in cells:  # stopped, not finished, each with its checkpoint: a rerun resumes it
        assert RunDir(cell).state().kind == "running" and not RunDir(cell).is_finished()
        assert (cell / "checkpoint.pt").is_file()
    assert not (out / "results.json").exists()  # the summary is written once, at the end
