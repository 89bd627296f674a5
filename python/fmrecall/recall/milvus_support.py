"""What the Milvus adapter needs around pymilvus: limits, parameter checks, filter
expressions, hit decoding, Milvus Lite workarounds, and the add log used to roll an add back."""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Tuple

import numpy as np

from .._limits import check_int

ID_FIELD = "id"
VECTOR_FIELD = "vector"
MAX_TOPK = 16384  # Milvus's limit on topk / limit (and on query results per request)
MAX_DIM = 32768  # Milvus's limit on a vector's dimension
INSTALL_HINT = 'pip install "fmrecall[milvus]"'
TOKEN_ENV = "FMRECALL_MILVUS_TOKEN"

# index type -> {parameter: (lo, hi, used at "build" or "search")}
_PARAMS: Dict[str, Dict[str, Tuple[int, int, str]]] = {
    "HNSW": {"M": (2, 2048, "build"), "efConstruction": (1, 1 << 31, "build"), "ef": (1, 1 << 31, "search")},
    "IVF_FLAT": {"nlist": (1, 65536, "build"), "nprobe": (1, 65536, "search")},
    "FLAT": {},
    "AUTOINDEX": {},
}
_METRICS = ("IP",)
_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_REMOTE = ("http://", "https://", "tcp://", "unix:", "grpc://")


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"fmrecall.MilvusIndex needs pymilvus (and milvus-lite for a local .db file): {INSTALL_HINT}"
        ) from e
    return pymilvus


def _check_params(index_type: str, params: Any) -> Dict[str, int]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict of {index_type} parameters, got {type(params).__name__}")
    allowed = _PARAMS[index_type]
    out = {}
    for key, value in params.items():
        if key not in allowed:
            names = ", ".join(allowed) or "none"
            raise ValueError(f"params[{key!r}] is not a {index_type} parameter (allowed: {names})")
        lo, hi, _ = allowed[key]
        out[str(key)] = int(check_int(value, f"params[{key!r}]", lo, hi))  # type: ignore[arg-type]
    return out


def _id_list(ids: np.ndarray) -> str:
    return "[" + ",".join(map(str, ids.tolist())) + "]"


class RollbackError(Exception):
    """An add failed and undoing it failed too (not a RuntimeError: the Recaller reports those as
    faiss errors)."""


class _AddLog:
    """What a running add has done: rows sent so far, and the vectors it replaced."""

    def __init__(self) -> None:
        self.attempted = 0
        self.fresh = False
        self.old_ids: List[np.ndarray] = []
        self.old_vecs: List[np.ndarray] = []


def _lite_engine_collection(uri: str, collection: str) -> Any:
    """Milvus Lite's own collection object of a .db file this process serves (None if unknown):
    the only way to wait for its background index build (private to milvus-lite; best effort)."""
    try:
        from milvus_lite.server_manager import server_manager_instance

        entry = server_manager_instance._servers.get(os.path.abspath(uri))
        return None if entry is None else entry[1].get_collection(collection)
    except Exception:
        return None


def _hit_arrays(hits: Any, dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """(ids int64, vectors float32 (n, dim)) of one query's hits: read straight from the response's
    columnar vector data when pymilvus exposes it, else from the hit dicts."""
    found = np.asarray(list(hits.ids) if hasattr(hits, "ids") else [h["id"] for h in hits], np.int64)
    n = found.size
    if n == 0:
        return found, np.zeros((0, dim), np.float32)
    lazy, start = getattr(hits, "lazy_field_data", None), getattr(hits, "start", None)
    if lazy is not None and isinstance(start, int):
        for fd in lazy:
            if fd.field_name == VECTOR_FIELD and fd.vectors.dim == dim and not list(getattr(fd, "valid_data", [])):
                data = fd.vectors.float_vector.data
                if len(data) >= (start + n) * dim:
                    return found, np.asarray(data[start * dim : (start + n) * dim], np.float32).reshape(n, dim)
    vecs = np.asarray([h["entity"][VECTOR_FIELD] for h in hits], np.float32)
    return found, vecs.reshape(n, dim)
