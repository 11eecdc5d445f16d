"""Typed configuration: training settings plus each model's own dataclass (DESIGN.md §3).

Settings come from three layers, later wins: dataclass defaults (the papers' values), the
model's ``train_defaults`` (e.g. an LR decay the reference uses), then user overrides from a YAML
file and ``--set key=value``. Keys are flat (``lr``, ``n_layers``): model fields and training
fields never share a name. An unknown key or an ill-typed value is an error naming the valid keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from prismrec.models import get_model
from prismrec.train.config import TrainConfig


RESERVED = {"model", "dataset"}


def field_types(cls) -> dict[str, Any]:
    """Resolved type annotations of a config dataclass's fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a parsed YAML value to ``annotation``, or raise ``ValueError`` naming ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):  # "a,b" or a YAML list "[a, b]"
            try:
                parsed = yaml.safe_load(value)
                if not isinstance(parsed, list):
                    parsed = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
                value = parsed
            except yaml.YAMLError as exc:
                raise ValueError(f"{key} must be a list written a,b or [a, b], got {value!r}") from exc
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        items = [coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{key} must be a string, got {value!r}")
    raise ValueError(f"{key}: unsupported config type {annotation!r}")


def parse_assignments(assignments: list[str] | None) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` (values read as YAML scalars/lists) into a dict."""
    out: dict[str, Any] = {}
    for item in assignments or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ValueError(f"--set {key.strip()}: {raw!r} is not a valid value (YAML scalar or list, "
                             "e.g. 0.01, true, [0.5, 0.5])") from None
    return out


def load_yaml_overrides(path: str | Path) -> dict[str, Any]:
    """Flat overrides from a YAML file; the ``train``/``params`` sections of a run's
    ``config.yaml`` are flattened so a finished run's config can be fed back in."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    flat = {k: v for k, v in data.items() if k not in ("train", "params", "protocol")}
    for section in ("train", "params"):
        flat.update(data.get(section) or {})
    return flat


@dataclass
class ExperimentConfig:
    """A model name, a dataset, the resolved training settings and the model's own config."""

    model: str
    dataset: str
    train: TrainConfig = field(default_factory=TrainConfig)
    params: Any = None

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "train": _plain(dataclasses.asdict(self.train)),
            "params": _plain(dataclasses.asdict(self.params)),
        }

    def digest(self, exclude: tuple[str, ...] = ("seed", "device", "threads")) -> str:
        """Hash of every setting except ``exclude`` (identifies a config across seeds)."""
        d = self.to_dict()
        d["train"] = {k: v for k, v in d["train"].items() if k not in exclude}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def valid_keys(model: str) -> list[str]:
    """Every key ``--set`` accepts for ``model``."""
    cls = get_model(model)
    return sorted(set(field_types(TrainConfig)) | set(field_types(cls.Config)))


def resolve_config(model: str, dataset: str, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Resolve defaults, the model's training defaults and ``overrides`` into one config."""
    cls = get_model(model)
    train_types, model_types = field_types(TrainConfig), field_types(cls.Config)
    clash = set(train_types) & set(model_types)
    if clash:  # a programming error in the model, caught by the test suite
        raise TypeError(f"{cls.__name__}.Config reuses training key(s) {sorted(clash)}")
    settings = {**cls.train_defaults, **(overrides or {})}
    settings = {k: v for k, v in settings.items() if k not in RESERVED}
    unknown = sorted(set(settings) - set(train_types) - set(model_types))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {', '.join(unknown)} for model {cls.name!r}. Valid keys: "
            f"{', '.join(valid_keys(cls.name))}"
        )
    train_kw = {k: coerce(v, train_types[k], k) for k, v in settings.items() if k in train_types}
    model_kw = {k: coerce(v, model_types[k], k) for k, v in settings.items() if k in model_types}
    train = TrainConfig(**train_kw)
    if train.valid_metric.split("@")[0] not in ("recall", "ndcg", "precision", "map", "hit") or (
        "@" not in train.valid_metric or int(train.valid_metric.split("@")[1]) not in train.topk
    ):
        raise ValueError(
            f"valid_metric {train.valid_metric!r} must be METRIC@K with METRIC in recall, ndcg, "
            f"precision, map, hit and K in topk {list(train.topk)}"
        )
    return ExperimentConfig(model=cls.name, dataset=dataset, train=train, params=cls.Config(**model_kw))
