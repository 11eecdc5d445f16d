"""Small synthetic datasets with planted structure, written in MMRec layout.

Users and items fall into ``n_clusters`` groups; a user interacts mostly with items of its own
group, and every modality's features are the item's group centroid plus noise. A model that
learns anything ranks a user's held-out items far above chance, which makes these folders good
smoke tests for every model and for the whole pipeline.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from prismrec.errors import ConfigError


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


# --- Large synthetic datasets at the size of real benchmarks ------------------------------------

SIZES: dict[str, dict] = {
    "tiktok": {"n_users": 9_308, "n_items": 6_710, "n_interactions": 68_722,
               "modalities": {"image": 128, "audio": 128}},
    "baby": {"n_users": 19_445, "n_items": 7_050, "n_interactions": 160_792,
             "modalities": {"image": 4096, "text": 384}},
    "electronics": {"n_users": 192_403, "n_items": 63_001, "n_interactions": 1_689_188,
                    "modalities": {"image": 4096, "text": 384}},
}
"""Counts of real benchmark datasets (5-core, MMRec's files) and the feature sizes they ship:
Amazon's 4096-d image (VGG) and 384-d text (MiniLM) vectors, TikTok's 128-d visual and acoustic
ones. :func:`write_sized_dataset` makes a synthetic folder of such a size."""

MIN_DEGREE = 5
"""Fewest interactions per user and per item (the 5-core filter of the Amazon datasets)."""


def powerlaw_degrees(n: int, total: int, exponent: float, rng: np.random.Generator,
                     low: int = MIN_DEGREE, high: int | None = None) -> np.ndarray:
    """``n`` integer degrees >= ``low`` summing to ``total``, with a Pareto tail.

    Draws ``low * U^(-1/exponent)`` (density ~ ``x^-(exponent+1)``), caps at ``high``, then
    stretches the part above ``low`` so the sum is ``total`` (the 5-core floor is kept, the
    tail's shape is scaled). Raises ``ValueError`` when ``total`` is out of ``n * [low, high]``.
    """
    if total < n * low or (high is not None and total > n * high):
        raise ValueError(f"{total} interactions cannot give {n} rows between {low} and {high} each")
    x = low * rng.random(n) ** (-1.0 / exponent)
    if high is not None:
        x = np.minimum(x, high)
    excess = x - low
    scale = (total - n * low) / max(excess.sum(), 1e-12)
    degrees = low + np.floor(excess * scale).astype(np.int64)
    if high is not None:
        degrees = np.minimum(degrees, high)
    short = total - int(degrees.sum())  # rounding (and the cap): spread over random rows with room
    while short > 0:
        room = np.flatnonzero(degrees < (high if high is not None else np.iinfo(np.int64).max))
        pick = rng.choice(room, size=min(short, len(room)), replace=False)
        degrees[pick] += 1
        short -= len(pick)
    return degrees


def split_labels_vectorised(users: np.ndarray) -> np.ndarray:
    """MMRec's split labels (:func:`split_labels`) for every row at once.

    ``users`` must be grouped (each user's rows contiguous, in their shuffled order)."""
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    h = (0.2 * counts).astype(np.int64)
    n_valid = np.where(counts < 10, 1, h // 2)
    n_test = np.where(counts < 10, 1, h - h // 2)
    position = np.arange(len(users)) - np.repeat(starts, counts)
    n_train = np.repeat(counts - n_valid - n_test, counts)
    n_valid = np.repeat(n_valid, counts)
    return np.where(position < n_train, 0, np.where(position < n_train + n_valid, 1, 2)).astype(np.int8)


def powerlaw_interactions(n_users: int, n_items: int, n_interactions: int, n_clusters: int = 20,
                          in_cluster: float = 0.8, user_exponent: float = 2.3, item_exponent: float = 1.25,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bipartite interactions with power-law degrees on both sides and planted clusters.

    A configuration model: each user and item gets a degree (:func:`powerlaw_degrees`, at least
    :data:`MIN_DEGREE`); their "stubs" are paired after sorting by a key that is the row's cluster
    for a share ``in_cluster`` of stubs (random otherwise), so most interactions fall inside a
    cluster and a model has something to learn. Repeated pairs are re-paired among themselves a
    few times, and the few left are dropped. Vectorised: Electronics size takes seconds.

    Returns ``(users, items, labels, item_cluster)``, rows grouped by user in random order, labels
    by MMRec's split rule (0/1/2 = train/valid/test).
    """
    rng = np.random.default_rng(seed)
    # the most active user / most popular item: realistic caps, loosened for tiny copies
    user_high = max(n_items // 50, 4 * MIN_DEGREE, -(-2 * n_interactions // n_users))
    item_high = max(n_users // 20, 4 * MIN_DEGREE, -(-2 * n_interactions // n_items))
    user_deg = powerlaw_degrees(n_users, n_interactions, user_exponent, rng, high=min(user_high, n_items))
    item_deg = powerlaw_degrees(n_items, n_interactions, item_exponent, rng, high=min(item_high, n_users))
    user_cluster = rng.integers(0, n_clusters, n_users)
    item_cluster = rng.integers(0, n_clusters, n_items)

    def stubs(degrees, cluster):
        owner = np.repeat(np.arange(len(degrees), dtype=np.int64), degrees)
        key = np.where(rng.random(len(owner)) < in_cluster, cluster[owner], rng.integers(0, n_clusters, len(owner)))
        return owner[np.lexsort((rng.random(len(owner)), key))]

    users, items = stubs(user_deg, user_cluster), stubs(item_deg, item_cluster)
    keys = users * n_items + items
    for _ in range(10):  # re-pair repeated (user, item) pairs among themselves
        order = np.argsort(keys, kind="stable")
        repeated = order[1:][keys[order[1:]] == keys[order[:-1]]]
        if not len(repeated):
            break
        items[repeated] = items[rng.permutation(repeated)]
        keys = users * n_items + items
    keys = np.unique(keys)  # whatever repeats are left are dropped (sorted by user)
    users, items = keys // n_items, keys % n_items
    shuffle = np.lexsort((rng.random(len(users)), users))  # random order within each user
    users, items = users[shuffle], items[shuffle]
    return users, items, split_labels_vectorised(users), item_cluster


def write_sized_dataset(folder: str | Path, size: str = "electronics", scale: float = 1.0,
                        modalities: dict[str, int] | None = None, seed: int = 0,
                        block_rows: int = 8192, overwrite: bool = False) -> Path:
    """Write a synthetic MMRec folder with the counts of a real dataset (:data:`SIZES`).

    ``scale`` multiplies users, items and interactions (``0.01``: a tiny folder of the same
    shape, for tests). Degrees follow power laws on both sides (:func:`powerlaw_interactions`);
    each modality's features are the item's cluster centroid plus noise, float32, generated and
    written in blocks of ``block_rows`` rows (never a second copy in memory). The folder is
    written under a temporary name and renamed at the end, so an interrupted run never leaves a
    folder that looks like a dataset; an existing non-empty ``folder`` is a ``FileExistsError``
    unless ``overwrite``. ``manifest.json`` records how it was made. Returns the folder.
    """
    if size not in SIZES:
        raise ConfigError(f"unknown dataset size {size!r}: choose one of {', '.join(SIZES)}")
    if not 0 < scale < float("inf"):  # inf was an OverflowError traceback
        raise ConfigError(f"--scale {scale}: give a factor > 0 (1 = the real dataset's counts)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be a whole number from 0 to 2**32-1, got {seed!r}")  # was numpy's ValueError
    spec = SIZES[size]
    folder = Path(folder)
    from prismrec.data.build import check_parent_folders

    check_parent_folders(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        if not overwrite:
            raise FileExistsError(errno.EEXIST, "exists and is not empty: choose another folder, or pass --overwrite to replace it", str(folder))
    n_users = max(int(round(spec["n_users"] * scale)), 2 * MIN_DEGREE)
    n_items = max(int(round(spec["n_items"] * scale)), 4 * MIN_DEGREE)
    n_inter = max(int(round(spec["n_interactions"] * scale)), MIN_DEGREE * max(n_users, n_items))
    modalities = dict(spec["modalities"]) if modalities is None else modalities
    users, items, labels, item_cluster = powerlaw_interactions(n_users, n_items, n_inter, seed=seed)
    from prismrec.data.build import _move_into_place, _remove_abandoned

    tmp = folder.parent / f".{folder.name}.building-{os.getpid()}"  # as build's: a killed run's is removed
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder)  # this process's own earlier attempt too
    tmp.mkdir()
    try:
        pd.DataFrame({"userID": users, "itemID": items, "x_label": labels}).to_csv(
            tmp / f"{folder.name}.inter", sep="\t", index=False)
        rng = np.random.default_rng([seed, 1])
        for name, dim in modalities.items():
            centroids = rng.standard_normal((int(item_cluster.max()) + 1, dim), dtype=np.float32)
            out = np.lib.format.open_memmap(tmp / f"{name}_feat.npy", mode="w+", dtype=np.float32,
                                            shape=(n_items, dim))
            for start in range(0, n_items, block_rows):
                rows = slice(start, min(start + block_rows, n_items))
                block = rng.standard_normal((rows.stop - start, dim), dtype=np.float32)
                block += centroids[item_cluster[rows]]
                out[rows] = block
            out.flush()
            del out
        manifest = {"synthetic": {"size": size, "scale": scale, "seed": seed, "users": n_users,
                                  "items": n_items, "interactions": int(len(users)),
                                  "modalities": modalities, "generator": "prismrec.data.synthetic.write_sized_dataset"}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder

