"""Building a model for a run, with the inputs it declares from earlier stages (DESIGN.md §2).

Every caller that constructs a model for training or for reading a finished run goes through
:func:`build_model`, so a model that needs an earlier stage's output (EGRA's pretrained item
representations) gets it computed here, in the experiment layer, never by the model itself.
A model names what it needs in ``Recommender.required_inputs(config)``; :data:`STAGES` maps
each name to the function that computes it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from prismrec.errors import ModelRefused, PrismrecError
from prismrec.models import get_model
from prismrec.recommender import PretrainedItems, Recommender


def pretrained_items(config, dataset) -> PretrainedItems:
    """Stage 0 of EGRA (ALGORITHMS.md 6.1): ``P`` from ``params.pretrained`` (a finished run or
    export, or ``"auto"``: trained on the train split, selected on validation, cached); the
    stage-1 seed is the run's (``pretrain_per_seed``) or 999."""
    from prismrec.experiment.pretrained import load_pretrained_items  # imports the run machinery

    params = config.params
    seed = config.train.seed if params.pretrain_per_seed else 999
    vectors, run, file = load_pretrained_items(params, dataset, seed)
    return PretrainedItems(vectors, run, file)


STAGES: dict[str, Callable] = {"pretrained_items": pretrained_items}
"""Earlier-stage outputs by the name a model requires them under."""


def check_model_dataset(config, dataset) -> None:
    """Raise :class:`ModelRefused` where the model of ``config`` (an :class:`ExperimentConfig`) refuses
    its settings on ``dataset`` (:meth:`Recommender.check_dataset`: ``knn_k`` above its items, a
    modality it lacks); :func:`build_model` runs it first, ``compare`` for every cell up front."""
    cls = get_model(config.model)
    try:
        cls.check_dataset(config.params, dataset)
    except ValueError as exc:
        if isinstance(exc, PrismrecError):
            raise
        raise ModelRefused(f"model {cls.name!r} rejects its settings: {exc}") from exc


def build_model(config, dataset) -> Recommender:
    """The model of ``config`` (an :class:`ExperimentConfig`) built on ``dataset``, with every
    input it declares computed first.

    Call it right after ``seed_everything(config.train.seed)``: the model's initialisation draws
    from the global RNG (earlier stages do not touch it).
    """
    cls = get_model(config.model)
    check_model_dataset(config, dataset)  # first, not after an earlier stage has trained (EGRA's stage 1)
    inputs = {name: STAGES[name](config, dataset) for name in cls.required_inputs(config.params)}
    try:
        return cls(dataset, config.params, **inputs)
    except ValueError as exc:
        if isinstance(exc, PrismrecError):
            raise
        # A model's own checks of its settings against the data (modalities, k <= n_items, ...).
        raise ModelRefused(f"model {cls.name!r} rejects its settings: {exc}") from exc
    except (RuntimeError, MemoryError) as exc:
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        # Sizes that cannot fit (embedding_size=10**11): torch's allocator error, said as a setting.
        asked = re.search(r"allocate (\d+) bytes", str(exc))
        what = f"{int(asked[1]) / 2**30:,.1f} GiB were asked for" if asked else " ".join(str(exc).split())[:120]
        raise ModelRefused(f"model {cls.name!r} does not fit in memory on {dataset.name!r} with its settings"
                          + (f" ({what})" if what else "")  # a bare MemoryError (n_layers=10**12) said "()"
                          + "; lower the sizes you set (embedding_size, hidden sizes, layer counts, knn_k)") from exc
