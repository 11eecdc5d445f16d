"""Small synthetic datasets with planted structure, written in MMRec layout.

Users and items fall into ``n_clusters`` groups; a user interacts mostly with items of its own
group, and every modality's features are the item's group centroid plus noise. A model that
learns anything ranks a user's held-out items far above chance, which makes these folders good
smoke tests for every model and for the whole pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def split_labels(n_interactions: int) -> np.ndarray:
    """MMRec split rule (ALGORITHMS.md 1.2) for one user's already-shuffled interactions."""
    if n_interactions < 10:
        n_valid, n_test = 1, 1
    else:
        h = int(0.2 * n_interactions)
        n_valid = h // 2
        n_test = h - n_valid
    n_train = n_interactions - n_valid - n_test
    return np.repeat([0, 1, 2], [n_train, n_valid, n_test])


def write_planted_dataset(
    folder: str | Path,
    n_users: int = 300,
    n_items: int = 200,
    n_clusters: int = 5,
    per_user: int = 20,
    in_cluster: float = 0.9,
    modalities: dict[str, int] | None = None,
    feature_noise: float = 0.5,
    seed: int = 0,
) -> Path:
    """Write ``<folder>/<folder name>.inter`` and one ``<m>_feat.npy`` per modality; return folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    modalities = {"image": 16, "text": 24} if modalities is None else modalities
    user_cluster = rng.integers(0, n_clusters, n_users)
    item_cluster = np.arange(n_items) % n_clusters
    by_cluster = [np.flatnonzero(item_cluster == c) for c in range(n_clusters)]
    rows = []
    for u in range(n_users):
        own = by_cluster[user_cluster[u]]
        n_own = min(len(own), rng.binomial(per_user, in_cluster))
        others = np.setdiff1d(np.arange(n_items), own)
        items = np.concatenate([
            rng.choice(own, n_own, replace=False),
            rng.choice(others, per_user - n_own, replace=False),
        ])
        rng.shuffle(items)
        rows.append(pd.DataFrame({"userID": u, "itemID": items, "x_label": split_labels(len(items))}))
    inter = pd.concat(rows, ignore_index=True)
    inter.to_csv(folder / f"{folder.name}.inter", sep="\t", index=False)
    for name, dim in modalities.items():
        centroids = rng.normal(size=(n_clusters, dim))
        feats = centroids[item_cluster] + feature_noise * rng.normal(size=(n_items, dim))
        np.save(folder / f"{name}_feat.npy", feats.astype(np.float32))
    return folder
