"""Smoke runs of the baselines added for the seed papers' comparison: two epochs on the planted
data through the experiment layer, deterministic and above chance."""

import pytest

from prismrec.experiment.config import resolve_config
from prismrec.experiment.runs import run_experiment


@pytest.mark.parametrize("model, settings", [
    ("lattice", {}),
    ("smore", {}),
    ("dragon", {"lr": 1e-3}),
    ("mmgcn", {"train_embeddings": True}),  # tables trained (the reference keeps them at their init)
])
def test_trains_two_epochs_and_is_deterministic(planted, model, settings):
    cfg = resolve_config(model, "planted", {"epochs": 2, "threads": 1, **settings})
    a = run_experiment(cfg, [3], None, dataset=planted, progress=False)
    b = run_experiment(cfg, [3], None, dataset=planted, progress=False)
    assert a["valid"] == b["valid"] and a["test"] == b["test"]
    assert a["test"]["recall@20"] > 0.15  # chance level is ~0.1 on the planted data
