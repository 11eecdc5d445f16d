"""Frequency-domain pieces (SMORE, arXiv 2412.14978): a learned complex filter over the embedding
dimension, the spectrum fusion of several modalities with it, and the sigmoid gate its views pass
through."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class SpectralFilter(nn.Module):
    """``x ↦ 𝓕⁻¹(𝓕(x) ⊙ K)`` along the last dimension with a learned complex ``K`` (``N(0,1)``
    real and imaginary parts, as the reference ``torch.randn``); ``spectrum`` gives ``𝓕(x)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.zeros(dim // 2 + 1, 2))  # K as (real, imag)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x, dim=-1, norm="ortho")

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        """Filter a spectrum (from :meth:`spectrum`, or a product of spectra) back to ``d`` reals."""
        return torch.fft.irfft(spectrum * torch.view_as_complex(self.weight), n=self.dim, dim=-1, norm="ortho")


def spectrum_fusion(x: Mapping[str, torch.Tensor], filters: Mapping[str, SpectralFilter],
                    fusion_filter: SpectralFilter, present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Each modality's denoised ``X̃_m = 𝓕⁻¹(𝓕(X_m) ⊙ K_m)`` and, under the key ``"fusion"``, the
    fused ``X̃_f = 𝓕⁻¹(Π_m 𝓕(X_m) ⊙ K_f)`` from the modalities' ``X_m`` (``x``, ``n x d`` each, in
    order) and their filters ``K_m`` (``filters``, by modality) and ``K_f``.

    ``present`` (optional, ``M x n`` bool, ``x``'s order): a row's missing modality contributes
    the product's identity, 1, to ``Π_m``."""
    spectra = {m: filters[m].spectrum(v) for m, v in x.items()}  # 𝓕(X_m)
    out = {m: filters[m](s) for m, s in spectra.items()}
    if present is not None:
        spectra = {m: torch.where(present[k].unsqueeze(1), s, torch.ones_like(s))
                   for k, (m, s) in enumerate(spectra.items())}
    product, *rest = spectra.values()
    for s in rest:
        product = product * s
    out["fusion"] = fusion_filter(product)
    return out


def gate(dim: int) -> nn.Sequential:
    """``x ↦ σ(x G + g)`` (``d -> d``)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())
