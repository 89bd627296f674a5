"""The id store: which item id sits in which row of the vector storage, with tombstones.

Immutable: every change returns a new Catalogue, so a search holding one sees a consistent
catalogue while a writer prepares the next.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


class Catalogue:
    """ids : int64 (rows,) item id per storage row, -1 = removed (a tombstone until compaction).
    The lookup (sorted live ids, their rows) is kept exactly in step with the live rows."""

    __slots__ = ("row_ids", "dead", "_keys", "_rows")

    def __init__(self, row_ids: np.ndarray, lookup: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> None:
        self.row_ids = row_ids
        self.dead = int(np.count_nonzero(row_ids < 0))
        if lookup is None:
            alive = np.flatnonzero(row_ids >= 0)
            order = np.argsort(row_ids[alive], kind="stable")
            lookup = (row_ids[alive][order], alive[order])
        self._keys: np.ndarray = lookup[0]
        self._rows: np.ndarray = lookup[1]

    @classmethod
    def empty(cls) -> "Catalogue":
        return cls(np.zeros(0, np.int64))

    @property
    def n_rows(self) -> int:
        return int(self.row_ids.size)

    def __len__(self) -> int:
        return int(self.row_ids.size - self.dead)

    @property
    def ids(self) -> np.ndarray:
        """int64 ids of the live items, in row (insertion) order."""
        return self.row_ids[self.row_ids >= 0]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of the given ids (-1 for ids not indexed)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        keys = self._keys
        if keys.size == 0:
            return np.full(ids.size, -1, np.int64)
        pos = np.minimum(np.searchsorted(keys, ids), keys.size - 1)
        return np.where(keys[pos] == ids, self._rows[pos], -1)

    def appended(self, ids: np.ndarray) -> Tuple["Catalogue", np.ndarray]:
        """(catalogue with `ids` appended as new rows, rows of the ids they replace)."""
        replaced = self.rows_of(ids)
        replaced = np.unique(replaced[replaced >= 0])
        row_ids = np.concatenate([self.row_ids, ids])
        row_ids[replaced] = -1
        new_rows = np.arange(self.n_rows, self.n_rows + ids.size, dtype=np.int64)
        keep = ~np.isin(self._keys, ids)
        keys = np.concatenate([self._keys[keep], ids])
        rows = np.concatenate([self._rows[keep], new_rows])
        order = np.argsort(keys, kind="stable")
        return Catalogue(row_ids, (keys[order], rows[order])), replaced

    def dropped(self, rows: np.ndarray) -> "Catalogue":
        """The catalogue with the given rows tombstoned."""
        row_ids = self.row_ids.copy()
        row_ids[rows] = -1
        keep = ~np.isin(self._rows, rows)
        return Catalogue(row_ids, (self._keys[keep], self._rows[keep]))

    def compacted(self) -> Tuple["Catalogue", np.ndarray]:
        """(catalogue without tombstones, bool mask of the rows kept)."""
        keep = self.row_ids >= 0
        return Catalogue(self.row_ids[keep]), keep
