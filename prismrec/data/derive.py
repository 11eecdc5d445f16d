"""Datasets derived from an existing MMRec folder: cold-item splits and corrupted modalities.

Every derived folder is a full copy (the ``.inter`` renamed after the new folder, features, masks,
id maps) whose ``manifest.json`` keeps the source's record under ``derived_from`` and says what
changed. It is written under a hidden temporary name and renamed once complete, and an existing
non-empty destination is refused (``overwrite`` replaces it), as :func:`prismrec.data.build.build_dataset`.

* :func:`cold_item_labels` / :func:`split_cold` — the cold-item protocol: a seeded set of items
  whose interactions all move to valid (half of the items) or test (the other half), so no cold
  item has a training row. ``prismrec evaluate --mode cold|all`` then measures how a model ranks
  items it never saw in training (:mod:`prismrec.coldstart`).
* :func:`corrupt_modality` — robustness: a fraction ``q`` of one modality's rows dropped (masked,
  then imputed by :func:`prismrec.data.load_dataset`) or replaced by Gaussian noise with that
  modality's per-dimension mean and standard deviation (``benchmarks/robustness.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from prismrec.data.dataset import FEATURE_SUFFIX, MASK_SUFFIX, find_dataset
from prismrec.errors import ConfigError, DatasetError

CORRUPTIONS = ("drop", "noise")


def check_cold_fraction(fraction: float, seed: int) -> None:
    """Refuse a cold-item share outside (0, 0.5] or a bad seed, before any work."""
    if isinstance(fraction, bool) or not 0.0 < float(fraction) <= 0.5:
        raise ConfigError(f"--cold-items / --fraction must be in (0, 0.5] (the share of items made cold), got {fraction}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be a whole number from 0 to 2**32-1, got {seed!r}")


def choose_cold_items(items: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(valid_ids, test_ids)``: ``round(fraction * n)`` of the distinct ``items`` (at least 2, else a ConfigError),
    drawn with ``seed``; the first half of the draw (rounded down) is held out in valid, the rest
    in test. Both sorted."""
    check_cold_fraction(fraction, seed)
    distinct = np.unique(items)
    n_cold = int(round(float(fraction) * len(distinct)))
    if n_cold < 2:  # was raised to 2 silently (--cold-items 1e-9 made 2 cold items)
        raise ConfigError(f"--cold-items / --fraction {fraction} makes {n_cold} of the {len(distinct):,} items cold, but "
                          f"a cold split needs at least 2 (one in valid, one in test): give at least "
                          f"{2 / len(distinct):.2g}")
    if n_cold >= len(distinct):
        raise ConfigError(f"--cold-items {fraction} leaves no warm item among {len(distinct)}; lower it")
    drawn = np.random.default_rng(int(seed)).choice(distinct, n_cold, replace=False)
    half = n_cold // 2
    return np.sort(drawn[:half]), np.sort(drawn[half:])


def cold_item_labels(items: np.ndarray, labels: np.ndarray, cold_valid: np.ndarray,
                     cold_test: np.ndarray) -> np.ndarray:
    """``labels`` (x_label per row) with every row of a ``cold_valid`` item set to 1 (valid) and
    every row of a ``cold_test`` item set to 2 (test); other rows keep theirs."""
    out = np.asarray(labels, dtype=np.int64).copy()
    out[np.isin(items, cold_valid)] = 1
    out[np.isin(items, cold_test)] = 2
    return out


def cold_record(users: np.ndarray, items: np.ndarray, before: np.ndarray, after: np.ndarray,
                cold_valid: np.ndarray, cold_test: np.ndarray, fraction: float, seed: int) -> dict:
    """The manifest's ``cold_items`` entry: the protocol, the ids and what moved."""
    had_train = np.unique(users[before == 0])
    has_train = np.unique(users[after == 0])
    return {
        "fraction": float(fraction), "seed": int(seed),
        "rule": "seeded item draw; all rows of the first half -> valid, of the second half -> test",
        "rows_moved_from_train": int(((before == 0) & (after != 0)).sum()),
        "users_left_without_train": int(len(np.setdiff1d(had_train, has_train))),
        "valid": [int(i) for i in cold_valid], "test": [int(i) for i in cold_test],
    }


def _resolve_out(source: Path, out: str | Path) -> Path:
    """``out`` as a path; a bare name (no separator) is a sibling of the source folder."""
    text = str(out)
    if not text.strip():
        raise ConfigError("--out is empty: give the new dataset's name or folder")
    return Path(out) if (os.sep in text or text.startswith(".")) else source.parent / text


