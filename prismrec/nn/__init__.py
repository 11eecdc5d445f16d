"""Reusable layers: propagation, encoders, fusion, perturbation."""

from prismrec.nn.propagation import lightgcn

__all__ = ["lightgcn"]
