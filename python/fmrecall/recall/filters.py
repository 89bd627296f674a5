"""`exclude` / `restrict` in the forms callers hold them, as one `IdFilter` of internal ids.

With m query rows, a filter is
- None: no filter;
- one flat collection of item ids for every query: a 1-d array, a list / tuple / set of ids, a
  pandas Series or Index, a pyarrow Array;
- one entry per query: a list / tuple whose entries are collections of ids (set, list, tuple,
  array, Series, ...) or None (no filter for that query), or a 2-d array (row i = query i);
- a scipy sparse matrix (m, n_items), implicit-style: the columns of row i's non-zero entries are
  query i's ids (integer item ids only).
-1 / None inside an entry (the padding of a SearchResult) and ids not indexed match nothing.
An empty entry excludes nothing; as a restriction it leaves nothing to rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, List, Optional

import numpy as np

from .base import IdFilter
from .catalogue import ItemKeys, key_kind


def is_sparse(value: Any) -> bool:
    """A scipy sparse matrix or array (scipy is imported only by whoever made it)."""
    return type(value).__module__.startswith("scipy.sparse") and hasattr(value, "tocsr")


def parse_filter(value: Any, m: int, name: str, keys: ItemKeys) -> IdFilter:
    """`value` (see the module docstring) as internal int64 ids: one array for every query, or one
    entry per query. ValueError naming `name` and the query index for a wrong length or type."""
    if value is None:
        return None
    if is_sparse(value):
        return sparse_rows(value, m, name, keys)
    if isinstance(value, Mapping) or hasattr(value, "columns") or key_kind(value) is not None:
        raise ValueError(
            f"{name} must be a collection of item ids (for every query) or one collection per query, "
            f"got {type(value).__name__} {value!r:.60}"
        )
    if isinstance(value, np.ndarray) and value.ndim != 1:
        if value.ndim != 2:
            raise ValueError(f"{name} as an array must be 1-d (ids for every query) or 2-d (a row per query)")
        entries: List[Any] = list(value)
    elif isinstance(value, (np.ndarray, set, frozenset)) or hasattr(value, "__array__"):
        return _internal(keys.parse(value, name, missing_ok=True), keys)
    else:
        try:
            entries = list(value)
        except TypeError:
            raise ValueError(
                f"{name} must be a collection of item ids (for every query) or one collection per query, "
                f"got {type(value).__name__}"
            ) from None
        if entries and all(key_kind(e) is not None for e in entries):  # one flat collection for all
            return _internal(keys.parse(value, name), keys)
    if len(entries) != m:
        raise ValueError(
            f"{name} has {len(entries)} entries for {m} queries: give one entry per query (a collection "
            f"of ids, or None: no filter for that query) or one flat collection of ids for all queries"
        )
    out: List[Optional[np.ndarray]] = []
    for i, e in enumerate(entries):
        if e is None:
            out.append(None)
            continue
        if isinstance(e, Mapping) or key_kind(e) is not None:
            raise ValueError(
                f"{name}[{i}] is {e!r:.60} ({type(e).__name__}): with one entry per query, each entry is "
                f"a collection of ids or None"
            )
        out.append(_internal(keys.parse(e, f"{name}[{i}]", missing_ok=True), keys))
    return out


def sparse_rows(value: Any, m: int, name: str, keys: ItemKeys) -> List[Optional[np.ndarray]]:
    """Row i's non-zero columns as query i's ids (an implicit-style user × item matrix)."""
    if keys.mapped:
        raise ValueError(
            f"{name} as a sparse matrix gives item ids as column indices (integers), but this "
            f"Recaller's item ids are {keys.kind} ids: give one collection of ids per query"
        )
    if len(value.shape) != 2 or value.shape[0] != m:
        raise ValueError(f"{name} as a sparse matrix must have one row per query ({m}), got shape {value.shape}")
    csr = value.tocsr()
    counts = np.diff(csr.indptr)
    row = np.repeat(np.arange(m, dtype=np.int64), counts)
    nonzero = csr.data != 0
    cols = csr.indices[nonzero].astype(np.int64)
    bounds = np.searchsorted(row[nonzero], np.arange(1, m))
    return list(np.split(cols, bounds))


def _internal(parsed: np.ndarray, keys: ItemKeys) -> np.ndarray:
    """Internal int64 ids of parsed ids (ids not indexed dropped for mapped kinds)."""
    ids = keys.ids_of(parsed)
    return ids[ids >= 0] if keys.mapped or ids is not parsed else ids
