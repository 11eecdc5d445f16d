"""Raw interactions (+ item text) -> a dataset folder in MMRec layout (ALGORITHMS.md 1.1-1.2).

:func:`build_dataset` reads a table of (user, item[, timestamp]) rows, keeps the ``k``-core
(users and items with at least ``min_count`` interactions, filtered until stable), re-indexes
both to contiguous ids in sorted raw-id order, splits every user's interactions and writes::

    <name>.inter          userID, itemID, x_label (0/1/2 = train/valid/test), TAB-separated
    u_id_mapping.csv      raw user id -> userID (TAB; the raw column keeps its name, or
    i_id_mapping.csv      raw item id -> itemID  ``raw_<name>`` when that is userID / itemID)
    text_feat.npy         optional: one sentence embedding per item (see ``item_text``)
    <name>_feat.npy       optional: given vectors per item, e.g. image_feat.npy (``item_features``)
    <name>_mask.npy       written when some kept items have no vector (``missing_features="mean"``):
                          bool per item, True = the item has this modality; load_dataset imputes
                          the others (``impute``: mean, zero or neighbour)
    manifest.json         source file hash, filter, split rule and seed, counts, feature provenance

Split rule ``random`` (MMRec's): all interactions shuffled with ``seed``; per user in that order,
``n_u < 10``: ``n_u - 2`` train, 1 valid, 1 test; else ``h = floor(0.2 n_u)``, ``floor(h/2)``
valid, the rest of ``h`` test, the others train. ``temporal``: the same counts, taken in time
order (ties by input row), so valid and test hold each user's latest interactions. ``cold_items = f`` then makes a
seeded ``f`` of the items cold: all their rows move to valid (half of them) or test (the other
half), recorded in the manifest (:mod:`prismrec.data.derive`, the cold-item protocol).

Nothing is silently fixed: missing ids, duplicate (user, item) pairs (unless ``dedupe``, which
keeps each pair's first row and records how many were dropped), items without text and items
without vectors (unless ``missing_features="mean"``, which also writes the mask) are errors or
recorded counts, never quiet changes.

The folder is written atomically: everything goes into a hidden sibling ``.<name>.building-<pid>``
that is renamed to ``out_dir`` only once complete, so an interrupted build never leaves a folder
that ``prismrec datasets`` would list. An existing non-empty ``out_dir`` is refused unless
``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from prismrec.data.dataset import MASK_SUFFIX, utf8_problem
from prismrec.data.derive import check_cold_fraction, choose_cold_items, cold_item_labels, cold_record
from prismrec.data.features import IMPUTE_METHODS, TEXT_ENCODER, encode_texts
from prismrec.errors import ConfigError, DatasetError

SPLIT_RULES = ("random", "temporal")
MISSING_FEATURES = ("error", "mean")


def build_dataset(
    interactions: str | Path,
    out_dir: str | Path,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str | None = None,
    min_count: int = 5,
    split: str = "random",
    seed: int = 999,
    dedupe: bool = False,
    item_text: str | Path | None = None,
    text_cols: Sequence[str] = ("text",),
    text_item_col: str | None = None,
    encoder: Callable[[list[str]], np.ndarray] | None = None,
    item_features: Mapping[str, str | Path] | None = None,
    missing_features: str = "error",
    overwrite: bool = False,
    cold_items: float = 0.0,
    impute: str = "mean",
    item_images: str | Path | None = None,
    image_encoder: str | None = None,
    image_weights: str | Path | None = None,
    image_size: int = 224,
) -> Path:
    """Build ``out_dir`` (its name is the dataset's name) from raw files; return the folder.

    Args:
        interactions: CSV/TSV (by extension; ``.tsv``/``.inter`` = TAB) with a header row.
        user_col, item_col, time_col: column names; ``time_col`` is needed by ``split="temporal"``
            and refused with any other split (it would not be used).
        min_count: the ``k`` of the k-core filter (>= 3: every user needs a train, a valid and a
            test interaction).
        dedupe: keep the first row of a repeated (user, item) pair instead of failing.
        item_text: optional table of item texts; ``text_cols`` are joined with spaces (a missing
            value is a space, as MMRec's Amazon recipe) into one sentence per item, encoded with
            ``all-MiniLM-L6-v2`` into ``text_feat.npy``. ``text_item_col`` defaults to ``item_col``.
        encoder: sentences -> float array, replacing the default encoder (tests, other models).
        item_features: modality name -> precomputed vectors keyed by raw item id (image CNN or
            CLIP embeddings, audio, ...), written as ``<name>_feat.npy`` in item-id order. A file
            is ``.npz`` with arrays ``ids`` and ``vectors``, or a CSV/TSV whose ``item_col``
            column holds the id and every other column one dimension. Rows of items the filter
            removed are ignored (and counted).
        missing_features: a kept item without a vector is an error (``"error"``), or gets the
            mean of the given vectors in the file (``"mean"``, counted in the manifest) and is
            marked missing in ``<name>_mask.npy``, so :func:`prismrec.data.load_dataset` imputes it.
        item_images: a folder of ``<raw item id>.jpg`` (or .png, ...) files, or a CSV/TSV with the
            item column and an ``image`` column of paths, encoded with ``image_encoder`` (a
            TorchScript file or ``torchvision:NAME``; ``image_weights``: a state-dict file for the
            latter) at ``image_size`` into ``image_feat.npy`` (:mod:`prismrec.data.images`); a
            kept item without an image is treated as ``missing_features`` says.
        overwrite: replace an existing non-empty ``out_dir`` (only once the new folder is complete).
        cold_items: share of items made cold (0 = none; at most 0.5), drawn with ``seed``.
        impute: the folder's default imputation of masked rows (``mean``, ``zero``, ``neighbour``),
            recorded in the manifest; ``load_dataset(impute=...)`` overrides it.

    Bad settings raise :class:`ConfigError` naming the ``prismrec build`` option; bad input files
    raise :class:`DatasetError` naming the file, the line and the option to change.
    """
    if split not in SPLIT_RULES:
        raise ConfigError(f"--split must be one of {', '.join(SPLIT_RULES)}, got {split!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 3:
        raise ConfigError(f"--min-count must be at least 3 (a train, a valid and a test row per user), got {min_count}")
    if missing_features not in MISSING_FEATURES:
        raise ConfigError(f"--missing-features must be one of {', '.join(MISSING_FEATURES)}, got {missing_features!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be a whole number from 0 to 2**32-1, got {seed!r}")
    if impute not in IMPUTE_METHODS:
        raise ConfigError(f"--impute must be one of {', '.join(IMPUTE_METHODS)}, got {impute!r}")
    if cold_items:
        check_cold_fraction(cold_items, seed)
    item_features = dict(item_features or {})
    for modality in item_features:
        if not modality.isidentifier() or (modality == "text" and item_text is not None):
            raise ConfigError(f"--item-features name {modality!r}: use a plain name such as image or audio "
                              "(it becomes <name>_feat.npy), other than text when --item-text is given")
    if split == "temporal" and not time_col:
        raise ConfigError("--split temporal needs --time-col, the column with each interaction's time")
    if time_col and split != "temporal":  # was read, then unused: a random split the user did not mean
        raise ConfigError(f"--time-col {time_col!r} orders the rows of --split temporal, and --split is {split!r}: "
                          "add --split temporal to hold out each user's latest interactions, or drop --time-col")
    named = [c for c in (user_col, item_col, time_col) if c]
    if len(set(named)) < len(named):
        raise ConfigError(f"--user-col {user_col!r}, --item-col {item_col!r}"
                          f"{f', --time-col {time_col!r}' if time_col else ''} name the same column twice; "
                          "give each its own column")
    if (image_encoder or image_weights is not None) and item_images is None:
        raise ConfigError("--image-encoder and --image-weights encode the images of --item-images: give "
                          "--item-images (a folder of <item id>.jpg files, or a table of paths) too")
    if item_images is not None and (not image_encoder or "image" in item_features):
        raise ConfigError("--item-images needs --image-encoder (a TorchScript file or torchvision:NAME) "
                          "and no --item-features image=...")
    if not list(text_cols):
        raise ConfigError("--text-cols names no column; give the item table's text column(s), e.g. title")
    out = Path(out_dir)
    _check_destination(out, overwrite)
    source = Path(interactions)
    columns = [user_col, item_col] + ([time_col] if time_col else [])
    frame = _read_table(source, columns, {user_col: "--user-col", item_col: "--item-col", time_col: "--time-col"})
    n_read = len(frame)
    frame = _check_ids(frame, source, user_col, item_col)
    frame, n_duplicates = _duplicates(frame, source, user_col, item_col, dedupe)
    kept = k_core(frame[user_col].to_numpy(), frame[item_col].to_numpy(), min_count)
    frame = frame[kept]
    if frame.empty:
        raise DatasetError(
            f"{source}: no interaction is left after the {min_count}-core filter (users and items "
            "with fewer interactions are removed until none remains): lower --min-count"
        )
    raw_users, users = np.unique(_as_ids(frame[user_col]), return_inverse=True)
    raw_items, items = np.unique(_as_ids(frame[item_col]), return_inverse=True)
    order = _time_order(frame[time_col], source, time_col) if split == "temporal" else \
        np.random.default_rng(seed).permutation(len(frame))
    labels = split_labels(users, order)
    cold = None
    if cold_items:
        cold_valid, cold_test = choose_cold_items(items, cold_items, seed)
        warm_labels, labels = labels, cold_item_labels(items, labels, cold_valid, cold_test)
        cold = cold_record(users, items, warm_labels, labels, cold_valid, cold_test, cold_items, seed)

    name = out.name
    # Written under a hidden temporary name beside ``out``, renamed once complete.
    work = out.parent / f".{name}.building-{os.getpid()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out)
    work.mkdir()
    try:
        inter = pd.DataFrame({"userID": users, "itemID": items, "x_label": labels})
        inter.to_csv(work / f"{name}.inter", sep="\t", index=False)
        for file, col, new, raw in (("u_id_mapping.csv", user_col, "userID", raw_users),
                                    ("i_id_mapping.csv", item_col, "itemID", raw_items)):
            pd.DataFrame({col if col != new else f"raw_{col}": raw, new: np.arange(len(raw))}).to_csv(
                work / file, sep="\t", index=False)
        manifest = {
            "name": name,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": {"file": str(source.resolve()), "sha256": _sha256(source), "rows": n_read,
                       "columns": columns},
            "duplicates_dropped": n_duplicates,
            "filter": {"k_core": min_count, "rows_kept": int(kept.sum()), "rows_removed": int((~kept).sum())},
            "split": {"rule": split, "seed": seed if split == "random" else None,
                      "counts": {s: int((labels == c).sum()) for c, s in enumerate(("train", "valid", "test"))}},
            "users": int(len(raw_users)),
            "items": int(len(raw_items)),
            "features": {},
            "impute": impute,
        }
        if cold is not None:
            manifest["cold_items"] = cold
        if item_text is not None:
            manifest["features"]["text"] = _text_features(
                Path(item_text), raw_items, text_item_col or item_col, list(text_cols), encoder, work)
        for modality, path in item_features.items():
            manifest["features"][modality] = _vector_features(
                modality, Path(path), raw_items, item_col, missing_features, work)
        if item_images is not None:
            from prismrec.data.images import item_image_vectors

            ids, vectors, provenance = item_image_vectors(Path(item_images), item_col, raw_items, image_encoder,
                                                          image_weights, image_size)
            np.savez(work / "image_vectors.npz", ids=ids, vectors=vectors)
            found = _vector_features("image", work / "image_vectors.npz", raw_items, item_col, missing_features, work)
            (work / "image_vectors.npz").unlink()
            del found["sha256"]  # of the temporary archive; the images' source is in ``provenance``
            manifest["features"]["image"] = {**found, **provenance}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        _move_into_place(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _check_destination(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder without ``overwrite``, before any work."""
    if not out.name or out.name in (".", ".."):
        raise ConfigError(f"--out {out}: give a folder path whose last part is the dataset's name, e.g. data/mydata")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file; give a folder path (its name is the dataset's name)")
    check_parent_folders(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} already exists and is not empty; pass --overwrite to replace it, "
                          "or give another --out")


def check_parent_folders(out: Path) -> None:
    """Refuse an ``--out`` below a file (``ratings.csv/mine``): it was "ratings.csv: File exists"."""
    for parent in Path(out).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {out}: {parent} is a file, not a folder; give a path under a folder")
            return


def _remove_abandoned(out: Path) -> None:
    """Remove temporary siblings of ``out`` left by a build that was killed (its process is gone)."""
    for stale in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = stale.name[len(out.name) + 2:].rpartition("-")
        if kind not in ("building", "replaced") or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            alive = int(pid) != os.getpid()
        except ProcessLookupError:
            alive = False
        except (PermissionError, OverflowError):
            alive = True
        if not alive:
            shutil.rmtree(stale, ignore_errors=True)


def _move_into_place(work: Path, out: Path) -> None:
    """Rename the finished ``work`` folder to ``out`` (an existing ``out`` is moved aside, then removed)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Mask of the rows kept by the iterated ``k``-core filter (both degrees >= ``k``)."""
    keep = np.ones(len(users), dtype=bool)
    _, user_of = np.unique(users, return_inverse=True)
    _, item_of = np.unique(items, return_inverse=True)
    while True:
        user_deg = np.bincount(user_of[keep], minlength=user_of.max(initial=-1) + 1)
        item_deg = np.bincount(item_of[keep], minlength=item_of.max(initial=-1) + 1)
        now = keep & (user_deg[user_of] >= k) & (item_deg[item_of] >= k)
        if now.sum() == keep.sum():
            return now
        keep = now


def split_labels(users: np.ndarray, order: np.ndarray) -> np.ndarray:
    """x_label per row: each user's rows, taken in ``order``, split by the rule of the module doc."""
    ranked_users = users[order]
    by_user = np.argsort(ranked_users, kind="stable")  # rows grouped by user, ``order`` kept inside
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(users), dtype=np.int64)
    rank[by_user] = np.arange(len(users)) - starts[ranked_users[by_user]]
    n = counts[ranked_users]
    held = np.where(n < 10, 2, (0.2 * n).astype(np.int64))
    n_valid = np.where(n < 10, 1, held // 2)
    n_train = n - held
    in_order = np.where(rank < n_train, 0, np.where(rank < n_train + n_valid, 1, 2))
    labels = np.empty(len(users), dtype=np.int64)
    labels[order] = in_order
    return labels


def _read_table(path: Path, columns: list[str], options: Mapping[str, str]) -> pd.DataFrame:
    """``columns`` of the CSV/TSV at ``path``; ``options`` maps a column to the option that names it."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise DatasetError(f"{path} {what}: give a CSV or TSV table with a header row")
    sep = table_separator(path)
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(utf8_problem(path)) from None
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path} is empty: give a table with a header row") from None
    except pd.errors.ParserError as exc:
        raise DatasetError(f"{path} is not a readable {'TSV' if sep == chr(9) else 'CSV'} table "
                           f"({' '.join(str(exc).split())})") from None
    missing = [c for c in columns if c not in frame.columns]
    if not missing and frame.empty:
        raise DatasetError(f"{path} has a header but no rows")
    padded = [(c, col) for c in missing for col in frame.columns if isinstance(col, str) and col.strip() == c]
    if padded:  # "user, item": the column is ' item', which the list of columns below would hide
        wanted, found = padded[0]
        raise DatasetError(f"{path}: the header names {found!r}, with spaces, not {wanted!r}: write the table without "
                           f"spaces around the {'tabs' if sep == chr(9) else 'commas'} (user,item, not user, item)")
    _check_separator(path, frame, sep, missing)
    if missing:
        shown = ", ".join(map(str, frame.columns[:8])) + (", ..." if len(frame.columns) > 8 else "")
        flags = sorted({options.get(c, "--text-cols") for c in missing})
        raise DatasetError(
            f"{path}: no column {', '.join(repr(c) for c in missing)} (columns: {shown}); "
            f"name the right one(s) with {' / '.join(flags)}"
        )
    return frame[columns]


COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")
"""Compression suffixes pandas reads through: the table's kind is the suffix before them."""


def table_separator(path: Path) -> str:
    """TAB for a ``.tsv``/``.tab``/``.inter`` table (also compressed: ``.tsv.gz``), else a comma."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    return "\t" if suffixes and suffixes[-1] in (".tsv", ".inter", ".tab") else ","


def _check_separator(path: Path, frame: pd.DataFrame, sep: str, missing: list[str]) -> None:
    """A table read as one column whose header splits into the ``missing`` columns by another
    separator is a :class:`DatasetError` naming that separator and the fix."""
    if not missing or len(frame.columns) != 1:
        return
    header = str(frame.columns[0])
    for other, name in (("\t", "TAB"), (",", "comma"), (";", "semicolon"), ("|", "'|'")):
        if other != sep and set(missing) <= {c.strip() for c in header.split(other)}:
            packed = path.suffix if path.suffix.lower() in COMPRESSED else ""
            fix = (f"rename it to .tsv{packed}" if other == "\t" else f"rename it to .csv{packed}" if other == ","
                   else "save it with commas (.csv) or TABs (.tsv)")
            kind = "".join(path.suffixes[-2:]) if packed else path.suffix or "file without an extension"
            raise DatasetError(f"{path} is {name}-separated (header {header!r}), but a {kind} is read as "
                               f"{'TAB' if sep == chr(9) else 'comma'}-separated: {fix}")


def _as_ids(column: pd.Series) -> np.ndarray:
    """Raw ids as integers when they all are written as plain integers (so they sort
    numerically), else as text: a zero-padded id (``007``) keeps its text, so it comes back as
    written through the id maps and is never merged with ``7``."""
    values = column.to_numpy()
    return values.astype(np.int64) if column.str.fullmatch(r"-?(0|[1-9]\d{0,17})").all() else values


def _check_ids(frame: pd.DataFrame, path: Path, user_col: str, item_col: str) -> pd.DataFrame:
    for col in (user_col, item_col):
        empty = np.flatnonzero(frame[col].isna().to_numpy())
        if empty.size:
            raise DatasetError(
                f"{path}: empty {col!r} at line(s) {(empty[:5] + 2).tolist()} ({empty.size} rows): "
                "every interaction needs a user and an item; remove or complete these rows"
            )
    return frame


def _duplicates(frame: pd.DataFrame, path: Path, user_col: str, item_col: str, dedupe: bool):
    repeated = frame.duplicated([user_col, item_col], keep="first").to_numpy()
    if not repeated.any():
        return frame, 0
    if not dedupe:
        row = int(np.flatnonzero(repeated)[0])
        first = frame.index[(frame[user_col] == frame[user_col].iloc[row]) &
                            (frame[item_col] == frame[item_col].iloc[row])][0]
        raise DatasetError(
            f"{path}: ({user_col}, {item_col}) pair ({frame[user_col].iloc[row]}, {frame[item_col].iloc[row]}) "
            f"at lines {first + 2} and {row + 2} ({int(repeated.sum())} repeated rows in all). "
            "Remove the repeats, or pass --dedupe to keep each pair's first row"
        )
    return frame[~repeated], int(repeated.sum())


def _time_order(times: pd.Series, path: Path, col: str) -> np.ndarray:
    read = pd.to_numeric(times, errors="coerce")
    numbers = read.where(np.isfinite(read))  # inf or 1e400 would sort as the latest time
    values = numbers
    if numbers.isna().any():  # dates? keep the reading that fails on fewer rows, and name those
        dates = pd.to_datetime(times, errors="coerce", utc=True, format="mixed")
        values = dates if dates.isna().sum() < numbers.isna().sum() else numbers
    bad = np.flatnonzero(values.isna().to_numpy())
    if bad.size:
        other = dates if values is numbers else numbers
        if pd.notna(other.iloc[bad[0]]):
            what = "is a date while most rows are numbers" if values is numbers else \
                "is a number while most rows are dates"
            fix = "write every time the same way"
        else:
            what = "is not a finite number" if pd.notna(read.iloc[bad[0]]) else "is neither a number nor a date"
            fix = "fix them"
        raise DatasetError(
            f"{path}: {col!r} at line {times.index[bad[0]] + 2} ({times.iloc[bad[0]]!r}) {what} ({bad.size} such "
            f"rows among the kept ones); {fix} or use --split random"
        )
    return np.lexsort((np.arange(len(values)), values.to_numpy()))


def _text_features(path: Path, raw_items: np.ndarray, item_col: str, text_cols: list[str],
                   encoder, out: Path) -> dict:
    table = _read_table(path, [item_col, *text_cols], {item_col: "--item-col"})
    repeated = table[item_col].duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise DatasetError(f"{path}: item {table[item_col].iloc[row]!r} has a second text row at line {row + 2}; "
                           "give one row per item")
    sentences = table[text_cols].fillna(" ").agg(" ".join, axis=1)
    lookup = dict(zip(table[item_col], sentences))  # raw ids as text on both sides
    missing = [i for i in raw_items if str(i) not in lookup]
    if missing:
        warnings.warn(f"{path}: {len(missing)} of {len(raw_items)} items have no text row (first: "
                      f"{str(missing[0])!r}); they are encoded from an empty sentence (recorded in the manifest)",
                      stacklevel=3)
    vectors = (encoder or encode_texts)([lookup.get(str(i), " ") for i in raw_items])
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape[0] != len(raw_items) or vectors.ndim != 2:
        raise DatasetError(f"the text encoder returned shape {vectors.shape} for {len(raw_items)} sentences")
    np.save(out / "text_feat.npy", vectors)
    return {"file": "text_feat.npy", "encoder": TEXT_ENCODER if encoder is None else getattr(encoder, "__name__", "custom"),
            "source": str(path.resolve()), "sha256": _sha256(path), "columns": text_cols,
            "missing_value": "space", "items_without_text": len(missing), "dim": int(vectors.shape[1])}


def _vector_features(modality: str, path: Path, raw_items: np.ndarray, item_col: str, missing: str,
                     out: Path) -> dict:
    ids, vectors, where = _read_vectors(path, item_col)
    if vectors.ndim != 2 or len(ids) != len(vectors) or not vectors.shape[1]:
        raise DatasetError(f"{path}: expected one vector per id (ids {len(ids)}, vectors of shape "
                           f"{vectors.shape}): give an n x d array and n ids")
    ids = [str(i) for i in ids]
    repeated = pd.Series(ids).duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise DatasetError(f"{path}: item {ids[row]!r} has a second vector at {where(row)}; give one per item")
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise DatasetError(f"{path}: the vector of item {ids[bad[0]]!r} at {where(bad[0])} is not finite (NaN or "
                           f"inf; {bad.size} such rows): fix or remove them")
    # written as float32: a value beyond its range would become inf, and the folder unloadable
    bad = np.flatnonzero((np.abs(vectors) > np.finfo(np.float32).max).any(axis=1))
    if bad.size:
        raise DatasetError(f"{path}: the vector of item {ids[bad[0]]!r} at {where(bad[0])} has a value beyond "
                           f"float32's range (|x| < 3.4e38; {bad.size} such rows): rescale or fix them")
    position = pd.Index(ids).get_indexer([str(i) for i in raw_items])
    absent = np.flatnonzero(position < 0)
    if absent.size == len(raw_items):  # with --missing-features mean: every item the same (or a NaN) row
        theirs = f"its ids: {', '.join(map(repr, ids[:3]))}{', ...' if len(ids) > 3 else ''}" if ids else "it has no rows"
        raise DatasetError(
            f"{path}: no vector belongs to a kept item ({theirs}; kept items: "
            f"{', '.join(repr(str(i)) for i in raw_items[:3])}{', ...' if len(raw_items) > 3 else ''}): write the ids as the {item_col!r} "
            "column of the interactions writes them")
    if absent.size and missing == "error":
        raise DatasetError(
            f"{path}: {absent.size} of {len(raw_items)} kept items have no vector "
            f"(first: {str(raw_items[absent[0]])!r}); add them, remove their interactions, or pass "
            "--missing-features mean to give them the mean vector")
    table = np.vstack([vectors, vectors.mean(axis=0, keepdims=True)]).astype(np.float32)
    np.save(out / f"{modality}_feat.npy", table[position])  # -1: the mean row
    if absent.size:  # which rows are real: load_dataset imputes the others (mean, zero, neighbour)
        np.save(out / f"{modality}{MASK_SUFFIX}", position >= 0)
    return {"file": f"{modality}_feat.npy", "source": str(path.resolve()), "sha256": _sha256(path),
            "dim": int(vectors.shape[1]), "items_without_vector": int(absent.size),
            "filled_with": "mean" if absent.size else None,
            "mask": f"{modality}{MASK_SUFFIX}" if absent.size else None,
            "unused_rows": int(len(ids) - (len(raw_items) - absent.size))}


def _read_vectors(path: Path, item_col: str) -> tuple[np.ndarray, np.ndarray, Callable[[int], str]]:
    """(ids, vectors, row -> location text) from an ``.npz`` (ids, vectors) or a CSV/TSV table."""
    if not path.is_file():
        raise DatasetError(f"{path} does not exist: give the item vectors (.npz with ids and vectors, or CSV/TSV)")
    if path.suffix.lower() == ".npz":
        with path.open("rb") as f:
            if f.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
                raise DatasetError(f"{path} is not a NumPy .npz archive; save it with "
                                   "np.savez(path, ids=..., vectors=...)")
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = [k for k in ("ids", "vectors") if k not in archive]
                if missing:
                    raise DatasetError(f"{path}: no array {', '.join(missing)} (arrays: {list(archive)}); "
                                       "save it with np.savez(path, ids=..., vectors=...)")
                if archive["vectors"].dtype.kind == "c":  # the cast below would drop the imaginary parts
                    raise DatasetError(f"{path}: vectors are complex numbers ({archive['vectors'].dtype}); give "
                                       "real-valued vectors (e.g. np.abs or the real and imaginary parts as columns)")
                return archive["ids"], np.asarray(archive["vectors"], dtype=np.float64), lambda r: f"index {r}"
        except (ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"{path}: ids and vectors must be plain numeric or text arrays, readable without "
                               f"Python objects ({' '.join(str(exc).split())[:120]}); save them with "
                               "np.savez(path, ids=..., vectors=...)") from None
    with path.open("rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise DatasetError(f"{path} is a bare .npy array: it has no item ids to match its rows to the raw "
                               "items; save it with np.savez(path.npz, ids=..., vectors=...) or as a CSV/TSV "
                               f"with the {item_col!r} column")
    sep = table_separator(path)
    try:
        frame = pd.read_csv(path, sep=sep, dtype={item_col: str}, keep_default_na=False, na_values=[""],
                            encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(utf8_problem(path)) from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path} is not a readable {'TSV' if sep == chr(9) else 'CSV'} table of vectors "
                           f"({' '.join(str(exc).split())})") from None
    _check_separator(path, frame, sep, [item_col] if item_col not in frame.columns else [])
    if item_col not in frame.columns:
        shown = ", ".join(map(str, frame.columns[:8])) + (", ..." if len(frame.columns) > 8 else "")
        raise DatasetError(f"{path}: no column {item_col!r} (columns: {shown}); "
                           "the item id column must be named as in the interactions")
    if frame.empty:  # every column reads as text then: it was "column 'd0' is not numeric"
        raise DatasetError(f"{path} has a header but no rows: give one row per item (the {item_col!r} column "
                           "and one column per dimension)")
    values = frame.drop(columns=item_col)
    text = [c for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
    if text:  # name the first cell that is not a number (one 'N/A' among 10,000 rows x 512 columns)
        column = values[text[0]]
        bad = np.flatnonzero((pd.to_numeric(column, errors="coerce").isna() & column.notna()).to_numpy())
        where = f" at line {bad[0] + 2} holds {column.iloc[bad[0]]!r}, which" if bad.size else ""
        raise DatasetError(f"{path}: column {text[0]!r}{where} is not numeric; every column but {item_col!r} "
                           "is one dimension of the vector")
    return frame[item_col].to_numpy(), values.to_numpy(dtype=np.float64), lambda r: f"line {r + 2}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
