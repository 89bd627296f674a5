"""The joined row: query row ⊕ item row (or user ⊕ context ⊕ item) as one Dataset row.

``join_rows`` is the one place such rows are assembled in Python (Interactions.materialize, the
synthetic click log, the CLI's exactness check); training on Interactions assembles them in C++.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from .dataset import Dataset


def join_rows(
    parts: Sequence[Tuple[Dataset, np.ndarray]],
    labels: Optional[np.ndarray] = None,
    *,
    n_features: Optional[int] = None,
    n_fields: Optional[int] = None,
) -> Dataset:
    """Row r of the result is ``parts[0][0]`` row ``parts[0][1][r]`` followed by ``parts[1][0]``
    row ``parts[1][1][r]``, and so on: the nodes of each part's row, in order, concatenated.

    Every index array has the same length (the number of joined rows). `n_features` / `n_fields`
    default to the largest of the parts'. Vectorised: one gather per part, no Python loop per row.
    """
    if not parts:
        raise ValueError("join_rows needs at least one part")
    index = [np.asarray(rows, dtype=np.int64).reshape(-1) for _, rows in parts]
    n = index[0].size
    if any(rows.size != n for rows in index):
        raise ValueError(f"join_rows: the parts' row index arrays differ in length ({[r.size for r in index]})")
    lens = [np.diff(ds.indptr)[rows] for (ds, _), rows in zip(parts, index)]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.sum(lens, axis=0) if n else np.zeros(0, np.int64), out=indptr[1:])
    nnz = int(indptr[-1])
    fields = np.empty(nnz, np.int32)
    feats = np.empty(nnz, np.int32)
    vals = np.empty(nnz, np.float32)
    at = indptr[:-1].copy()
    for (ds, _), rows, ln in zip(parts, index, lens):
        within = np.arange(int(ln.sum())) - np.repeat(np.cumsum(ln) - ln, ln)
        dst = np.repeat(at, ln) + within
        src = np.repeat(ds.indptr[rows], ln) + within
        fields[dst], feats[dst], vals[dst] = ds.fields[src], ds.features[src], ds.values_or_ones()[src]
        at += ln
    if n_features is None:
        n_features = max(ds.n_features for ds, _ in parts)
    if n_fields is None:
        n_fields = max(ds.n_fields for ds, _ in parts)
    return Dataset(indptr, fields, feats, vals, labels, n_features=n_features, n_fields=n_fields)
