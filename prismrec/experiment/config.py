"""Typed configuration: training settings plus each model's own dataclass (DESIGN.md §3).

Settings come from three layers, later wins: dataclass defaults (the papers' values), the
model's ``train_defaults`` (e.g. an LR decay the reference uses), then user overrides from a YAML
file and ``--set key=value``. Keys are flat (``lr``, ``n_layers``): model fields and training
fields never share a name. An unknown key, an ill-typed or out-of-range value, an unknown model
or an unreadable YAML file is a :class:`~prismrec.errors.ConfigError` (a ``ValueError``) naming
the key or file and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from prismrec.errors import ConfigError
from prismrec.models import get_model
from prismrec.train.config import TrainConfig, require_setting


RESERVED = {"model", "dataset"}


def field_types(cls) -> dict[str, Any]:
    """Resolved type annotations of a config dataclass's fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a parsed YAML value to ``annotation``, or raise :class:`ConfigError` naming ``key``."""
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
            except ConfigError as exc:
                errors.append(str(exc))
        prefix, suffix = f"{key} must be ", f", got {value!r}"  # one sentence: "... an integer or one of [...]"
        if all(e.startswith(prefix) and e.endswith(suffix) for e in errors):
            raise ConfigError(prefix + " or ".join(e[len(prefix):len(e) - len(suffix)] for e in errors) + suffix)
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        # a choice equal to the value and of its kind: true is not the choice 1 (entity_sign=true was +1)
        match = [a for a in args if a == value and isinstance(a, bool) == isinstance(value, bool)]
        if not match:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
        return match[0]
    if origin in (tuple, list):
        if isinstance(value, str):  # "a,b" or a YAML list "[a, b]"
            try:
                parsed = yaml.safe_load(value)
                if not isinstance(parsed, list):
                    parsed = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
                value = parsed
            except yaml.YAMLError as exc:
                raise ConfigError(f"{key} must be a list written a,b or [a, b], got {value!r}") from exc
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        items = [coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):  # YAML reads "1e3" (no dot) as a string; it is the whole number 1000
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if number.is_integer():
                return int(number)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        hint = ""
        if isinstance(value, dict) and len(value) == 1 and None in value.values():  # YAML read "cuda:" as a mapping
            hint = f" (YAML reads '{next(iter(value))}:' as a mapping: drop the trailing ':' or quote the value)"
        raise ConfigError(f"{key} must be a string, got {value!r}{hint}")
    raise ConfigError(f"{key}: unsupported config type {annotation!r}")


