"""The searches over one consistent snapshot of a faiss-backed catalogue.

- single: one index; exact results straight from IndexFlatIP, ANN candidates re-scored exactly;
- segmented: per-segment top-K' lists merged and re-scored, with the threshold certificate
  (DESIGN.md §5);
- restricted: an exact scan of the allowed ids.
Every path ends in `top_k`, which masks removed / excluded candidates and cuts the top k by the
exact inner product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .base import IdFilter, filter_of
from .catalogue import Catalogue
from .faiss_segment import Segment

Result = Tuple[np.ndarray, np.ndarray, np.ndarray]  # ids (m, k), inner products (m, k), certified (m,)


@dataclass(frozen=True)
class Snapshot:
    """What one search reads: never changed once published (a writer publishes a new one)."""

    catalogue: Catalogue
    segments: Tuple[Segment, ...]
    vectors: np.ndarray  # float32 (rows, dim) exact item vectors by row
    exact: bool


@dataclass(frozen=True)
class Settings:
    """One search's parameters (the index's own, or overridden for one call): ANN candidates
    re-scored exactly (None: max(4k, 100); never fewer than k), HNSW ef_search, IVF nprobe."""

    candidates: Optional[int]
    ef_search: int
    nprobe: Optional[int]  # None: the index kind's default (Segment.nprobe)


class Exclusion:
    """Excluded (query, row) pairs as sorted keys query * n_rows + row: the one place that
    arithmetic lives. `most` is the largest number excluded for one query (the over-fetch)."""

    def __init__(self, keys: np.ndarray, n_rows: int, most: int) -> None:
        self.keys, self.n_rows, self.most = keys, max(n_rows, 1), most

    @classmethod
    def of(cls, exclude: IdFilter, m: int, catalogue: Catalogue) -> Optional["Exclusion"]:
        if exclude is None:
            return None
        n = max(catalogue.n_rows, 1)
        if isinstance(exclude, np.ndarray):  # the same ids for every query
            rows = catalogue.rows_of(exclude)
            rows = np.unique(rows[rows >= 0])
            keys = (np.arange(m, dtype=np.int64)[:, None] * n + rows[None, :]).ravel()
            return cls(keys, n, int(rows.size)) if keys.size else None
        given = [e for e in exclude if e is not None and e.size]  # one lookup for all queries
        if not given:
            return None
        sizes = [0 if e is None else e.size for e in exclude]
        query = np.repeat(np.arange(len(exclude), dtype=np.int64), sizes)
        rows = catalogue.rows_of(np.concatenate(given))
        found = rows >= 0
        keys = np.sort(query[found] * n + rows[found])
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if keys.size else keys  # distinct
        most = int(np.bincount(keys // n).max()) if keys.size else 0
        return cls(keys, n, most) if keys.size else None

    def subset(self, queries: np.ndarray) -> Optional["Exclusion"]:
        """The exclusion of the listed queries, renumbered 0, 1, ... in that order."""
        qi, rows = np.divmod(self.keys, self.n_rows)
        remap = np.full(int(qi.max()) + 1 if qi.size else 0, -1, np.int64)
        sel = queries[queries < remap.size]
        remap[sel] = np.flatnonzero(queries < remap.size)
        keep = remap[qi] >= 0
        keys = np.sort(remap[qi[keep]] * self.n_rows + rows[keep])
        return Exclusion(keys, self.n_rows, self.most) if keys.size else None

    def mask(self, rows: np.ndarray) -> np.ndarray:
        """bool (m, c): candidate rows[i, j] is excluded for query i."""
        keys = np.arange(rows.shape[0], dtype=np.int64)[:, None] * self.n_rows + rows
        pos = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        return self.keys[pos] == keys  # self.keys is sorted and never empty


def visible(found: Tuple[np.ndarray, np.ndarray], n_rows: int) -> Tuple[np.ndarray, np.ndarray]:
    """(D, I) with rows beyond the snapshot's catalogue hidden (-1): an ANN index may already hold
    the first slices of an add that is not published yet."""
    D, I = found
    return D, np.where(I < n_rows, I, -1)


def top_k(
    snap: Snapshot, rows: np.ndarray, ip: np.ndarray, k: int, excl: Optional[Exclusion]
) -> Tuple[np.ndarray, np.ndarray]:
    """Mask invalid / removed / excluded candidates, cut the top k by exact inner product:
    (ids int64 (m, k) with -1 padding, inner products float32 (m, k) with -inf padding)."""
    row_ids = snap.catalogue.row_ids
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    if row_ids.size:
        valid &= row_ids[np.minimum(safe, row_ids.size - 1)] >= 0
    else:
        valid[:] = False
    if excl is not None:
        valid &= ~excl.mask(safe)
    ip = np.where(valid, ip, -np.inf).astype(np.float32)
    kk = min(k, ip.shape[1])
    order = np.argsort(-ip, axis=1, kind="stable")[:, :kk]
    top_rows = np.take_along_axis(safe, order, axis=1)
    top_ip = np.take_along_axis(ip, order, axis=1)
    ids = np.where(np.isfinite(top_ip), row_ids[top_rows] if row_ids.size else -1, -1)
    if kk < k:  # fewer candidates than k
        ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
        top_ip = np.pad(top_ip, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return ids.astype(np.int64), top_ip


def rescore(snap: Snapshot, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact <q, p> for candidate rows (m, c), chunked to bound memory."""
    out = np.empty(rows.shape, dtype=np.float32)
    safe = np.where(rows >= 0, rows, 0)
    step = max(1, (1 << 22) // max(rows.shape[1] * q.shape[1], 1))
    for s in range(0, rows.shape[0], step):
        out[s : s + step] = np.einsum("md,mcd->mc", q[s : s + step], snap.vectors[safe[s : s + step]])
    return out


def search(
    snap: Snapshot, q: np.ndarray, k: int, exclude: IdFilter, restrict: IdFilter, certify: bool, settings: Settings
) -> Result:
    m = q.shape[0]
    if len(snap.catalogue) == 0:
        return np.full((m, k), -1, np.int64), np.full((m, k), -np.inf, np.float32), np.ones(m, bool)
    excl = Exclusion.of(exclude, m, snap.catalogue)
    if restrict is not None:
        return search_restricted(snap, q, k, restrict, excl, settings)
    if len(snap.segments) == 1:
        return search_single(snap, q, k, excl, settings)
    return search_segmented(snap, q, k, excl, certify, settings)


def search_single(snap: Snapshot, q: np.ndarray, k: int, excl: Optional[Exclusion], settings: Settings) -> Result:
    m = q.shape[0]
    n_rows = snap.catalogue.n_rows
    extra = (excl.most if excl is not None else 0) + snap.catalogue.dead
    seg = snap.segments[0]
    if snap.exact:
        D, I = visible(seg.search(q, max(min(k + extra, n_rows), 1), settings.ef_search, settings.nprobe), n_rows)
        ids, ip = top_k(snap, I, D, k, excl)  # flat inner products are exact
        return ids, ip, np.ones(m, bool)
    # never fewer candidates than k; tiered-ivf scans its lists with the exact inner product
    cand = max(settings.candidates or (k if seg.tiered else max(4 * k, 100)), k)
    kk = max(min(cand + extra, n_rows), 1)
    _, I = visible(seg.search(q, kk, settings.ef_search, settings.nprobe), n_rows)
    ids, ip = top_k(snap, I, rescore(snap, q, I), k, excl)
    return ids, ip, np.zeros(m, bool)


def search_segmented(
    snap: Snapshot, q: np.ndarray, k: int, excl: Optional[Exclusion], certify: bool, settings: Settings
) -> Result:
    """Per-segment top-K' lists, merged and re-scored exactly. An item returned by no segment
    has <q, p> <= Σ_s τ_s (τ_s = the lowest partial score segment s returned), so the result is
    certified exact when the k-th exact score reaches that bound (exact segment indexes only)."""
    m = q.shape[0]
    n_rows = snap.catalogue.n_rows
    extra = (excl.most if excl is not None else 0) + snap.catalogue.dead
    kprime = np.full(m, max(min(k + extra, n_rows), 1), dtype=np.int64)
    ids = np.full((m, k), -1, np.int64)
    ips = np.full((m, k), -np.inf, np.float32)
    cert = np.zeros(m, bool)
    todo = np.arange(m)
    while todo.size:
        kk = int(kprime[todo].max())
        qs = q[todo]
        cand: List[np.ndarray] = []
        bound = np.zeros(todo.size)
        everything = np.zeros(todo.size, bool)  # some segment returned every item it holds
        for seg in snap.segments:
            D, I = visible(seg.search(qs, kk, settings.ef_search, settings.nprobe), n_rows)
            cand.append(I)
            full = (I >= 0).all(axis=1)
            everything |= ~full
            bound += np.where(full, D[:, -1], 0.0)  # τ_s: the lowest partial score returned
        rows = np.sort(np.concatenate(cand, axis=1), axis=1)
        dup = np.zeros_like(rows, dtype=bool)  # de-duplicate candidates per query
        dup[:, 1:] = rows[:, 1:] == rows[:, :-1]
        rows = np.where(dup | (rows < 0), -1, rows)
        sub = excl.subset(todo) if excl is not None else None
        t_ids, t_ip = top_k(snap, rows, rescore(snap, qs, rows), k, sub)
        ids[todo], ips[todo] = t_ids, t_ip
        seen_all = everything | (kk >= n_rows)
        if snap.exact:
            kth = t_ip[:, k - 1].astype(np.float64)
            ok = seen_all | (np.isfinite(kth) & (kth >= bound))
        else:
            ok = np.zeros(todo.size, bool)  # ANN segments: no certificate
        cert[todo] = ok
        if not certify or not snap.exact:
            break
        todo = todo[~ok]
        kprime[todo] = np.minimum(kprime[todo] * 2, n_rows)
    return ids, ips, cert


def search_restricted(
    snap: Snapshot, q: np.ndarray, k: int, restrict: IdFilter, excl: Optional[Exclusion], settings: Settings
) -> Result:
    """Only the allowed ids, by an exact scan; a None entry leaves that query unrestricted."""
    m = q.shape[0]
    ids = np.full((m, k), -1, np.int64)
    ips = np.full((m, k), -np.inf, np.float32)
    free = np.array([filter_of(restrict, i) is None for i in range(m)], dtype=bool)
    if free.any():
        sel = np.flatnonzero(free)
        sub = excl.subset(sel) if excl is not None else None
        if len(snap.segments) == 1:
            ids[free], ips[free], _ = search_single(snap, q[free], k, sub, settings)
        else:
            ids[free], ips[free], _ = search_segmented(snap, q[free], k, sub, False, settings)
        if free.all():
            return ids, ips, np.ones(m, bool)
    if isinstance(restrict, np.ndarray):  # one allowed set for every query: one product
        rows = snap.catalogue.rows_of(restrict)
        rows = np.unique(rows[rows >= 0])
        cand = np.ascontiguousarray(np.broadcast_to(rows, (m, rows.size)))
        ip = q @ snap.vectors[rows].T if rows.size else np.zeros((m, 0), np.float32)
        got_ids, got_ip = top_k(snap, cand, ip, k, excl)
        return got_ids, got_ip, np.ones(m, bool)
    for i in np.flatnonzero(~free):
        r = filter_of(restrict, int(i))
        rows = snap.catalogue.rows_of(r) if r is not None else np.zeros(0, np.int64)
        rows = np.unique(rows[rows >= 0])
        if rows.size == 0:  # empty: nothing qualifies
            continue
        ip = (snap.vectors[rows] @ q[i])[None, :]
        sub = excl.subset(np.array([i])) if excl is not None else None
        got_ids, got_ip = top_k(snap, rows[None, :], ip, k, sub)
        ids[i], ips[i] = got_ids[0], got_ip[0]
    return ids, ips, np.ones(m, bool)
