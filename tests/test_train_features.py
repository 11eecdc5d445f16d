"""``train_features``: the MGCN family and FREEDOM fine-tune their copies of the raw feature
matrices by default (the reference code); ``train_features=False`` keeps them frozen (no
gradient, not in the optimiser, not saved), which saves the features' gradient and Adam moments
(three copies of ``F_m``: about 3.4 GiB at Electronics size)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prismrec.experiment.config import resolve_config
from prismrec.models import get_model
from prismrec.recommender import PretrainedItems
from prismrec.train import seed_everything

MODELS = ["mgcn", "gume", "siger", "egra", "freedom"]


def _model(name, dataset, **settings):
    cfg = resolve_config(name, dataset.name, settings)
    seed_everything(0)
    cls = get_model(name)
    inputs = {}
    if "pretrained_items" in cls.required_inputs(cfg.params):
        vectors = np.random.default_rng(0).standard_normal((dataset.n_items, 8)).astype(np.float32)
        inputs["pretrained_items"] = PretrainedItems(vectors, "test", None)
    return cls(dataset, cfg.params, **inputs).train()


def _feature_tensors(net) -> dict[str, torch.Tensor]:
    """Every copy of a raw feature matrix the model holds (parameter or buffer), by name."""
    tensors = dict(net.named_parameters()) | dict(net.named_buffers())
    return {n: t for n, t in tensors.items() if n.endswith("features")}


def _train_step(net, dataset) -> None:
    """One optimiser step as the trainer takes it: Adam over ``parameters()``, the training path."""
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    batch = tuple(torch.randint(0, n, (64,), generator=g) for n in (dataset.n_users, dataset.n_items, dataset.n_items))
    optimizer.zero_grad()
    sum(net.batch_loss(batch).values()).backward()
    optimizer.step()


@pytest.mark.parametrize("name", MODELS)
def test_frozen_features_stay_unchanged_after_a_step(planted, name):
    net = _model(name, planted, train_features=False)
    features = _feature_tensors(net)
    assert len(features) == len(net.modalities) >= 2  # one frozen copy per modality
    assert not any(t.requires_grad for t in features.values())
    assert not any(n.endswith("features") for n, _ in net.named_parameters())  # never in the optimiser
    assert not any(k.endswith("features") for k in net.state_dict())  # rebuilt from the data, not saved
    before = {n: t.clone() for n, t in features.items()}
    weights = {n: p.detach().clone() for n, p in net.named_parameters()}
    _train_step(net, planted)
    for n, t in _feature_tensors(net).items():
        assert torch.equal(t, before[n]), n
    assert any(not torch.equal(p, weights[n]) for n, p in net.named_parameters())  # the step did train


@pytest.mark.parametrize("name", MODELS)
def test_trained_features_are_fine_tuned_by_default(planted, name):
    assert resolve_config(name, planted.name, {}).params.train_features is True
    net = _model(name, planted)
    features = _feature_tensors(net)
    assert len(features) == len(net.modalities) and all(t.requires_grad for t in features.values())
    assert set(features) <= {n for n, _ in net.named_parameters()} and set(features) <= set(net.state_dict())
    before = {n: t.detach().clone() for n, t in features.items()}
    _train_step(net, planted)
    assert all(not torch.equal(t.detach(), before[n]) for n, t in _feature_tensors(net).items())


@pytest.mark.parametrize("name", MODELS)
def test_frozen_features_keep_the_forward_of_the_same_weights(planted, name):
    trained, frozen = _model(name, planted), _model(name, planted, train_features=False)
    frozen.load_state_dict(trained.state_dict(), strict=False)  # the trained copy's extra keys: F_m
    trained.eval(), frozen.eval()
    with torch.no_grad():
        a, b = trained(), frozen()
    torch.testing.assert_close(a.item, b.item)
    torch.testing.assert_close(a.user, b.user)


def test_memory_benchmark_child_counts_the_features_state(tmp_path):
    from benchmarks.train_features import child, render
    from prismrec.data.synthetic import write_sized_dataset

    folder = write_sized_dataset(tmp_path / "electronics", "electronics", 0.003)
    cells = [child("freedom", str(folder), flag, 1) for flag in (True, False)]
    feature_mb = sum(n * 4 for n in cells[0]["feature_dims"].values()) * cells[0]["items"] / 2**20
    # trained: the features are parameters, with Adam's two moments; frozen: neither
    assert abs(cells[0]["parameter_mb"] - cells[1]["parameter_mb"] - feature_mb) < 1e-6
    assert abs(cells[0]["adam_state_mb"] - cells[1]["adam_state_mb"] - 2 * feature_mb) < 1e-4  # + a step count each
    for cell in cells:
        cell.update(load_before=(1.0, 1.0, 1.0), load_after=(1.0, 1.0, 1.0))
    assert "| freedom | False |" in render(cells)
