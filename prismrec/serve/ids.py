"""Raw ids: the user and item ids of the source data, as ``prismrec build`` mapped them.

``build`` writes ``u_id_mapping.csv`` and ``i_id_mapping.csv`` (TAB-separated: the raw id column,
then ``userID`` / ``itemID``, the internal 0-based id) into the dataset folder. :class:`IdMaps`
reads them so that ``recommend`` and ``serve`` can take and return the ids a user knows. Raw ids
are kept as text exactly as written in the maps (``"007"`` stays ``"007"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from prismrec.errors import ServeError

USER_MAP = "u_id_mapping.csv"
ITEM_MAP = "i_id_mapping.csv"


class IdMaps:
    """Raw <-> internal ids of one dataset's users and items."""

    def __init__(self, raw_users: Sequence[str], raw_items: Sequence[str], folder: Path | None = None) -> None:
        self.raw_users = np.asarray(raw_users, dtype=object)
        self.raw_items = np.asarray(raw_items, dtype=object)
        self.folder = folder
        self.user_index = {u: i for i, u in enumerate(self.raw_users)}

    @classmethod
    def load(cls, folder: str | Path | None, n_users: int, n_items: int) -> "IdMaps | None":
        """The maps of dataset ``folder``, or None when either file is absent.

        A map that does not cover ids ``0..n-1`` exactly once is a :class:`ServeError` naming
        the file (it belongs to another build of the dataset)."""
        if folder is None:
            return None
        folder = Path(folder)
        if not (folder / USER_MAP).is_file() or not (folder / ITEM_MAP).is_file():
            return None
        return cls(_read(folder / USER_MAP, "userID", n_users), _read(folder / ITEM_MAP, "itemID", n_items), folder)

    def users(self, raw: Sequence[str]) -> np.ndarray:
        """Internal ids of raw user ids; an unknown one is a :class:`ServeError`."""
        raw = [str(u) for u in raw]
        unknown = [u for u in raw if u not in self.user_index]
        if unknown:
            raise ServeError(f"unknown raw user id(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''}: "
                             f"not in {self.folder / USER_MAP if self.folder else 'the user map'}")
        return np.array([self.user_index[u] for u in raw], dtype=np.int64)

    def items(self, internal: np.ndarray) -> list[list[str]]:
        """Raw ids of an array of internal item ids (rows of a top-k; ``-1`` padding dropped)."""
        return [[self.raw_items[i] for i in row if i >= 0] for row in np.asarray(internal)]


def _read(path: Path, id_column: str, n: int) -> np.ndarray:
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise ServeError(f"{path} is unreadable ({exc}): rebuild the dataset with prismrec build") from None
    if id_column not in frame.columns or len(frame.columns) != 2:
        raise ServeError(f"{path} is not an id map: expected two TAB-separated columns, the raw id and "
                         f"{id_column}")
    raw_column = next(c for c in frame.columns if c != id_column)
    ids = pd.to_numeric(frame[id_column], errors="coerce")
    if ids.isna().any() or sorted(ids.astype(int)) != list(range(n)):
        raise ServeError(f"{path} does not map {id_column} 0..{n - 1} exactly once: it belongs to another "
                         "build of the dataset; rebuild it")
    repeated = frame[raw_column].duplicated(keep=False)
    if repeated.any():  # one raw id for two internal ids: an answer in raw ids would be ambiguous
        lines = [i + 2 for i in np.flatnonzero(repeated.to_numpy())[:2]]
        raise ServeError(f"{path}: raw id {frame[raw_column][repeated].iloc[0]!r} is listed twice (lines "
                         f"{lines[0]} and {lines[1]}): it belongs to another build of the dataset; rebuild it")
    out = np.empty(n, dtype=object)
    out[ids.astype(int).to_numpy()] = frame[raw_column].to_numpy()
    return out
