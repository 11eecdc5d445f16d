"""`prismrec demo`: a short multimodal-vs-LightGCN comparison whose table fits 80 columns, in
compare's folder layout (so `prismrec report` reads it)."""

import pytest
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.experiment.demo import DemoConfig, render_table, run_demo
from prismrec.experiment.report import build_report


def test_demo_table_fits_80_columns_and_the_folder_reports(planted_dir, tmp_path):
    cfg = DemoConfig(dataset="planted", models=["mgcn", "lightgcn"], epochs=2, patience=1, threads=1)
    out = tmp_path / "demo"
    results = run_demo(cfg, out, planted_dir.parent, progress=False, log=lambda m: None)
    table = render_table(results, cfg, "planted")
    lines = table.splitlines()
    assert all(len(line) <= 80 for line in lines), table
    row = next(line for line in lines if line.startswith("test recall@20"))
    assert row.split()[-2:] == [f"{results[m]['test']['recall@20']:.4f}" for m in ("mgcn", "lightgcn")]
    assert "selected on valid, test read once" in table
    assert (out / "planted" / "mgcn" / "seed-999" / "curves.png").is_file()
    assert "## Mean ± std over seeds (test)" in build_report(out).read_text()
    again = run_demo(cfg, out, planted_dir.parent, progress=False, log=lambda m: None)  # finished: reused
    assert again["mgcn"]["test"] == results["mgcn"]["test"]


def test_demo_bad_model_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--models", "nosuchmodel,lightgcn", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and result.output.count("error:") == 1


def test_demo_too_many_threads_names_the_threads_option(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--threads", "5000", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: --threads 5000: give a whole number from 0 to 1,024 (0: torch's default)"]


@pytest.mark.parametrize("lr", ["0", "nan", "-1"])
def test_demo_bad_lr_names_the_lr_option(tmp_path, lr):
    result = CliRunner().invoke(app, ["demo", "--lr", lr, "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [  # said "Fix it with --set lr=..."
        f"error: --lr {float(lr)}: give a learning rate > 0, e.g. 0.005"]
