"""Reusable layers: ID tables, propagation, encoders, fusion, perturbation, the multi-view encoder."""

from prismrec.nn.embedding import IdEmbedding
from prismrec.nn.encoders import Projector, Purifier
from prismrec.nn.fusion import BehaviorAwareFuser, GatedFusion
from prismrec.nn.multiview import (
    ExtendedBranch,
    ExtendedBranchConfig,
    GUMETermsConfig,
    MultiViewConfig,
    MultiViewEncoder,
)
from prismrec.nn.multiview_checks import check_multiview_config
from prismrec.nn.perturb import PERTURB_MODES, NoiseSource, perturb
from prismrec.nn.propagation import lightgcn, lightgcn_rows

__all__ = [
    "BehaviorAwareFuser",
    "ExtendedBranch",
    "ExtendedBranchConfig",
    "GUMETermsConfig",
    "GatedFusion",
    "IdEmbedding",
    "MultiViewConfig",
    "MultiViewEncoder",
    "NoiseSource",
    "PERTURB_MODES",
    "Projector",
    "Purifier",
    "check_multiview_config",
    "lightgcn",
    "lightgcn_rows",
    "perturb",
]
