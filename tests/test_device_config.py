"""A device this machine lacks is one ConfigError line before anything runs, wherever it is set:
``--set device=...`` (tested in test_cli_errors.py) or an earlier stage's ``pretrain_settings``."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.errors import ConfigError
from prismrec.experiment.config import resolve_config
from prismrec.train.config import check_override_devices, check_run_devices

runner = CliRunner()

STAGE_CUDA = ("error: pretrain_settings device='cuda' but this machine has no CUDA GPU that torch can use; "
              "set device: cpu in pretrain_settings (or leave device out of it)")

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@no_gpu
def test_stage_device_is_checked_with_the_run():
    config = resolve_config("egra", "baby", {"pretrain_settings": {"device": "cuda"}})
    with pytest.raises(ConfigError, match="pretrain_settings device='cuda' but this machine has no CUDA GPU"):
        check_run_devices(config)
    check_run_devices(resolve_config("egra", "baby", {"pretrain_settings": {"device": "cpu"}}))
    check_run_devices(resolve_config("lightgcn", "baby", {}))  # no earlier stage
    with pytest.raises(ConfigError, match="device='cuda:0' but"):
        check_run_devices(resolve_config("lightgcn", "baby", {"device": "cuda:0"}))
    with pytest.raises(ConfigError, match="pretrain_settings device"):
        check_override_devices({"pretrain_settings": {"device": "cuda"}})
    with pytest.raises(ConfigError, match="device='tpu' is invalid"):
        check_override_devices({"device": "tpu"})
    check_override_devices({"device": "cpu", "pretrain_settings": {"epochs": 3}})


@no_gpu
@pytest.mark.parametrize("command", ["train", "compare", "tune"])
def test_stage_device_absent_is_one_line_before_anything_runs(tmp_path, command):
    stage = ["--set", "pretrain_settings={device: cuda}"]
    args = {
        "train": ["train", "--model", "egra", "--dataset", "nope", "--data-dir", str(tmp_path),
                  "--out", str(tmp_path / "out")],
        "compare": ["compare", "--models", "egra", "--datasets", "nope", "--data-dir", str(tmp_path),
                    "--out", str(tmp_path / "out")],
        "tune": ["tune", "--model", "egra", "--dataset", "nope", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "out"), "--space", str(tmp_path / "space.yaml")],
    }[command]
    result = runner.invoke(app, args + stage)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [STAGE_CUDA]
    assert not (tmp_path / "out").exists()