def parse_assignments(assignments: list[str] | None) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` (values read as YAML scalars/lists) into a dict.

    A key given twice (``lr=0.01`` and ``lr=0.001``; compare's ``MODEL.key`` likewise) is an
    error quoting both: which one was meant is not for the parser to guess (it kept the later one).
    """
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in assignments or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if key.strip() in given:
            raise ConfigError(f"--set {key.strip()} given twice ({given[key.strip()]}, {item}): give it once")
        given[key.strip()] = item
        if key.strip() in RESERVED:
            name = key.strip()
            raise ConfigError(f"--set {item}: choose the {name} with the --{name} option (compare: --{name}s), "
                              "not --set")
        if key.strip() in ("seed", "seeds"):  # run_experiment sets the seed from the command's seeds
            raise ConfigError(f"--set {item}: choose seeds with --seeds (a comma list) or --n-seeds N, not --set")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: {raw!r} is not a valid value (YAML scalar or list, "
                             "e.g. 0.01, true, [0.5, 0.5])") from None
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps
    the last one silently: ``lr: 0.1`` then ``lr: 0.2`` would train with 0.2)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one section; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml_overrides(path: str | Path) -> dict[str, Any]:
    """Flat overrides from a YAML file; the ``train``/``params`` sections of a run's
    ``config.yaml`` are flattened so a finished run's config can be fed back in."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; give the path of a YAML file of settings") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give the path of a YAML file of settings") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"config file {path}{where}: not valid YAML ({problem}); write one key: value "
                          "setting per line, e.g. lr: 0.001") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings (key: value lines), "
                          f"got a {type(data).__name__}")
    # "seeds" and "protocol" are a run's record (config.yaml), not settings; seeds come from --seeds.
    flat = {k: v for k, v in data.items() if k not in ("train", "params", "protocol", "seeds")}
    where = {k: "at the top level" for k in flat}
    for section in ("train", "params"):
        block = data.get(section) or {}
        if not isinstance(block, dict):
            raise ConfigError(f"config file {path}: section {section!r} must be a mapping of settings, "
                              f"got a {type(block).__name__}")
        for key, value in block.items():  # one key in two places: which one was meant is not ours to guess
            if key in where:
                raise ConfigError(f"config file {path} sets {key} twice ({where[key]}: {flat[key]!r}, in section "
                                  f"{section!r}: {value!r}); keep one")
            flat[key], where[key] = value, f"in section {section!r}"
    # A run's config.yaml (or any dump of a resolved config: every training setting) records the seed
    # it ran with; in a file the user wrote, a seed would be ignored.
    record = "protocol" in data or set(field_types(TrainConfig)) <= set(data.get("train") or {})
    if not record:
        for key in ("seed", "seeds"):
            value = flat.get(key, data.get(key))
            if value is not None:
                raise ConfigError(f"config file {path} sets {key}: {value}, but seeds are chosen on the command "
                                  "line: remove it from the file and give --seeds (a comma list) or --n-seeds N")
    bad_keys = [k for k in flat if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"config file {path}: setting names must be text, got {bad_keys[0]!r}")
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
    cls = model_class(model)
    return sorted(set(field_types(TrainConfig)) | set(field_types(cls.Config)))


def model_class(model: str):
    """The registered class of ``model``; an unknown name is a :class:`ConfigError` listing the known ones."""
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"model name {model!r} is empty; give one of the registered models")
    try:
        return get_model(model.strip())
    except KeyError as exc:
        raise ConfigError(f"{exc.args[0]}: give one of these names") from None


def declared_grid(model: str) -> dict[str, list]:
    """``model``'s declared search grid, ``{setting: values}``: its Config fields' ``grid`` metadata
    (the paper's or reference's values), then the training settings of its ``train_grid``."""
    cls = model_class(model)
    space = {f.name: list(f.metadata["grid"]) for f in dataclasses.fields(cls.Config) if len(f.metadata.get("grid", ())) > 1}
    return {**space, **{k: list(v) for k, v in cls.train_grid.items() if len(v) > 1}}


MAX_LAYERS = 1000
"""Most propagation steps a layer count (``n_layers``, ``n_ui_layers``, ...) may ask for: far past
any model's use (the papers search 1 to 4), short of a run that never ends (``n_layers=10**12``
propagated forever, or drew one from a search range)."""


def check_model_numbers(params) -> None:
    """Raise :class:`ConfigError` naming the first model setting that is NaN or infinite (alone or
    in a list), a loss weight (``*_weight``) below 0, or a layer count (``n_*layer(s)``) above
    :data:`MAX_LAYERS`: caught here, not as a loss that "diverged", a run that trains on nonsense
    or one that never ends."""
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        numbers = [v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, float)]
        require_setting(all(math.isfinite(v) for v in numbers), f.name, value, "model settings must be finite numbers")
        require_setting(not (f.name.endswith("_weight") and numbers and min(numbers) < 0), f.name, value,
                 "a loss weight must be >= 0 (0 switches its term off)")
        layers = f.name.startswith("n_") and f.name.endswith(("_layer", "_layers")) and isinstance(value, int)
        require_setting(not (layers and value > MAX_LAYERS), f.name, value,
                        f"a layer count must be at most {MAX_LAYERS:,} (each layer is one more propagation step)")


def resolve_config(model: str, dataset: str, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Resolve defaults, the model's training defaults and ``overrides`` into one config.

    Raises :class:`ConfigError` for an unknown model or key, an ill-typed value or an out-of-range
    training setting (see :func:`prismrec.train.config.check_train_config`).
    """
    cls = model_class(model)
    train_types, model_types = field_types(TrainConfig), field_types(cls.Config)
    clash = set(train_types) & set(model_types)
    if clash:  # a programming error in the model, caught by the test suite
        raise TypeError(f"{cls.__name__}.Config reuses training key(s) {sorted(clash)}")
    settings = {**cls.train_defaults, **(overrides or {})}
    named = settings.get("model")
    if named is not None and str(named).lower() != cls.name:
        raise ConfigError(f"the settings name model {named!r} but model {cls.name!r} is being configured "
                          f"(e.g. a --config file of another model's run); use --model {named} or other settings")
    settings = {k: v for k, v in settings.items() if k not in RESERVED}
    unknown = sorted(set(settings) - set(train_types) - set(model_types))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)} for model {cls.name!r}. Valid keys: "
            f"{', '.join(valid_keys(cls.name))}"
        )
    train_kw = {k: coerce(v, train_types[k], k) for k, v in settings.items() if k in train_types}
    model_kw = {k: coerce(v, model_types[k], k) for k, v in settings.items() if k in model_types}
    train = TrainConfig(**train_kw)  # checks every training setting's range
    try:
        params = cls.Config(**model_kw)
        check_model_numbers(params)
        # The model's own checks that need no data (n_layers=-1): here, so that a search or a
        # comparison refuses them before any work, not as a refused trial or a failed cell.
        cls.check_settings(params)
    except (TypeError, ValueError) as exc:  # a model config's own checks (__post_init__, check_settings)
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"model {cls.name!r} rejects its settings: {exc}") from None
    return ExperimentConfig(model=cls.name, dataset=dataset, train=train, params=params)
