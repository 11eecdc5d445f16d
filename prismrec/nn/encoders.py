"""Modality encoders: raw item features -> ``d``-dimensional item vectors (ALGORITHMS.md 2.8).

Two layers, both owning their copy of one modality's feature matrix ``F_m`` (``n_I x d_m``):

- :class:`Projector` — ``X_m = F_m W_m + b_m`` (``d_m -> d``), the plain linear map used by VBPR,
  FREEDOM and RLMultimodalRec.
- :class:`Purifier` — MGCN's behaviour-guided purifier, also GUME's modality encoder:
  ``H_m⁰ = E_I ⊙ σ(X_m G_m + g_m)``; the ID embeddings ``E_I`` are gated per dimension by the
  projected feature.

The features are either a trainable ``nn.Parameter`` copy (MGCN/GUME/FREEDOM reference code
fine-tunes them) or a frozen, non-persistent buffer (VBPR). A frozen buffer is left out of the
state dict: it is rebuilt from the dataset, and a 4096-d image matrix would otherwise be copied
into every checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from prismrec.nn.embedding import register_table

FEATURE_NORMS = ("none", "l2", "standardize")


def normalize_features(features: torch.Tensor, mode: str = "none", inplace: bool = False) -> torch.Tensor:
    """Rescale a raw feature matrix: ``none`` (MMRec: raw values), ``l2`` (unit rows) or
    ``standardize`` (zero mean, unit variance per column). Raw scales differ by 1000x between
    feature files (lfm2k: VGGish audio bytes, row norm ~1500, vs MiniLM text, norm 1).

    ``inplace=True`` rescales ``features`` itself (a matrix the caller owns) with no full-size
    temporary: the same values, bit for bit, as the default, which returns a new matrix (for
    ``standardize`` it holds two, ``F - μ`` and the quotient, next to ``F``)."""
    if mode == "none":
        return features
    if mode == "l2":
        return torch.nn.functional.normalize(features, dim=1, eps=1e-12, out=features if inplace else None)
    if mode == "standardize":
        mean, std = features.mean(0), features.std(0).clamp_min(1e-12)
        if inplace:
            return features.sub_(mean).div_(std)
        return (features - mean) / std
    raise ValueError(f"feature normalisation must be one of {FEATURE_NORMS}, got {mode!r}")


_CHECK_BLOCK = 2**24
"""Elements checked for finiteness at once (a bool mask of this size, not one of the matrix)."""


def _as_feature_matrix(features: torch.Tensor) -> torch.Tensor:
    """Validate ``features`` (``n x d_m``, finite) and return a float32 detached copy (one copy,
    whatever the input's dtype; the check runs in row blocks, with no matrix-sized mask)."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 2 or features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"features must be a non-empty 2-D (n_items x d_m) matrix, got {tuple(features.shape)}")
    rows = max(1, _CHECK_BLOCK // features.shape[1])
    for start in range(0, features.shape[0], rows):
        if not bool(torch.isfinite(features[start : start + rows]).all()):
            raise ValueError("features contain NaN or infinite values; clean or impute them first")
    return features.detach().to(torch.float32, copy=True)


def feature_matrix(features: torch.Tensor, normalize: str = "none") -> torch.Tensor:
    """A layer's own float32 copy of one modality's feature matrix (``n_items x d_m``, checked
    finite), rescaled by ``normalize`` (:func:`normalize_features`) in place on the copy."""
    return normalize_features(_as_feature_matrix(features), normalize, inplace=True)


class Projector(nn.Module):
    """Linear projection of one modality's item features: ``X = F W + b`` (``d_m -> dim``).

    Args:
        features: ``n_items x d_m`` raw feature matrix (row ``i`` = item ``i``); copied.
        dim: output dimension ``d``.
        trainable_features: ``True`` keeps ``F`` as a trainable ``nn.Parameter`` (fine-tuned by
            the optimiser, saved in the state dict); ``False`` keeps it as a frozen buffer that
            is not saved.

    ``forward()`` takes no input and returns the ``n_items x dim`` projected features. The
    linear map is ``self.linear`` (PyTorch's default init; re-initialise it if a model's
    reference uses another, e.g. ``nn.init.xavier_normal_(proj.linear.weight)``).
    """

    def __init__(
        self, features: torch.Tensor, dim: int, trainable_features: bool = False, normalize: str = "none"
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        feats = feature_matrix(features, normalize)
        self.trainable_features = bool(trainable_features)
        register_table(self, "features", feats, self.trainable_features, persistent=False)
        self.linear = nn.Linear(feats.shape[1], dim)

    @property
    def in_dim(self) -> int:
        """``d_m``, the raw feature dimension."""
        return self.linear.in_features

    @property
    def out_dim(self) -> int:
        """``d``, the projected dimension."""
        return self.linear.out_features

    def reset_parameters(self) -> None:
        """Re-draw the linear map (PyTorch's default Linear init); the features are untouched."""
        self.linear.reset_parameters()

    def forward(self) -> torch.Tensor:
        """``X = F W + b``, ``n_items x dim``."""
        return self.linear(self.features)

    def extra_repr(self) -> str:
        return f"items={self.features.shape[0]}, trainable_features={self.trainable_features}"


class Purifier(nn.Module):
    """Behaviour-guided purifier (MGCN; ALGORITHMS.md 2.8): ``H⁰ = E_I ⊙ σ(X G + g)``.

    ``X = F W + b`` is the :class:`Projector` output (``d_m -> d``) and ``G, g`` a ``d -> d``
    Linear, so the modality decides, per item and dimension, how much of the item's ID
    embedding passes into that modality's view.

    Args:
        features: ``n_items x d_m`` raw feature matrix of the modality; copied.
        dim: ``d``, the ID embedding dimension.
        trainable_features: as in :class:`Projector` (MGCN and GUME: ``True``).

    ``forward(item_emb)`` takes ``E_I`` (``n_items x dim``) and returns ``H⁰`` of the same shape.
    """

    def __init__(self, features: torch.Tensor, dim: int, trainable_features: bool = True) -> None:
        super().__init__()
        self.projector = Projector(features, dim, trainable_features)
        self.gate = nn.Linear(dim, dim)

    def reset_parameters(self) -> None:
        """Re-draw both linear maps (PyTorch's default Linear init, as the reference)."""
        self.projector.reset_parameters()
        self.gate.reset_parameters()

    def forward(self, item_emb: torch.Tensor) -> torch.Tensor:
        """``H⁰ = E_I ⊙ σ(X G + g)`` with ``X = F W + b``."""
        if item_emb.shape != (self.projector.features.shape[0], self.gate.out_features):
            raise ValueError(
                f"item_emb must be {self.projector.features.shape[0]} x {self.gate.out_features} "
                f"(items x dim), got {tuple(item_emb.shape)}"
            )
        return item_emb * torch.sigmoid(self.gate(self.projector()))