def write_derived(
    source: Path,
    out: str | Path,
    change: Callable[[Path, str, dict], dict],
    overwrite: bool = False,
) -> Path:
    """Copy dataset folder ``source`` to ``out`` and let ``change(work, name, manifest)`` modify
    the copy in place (``work`` holds ``<name>.inter`` and every other file of the source); it
    returns the manifest entries to add. Atomic; refuses a non-empty ``out`` unless ``overwrite``."""
    from prismrec.data.build import _check_destination, _move_into_place, _remove_abandoned

    out = _resolve_out(source, out)
    if out.resolve() == source.resolve():
        raise ConfigError(f"--out {out} is the source dataset itself; give a new name")
    _check_destination(out, overwrite)
    name = out.name
    src_manifest_path = source / "manifest.json"
    src_manifest = json.loads(src_manifest_path.read_text(encoding="utf-8")) if src_manifest_path.is_file() else {}
    work = out.parent / f".{name}.building-{os.getpid()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out)
    work.mkdir()
    try:
        for path in sorted(source.iterdir()):
            if not path.is_file() or path.name == "manifest.json":
                continue
            target = work / (f"{name}.inter" if path.name == f"{source.name}.inter" else path.name)
            shutil.copy2(path, target)
        manifest = {k: v for k, v in src_manifest.items() if k not in ("name", "built", "derived_from")}
        manifest.update({
            "name": name, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "derived_from": {"folder": str(source.resolve()), "name": source.name,
                             "manifest": {k: src_manifest.get(k) for k in ("built", "source", "split", "derived_from")
                                          if k in src_manifest}},
        })
        manifest.update(change(work, name, manifest))
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        _move_into_place(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _read_inter(path: Path) -> pd.DataFrame:
    from prismrec.data.dataset import _read_inter as read_checked

    read_checked(path)  # the same checks (and messages) as load_dataset
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def split_cold(
    dataset: str | Path,
    out: str | Path,
    fraction: float = 0.1,
    seed: int = 999,
    data_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a cold-item copy of ``dataset`` (a name in the data directory or a folder) to ``out``
    (a name, placed beside the source, or a folder path); return the new folder.

    ``round(fraction * items)`` items (seeded, :func:`choose_cold_items`) lose their training rows:
    all their interactions go to valid (half of the items) or test (the other half). Warm rows keep
    their labels. The ids are recorded in ``manifest.json`` under ``cold_items``.
    """
    source = find_dataset(dataset, data_dir)
    inter_path = source / f"{source.name}.inter"
    if not inter_path.is_file():
        raise DatasetError(f"{inter_path} is missing: split-cold needs an MMRec dataset folder")
    src_manifest = source / "manifest.json"
    if src_manifest.is_file() and json.loads(src_manifest.read_text(encoding="utf-8")).get("cold_items"):
        raise ConfigError(f"{source} is already a cold-item split; derive from the original dataset")

    def change(work: Path, name: str, manifest: dict) -> dict:
        frame = _read_inter(work / f"{name}.inter")
        users = frame["userID"].astype(np.int64).to_numpy()
        items = frame["itemID"].astype(np.int64).to_numpy()
        before = frame["x_label"].astype(np.int64).to_numpy()
        cold_valid, cold_test = choose_cold_items(items, fraction, seed)
        after = cold_item_labels(items, before, cold_valid, cold_test)
        frame["x_label"] = after
        frame.to_csv(work / f"{name}.inter", sep="\t", index=False)
        counts = {s: int((after == c).sum()) for c, s in enumerate(("train", "valid", "test"))}
        split = dict(manifest.get("split") or {}, counts=counts)
        return {"split": split, "cold_items": cold_record(users, items, before, after, cold_valid, cold_test,
                                                          fraction, seed)}

    return write_derived(source, out, change, overwrite)


def corrupt_modality(
    dataset: str | Path,
    out: str | Path,
    modality: str,
    kind: str,
    fraction: float,
    seed: int = 0,
    impute: str | None = None,
    data_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a copy of ``dataset`` in which ``fraction`` of ``modality``'s rows are corrupted.

    ``kind="drop"``: the rows are marked missing in ``<modality>_mask.npy`` (and zeroed in the
    feature file, so nothing of them leaks); :func:`prismrec.data.load_dataset` imputes them
    (``impute`` is recorded as the folder's default). ``kind="noise"``: the rows are replaced by
    draws from ``N(mean_d, std_d)`` with the modality's per-dimension mean and standard deviation
    over its present rows. The rows are the first ``round(fraction * n)`` of a ``seed``-ed
    permutation, so a larger fraction corrupts a superset of a smaller one's rows.
    """
    if kind not in CORRUPTIONS:
        raise ConfigError(f"corruption must be one of {', '.join(CORRUPTIONS)}, got {kind!r}")
    if not 0.0 <= float(fraction) < 1.0:
        raise ConfigError(f"the corrupted fraction must be in [0, 1), got {fraction}")
    source = find_dataset(dataset, data_dir)
    feat = source / f"{modality}{FEATURE_SUFFIX}"
    if not feat.is_file():
        present = sorted(p.name[: -len(FEATURE_SUFFIX)] for p in source.glob(f"*{FEATURE_SUFFIX}"))
        raise ConfigError(f"{source} has no {feat.name} (modalities: {', '.join(present) or 'none'})")

    def change(work: Path, name: str, manifest: dict) -> dict:
        x = np.load(work / feat.name).astype(np.float32)
        mask_path = work / f"{modality}{MASK_SUFFIX}"
        mask = np.load(mask_path) if mask_path.is_file() else np.ones(len(x), dtype=bool)
        rng = np.random.default_rng(int(seed))
        rows = np.sort(rng.permutation(len(x))[: int(round(float(fraction) * len(x)))])
        if kind == "drop":
            mask[rows] = False
            x[rows] = 0.0
            np.save(mask_path, mask)
        else:
            present = x[mask]
            mean, std = present.mean(axis=0), present.std(axis=0)
            x[rows] = (mean + std * rng.standard_normal((len(rows), x.shape[1]))).astype(np.float32)
        np.save(work / feat.name, x)
        entry = {"modality": modality, "kind": kind, "fraction": float(fraction), "seed": int(seed),
                 "rows": int(len(rows))}
        extra = {"corruption": entry}
        if impute is not None:
            extra["impute"] = impute
        return extra

    return write_derived(source, out, change, overwrite)
