"""The id store: which item id sits in which row of the vector storage, with tombstones
(`Catalogue`, one per faiss index), and which item id callers use for each internal int64 id
(`ItemKeys`, one per Recaller: strings, bytes, UUIDs).

Immutable: every change returns a new object, so a search holding one sees a consistent
catalogue while a writer prepares the next.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, Optional, Tuple

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


# ---------------------------------------------------------------------------- external item ids
KEY_KINDS = ("int", "str", "bytes", "uuid")
KEY_ARRAYS = ("item_key_ids", "item_key_offsets", "item_key_bytes")  # the table in items.npz
_INT64_MAX = np.iinfo(np.int64).max


_NOT_NONE = np.frompyfunc(lambda x: x is not None, 1, 1)


def present(arr: np.ndarray) -> np.ndarray:
    """bool mask (same shape) of the entries of an object array that are not None."""
    return np.asarray(_NOT_NONE(arr), dtype=bool)


def key_kind(value: Any) -> Optional[str]:
    """The kind of one item id ("int", "str", "bytes", "uuid"), None for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, str):  # np.str_ too
        return "str"
    if isinstance(value, bytes):  # np.bytes_ too
        return "bytes"
    if isinstance(value, uuid.UUID):
        return "uuid"
    return None


def _as_1d(values: Any, name: str) -> np.ndarray:
    """A 1-d array of the ids in `values` (a collection), objects kept as they are: a list of mixed
    ints and strings is not turned into strings by numpy."""
    if isinstance(values, (set, frozenset)):
        values = list(values)
    if isinstance(values, np.ndarray):
        arr = values
    elif hasattr(values, "__array__") and not isinstance(values, (list, tuple)):  # pandas, pyarrow
        arr = np.asarray(values)
    else:
        try:
            items = list(values)
        except TypeError:
            raise ValueError(f"{name} must be a collection of item ids, got {type(values).__name__}") from None
        try:
            arr = np.asarray(items)
        except ValueError:  # ragged
            arr = np.zeros(0)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":  # only plain integers take numpy's conversion
            arr = np.fromiter(items, dtype=object, count=len(items))
    return arr.ravel()


