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

``mean_rows`` is over the rows of the matrix passed in, so perturb the whole node matrix and then
select batch rows when the mean matters. ``ρ`` carries no gradient: the noise is a constant for
the optimiser (as GUME's, whose magnitude is a constant), and only the clean ``x`` is trained.
Two calls draw two independent views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PERTURB_MODES = ("fixed", "modulus", "relative", "inverse")
_EPS = 1e-12


def perturb(
    x: torch.Tensor,
    eps: float,
    mode: str = "fixed",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return the noise view ``x + ρ ⊙ sign(x) ⊙ nrm(r)``, ``r ~ U(0,1)^d`` per row.

    Args:
        x: ``n x d`` matrix (one view per row).
        eps: ``ε >= 0``, the noise scale.
        mode: ``"fixed"``, ``"modulus"``, ``"relative"`` or ``"inverse"`` (table above).
        generator: source of ``r`` (must live on ``x``'s device); ``None`` uses torch's global RNG.
    """
    if mode not in PERTURB_MODES:
        raise ValueError(f"perturb mode must be one of {list(PERTURB_MODES)}, got {mode!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if x.dim() != 2:
        raise ValueError(f"perturb expects an n x d matrix, got shape {tuple(x.shape)}")
    r = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    delta = torch.sign(x.detach()) * F.normalize(r, dim=1, eps=_EPS)
    if mode == "fixed":
        return x + eps * delta
    norms = torch.linalg.vector_norm(x.detach(), dim=1, keepdim=True)
    if mode == "modulus":
        rho = eps * norms
    elif mode == "relative":
        rho = eps * norms / norms.mean().clamp_min(_EPS)
    else:  # inverse: small rows get more noise; a zero row has δ = 0, so its ρ never shows
        rho = eps * norms.mean() / norms.clamp_min(_EPS)
    return x + rho * delta
