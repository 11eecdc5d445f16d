"""Shared builders of the model tests: a model from its resolved config, seeded, and a planted
dataset whose users have uneven degrees."""

from __future__ import annotations

import dataclasses

import numpy as np

from prismrec.experiment.config import resolve_config
from prismrec.models import get_model
from prismrec.train import seed_everything


def build_model(name: str, dataset, seed: int = 0, **overrides):
    """Model ``name`` on ``dataset`` with its defaults and ``overrides``, parameters drawn from ``seed``."""
    cfg = resolve_config(name, dataset.name, overrides)
    seed_everything(seed)
    return get_model(name)(dataset, cfg.params)


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
