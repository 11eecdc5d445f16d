"""MMRec-format datasets: loading, validation and the :class:`Dataset` contract (DESIGN.md §3).

A dataset folder holds ``<name>.inter`` (TAB-separated; columns ``userID``, ``itemID``,
``x_label``; optional ``rating``/``timestamp`` are ignored) and zero or more
``<modality>_feat.npy`` files (row i = item i), each optionally with ``<modality>_mask.npy`` (bool,
``True`` where the item has that modality; masked rows are imputed here, see
:func:`prismrec.data.features.impute_features`, before any model sees them). A cold-item dataset
(``prismrec build --cold-items``, ``prismrec split-cold``) lists its cold items in
``manifest.json``; they have no training row. Semantics follow MMRec exactly: ids are 0-based,
``n = max id + 1`` over all splits, ``x_label`` 0/1/2 = train/valid/test, and valid/test rows of
users absent from the training split are dropped. Anything malformed raises
:class:`DatasetError` naming the file, the row or column, and what to do; nothing is fixed
silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from prismrec.data.features import IMPUTE_METHODS, impute_features
from prismrec.errors import ConfigError, DatasetError

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
SPLITS = ("train", "valid", "test")
FEATURE_SUFFIX = "_feat.npy"
MASK_SUFFIX = "_mask.npy"
COLD_SPLITS = ("valid", "test")

LAYOUT_HELP = (
    "A dataset is a folder <data-dir>/<name>/ holding <name>.inter (TAB-separated with a header "
    "line 'userID<TAB>itemID<TAB>x_label'; 0-based integer ids; x_label 0/1/2 = train/valid/test) "
    "and optional <modality>_feat.npy files (2-D float arrays, row i = item i), as distributed "
    "by MMRec (github.com/enoche/MMRec, data/README.md)."
)


@dataclass
class Dataset:
    """Interactions split into train/valid/test CSR matrices plus named item feature matrices."""

    name: str
    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    path: Path | None = None
    feature_masks: dict[str, np.ndarray] = field(default_factory=dict)
    """Modality -> boolean ``n_items`` vector, ``True`` where the item has that modality (only
    modalities with a ``<modality>_mask.npy``); masked rows of ``features`` are already imputed."""
    cold_items: dict[str, np.ndarray] = field(default_factory=dict)
    """``{"valid": ids, "test": ids}`` (sorted) of a cold-item dataset: items without any training
    interaction whose interactions all lie in that split; empty for an ordinary dataset."""

    def cold(self, split: str | None = None) -> np.ndarray:
        """Sorted ids of the cold items held out in ``split`` (``valid``/``test``), or of all of them."""
        if split is None:
            parts = list(self.cold_items.values())
            return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
        if split not in COLD_SPLITS:
            raise ValueError(f"cold items are held out in 'valid' or 'test', not {split!r}")
        return self.cold_items.get(split, np.empty(0, dtype=np.int64))

    def split(self, name: str) -> sp.csr_matrix:
        """Return the CSR matrix of split ``name`` (``train``, ``valid`` or ``test``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def require_split(self, name: str, why: str) -> None:
        """Raise :class:`DatasetError` when split ``name`` has no rows (``why`` it is needed)."""
        if self.split(name).nnz:
            return
        where = self.path / self.manifest.get("inter_file", f"{self.name}.inter") if self.path else repr(self.name)
        dropped = self.manifest.get("dropped_cold_start_rows", {}).get(name)
        also = f"; its {dropped} row(s) belong to users without training rows, which are dropped" if dropped else ""
        raise DatasetError(f"{where}: the {name} split is empty (no row has x_label {SPLITS.index(name)}{also}); "
                           f"{why}. Label some interactions {SPLITS.index(name)}, or let prismrec build split the raw interactions")

    def fingerprint(self, split: str = "train") -> str:
        """A content hash of one split (its CSR ``indptr`` and ``indices``)."""
        return csr_fingerprint(self.split(split))

    def summary(self) -> dict:
        """Counts and modalities, as shown by ``prismrec datasets``."""
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            **{split: int(self.split(split).nnz) for split in SPLITS},
            "modalities": {m: int(f.shape[1]) for m, f in self.features.items()},
        }

    def __repr__(self) -> str:
        s = self.summary()
        mods = ", ".join(f"{m}:{d}" for m, d in s["modalities"].items()) or "none"
        return (
            f"Dataset({self.name!r}, users={self.n_users}, items={self.n_items}, "
            f"train/valid/test={s['train']}/{s['valid']}/{s['test']}, modalities={mods})"
        )


