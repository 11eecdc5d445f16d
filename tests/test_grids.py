"""Every registered model declares a machine-readable search grid (``field(metadata={"grid": ...})``)
and every grid value is accepted by the model: the settings resolve and the model builds."""

import dataclasses

import numpy as np
import pytest

from prismrec.data import load_dataset
from prismrec.data.synthetic import write_planted_dataset
from prismrec.experiment.config import resolve_config
from prismrec.models import MODELS, get_model
from prismrec.recommender import PretrainedItems
from prismrec.train import seed_everything


def grids(model: str) -> dict[str, list]:
    """``{setting: grid}`` of a model's Config."""
    return {f.name: f.metadata["grid"] for f in dataclasses.fields(get_model(model).Config) if "grid" in f.metadata}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grids") / "tiny"
    return load_dataset(write_planted_dataset(folder, n_users=40, n_items=60, per_user=6,
                                              modalities={"image": 5, "text": 7}))


def build(model: str, dataset, overrides: dict):
    """Resolve ``overrides`` and build the model (EGRA gets a stand-in ``P``: stage 0 is not
    under test here)."""
    cfg = resolve_config(model, dataset.name, overrides)
    inputs = {}
    if "pretrained_items" in get_model(model).required_inputs(cfg.params):
        rng = np.random.default_rng(0)
        inputs["pretrained_items"] = PretrainedItems(rng.random((dataset.n_items, 8), dtype=np.float32))
    seed_everything(0)
    return get_model(model)(dataset, cfg.params, **inputs)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_declares_a_grid_and_accepts_each_value(model, tiny):
    declared = grids(model)
    assert declared, f"{model}: no Config field carries metadata={{'grid': [...]}}"
    defaults = get_model(model).Config()
    for key, values in declared.items():
        assert isinstance(values, list) and len(values) >= 2, f"{model}.{key}: grid {values!r}"
        assert len(set(values)) == len(values), f"{model}.{key}: repeated values in {values!r}"
        for value in values:
            net = build(model, tiny, {key: value})
            assert getattr(net.config, key) == value
        # A grid is a search space around the default: the default is one of its points, except
        # where the default means "derived" (None) or the model was explicitly documented otherwise.
        default = getattr(defaults, key)
        assert default is None or default in values or model in OFF_GRID_DEFAULTS.get(key, ()), \
            f"{model}.{key}: default {default!r} not in grid {values!r}"


# Defaults deliberately outside their grid (none at present: add "setting": ("model",) with a reason).
OFF_GRID_DEFAULTS: dict[str, tuple[str, ...]] = {}


def test_seed_model_grids_are_the_documented_ones():
    assert grids("lightgcn") == {"n_layers": [1, 2, 3, 4], "reg_weight": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]}
    assert grids("bpr") == grids("vbpr") == {"reg_weight": [2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5]}
    assert grids("freedom") == {"drop_ratio": [0.8, 0.9], "reg_weight": [0.0, 1e-5, 1e-4, 1e-3]}
    assert grids("mgcn") == {"cl_weight": [0.001, 0.01, 0.1]}
    assert grids("rlmmrec") == {"reg_weight": [1e-5, 1e-4, 1e-3]}
    assert grids("gume")["vt_weight"] == [0.001, 0.01, 0.1]
    assert grids("siger")["gamma"] == [-1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
    assert set(grids("egra")) == {"n_ui_layers", "n_ii_layers", "k_pre", "gamma", "tau", "lambda_max",
                                  "lambda_min_ratio", "ramp_epochs", "tau_w", "reg_weight"}
