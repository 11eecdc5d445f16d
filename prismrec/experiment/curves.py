"""Pictures of training: each loss term and the validation metric per epoch (``curves.png``).

Drawn with matplotlib's Agg backend (no display needed), once a run ends. A picture is
informative: :func:`write_curves` never lets a drawing failure fail the run that asked for it.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def loss_terms(history: list[dict]) -> list[str]:
    """The per-term loss columns of a history (``loss_bpr``, ``loss_reg``, ...), in order."""
    names: list[str] = []
    for row in history:
        for key in row:
            if key.startswith("loss_") and key not in names:
                names.append(key)
    return names


def draw_curves(axes, history: list[dict], metric: str, best_epoch: int, title: str = "") -> None:
    """Draw the loss terms (left axes) and ``valid_<metric>`` (right axes) of ``history``.

    ``axes`` is a pair of matplotlib axes; epochs are shown 1-based, the best one marked.
    """
    loss_ax, valid_ax = axes
    epochs = [int(r["epoch"]) + 1 for r in history]
    for name in loss_terms(history):
        values = [_number(r.get(name)) for r in history]
        loss_ax.plot(epochs, values, label=name[len("loss_"):], linewidth=1.4)
    if len(loss_terms(history)) > 1:
        loss_ax.plot(epochs, [_number(r.get("loss")) for r in history], label="total", color="black",
                     linewidth=1.0, linestyle="--")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss (mean per batch)")
    if _positive_spread(history, loss_terms(history)):
        loss_ax.set_yscale("log")
    loss_ax.legend(fontsize=8, loc="upper right")
    loss_ax.grid(alpha=0.3)
    column = f"valid_{metric}"
    values = [_number(r.get(column)) for r in history]
    valid_ax.plot(epochs, values, color="tab:green", linewidth=1.6, label=f"valid {metric}")
    if 0 <= best_epoch < len(history) + 1 and any(int(r["epoch"]) == best_epoch for r in history):
        best = next(_number(r.get(column)) for r in history if int(r["epoch"]) == best_epoch)
        valid_ax.axvline(best_epoch + 1, color="tab:red", linestyle=":", linewidth=1)
        valid_ax.plot([best_epoch + 1], [best], "o", color="tab:red",
                      label=f"best: epoch {best_epoch + 1}, {best:.4f}")
    valid_ax.set_xlabel("epoch")
    valid_ax.set_ylabel(f"validation {metric}")
    valid_ax.legend(fontsize=8, loc="lower right")
    valid_ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        loss_ax.set_title(f"{title}: loss terms", fontsize=10)
        valid_ax.set_title(f"{title}: validation", fontsize=10)


def plot_curves(history: list[dict], metric: str, best_epoch: int, path: Path, title: str = "") -> Path:
    """Write ``path`` (PNG): loss terms and validation ``metric`` per epoch, ``best_epoch``
    (0-based) marked. Raises on a drawing problem; see :func:`write_curves` for the safe call."""
    if not history:
        raise ValueError("no epoch to draw")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    try:
        draw_curves(axes, history, metric, best_epoch, title)
        fig.tight_layout()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)
    finally:
        plt.close(fig)
    return path


def write_curves(history: list[dict], metric: str, best_epoch: int, path: Path, title: str = "",
                 log=None) -> Path | None:
    """:func:`plot_curves`, but a failure (no matplotlib, nothing to draw, a bad value) is
    reported through ``log`` and returns None instead of raising: a picture never fails a run."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return plot_curves(history, metric, best_epoch, path, title)
    except Exception as exc:  # noqa: BLE001 - drawing is best effort by design
        if log is not None:
            log(f"curves.png not drawn ({type(exc).__name__}: {exc})")
        return None


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _positive_spread(history: list[dict], names: list[str]) -> bool:
    """Log scale when all terms are positive and span more than two decades."""
    values = [_number(r.get(n)) for r in history for n in names]
    values = [v for v in values if math.isfinite(v)]
    if not values or min(values) <= 0:
        return False
    return max(values) / min(values) > 100
