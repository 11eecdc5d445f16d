"""compare --workers auto / N: cells in parallel processes give the same results as one after another."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.experiment.compare import Cell, _next_cell, plan_cells, run_compare
from prismrec.experiment.config import resolve_config
from prismrec.experiment.rundir import RunDir

runner = CliRunner()
SETTINGS = ["--set", "epochs=2", "--set", "lightgcn.n_layers=1", "--set", "threads=1"]


def _metrics(root, dataset="planted"):
    return {str(p.relative_to(root)): json.loads(p.read_text())
            for p in sorted((root / dataset).glob("*/seed-*/metrics.json"))}


def test_two_workers_equal_one_after_another(planted_dir, tmp_path):
    common = ["compare", "--models", "lightgcn", "--datasets", "planted", "--seeds", "1,2",
              "--data-dir", str(planted_dir.parent), *SETTINGS]
    sequential = runner.invoke(app, common + ["--out", str(tmp_path / "seq"), "--workers", "1"])
    assert sequential.exit_code == 0, sequential.output
    parallel = runner.invoke(app, common + ["--out", str(tmp_path / "par")])  # --workers auto
    assert parallel.exit_code == 0, parallel.output
    if len(os.sched_getaffinity(0)) > 1:  # 1-thread cells of a small graph: side by side
        assert "(planted: 1), side by side where they fit" in parallel.output
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


def _cells(model, dataset, seeds=(1, 2)):
    return [Cell(dataset, model, s, Path(f"/nowhere/{s}"), {}, "d") for s in seeds]


def test_auto_workers_give_each_cell_the_threads_it_takes_alone(monkeypatch):
    import prismrec.threads as threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads, "wait_policy", lambda: "PASSIVE")
    configs = {("small", "bpr"): resolve_config("bpr", "small"),
               ("large", "bpr"): resolve_config("bpr", "large"),
               ("small", "lightgcn"): resolve_config("lightgcn", "small", {"threads": 2}),
               ("small", "mgcn"): resolve_config("mgcn", "small", {"device": "cuda"})}
    nodes = {"small": threads.SMALL_GRAPH_NODES - 1, "large": threads.SMALL_GRAPH_NODES}
    cells = [c for d, m in configs for c in _cells(m, d)]
    logged = []
    planned, capacity, told = plan_cells(cells, "auto", configs, nodes, False, logged.append)
    assert capacity == 2 and told is None  # each cell runs with its own threads setting
    assert {(c.dataset, c.model): c.cores for c in planned} == {
        ("small", "bpr"): 1, ("large", "bpr"): 2, ("small", "lightgcn"): 2, ("small", "mgcn"): 2}
    assert logged == ["[compare] 8 cells share 2 cores, each with the threads it would take alone (small: 1-2; "
                      "large: 2), side by side where they fit (--workers N: N at a time)"]
    # --workers N: N at a time, the cores split between them unless --set threads fixes them
    assert plan_cells(cells, 2, configs, nodes, False, logged.append)[1:] == (2, 1)
    assert plan_cells(cells, 2, configs, nodes, True, logged.append)[1:] == (2, None)
    assert plan_cells(cells, 1, configs, nodes, False, logged.append)[1:] == (1, None)


def test_the_next_cell_is_the_first_that_fits():
    one, two = Cell("a", "bpr", 1, Path("x"), {}, "d", cores=1), Cell("b", "bpr", 1, Path("y"), {}, "d", cores=2)
    assert _next_cell([two, one], 1, running=["r"]) is one  # a 2-core cell waits; a 1-core one fills the gap
    assert _next_cell([two, one], 0, running=["r"]) is None
    assert _next_cell([two, one], 2, running=[]) is two  # in order
    big = Cell("c", "bpr", 1, Path("z"), {}, "d", cores=8)
    assert _next_cell([big], 2, running=[]) is big  # more than the capacity: alone
    assert _next_cell([big], 1, running=["r"]) is None


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