class ItemKeys:
    """The item ids callers use ↔ the int64 ids the index stores. Immutable: a writer publishes a
    new ItemKeys, so a search holding one translates consistently.

    kind None (no item yet) and "int" (non-negative integers): the ids are the index's own, no
    table. "str", "bytes", "uuid": every id gets an internal int64 id, the lowest free one (ids of
    removed items are reused); `keys[i]` is the id of internal id i (None: free) and `lookup` the
    reverse map. One kind per Recaller: the first add fixes it.
    """

    __slots__ = ("kind", "keys", "lookup", "free")

    def __init__(
        self,
        kind: Optional[str],
        keys: Optional[np.ndarray] = None,
        lookup: Optional[Dict[Any, int]] = None,
        free: Optional[np.ndarray] = None,
    ) -> None:
        self.kind = kind
        self.keys: np.ndarray = np.zeros(0, dtype=object) if keys is None else keys
        self.lookup: Dict[Any, int] = {} if lookup is None else lookup
        self.free: np.ndarray = np.zeros(0, np.int64) if free is None else free

    @property
    def mapped(self) -> bool:
        """True when the ids go through the table (str, bytes, uuid)."""
        return self.kind not in (None, "int")

    # ------------------------------------------------------------------ parsing
    def parse(self, values: Any, name: str, *, missing_ok: bool = False) -> np.ndarray:
        """The ids in `values` (a collection) as an array: int64 for integer ids, else an object
        array of str / bytes / UUID. ValueError naming `name` and the position of an id of another
        kind than this Recaller's (or than the others in `values`). `missing_ok`: None entries (the
        padding of a result) are dropped."""
        arr = _as_1d(values, name)
        if arr.size == 0:
            return np.zeros(0, np.int64) if self.kind in (None, "int") else np.zeros(0, dtype=object)
        if arr.dtype.kind in "iu":
            self._expect("int", name, arr[0], 0)
            if arr.dtype.kind == "u" and arr.max() > _INT64_MAX:
                raise ValueError(f"{name} holds {int(arr.max())}, beyond int64")
            return arr.astype(np.int64, copy=False)
        if arr.dtype.kind in "US":
            kind = "str" if arr.dtype.kind == "U" else "bytes"
            self._expect(kind, name, arr[0], 0)
            return arr.astype(object)
        if arr.dtype.kind != "O":
            raise ValueError(f"{name} must hold item ids (integers, strings, bytes or UUIDs), got dtype {arr.dtype}")
        if missing_ok:
            arr = arr[present(arr)]
            if arr.size == 0:
                return self.parse(arr[:0].astype(np.int64), name)
        kinds = [key_kind(v) for v in arr]
        first = kinds[0]
        for i, kd in enumerate(kinds):
            if kd is None or kd != first:
                v = arr[i].item() if isinstance(arr[i], np.generic) else arr[i]
                what = (
                    "an item id (an integer, string, bytes or UUID)" if kd is None else f"a {first} id like {name}[0]"
                )
                raise ValueError(f"{name}[{i}] is {v!r} ({type(v).__name__}), not {what}")
        self._expect(first or "", name, arr[0], 0)
        if first == "int":
            try:
                return arr.astype(np.int64)
            except OverflowError:
                raise ValueError(f"{name} holds an integer beyond int64") from None
        return arr

    def _expect(self, kind: str, name: str, value: Any, i: int) -> None:
        if self.kind is not None and kind != self.kind:
            value = value.item() if isinstance(value, np.generic) else value
            raise ValueError(
                f"{name}[{i}] is {value!r} ({type(value).__name__}): this Recaller's item ids are "
                f"{self.kind} ids (one kind per Recaller, fixed by its first add_items)"
            )

    # ------------------------------------------------------------------ translation
    def ids_of(self, keys: np.ndarray) -> np.ndarray:
        """int64 internal ids of parsed `keys` (-1 for ids not known)."""
        if not self.mapped:
            return keys if keys.dtype == np.int64 else np.full(keys.size, -1, np.int64)
        get = self.lookup.get
        return np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=keys.size)

    def keys_of(self, ids: np.ndarray) -> np.ndarray:
        """The item ids of internal ids (any shape): the ids themselves for integer ids, else an
        object array with None where an id is -1."""
        if not self.mapped:
            return ids
        out = np.full(ids.shape, None, dtype=object)
        ok = ids >= 0
        out[ok] = self.keys[ids[ok]]
        return out

    # ------------------------------------------------------------------ changes (new objects)
    def added(self, keys: np.ndarray) -> Tuple["ItemKeys", np.ndarray]:
        """(the ItemKeys with parsed, distinct `keys` known, their internal ids): ids already
        known keep theirs, new ones take the lowest free ids, then ids past the end."""
        if keys.size == 0:
            return self, np.zeros(0, np.int64)
        kind = "int" if keys.dtype == np.int64 else key_kind(keys[0])
        if kind == "int":
            if keys.min() < 0:
                raise ValueError(f"integer item ids must be >= 0, got {int(keys.min())}")
            return (self if self.kind == "int" else ItemKeys("int")), keys
        ids = self.ids_of(keys)
        new = np.flatnonzero(ids < 0)
        if new.size == 0:
            return self, ids
        n_free = min(new.size, self.free.size)
        fresh = np.concatenate(
            [self.free[:n_free], np.arange(self.keys.size, self.keys.size + new.size - n_free, dtype=np.int64)]
        )
        ids[new] = fresh
        table = np.concatenate([self.keys, np.full(new.size - n_free, None, dtype=object)])
        table[fresh] = keys[new]
        lookup = dict(self.lookup)
        lookup.update(zip(keys[new].tolist(), fresh.tolist()))
        return ItemKeys(kind, table, lookup, self.free[n_free:]), ids

    def removed(self, keys: np.ndarray) -> Tuple["ItemKeys", np.ndarray]:
        """(the ItemKeys without parsed `keys`, the internal ids they had; unknown keys ignored)."""
        ids = np.sort(self.ids_of(keys))
        ids = ids[ids >= 0]
        ids = ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if ids.size else ids  # distinct
        if not self.mapped or ids.size == 0:
            return self, ids
        table = self.keys.copy()
        lookup = dict(self.lookup)
        for k in table[ids]:
            del lookup[k]
        table[ids] = None
        return ItemKeys(self.kind, table, lookup, np.sort(np.concatenate([self.free, ids]))), ids  # disjoint

    # ------------------------------------------------------------------ persistence
    def state(self) -> Dict[str, np.ndarray]:
        """The table as arrays (mapped kinds only): internal ids and their ids as UTF-8 / raw /
        16-byte UUID bytes, concatenated, with offsets."""
        if not self.mapped:
            return {}
        ids = np.flatnonzero(present(self.keys)).astype(np.int64)
        raw = [_key_bytes(k, self.kind) for k in self.keys[ids]]
        offsets = np.zeros(ids.size + 1, np.int64)
        offsets[1:] = np.cumsum([len(b) for b in raw])
        data = np.frombuffer(b"".join(raw), dtype=np.uint8)
        return {"item_key_ids": ids, "item_key_offsets": offsets, "item_key_bytes": data.copy()}

    @classmethod
    def from_state(cls, kind: Any, arrays: Dict[str, np.ndarray], where: str) -> "ItemKeys":
        """The ItemKeys `state` wrote (ValueError naming `where` for anything inconsistent)."""
        if kind is None or kind == "int":
            return cls(kind)
        if kind not in KEY_KINDS:
            raise ValueError(f"{where}: unknown item id kind {kind!r}")
        ids, offsets, data = (arrays.get(n) for n in KEY_ARRAYS)
        if ids is None or offsets is None or data is None:
            raise ValueError(f"{where}: {kind} item ids but no id table ({', '.join(KEY_ARRAYS)})")
        if ids.dtype != np.int64 or offsets.dtype != np.int64 or data.dtype != np.uint8:
            raise ValueError(f"{where}: the id table has the wrong dtypes")
        if ids.ndim != 1 or offsets.shape != (ids.size + 1,) or data.ndim != 1:
            raise ValueError(f"{where}: the id table has inconsistent shapes")
        if ids.size and (ids.min() < 0 or np.any(np.diff(ids) <= 0)):
            raise ValueError(f"{where}: item_key_ids must be distinct, ascending and >= 0")
        if offsets[0] != 0 or offsets[-1] != data.size or np.any(np.diff(offsets) < 0):
            raise ValueError(f"{where}: item_key_offsets do not cover item_key_bytes")
        size = int(ids[-1]) + 1 if ids.size else 0
        table = np.full(size, None, dtype=object)
        blob = data.tobytes()
        try:
            table[ids] = [_key_value(blob[a:b], kind) for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{where}: corrupt {kind} item id ({e})") from None
        lookup = dict(zip(table[ids].tolist(), ids.tolist()))
        if len(lookup) != ids.size:
            raise ValueError(f"{where}: duplicate item ids in the id table")
        free = np.ones(size, bool)
        free[ids] = False
        return cls(kind, table, lookup, np.flatnonzero(free).astype(np.int64))


def _key_bytes(key: Any, kind: Optional[str]) -> bytes:
    if kind == "str":
        return str(key).encode("utf-8")
    if kind == "uuid":
        return bytes(key.bytes)
    return bytes(key)


def _key_value(raw: bytes, kind: str) -> Any:
    if kind == "str":
        return raw.decode("utf-8")
    if kind == "uuid":
        return uuid.UUID(bytes=raw)
    return raw
