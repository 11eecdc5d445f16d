"""Model registry: ``--model NAME`` finds the class registered under NAME."""

from __future__ import annotations

from prismrec.recommender import Recommender

MODELS: dict[str, type[Recommender]] = {}


def register(cls: type[Recommender]) -> type[Recommender]:
    """Class decorator: register a Recommender under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    if cls.name in MODELS and MODELS[cls.name] is not cls:
        raise ValueError(f"model name {cls.name!r} is already registered by {MODELS[cls.name]}")
    MODELS[cls.name] = cls
    return cls


def get_model(name: str) -> type[Recommender]:
    """Look up a registered model class by name (case-insensitive)."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}") from None


from prismrec.models import bpr, lightgcn  # noqa: E402,F401  (registration side effects)

__all__ = ["MODELS", "get_model", "register"]
