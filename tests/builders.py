"""Shared builders of the model tests: a model from its resolved config, seeded, and a planted
dataset whose users have uneven degrees."""

from __future__ import annotations

import dataclasses

import numpy as np

from prismrec.experiment.config import resolve_config
from prismrec.models import get_model
from prismrec.recommender import PretrainedItems
from prismrec.train import seed_everything


def build_model(name: str, dataset, seed: int = 0, **overrides):
    """Model ``name`` on ``dataset`` with its defaults and ``overrides``, parameters drawn from
    ``seed``; a model that needs a stage-0 input (EGRA's ``P``) gets 16-d random item vectors."""
    cfg = resolve_config(name, dataset.name, overrides)
    seed_everything(seed)
    cls = get_model(name)
    inputs = {}
    if "pretrained_items" in cls.required_inputs(cfg.params):
        vectors = np.random.default_rng(0).standard_normal((dataset.n_items, 16)).astype(np.float32)
        inputs["pretrained_items"] = PretrainedItems(vectors, "test", None)
    return cls(dataset, cfg.params, **inputs)


def uneven_degrees(data):
    """The planted users all have the same training degree; drop ``u mod 3`` of user ``u``'s
    training items so that degree normalisations are visible in the outputs."""
    train = data.train.tolil()
    for u in range(data.n_users):
        for i in train.rows[u][: u % 3]:
            train[u, i] = 0
    train = train.tocsr()
    train.eliminate_zeros()
    assert len(set(np.diff(train.indptr).tolist())) == 3
    return dataclasses.replace(data, train=train)
