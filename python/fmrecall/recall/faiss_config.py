"""faiss's process-wide settings, set once and explicitly; the per-call thread count.

fmrecall never changes a faiss global inside a search. The BLAS thresholds below are applied once
per process, by the first faiss-backed Recaller, unless the application called `configure_faiss`
first (then its choice stands). The thread count of a call is OpenMP's per-thread setting of the
calling thread (``omp_set_num_threads`` changes only the calling thread's value), restored after
the call, so concurrent searches with different `threads` do not interfere.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, Iterator, Mapping, Optional

import faiss as _faiss

faiss: Any = _faiss  # faiss's SWIG stubs are incomplete: typed as Any here

# Exact (IndexFlatIP) batched search runs at the sgemm rate only once faiss switches to BLAS; by
# default it does so for nq * d >= 128000 (a few hundred queries at d = 300). Measured on 2 cores
# (bench/test_recall_exact.py) BLAS wins from ~20 queries up, with these block sizes.
EXACT_BLAS: Dict[str, int] = {
    "distance_compute_blas_threshold": 20 * 64,
    "distance_compute_blas_query_bs": 4096,
    "distance_compute_blas_database_bs": 16384,
}

_lock = threading.Lock()
_configured = False


def configure_faiss(blas: Optional[Mapping[str, int]] = None) -> None:
    """Set faiss's process-wide BLAS thresholds once (default: `EXACT_BLAS`, tuned for exact
    batched search). Call it at start-up, before searches run; fmrecall itself calls it (with the
    defaults) only if the application has not. ``configure_faiss({})`` keeps faiss's own values."""
    values = dict(EXACT_BLAS if blas is None else blas)
    for name, value in values.items():
        if name not in EXACT_BLAS:
            raise ValueError(f"unknown faiss BLAS setting {name!r}; known: {sorted(EXACT_BLAS)}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"faiss setting {name} must be a positive integer, got {value!r}")
    with _lock:
        _apply(values)


def _apply(values: Mapping[str, int]) -> None:
    global _configured
    for name, value in values.items():
        setattr(faiss.cvar, name, value)
    _configured = True


def ensure_configured() -> None:
    """Apply the default settings once per process, unless `configure_faiss` ran already."""
    with _lock:
        if not _configured:
            _apply(EXACT_BLAS)


@contextlib.contextmanager
def faiss_threads(threads: int) -> Iterator[None]:
    """Run faiss calls of this thread on `threads` OpenMP threads (0 = faiss's default)."""
    if threads <= 0:
        yield
        return
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)