def csr_fingerprint(matrix: sp.csr_matrix) -> str:
    """SHA-256 (first 16 hex digits) of a CSR matrix's shape, ``indptr`` and ``indices``."""
    h = hashlib.sha256()
    h.update(np.asarray(matrix.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(matrix.indptr, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(matrix.indices, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- data directory


def default_data_dirs() -> list[Path]:
    """Candidate locations of ``shared/data`` tried when nothing is configured."""
    repo_root = Path(__file__).resolve().parents[2]
    return [Path.cwd().parent / "shared" / "data", repo_root.parent / "shared" / "data"]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``data_dir`` if given, else ``$PRISMREC_DATA``, else ``../shared/data`` if it exists."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            what = "is a file, not a folder" if path.exists() else "does not exist"
            raise DatasetError(f"data directory {path} {what}. {LAYOUT_HELP}")
        return path
    env = os.environ.get("PRISMREC_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DatasetError(f"$PRISMREC_DATA={env} is not a directory. {LAYOUT_HELP}")
        return path
    for candidate in default_data_dirs():
        if candidate.is_dir():
            return candidate
    raise DatasetError(
        "no data directory: pass --data-dir DIR, or set PRISMREC_DATA=DIR, or place the data in "
        f"../shared/data. {LAYOUT_HELP}"
    )


def find_dataset(name_or_path: str | Path, data_dir: str | Path | None = None) -> Path:
    """Resolve a dataset name (looked up in the data directory) or a folder path."""
    if not str(name_or_path).strip():
        raise DatasetError("the dataset name is empty: give a dataset name (prismrec datasets lists them) "
                           "or a folder path")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.suffix == ".inter" and path.is_file():
        return path.parent
    if os.sep in str(name_or_path) or str(name_or_path).startswith("."):
        raise DatasetError(f"dataset folder {path} not found. {LAYOUT_HELP}")
    root = resolve_data_dir(data_dir)
    folder = root / str(name_or_path)
    if not folder.is_dir():
        check_not_a_dataset(root)
        available = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(
            f"dataset {name_or_path!r} not found in {root} (available: "
            f"{', '.join(available) or 'none'}). {LAYOUT_HELP}"
        )
    return folder


def check_not_a_dataset(root: Path) -> None:
    """Refuse a data directory that is itself a dataset folder (``--data-dir data/ml100k``)."""
    if (root / f"{root.name}.inter").is_file():
        raise DatasetError(f"the data directory {root} is itself the dataset folder of {root.name!r}: give the "
                           f"folder above it, --data-dir {root.parent}")


def list_datasets(data_dir: str | Path | None = None) -> list[Path]:
    """Folders of the data directory that contain a ``<name>.inter`` file."""
    root = resolve_data_dir(data_dir)
    check_not_a_dataset(root)
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / f"{p.name}.inter").is_file())


# --------------------------------------------------------------------------- loading


def load_dataset(
    name_or_path: str | Path,
    data_dir: str | Path | None = None,
    modalities: list[str] | None = None,
    impute: str | None = None,
    impute_k: int | None = None,
) -> Dataset:
    """Load and validate an MMRec dataset folder.

    ``name_or_path`` is a folder, or a name looked up in :func:`resolve_data_dir`.
    ``modalities`` restricts which ``<modality>_feat.npy`` files are read (default: all present;
    a requested one that is missing is an error). ``impute`` fills the rows a
    ``<modality>_mask.npy`` marks as missing (``mean``, ``zero`` or ``neighbour``, see
    :func:`prismrec.data.features.impute_features`); ``None`` = the manifest's ``impute`` (set by
    ``prismrec build --impute``), else ``mean``; ``impute_k`` is the neighbour count of
    ``neighbour`` (``None``: the manifest's ``impute_k``, else 10). What was filled is recorded in
    ``manifest["imputation"]``.
    """
    folder = find_dataset(name_or_path, data_dir)
    name = folder.name
    inter_path = folder / f"{name}.inter"
    if inter_path.exists() and not inter_path.is_file():
        raise DatasetError(f"{inter_path} is a folder, not a file; put the interactions table there. {LAYOUT_HELP}")
    if not inter_path.is_file():
        found = sorted(p.name for p in folder.glob("*.inter"))
        hint = f" (found {', '.join(found)}; rename it to {name}.inter)" if found else ""
        raise DatasetError(f"{inter_path} is missing{hint}. {LAYOUT_HELP}")

    users, items, labels = _read_inter(inter_path)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    _check_duplicates(inter_path, users, items)

    in_train = labels == 0
    if not in_train.any():
        raise DatasetError(
            f"{inter_path}: the train split is empty (no row has x_label 0). "
            "Label training interactions with 0."
        )
    has_train = np.zeros(n_users, dtype=bool)
    has_train[users[in_train]] = True
    dropped = {}
    matrices = {}
    for code, split in enumerate(SPLITS):
        rows = labels == code
        if code > 0:  # MMRec: valid/test rows of users without training rows are dropped
            keep = rows & has_train[users]
            dropped[split] = int(rows.sum() - keep.sum())
            rows = keep
        matrices[split] = _csr(users[rows], items[rows], n_users, n_items)

    features = _load_features(folder, n_items, modalities)
    manifest = _read_manifest(folder)
    masks = _load_masks(folder, n_items, features)
    method = impute if impute is not None else manifest.get("impute", "mean")
    if method not in IMPUTE_METHODS:
        where = "impute" if impute is not None else f"{folder / 'manifest.json'} field 'impute'"
        raise ConfigError(f"{where}: {method!r} is not one of {', '.join(IMPUTE_METHODS)}")
    if masks:
        k = impute_k if impute_k is not None else manifest.get("impute_k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"impute_k must be a positive whole number (neighbours of neighbour imputation), got {k!r}")
        filled, record = impute_features({m: f.numpy() for m, f in features.items()}, masks, method, k)
        features = {m: torch.from_numpy(np.ascontiguousarray(f)) for m, f in filled.items()}
        manifest["imputation"] = record
    cold = _cold_items(folder, manifest, matrices, n_items)
    manifest.update(
        {
            "name": name,
            "inter_file": inter_path.name,
            "dropped_cold_start_rows": dropped,
            "fingerprints": {s: csr_fingerprint(m) for s, m in matrices.items()},
        }
    )
    return Dataset(
        feature_masks=masks,
        cold_items=cold,
        name=name,
        n_users=n_users,
        n_items=n_items,
        features=features,
        manifest=manifest,
        path=folder,
        **matrices,
    )


def _csr(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    m = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items)
    )
    m.sort_indices()
    return m


def _read_inter(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    df = _read_inter_integers(path)
    if df is None:
        df = _read_inter_text(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)}; the header has "
            f"{list(df.columns)}. The header line must name the TAB-separated columns "
            "userID, itemID and x_label."
        )
    if len(df) == 0:
        raise DatasetError(f"{path} has a header but no rows.")
    users = _int_column(path, df, "userID")
    items = _int_column(path, df, "itemID")
    labels = _int_column(path, df, "x_label")
    for column, ids in (("userID", users), ("itemID", items)):
        top = int(ids.argmax())
        if ids[top] >= 10 * len(ids) + 1000:  # n = max id + 1: a stray huge id would allocate n rows
            raise DatasetError(
                f"{path}, line {top + 2}, column {column}: id {ids[top]} is far above the row count "
                f"({len(ids)} rows); ids must be 0-based and contiguous (n = max id + 1). Re-index the data."
            )
    bad = ~np.isin(labels, (0, 1, 2))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{path}, line {row + 2}, column x_label: value {labels[row]} is not 0, 1 or 2 "
            f"({int(bad.sum())} such rows). Use 0 = train, 1 = valid, 2 = test."
        )
    return users, items, labels


def _read_inter_integers(path: Path) -> pd.DataFrame | None:
    """The fast path: the C parser reads the three required columns straight into int64 (a
    1.7M-row file in ~1 s instead of ~12 s through strings). ``None`` whenever that fails (a
    non-integer, empty or huge value, a missing column, a bad byte, a malformed line): the text
    path then reads the file again and names the problem precisely."""
    try:
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):  # a failed cast: the text path explains
            warnings.simplefilter("ignore", RuntimeWarning)
            df = pd.read_csv(path, sep="\t", dtype={c: np.int64 for c in REQUIRED_COLUMNS},
                             keep_default_na=False, encoding="utf-8")
    except (ValueError, OverflowError, OSError, UnicodeDecodeError):  # ParserError is a ValueError
        return None
    if any(c not in df.columns or df[c].dtype != np.int64 for c in REQUIRED_COLUMNS):
        return None
    return df


