"""Noise views for contrastive learning (ALGORITHMS.md 2.12, 5.2).

Each row ``x`` of a matrix is moved by ``ρ·δ`` with ``δ = sign(x) ⊙ nrm(r)``, ``r ~ U(0,1)^d``:
the noise keeps every coordinate's sign (it pushes the row further along its own orthant) and has
unit norm wherever ``x`` has no zero entry. The magnitude ``ρ`` per row depends on ``mode``:

| mode        | ``ρ``                               | source |
|-------------|-------------------------------------|--------|
| ``fixed``   | ``ε``                               | GUME (reference code, ``ε = 0.1``) |
| ``modulus`` | ``ε‖x‖₂ (‖x‖₂ / m)^γ``              | SIGER (proposed) |

``m`` is the mean row norm of the matrix passed in (also when only some ``rows`` are perturbed,
e.g. a batch's: the view of ``x[rows]``, without drawing noise for the other rows; or, with
``draw_all``, drawing it for every row as the full view does and returning ``perturb(x)[rows]``
without the other rows' work: the same values for the rows a loss reads). The relative
intensity of ``modulus`` is ``ρ/‖x‖ = ε(‖x‖/m)^γ``: personal for ``γ ≠ 0`` (``γ > 0``: rows
with a large modulus get more noise; ``γ < 0``: less). With ``γ = 0`` every row gets the same
relative noise, which a cosine InfoNCE cannot tell from ``fixed`` noise on L2-normalised rows.
The former ``relative`` rule (``ε‖x‖/m``) is ``modulus`` with ``γ = 0`` and ``ε/m``; the former
``inverse`` (``ε·m/‖x‖``) is ``γ = −2``. ``ρ`` carries no gradient: the noise is a constant for
the optimiser (as GUME's, whose magnitude is a constant), and only the clean ``x`` is trained.
Two calls draw two independent views. With a ``present`` mask (rows whose view is missing, e.g.
zero-filled items, are ``False``) ``m`` is the mean over the present rows: a missing row's norm
says nothing about the view's scale. The draws are the same with or without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PERTURB_MODES = ("fixed", "modulus")
_EPS = 1e-12


def perturb(
    x: torch.Tensor,
    eps: float,
    mode: str = "fixed",
    generator: torch.Generator | None = None,
    rows: torch.Tensor | None = None,
    gamma: float = 0.0,
    present: torch.Tensor | None = None,
    draw_all: bool = False,
) -> torch.Tensor:
    """Return the noise view ``x + ρ ⊙ sign(x) ⊙ nrm(r)``, ``r ~ U(0,1)^d`` per row.

    Args:
        x: ``n x d`` matrix (one view per row).
        eps: ``ε >= 0``, the noise scale.
        mode: ``"fixed"`` or ``"modulus"`` (table above).
        generator: source of ``r`` (must live on ``x``'s device); ``None`` uses torch's global RNG.
        rows: if given, return only the view of ``x[rows]`` (``m`` still over all of ``x``).
        gamma: ``γ`` of ``modulus`` (ignored by ``fixed``).
        present: optional bool per row of ``x``: ``m`` over the rows marked ``True`` only
            (``None``: over every row).
        draw_all: with ``rows``, draw ``r`` for every row of ``x`` (the generator then advances
            as for the full view) and keep the rows ``rows``: ``perturb(x)[rows]``.
    """
    _check(eps, mode)
    if x.dim() != 2:
        raise ValueError(f"perturb expects an n x d matrix, got shape {tuple(x.shape)}")
    target = x if rows is None else x.index_select(0, rows)
    r = torch.rand(x.shape if draw_all else target.shape, generator=generator, device=x.device, dtype=x.dtype)
    if draw_all and rows is not None:
        r = r.index_select(0, rows)
    delta = torch.sign(target.detach()) * F.normalize(r, dim=1, eps=_EPS)
    if mode == "fixed":
        return target + eps * delta
    norms = torch.linalg.vector_norm(target.detach(), dim=1, keepdim=True)
    rho = eps * norms
    if gamma != 0:  # personal intensity (‖x‖/m)^γ; a zero row has ρ = 0 (and δ = 0) for any γ
        if present is not None:
            keep = present.to(x.device, x.dtype)
            mean = (torch.linalg.vector_norm(x.detach(), dim=1) * keep).sum() / keep.sum().clamp_min(1.0)
        else:
            mean = torch.linalg.vector_norm(x.detach(), dim=1).mean() if rows is not None else norms.mean()
        ratio = (norms.clamp_min(_EPS) / mean.clamp_min(_EPS)).pow(gamma)
        rho = torch.where(norms > 0, rho * ratio, torch.zeros_like(rho))
    return target + rho * delta


def _check(eps: float, mode: str) -> None:
    """Raise naming ``eps`` below 0 or a ``mode`` :func:`perturb` does not know."""
    if mode not in PERTURB_MODES:
        raise ValueError(f"perturb mode must be one of {list(PERTURB_MODES)}, got {mode!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


class NoiseSource(nn.Module):
    """Noise views (:func:`perturb`) drawn from the module's own ``torch.Generator``.

    The generator's seed is drawn from torch's global RNG when the module is built: build it
    after the model's parameters are initialised, so one seed fixes the run and the
    initialisation is the same with or without noise. The generator (the attribute
    ``generator``, created on the device of the first input) is a plain module attribute, so
    :meth:`prismrec.recommender.Recommender.generator_states` finds it for checkpoints.

    Args:
        eps: ``ε >= 0``, the noise scale.
        mode: the magnitude rule of :func:`perturb` (``fixed`` or ``modulus``).
        gamma: ``γ`` of ``modulus``.
    """

    def __init__(self, eps: float, mode: str = "fixed", gamma: float = 0.0) -> None:
        super().__init__()
        _check(eps, mode)
        self.eps, self.mode, self.gamma = eps, mode, gamma
        self.seed = int(torch.randint(0, 2**62, ()).item())
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None,
                present: torch.Tensor | None = None, draw_all: bool = False) -> torch.Tensor:
        """One noise view of ``x`` (or of ``x[rows]``; ``present``: the rows of ``x`` whose mean norm
        sets ``modulus``'s ``m``; ``draw_all``: the rows ``rows`` of the full view, :func:`perturb`);
        two calls give two independent views."""
        if self.generator is None or self.generator.device != x.device:
            self.generator = torch.Generator(device=x.device).manual_seed(self.seed)
        return perturb(x, self.eps, self.mode, generator=self.generator, rows=rows, gamma=self.gamma,
                       present=present, draw_all=draw_all)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, mode={self.mode}, gamma={self.gamma}"
