"""Noise views for contrastive learning (ALGORITHMS.md 2.12, 5.4).

Each row ``x`` of a matrix is moved by ``ρ·δ`` with ``δ = sign(x) ⊙ nrm(r)``, ``r ~ U(0,1)^d``:
the noise keeps every coordinate's sign (it pushes the row further along its own orthant) and has
unit norm wherever ``x`` has no zero entry. The magnitude ``ρ`` per row depends on ``mode``:

| mode       | ``ρ``                         | source |
|------------|-------------------------------|--------|
| ``fixed``    | ``ε``                         | GUME (reference code, ``ε = 0.1``) |
| ``modulus``  | ``ε‖x‖₂``                     | SIGER (proposed): the same relative noise for every row |
| ``relative`` | ``ε‖x‖₂ / mean_rows ‖x‖₂``    | proposed |
| ``inverse``  | ``ε·mean_rows ‖x‖₂ / ‖x‖₂``   | proposed |

``mean_rows`` is over all rows of the matrix passed in, also when only some ``rows`` are
perturbed (a batch's: the view of ``x[rows]``, without drawing noise for the other rows). ``ρ`` carries no gradient: the noise is a constant for
the optimiser (as GUME's, whose magnitude is a constant), and only the clean ``x`` is trained.
Two calls draw two independent views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PERTURB_MODES = ("fixed", "modulus", "relative", "inverse")
_EPS = 1e-12


def perturb(
    x: torch.Tensor,
    eps: float,
    mode: str = "fixed",
    generator: torch.Generator | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the noise view ``x + ρ ⊙ sign(x) ⊙ nrm(r)``, ``r ~ U(0,1)^d`` per row.

    Args:
        x: ``n x d`` matrix (one view per row).
        eps: ``ε >= 0``, the noise scale.
        mode: ``"fixed"``, ``"modulus"``, ``"relative"`` or ``"inverse"`` (table above).
        generator: source of ``r`` (must live on ``x``'s device); ``None`` uses torch's global RNG.
        rows: if given, return only the view of ``x[rows]`` (``ρ``'s row mean still over all of ``x``).
    """
    if mode not in PERTURB_MODES:
        raise ValueError(f"perturb mode must be one of {list(PERTURB_MODES)}, got {mode!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if x.dim() != 2:
        raise ValueError(f"perturb expects an n x d matrix, got shape {tuple(x.shape)}")
    target = x if rows is None else x.index_select(0, rows)
    r = torch.rand(target.shape, generator=generator, device=x.device, dtype=x.dtype)
    delta = torch.sign(target.detach()) * F.normalize(r, dim=1, eps=_EPS)
    if mode == "fixed":
        return target + eps * delta
    norms = torch.linalg.vector_norm(target.detach(), dim=1, keepdim=True)
    if mode == "modulus":
        rho = eps * norms
    else:
        mean = torch.linalg.vector_norm(x.detach(), dim=1).mean() if rows is not None else norms.mean()
        if mode == "relative":
            rho = eps * norms / mean.clamp_min(_EPS)
        else:  # inverse: small rows get more noise; a zero row has δ = 0, so its ρ never shows
            rho = eps * mean / norms.clamp_min(_EPS)
    return target + rho * delta


class NoiseSource(nn.Module):
    """Noise views (:func:`perturb`) drawn from the module's own ``torch.Generator``.

    The generator's seed is drawn from torch's global RNG when the module is built: build it
    after the model's parameters are initialised, so one seed fixes the run and the
    initialisation is the same with or without noise. The generator (the attribute
    ``generator``, created on the device of the first input) is a plain module attribute, so
    :meth:`prismrec.recommender.Recommender.generator_states` finds it for checkpoints.

    Args:
        eps: ``ε >= 0``, the noise scale.
        mode: the magnitude rule of :func:`perturb` (``fixed``, ``modulus``, ...).
    """

    def __init__(self, eps: float, mode: str = "fixed") -> None:
        super().__init__()
        if mode not in PERTURB_MODES:
            raise ValueError(f"perturb mode must be one of {list(PERTURB_MODES)}, got {mode!r}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps, self.mode = eps, mode
        self.seed = int(torch.randint(0, 2**62, ()).item())
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """One noise view of ``x`` (or of ``x[rows]``); two calls give two independent views."""
        if self.generator is None or self.generator.device != x.device:
            self.generator = torch.Generator(device=x.device).manual_seed(self.seed)
        return perturb(x, self.eps, self.mode, generator=self.generator, rows=rows)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, mode={self.mode}"
