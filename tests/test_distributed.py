"""Data-parallel training (torchrun, gloo on CPU): two ranks follow a single process's trajectory."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from prismrec.train import distributed
from prismrec.train.distributed import DistEnv
from tests.gloo_ranks import torchrun

STEPS = """
import json, sys
import torch
from prismrec.data import BPRSampler, load_dataset
from prismrec.experiment.config import resolve_config
from prismrec.models import get_model
from prismrec.train import distributed
from prismrec.train.trainer import _DivergenceGuard, seed_everything, train_epoch

folder, model_name, settings, batch, epochs, out = sys.argv[1:7]
torch.set_num_threads(1)
env = distributed.from_env()
distributed.init(env, "cpu")
data = load_dataset(folder)
cfg = resolve_config(model_name, data.name, json.loads(settings))
seed_everything(cfg.train.seed)
model = get_model(model_name)(data, cfg.params)
distributed.broadcast_parameters(model, env)
sampler = BPRSampler(data.train, int(batch), cfg.train.negative_pool, cfg.train.seed)
optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)

class Recorder(_DivergenceGuard):  # sees every batch's global loss
    losses = []
    def check(self, total, terms, epoch, batch):
        self.losses.append(total)
        super().check(total, terms, epoch, batch)

guard = Recorder()
for epoch in range(int(epochs)):
    model.train()
    model.on_epoch_start(epoch)
    train_epoch(model, sampler, optimizer, epoch, model.device, guard, env)
if env.is_main:
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    json.dump({"losses": guard.losses, "params": params.tolist()}, open(out, "w"))
"""


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _trajectories(tmp_path, planted_dir, model, settings, batch=512, epochs=2):
    script = tmp_path / "steps.py"
    script.write_text(STEPS)
    args = [str(planted_dir), model, json.dumps(settings), str(batch), str(epochs)]
    single = subprocess.run([sys.executable, str(script), *args, str(tmp_path / "one.json")],
                            capture_output=True, text=True, env=_env())
    assert single.returncode == 0, single.stderr[-2000:]
    ranks = torchrun([str(script), *args, str(tmp_path / "two.json")], _env())
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    return (np.array(one["losses"]), np.array(two["losses"]),
            np.abs(np.array(one["params"]) - np.array(two["params"])).max())


@pytest.mark.parametrize("model, settings, loss_tol, param_tol", [
    # emb_norm (LightGCN's default) is a norm over all of a batch's rows: taken over every rank's
    # rows (without that, per rank's share, the loss differed by ~1e-5 and the weights by ~1e-4)
    ("lightgcn", {}, 1e-6, 1e-6),
    # MGCN's default: BPR + half_sq + in-batch InfoNCE whose negatives are every rank's rows
    # (per rank's rows alone the loss differed by 1.8 %)
    ("mgcn", {}, 1e-6, 1e-6),
])
def test_two_gloo_ranks_follow_one_process(tmp_path, planted_dir, model, settings, loss_tol, param_tol):
    one, two, param_gap = _trajectories(tmp_path, planted_dir, model, settings)
    assert len(one) == len(two) == 20  # 2 epochs of 10 global batches of 512
    assert np.abs(one - two).max() < loss_tol
    assert param_tol is None or param_gap < param_tol
    assert one[-1] < one[0]  # it trains


def test_shard_splits_a_batch_into_weighted_contiguous_parts():
    import torch

    batch = tuple(torch.arange(10) + k for k in range(3))
    parts = [distributed.shard(batch, DistEnv(rank, 3, rank)) for rank in range(3)]
    assert torch.equal(torch.cat([p[0][0] for p in parts]), batch[0])
    assert [len(p[0][1]) for p in parts] == [4, 3, 3] and sum(w for _, w in parts) == pytest.approx(1.0)
    assert distributed.shard(batch, distributed.SINGLE) == (batch, 1.0)


def test_torchrun_train_writes_one_run_directory(tmp_path, planted_dir):
    settings = ["--set", "epochs=2", "--set", "reg_form=\"half_sq\"", "--set", "threads=1"]
    common = ["-m", "prismrec", "train", "--model", "lightgcn", "--dataset", str(planted_dir), "--quiet", *settings]
    single = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], capture_output=True,
                            text=True, env=_env())
    assert single.returncode == 0, single.stderr[-2000:]
    ranks = torchrun([*common, "--out", str(tmp_path / "two")], _env())
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert (tmp_path / "two" / "FINISHED").is_file() and not (tmp_path / "two" / "RUNNING").exists()
    for split in ("valid", "test"):
        assert one[split].keys() == two[split].keys()
        assert all(abs(one[split][k] - two[split][k]) < 1e-6 for k in one[split])
    assert one["best_epoch"] == two["best_epoch"]


def test_torchrun_ranks_other_than_0_print_no_warning_progress_or_summary(tmp_path, planted_dir):
    import shutil

    data = tmp_path / "planted"
    shutil.copytree(planted_dir, data)
    n_items = np.load(data / "image_feat.npy").shape[0]
    np.save(data / "blank_feat.npy", np.zeros((n_items, 3), dtype=np.float32))  # warns on every load
    ranks = torchrun(["-m", "prismrec", "train", "--model", "lightgcn", "--dataset", str(data), "--set", "epochs=2",
                      "--set", "threads=1", "--out", str(tmp_path / "run")], {**_env(), "COLUMNS": "200"})
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    both = ranks.stdout + ranks.stderr
    assert both.count("every feature value is zero") == 1, both[-3000:]
    assert both.count("ep 2/2 loss") == 1
    assert both.count("lightgcn on Dataset(") == 1
    assert both.count("recall@20") == 1 and both.count("run directory:") == 1


LEAVE = """
import gc, json, sys, weakref
import torch
import torch.distributed as dist
from prismrec.train import distributed
from prismrec.train.trainer import seed_everything

env = distributed.from_env()
distributed.init(env, "cpu")
seed_everything(0)  # as a run does after joining: imports torch's compiler config and what it imports
x = torch.ones(3)
dist.all_reduce(x)
world = weakref.ref(dist.group.WORLD)
distributed._leave_group()
gc.collect()
if env.rank == 0:
    json.dump({"sum": x.tolist(), "freed": world() is None}, open(sys.argv[1], "w"))
"""


def test_leaving_the_group_frees_it_so_gloo_threads_end_before_the_interpreter(tmp_path):
    # A group kept alive past destroy_process_group keeps gloo's worker threads running into the
    # interpreter's finalisation, where a rank aborts now and then after finishing its work.
    script = tmp_path / "leave.py"
    script.write_text(LEAVE)
    ranks = torchrun([str(script), str(tmp_path / "out.json")], _env())
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    assert json.loads((tmp_path / "out.json").read_text()) == {"sum": [2.0, 2.0, 2.0], "freed": True}
