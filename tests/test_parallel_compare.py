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


def test_two_workers_equal_one_after_another(planted_dir, tmp_path, monkeypatch):
    import prismrec.experiment.compare as compare
    import prismrec.threads as threads

    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)  # whatever this machine has: two side by side
    monkeypatch.setattr(compare, "available_memory", lambda: 16 * 2**30)
    common = ["compare", "--models", "lightgcn", "--datasets", "planted", "--seeds", "1,2",
              "--data-dir", str(planted_dir.parent), *SETTINGS]
    sequential = runner.invoke(app, common + ["--out", str(tmp_path / "seq"), "--workers", "1"])
    assert sequential.exit_code == 0, sequential.output
    parallel = runner.invoke(app, common + ["--out", str(tmp_path / "par")])  # --workers auto
    assert parallel.exit_code == 0, parallel.output
    assert "[compare] 2 cells, up to 2 at a time on 2 cores (--workers N: N at a time)" in parallel.output
    seq, par = _metrics(tmp_path / "seq"), _metrics(tmp_path / "par")
    assert len(seq) == 2 and seq == par  # every cell's metrics.json, equal
    for seed in (1, 2):  # and the trained weights, bit for bit
        cell = f"planted/lightgcn/seed-{seed}/model.pt"
        assert (tmp_path / "seq" / cell).read_bytes() == (tmp_path / "par" / cell).read_bytes()
    summary = {k: json.loads((tmp_path / k / "results.json").read_text())["cells"]["planted"]["lightgcn"]
               for k in ("seq", "par")}
    assert summary["seq"]["mean"] == summary["par"]["mean"]  # timings differ; the metrics do not


def test_a_cell_is_told_its_threads(tmp_path):
    cell = Cell("planted", "bpr", 1, tmp_path / "c", {"epochs": 2}, "d", threads=3)
    cmd = cell.command(None)
    assert cmd[cmd.index("--seeds") + 1] == "1"
    assert "threads=3" in cmd and "epochs=2" in cmd
    assert not any(a.startswith("threads=") for a in Cell("planted", "bpr", 1, tmp_path / "c", {}, "d").command(None))


def _cells(model, dataset, seeds=(1, 2)):
    return [Cell(dataset, model, s, Path(f"/nowhere/{s}"), {}, "d") for s in seeds]


def test_auto_workers_put_one_thread_cell_on_each_core_as_memory_allows(monkeypatch):
    import prismrec.experiment.compare as compare
    import prismrec.threads as threads

    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(compare, "available_memory", lambda: 16 * 2**30)
    configs = {("small", "bpr"): resolve_config("bpr", "small"),
               ("small", "lightgcn"): resolve_config("lightgcn", "small", {"threads": 2}),
               ("small", "mgcn"): resolve_config("mgcn", "small", {"device": "cuda"})}
    small = {"small": 10 * 2**20}
    cells = [c for d, m in configs for c in _cells(m, d)]
    logged = []
    planned, capacity, at_most = plan_cells(cells, "auto", configs, small, False, logged.append)
    assert (capacity, at_most) == (2, 6)
    assert {(c.model, c.cores, c.threads) for c in planned} == {
        ("bpr", 1, 1), ("lightgcn", 2, None), ("mgcn", 2, None)}  # side by side; its own 2 threads; a GPU alone
    assert logged == ["[compare] 6 cells, up to 2 at a time on 2 cores (--workers N: N at a time)"]
    # memory for one cell only (~1 GiB + 8 x 1 GiB of files, within half of 16 GiB): one at a time, its own threads
    one = plan_cells(cells[:2], "auto", configs, {"small": 2**30}, False, logged.append)
    assert one[2] == 1 and [(c.cores, c.threads) for c in one[0]] == [(2, None), (2, None)]
    # a single cell: alone, with the threads its own run takes
    assert [(c.cores, c.threads) for c in plan_cells(cells[:1], "auto", configs, small, False, print)[0]] == [(2, None)]
    # --workers N: N at a time, the cores split between them unless --set threads fixes them
    assert {c.threads for c in plan_cells(cells, 2, configs, small, False, print)[0]} == {1}
    assert {c.threads for c in plan_cells(cells, 2, configs, small, True, print)[0]} == {None}
    assert plan_cells(cells, 1, configs, small, False, print)[1:] == (1, 1)


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
    # Started as a script's background job is: ignoring SIGINT, which its cells must not inherit.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    cells = [out / "planted" / "lightgcn" / f"seed-{s}" for s in (1, 2)]
    deadline = time.time() + 120
    while time.time() < deadline and not all((c / "checkpoint.pt").is_file() for c in cells):
        time.sleep(0.2)
    assert all((c / "checkpoint.pt").is_file() for c in cells), proc.stdout.read() if proc.poll() is not None else ""
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=150)[0]  # each cell gets up to 30 s to stop after SIGINT, then is killed
    assert proc.returncode != 0, output
    time.sleep(0.5)
    for cell in cells:  # stopped by the SIGINT, not finished, each with its checkpoint: a rerun resumes it
        log = f"{output}\n{cell}/run.log ends:\n{(cell / 'run.log').read_text()[-600:]}"
        assert RunDir(cell).state().kind == "running" and not RunDir(cell).is_finished(), log
        assert (cell / "checkpoint.pt").is_file(), log
        assert "interrupted: rerun the same command" in log, log
    assert not (out / "results.json").exists()  # the summary is written once, at the end


