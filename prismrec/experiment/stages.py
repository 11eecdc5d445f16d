"""Building a model for a run, with the inputs it declares from earlier stages (DESIGN.md §2).

Every caller that constructs a model for training or for reading a finished run goes through
:func:`build_model`, so a model that needs an earlier stage's output (EGRA's pretrained item
representations) gets it computed here, in the experiment layer, never by the model itself.
"""

from __future__ import annotations

from prismrec.models import get_model
from prismrec.recommender import Recommender


def build_model(config, dataset) -> Recommender:
    """The model of ``config`` (an :class:`ExperimentConfig`) built on ``dataset``.

    Call it right after ``seed_everything(config.train.seed)``: the model's initialisation draws
    from the global RNG.
    """
    return get_model(config.model)(dataset, config.params)
