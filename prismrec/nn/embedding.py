"""ID embedding tables (ALGORITHMS.md 2.7): one learnable row per user or item; tables that are a
parameter or a frozen buffer by a setting."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

INITS = {"xavier_uniform": nn.init.xavier_uniform_, "xavier_normal": nn.init.xavier_normal_}


class IdEmbedding(nn.Module):
    """A free ``n x dim`` table ``E`` (the parameter ``weight``), Xavier-initialised.

    Args:
        n: rows (users or items).
        dim: ``d``, the embedding width.
        init: ``xavier_uniform`` (LightGCN, MGCN and most graph models) or ``xavier_normal``
            (MMRec's BPR-MF).

    The table is built filled with zeros and drawn by :meth:`reset_parameters`, which every
    model calls once at the end of its constructor, after all its layers exist: so the draws of
    one seed follow one fixed order (the model's ``reset_parameters``), whatever order the
    layers were built in. ``forward()`` returns ``E``; ``forward(index)`` the rows ``E[index]``.
    """

    def __init__(self, n: int, dim: int, init: Literal["xavier_uniform", "xavier_normal"] = "xavier_uniform") -> None:
        super().__init__()
        if n < 1 or dim < 1:
            raise ValueError(f"an ID table needs n >= 1 rows and dim >= 1, got n={n}, dim={dim}")
        if init not in INITS:
            raise ValueError(f"init must be one of {sorted(INITS)}, got {init!r}")
        self.init = init
        self.weight = nn.Parameter(torch.zeros(n, dim))

    def reset_parameters(self) -> None:
        """Draw ``E`` afresh from the Xavier distribution chosen by ``init``."""
        INITS[self.init](self.weight)

    def forward(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """``E`` (``index=None``) or ``E[index]``."""
        return self.weight if index is None else self.weight.index_select(0, index)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}, init={self.init}"


def register_table(module: nn.Module, name: str, value: torch.Tensor, trainable: bool, persistent: bool = True) -> None:
    """Give ``module`` the tensor ``value`` as ``name``: a trainable ``nn.Parameter``, or a frozen
    buffer (saved in the state dict unless ``persistent=False``: a frozen random table must be
    saved to restore exactly, a copy of the dataset's features need not)."""
    if trainable:
        setattr(module, name, nn.Parameter(value))
    else:
        module.register_buffer(name, value, persistent=persistent)