def _read_inter_text(path: Path) -> pd.DataFrame:
    """Every column as text, so that a bad value can be reported with its line and content."""
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(utf8_problem(path)) from None
    except pd.errors.ParserError as exc:
        detail = " ".join(str(exc).split())
        raise DatasetError(f"{path} is not a readable TAB-separated file ({detail}). Every line needs the "
                           "same TAB-separated columns as the header.") from None
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{path} is empty. {LAYOUT_HELP}") from exc
    except IsADirectoryError:
        raise DatasetError(f"{path} is a directory, not a file. {LAYOUT_HELP}") from None
    return df


def utf8_problem(path: Path) -> str:
    """A message naming where the first byte of ``path`` that is not UTF-8 sits (line and byte)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return f"{path} is not valid UTF-8 text; save it as UTF-8"
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        return (f"{path}, line {line}, byte {exc.start - line_start + 1}: byte 0x{data[exc.start]:02x} is not "
                "UTF-8 (a Latin-1 or other 8-bit encoding?): remove the stray "
                "characters or re-save the file as UTF-8")


def _int_column(path: Path, df: pd.DataFrame, column: str) -> np.ndarray:
    if df[column].dtype == np.int64:  # read as integers by the fast path
        ints = df[column].to_numpy()
    else:
        ints = _parse_int_text(path, df, column)
    if column != "x_label" and (ints < 0).any():
        row = int(np.flatnonzero(ints < 0)[0])
        raise DatasetError(
            f"{path}, line {row + 2}, column {column}: negative id {ints[row]}. Ids must be "
            "0-based non-negative integers; re-index the data."
        )
    return ints



def _parse_int_text(path: Path, df: pd.DataFrame, column: str) -> np.ndarray:
    text = df[column].str.strip()
    values = pd.to_numeric(text, errors="coerce")
    as_float = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(as_float) | (as_float != np.round(as_float)) | (np.abs(as_float) > 2**53)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{path}, line {row + 2}, column {column}: {df[column].iloc[row]!r} is not an "
            f"integer ({int(bad.sum())} such rows). Ids and labels must be whole numbers (below 2**53)."
        )
    return as_float.astype(np.int64)

def _check_duplicates(path: Path, users: np.ndarray, items: np.ndarray) -> None:
    keys = users * (int(items.max()) + 1) + items
    order = np.argsort(keys, kind="stable")
    same = keys[order][1:] == keys[order][:-1]
    if same.any():
        n_dup = int(same.sum())
        first = int(np.flatnonzero(same)[0])
        a, b = sorted((int(order[first]), int(order[first + 1])))
        raise DatasetError(
            f"{path}: duplicate (userID, itemID) pair ({users[a]}, {items[a]}) at lines {a + 2} "
            f"and {b + 2} ({n_dup} duplicate rows in all). Each pair may appear once: remove "
            "repeats (keep the one in the split you intend)."
        )


def feature_files(folder: Path) -> dict[str, Path]:
    """The ``<modality>_feat.npy`` files of a dataset folder, by modality name (sorted), unread."""
    return {p.name[: -len(FEATURE_SUFFIX)]: p for p in sorted(Path(folder).glob(f"*{FEATURE_SUFFIX}"))}


def _load_features(
    folder: Path, n_items: int, modalities: list[str] | None
) -> dict[str, torch.Tensor]:
    available = feature_files(folder)
    if modalities is None:
        wanted = list(available)
    else:
        missing = [m for m in modalities if m not in available]
        if missing:
            raise DatasetError(
                f"{folder}: modality feature file(s) "
                f"{', '.join(m + FEATURE_SUFFIX for m in missing)} not found (present: "
                f"{', '.join(available) or 'none'}). Add the file(s) or choose other modalities."
            )
        wanted = list(modalities)
    return {m: _load_feature(available[m], n_items) for m in wanted}


NPY_MAGIC = b"\x93NUMPY"


def _load_feature(path: Path, n_items: int) -> torch.Tensor:
    try:
        with path.open("rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError as exc:
        raise DatasetError(f"{path} cannot be read ({exc.strerror}). {LAYOUT_HELP}") from None
    if head != NPY_MAGIC:
        looks = "is empty" if not head else (
            "is a text file (a CSV renamed to .npy?)" if all(32 <= b < 127 or b in b"\t\r\n" for b in head)
            else "has another binary format")
        raise DatasetError(
            f"{path} is not a NumPy .npy file: it {looks}. Write the items x dims float matrix with "
            "numpy.save(path, array) (row i = item i)."
        )
    try:
        # Memory-mapped: rows are converted to float32 block by block below, so a float64 file
        # never has a whole float64 copy in memory, and a float32 one is read exactly once.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc) or "object" in str(exc):
            raise DatasetError(f"{path} holds Python objects, not numbers. Save a 2-D float array "
                               "(items x dims) with numpy.save.") from None
        raise DatasetError(f"{path} is a damaged .npy file ({exc}). Save features with numpy.save.") from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path} is a truncated or damaged .npy file ({exc}). Save features with "
                           "numpy.save.") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        raise DatasetError(
            f"{path}: expected a 2-D array (items x dims), got shape {np.shape(array)}. "
            "Save one row per item."
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DatasetError(f"{path}: dtype {array.dtype} is not numeric. Save a float array.")
    if array.shape[1] == 0:
        raise DatasetError(
            f"{path}: the feature matrix has {array.shape[0]} rows but zero columns (shape {array.shape}). "
            "Save at least one feature per item, or remove the file to train without this modality."
        )
    if array.shape[0] != n_items:
        raise DatasetError(
            f"{path}: {array.shape[0]} rows but the .inter file implies {n_items} items "
            "(max itemID + 1). Row i must be item i: add or remove rows to match."
        )
    out = np.empty(array.shape, dtype=np.float32)
    any_nonzero = False
    step = max(1, _FEATURE_BLOCK_BYTES // (array.shape[1] * max(array.dtype.itemsize, 4)))
    for start, block in _feature_blocks(path, array, out, step):
        finite = np.isfinite(block)
        if not finite.all():
            row, col = (int(x) for x in np.argwhere(~finite)[0])
            row += start
            raise DatasetError(
                f"{path}: non-finite value {out[row, col]} (as float32) at row {row} (item {row}), column {col}"
                f"{_rows_affected(array, start, step)}. Fill or re-extract these items' features "
                "(float32 range: |x| < 3.4e38)."
            )
        any_nonzero = any_nonzero or bool(block.any())
    del array  # closes the memory map
    if not any_nonzero:
        warnings.warn(
            f"{path}: every feature value is zero, so this modality carries no information (and its "
            "cosine kNN graph is empty). Re-extract the features, or remove the file.",
            stacklevel=4,
        )
    return torch.from_numpy(out)


_FEATURE_BLOCK_BYTES = 64 * 2**20
"""Rows of a feature file are converted to float32 and checked in blocks of about this size."""


def _feature_blocks(path: Path, array: np.memmap, out: np.ndarray, step: int):
    """Fill ``out`` (float32) from the .npy file mapped as ``array``, ``step`` rows at a time,
    yielding ``(start, block)`` after each block is in place.

    Rows are read with ordinary file reads, not through the memory map: pages of a mapped file
    count as the process's resident memory, so a 1 GB feature file read through its map would
    show as 1 GB more peak RSS (and hold it until unmapped). A native float32 file is read
    straight into ``out``; any other dtype goes through one block-sized buffer.
    """
    n, dims = array.shape
    if array.flags.f_contiguous and not array.flags.c_contiguous:  # rare (Fortran order): the map it is
        for start in range(0, n, step):
            with np.errstate(over="ignore", invalid="ignore"):
                np.copyto(out[start:start + step], array[start:start + step], casting="unsafe")
            yield start, out[start:start + step]
        return
    row_bytes = dims * array.dtype.itemsize
    with path.open("rb") as f:
        f.seek(array.offset)
        for start in range(0, n, step):
            block = out[start:start + step]
            want = len(block) * row_bytes
            if array.dtype == np.float32 and array.dtype.isnative:
                got = f.readinto(memoryview(block).cast("B"))
            else:
                raw = f.read(want)
                got = len(raw)
                if got == want:
                    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, reported
                        np.copyto(block, np.frombuffer(raw, dtype=array.dtype).reshape(-1, dims), casting="unsafe")
            if got != want:
                raise DatasetError(f"{path} is truncated (row {start + got // row_bytes} of {n} is incomplete). "
                                   "Save the features again with numpy.save.")
            yield start, block


def _rows_affected(array: np.ndarray, start: int, step: int) -> str:
    """`` (N rows affected)``: the rows from ``start`` on with a value that is not finite as float32."""
    n_rows = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for s in range(start, array.shape[0], step):
            n_rows += int((~np.isfinite(np.asarray(array[s:s + step], dtype=np.float32))).any(axis=1).sum())
    return f" ({n_rows} rows affected)"


def _load_masks(folder: Path, n_items: int, features: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """``<modality>_mask.npy`` of each loaded modality that has one, checked (bool, ``n_items`` long)."""
    masks = {}
    for m in features:
        path = folder / f"{m}{MASK_SUFFIX}"
        if not path.is_file():
            continue
        try:
            mask = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DatasetError(f"{path} is not a readable .npy file ({exc}); save the mask with "
                               "numpy.save(path, bool_vector)") from None
        if mask.dtype != np.bool_ or mask.shape != (n_items,):
            raise DatasetError(f"{path}: expected a boolean vector of {n_items} items (True = the item has "
                               f"{m}), got dtype {mask.dtype} and shape {mask.shape}; rewrite it")
        if not mask.any():
            raise DatasetError(f"{path}: no item has {m} (every entry is False); remove {m}{FEATURE_SUFFIX} "
                               "and its mask, or fix the mask")
        masks[m] = mask
    return masks


def _cold_items(folder: Path, manifest: dict, splits: dict, n_items: int) -> dict[str, np.ndarray]:
    """The manifest's cold items per split, checked: valid ids, disjoint, none in the train split."""
    record = manifest.get("cold_items")
    if not record:
        return {}
    path = folder / "manifest.json"
    cold = {}
    for split in COLD_SPLITS:
        try:
            ids = np.asarray(record.get(split, []), dtype=np.int64)
        except (TypeError, ValueError, AttributeError):
            raise DatasetError(f"{path}: cold_items.{split} must be a list of item ids; rebuild the cold "
                               "split with prismrec split-cold") from None
        bad = ids[(ids < 0) | (ids >= n_items)]
        if bad.size:
            raise DatasetError(f"{path}: cold_items.{split} holds item {int(bad[0])}, outside 0..{n_items - 1}; "
                               "rebuild the cold split with prismrec split-cold")
        cold[split] = np.unique(ids)
    both = np.intersect1d(cold["valid"], cold["test"])
    if both.size:
        raise DatasetError(f"{path}: item {int(both[0])} is cold in both valid and test; rebuild the cold split")
    degree = np.bincount(splits["train"].indices, minlength=n_items)
    for split, ids in cold.items():
        leaked = ids[degree[ids] > 0]
        if leaked.size:
            raise DatasetError(f"{path}: cold item {int(leaked[0])} (cold_items.{split}) has {int(degree[leaked[0]])} "
                               f"training rows in {folder.name}.inter ({leaked.size} such items): a cold item "
                               "must have none; rebuild the cold split with prismrec split-cold")
    return cold


def _read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); fix or remove it (it only records provenance)") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path} must hold a JSON object, got a {type(manifest).__name__}; fix or remove it "
                           "(it only records provenance)")
    return manifest
