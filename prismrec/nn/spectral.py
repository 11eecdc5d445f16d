"""Frequency-domain pieces (SMORE, arXiv 2412.14978): a learned complex filter over the embedding
dimension, and the sigmoid gate its views pass through."""

from __future__ import annotations

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


def gate(dim: int) -> nn.Sequential:
    """``x ↦ σ(x G + g)`` (``d -> d``)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())
