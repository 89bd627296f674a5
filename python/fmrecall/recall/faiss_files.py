"""A saved faiss index: how a member is written and read back, and the checks a loaded one passes."""

from __future__ import annotations

from typing import Any, Callable, Optional

import faiss as _faiss
import numpy as np

from .faiss_segment import Segment

faiss: Any = _faiss  # faiss's SWIG stubs are incomplete: typed as Any here

_INDEX_CLASS = {
    "exact": faiss.IndexFlatIP,
    "hnsw": faiss.IndexHNSWFlat,
    "hnsw-ip": faiss.IndexHNSWFlat,
    "ivf": faiss.IndexIVFFlat,
    "tiered-ivf": faiss.IndexIVFFlat,
}


def _writer(index: faiss.Index) -> Callable[[str], None]:
    return lambda path: faiss.write_index(index, path)


def _read_index(source: Any, where: str, name: str) -> Any:
    """A faiss index from a path or an open binary file (read through faiss's callback reader)."""
    try:
        if isinstance(source, str):
            return faiss.read_index(source)
        return faiss.read_index(faiss.PyCallbackIOReader(source.read))
    except RuntimeError as e:
        raise ValueError(f"{where}: {name} is not a faiss index ({str(e).strip().splitlines()[-1]})") from None


def _check_ids(ids: Optional[np.ndarray], where: str) -> np.ndarray:
    if ids is None or ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"{where}: ids must be a 1-d integer array")
    ids = ids.astype(np.int64)
    if ids.size and ids.min() < -1:
        raise ValueError(f"{where}: ids must be >= 0 (or -1 for a removed row), found {int(ids.min())}")
    live = ids[ids >= 0]
    if np.unique(live).size != live.size:
        raise ValueError(f"{where}: ids are not unique")
    return ids


def _check_index(seg: Segment, rows: int, where: str, name: str, kind: str) -> None:
    raw = seg.index
    assert raw is not None
    index = faiss.downcast_index(raw)
    want = _INDEX_CLASS.get(kind)
    if want is not None and not isinstance(index, want):
        raise ValueError(f"{where}: {name} is a {type(index).__name__}, expected {want.__name__} for {kind!r}")
    if kind in ("hnsw", "hnsw-ip", "tiered-ivf"):
        metric = faiss.METRIC_L2 if kind == "hnsw" else faiss.METRIC_INNER_PRODUCT
        if index.metric_type != metric:
            raise ValueError(f"{where}: {name} has the wrong metric for {kind!r}")
    if raw.d != seg.dim:
        raise ValueError(f"{where}: {name} has dimension {raw.d}, expected {seg.dim}")
    if raw.ntotal != rows:
        raise ValueError(f"{where}: {name} holds {raw.ntotal} vectors, the catalogue {rows}")