def test_available_memory_reads_this_machine():
    from prismrec.experiment.compare import available_memory

    free = available_memory()
    if sys.platform.startswith("linux"):
        assert isinstance(free, int) and 0 < free < 2**50


TRAIN = ["train", "--model", "lightgcn", "--dataset", "planted", "--seeds", "1,2", "--set", "epochs=2",
         "--set", "n_layers=1"]


def test_train_seeds_side_by_side_equal_one_after_another(planted_dir, tmp_path, monkeypatch):
    """``prismrec train --seeds`` on a CPU trains its seeds as compare trains cells (one 1-thread
    process per core): the same run directory, metrics and weights as one after another in the
    process; a rerun finds it finished."""
    import prismrec.experiment.compare as compare
    import prismrec.threads as threads

    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(compare, "available_memory", lambda: 16 * 2**30)
    common = TRAIN + ["--data-dir", str(planted_dir.parent)]
    sequential = runner.invoke(app, common + ["--out", str(tmp_path / "seq"), "--workers", "1"])
    assert sequential.exit_code == 0, sequential.output
    assert "[train]" not in sequential.output
    parallel = runner.invoke(app, common + ["--out", str(tmp_path / "par")])  # --workers auto
    assert parallel.exit_code == 0, parallel.output
    assert "[train] 2 cells, up to 2 at a time on 2 cores" in parallel.output
    assert "[train] planted / lightgcn / seed 2: training" in parallel.output
    seq, par = (json.loads((tmp_path / k / "metrics.json").read_text()) for k in ("seq", "par"))
    assert seq == par and seq["seeds"] == [1, 2]
    for seed in (1, 2):
        assert (tmp_path / "seq" / f"seed-{seed}/model.pt").read_bytes() == (tmp_path / "par" / f"seed-{seed}/model.pt").read_bytes()
    assert RunDir(tmp_path / "par").is_finished()
    again = runner.invoke(app, common + ["--out", str(tmp_path / "par")])
    assert again.exit_code == 0 and "nothing to do" in again.output and "[train]" not in again.output


def test_a_seed_failed_aside_is_one_line_naming_it(planted_dir, tmp_path, monkeypatch):
    """A seed whose process fails stops the run with one error naming the seed and its output's
    last lines; the other seed's finished run is kept, and a rerun reads it back."""
    import prismrec.experiment.compare as compare
    import prismrec.threads as threads

    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(compare, "available_memory", lambda: 16 * 2**30)
    command = compare.Cell.command
    monkeypatch.setattr(compare.Cell, "command", lambda cell, data_dir: (
        [sys.executable, "-c", "print('MemoryError: out of memory in seed 2'); raise SystemExit(3)"]
        if cell.seed == 2 else command(cell, data_dir)))
    out = tmp_path / "run"
    result = runner.invoke(app, TRAIN + ["--data-dir", str(planted_dir.parent), "--out", str(out)])
    assert result.exit_code != 0
    assert "error: seed 2 failed (seed 2's output ends): MemoryError: out of memory in seed 2" in result.output
    assert "Traceback" not in result.output
    assert RunDir(out / "seed-1").is_finished()
    monkeypatch.setattr(compare.Cell, "command", command)
    again = runner.invoke(app, TRAIN + ["--data-dir", str(planted_dir.parent), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "[train] 1 cells" not in again.output and RunDir(out).is_finished()  # seed 2 alone: in this process


def test_tune_trains_its_final_seeds_side_by_side_when_it_loads_the_data(planted_dir, tmp_path, monkeypatch):
    """A search that loads its dataset by name trains the final seeds as ``prismrec train --seeds``
    does (side by side, the same results as in the process); one given a dataset (possibly changed
    in memory) trains them in the process."""
    import prismrec.experiment.compare as compare
    import prismrec.threads as threads
    from prismrec.data import load_dataset
    from prismrec.experiment.search import tune

    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(compare, "available_memory", lambda: 16 * 2**30)
    logged = {"named": [], "given": []}
    common = dict(model="lightgcn", space=["lr=1e-3..1e-1:log"], trials=1,
                  overrides={"epochs": 2, "n_layers": 1}, final_seeds=[1, 2])
    named = tune(dataset_name="planted", out_dir=tmp_path / "named", data_dir=planted_dir.parent,
                 log=logged["named"].append, **common)
    given = tune(dataset_name="planted", out_dir=tmp_path / "given", dataset=load_dataset(planted_dir),
                 log=logged["given"].append, **common)
    assert any(m.startswith("[train] 2 cells, up to 2 at a time") for m in logged["named"])
    assert not any(m.startswith("[train]") for m in logged["given"])
    assert named["final"] == given["final"] and named["final"]["seeds"] == [1, 2]
    for seed in (1, 2):
        model = f"best/seed-{seed}/model.pt"
        assert (tmp_path / "named" / model).read_bytes() == (tmp_path / "given" / model).read_bytes()
