"""Settings checks the models share, run in a model's constructor before anything is built.

Each raises ``ValueError`` naming the setting, its value and the bound it breaks (the experiment
layer reports it as a one-line configuration error). ``Recommender.require_at_least`` covers
lower bounds; these cover the rest.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Literal, get_args, get_origin, get_type_hints


def check_choices(config, model: str) -> None:
    """Raise naming the first ``Literal`` setting of ``config`` outside its choices (a value set
    after construction, or a YAML typo that bypassed the command line's coercion)."""
    for key, annotation in get_type_hints(type(config)).items():
        allowed, value = get_args(annotation), getattr(config, key)
        if get_origin(annotation) is Literal and value not in allowed:
            raise ValueError(f"{model}: {key} must be one of {list(allowed)}, got {value!r}")


def require_items(n_items: int, **sizes: int) -> None:
    """Raise naming every neighbour count in ``sizes`` (``knn_k=10``) above ``n_items``: a
    top-``k`` graph over the items cannot keep more neighbours than there are items."""
    high = [f"{key}={value} exceeds the number of items ({n_items})" for key, value in sizes.items() if value > n_items]
    if high:
        raise ValueError("; ".join(high))


def require_fraction(name: str, value: float, what: str = "", *, low_open: bool = False,
                     high_open: bool = False) -> None:
    """Raise unless the setting ``name`` (``what`` it is, for the message) lies between 0 and 1,
    an end excluded when ``low_open``/``high_open``."""
    low_ok = value > 0.0 if low_open else value >= 0.0
    high_ok = value < 1.0 if high_open else value <= 1.0
    if not (low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name}{f' ({what})' if what else ''} must be in {interval}, got {value}")


def refuse_unused(config, names: tuple[str, ...], used: bool, switch: str) -> None:
    """Raise naming each setting of ``names`` changed from its default while ``used`` is False: the
    model would never read it (``switch``, e.g. ``extended_branch=true``, is what makes it act)."""
    if used:
        return
    defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory() for f in fields(config)}
    changed = [f"{key}={getattr(config, key)!r}" for key in names if getattr(config, key) != defaults[key]]
    if changed:
        raise ValueError(f"{', '.join(changed)} only {'acts' if len(changed) == 1 else 'act'} with {switch}, which is "
                         f"not set, so {'it' if len(changed) == 1 else 'they'} would be ignored: drop "
                         f"{' and '.join(changed)}, or set {switch}")
