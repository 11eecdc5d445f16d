"""Reusable layers: propagation, encoders, fusion, perturbation."""

from prismrec.nn.encoders import ModalityPurifier, Projector, Purifier
from prismrec.nn.fusion import BehaviorAwareFuser, GatedFusion
from prismrec.nn.perturb import PERTURB_MODES, perturb
from prismrec.nn.propagation import lightgcn, lightgcn_rows

__all__ = [
    "BehaviorAwareFuser",
    "GatedFusion",
    "ModalityPurifier",
    "PERTURB_MODES",
    "Projector",
    "Purifier",
    "lightgcn",
    "lightgcn_rows",
    "perturb",
]
