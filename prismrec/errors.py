"""Every error a user can cause derives from :class:`PrismrecError` (DESIGN.md §3 Errors).

The CLI prints such an error as one line (what, where, how to fix) and exits with code 2; any
other exception is a bug in prismrec and keeps its traceback. Each class also derives from the
built-in exception a Python caller would expect (``ValueError``, ``RuntimeError``), so code
written against the built-ins keeps working.
"""

from __future__ import annotations


class PrismrecError(Exception):
    """Base class of every error caused by input, settings or the state of a run directory."""


class ConfigError(PrismrecError, ValueError):
    """A setting is unknown, ill-typed or out of range; the message names the key and the fix."""


class ModelRefused(ConfigError):
    """A model refuses its settings on the dataset it is built on (its own checks against the data,
    such as ``knn_k`` above the item count, or sizes that do not fit in memory)."""


class DatasetError(PrismrecError, ValueError):
    """Malformed or missing dataset input. The message names the file, the place and the fix."""


class RunError(PrismrecError, ValueError):
    """A run directory is missing, unfinished, mixed or unusable for what was asked."""


class PretrainedError(RunError):
    """Pretrained representations (an earlier stage's output) cannot be used; says why and what to do."""


class ServeError(PrismrecError, ValueError):
    """A recommendation request is invalid or over the server's limits."""


class TrainingDiverged(PrismrecError, RuntimeError):
    """A loss term became NaN, infinite or exploded; the run is marked failed."""
