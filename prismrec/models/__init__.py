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


def _import_all() -> None:
    """Import every module of this package so each model registers itself."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_all()

__all__ = ["MODELS", "get_model", "register"]
