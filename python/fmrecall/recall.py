"""One-stage retrieval: item vectors in faiss, one query vector per request, the model's own scores.

Every result is scored exactly (b_q + <q, p>, the model's score on the joined row); approximate
indexes only propose candidates, which are re-scored from the stored float32 item vectors before
the top K is cut, so an ANN index can lose recall but never return a wrong score.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import faiss
import numpy as np

from .dataset import Dataset
from .persist import atomic_write, load_arrays, model_from_arrays, model_to_arrays, save_arrays
from .schema import Schema
from .sides import Sides

RECALLER_FORMAT = "fmrecall.recaller"
RECALLER_VERSION = 1
IdList = Union[None, Sequence[int], np.ndarray]

# Exact (IndexFlatIP) batched search runs at the sgemm rate only once faiss switches to BLAS; by
# default it does so for nq * d >= 128000 (a few hundred queries at d = 300). Measured on 2 cores
# (bench/test_recall.py) BLAS wins from ~20 queries up, with these block sizes.
EXACT_BLAS = {"distance_compute_blas_threshold": 20 * 64,
              "distance_compute_blas_query_bs": 4096,
              "distance_compute_blas_database_bs": 16384}
# Items are vectorised, padded and handed to faiss in slices of this many rows, so adding N items
# holds one copy of their vectors (faiss's) plus a slice, not three full copies.
ADD_CHUNK = 1 << 16
# k-means of an IVF index trains on at most this many points per list (faiss's own cap).
IVF_TRAIN_PER_LIST = 256


@contextlib.contextmanager
def faiss_settings(threads: int = 0, blas: Optional[Dict[str, int]] = None) -> Iterator[None]:
    """Temporarily set faiss's thread count and BLAS thresholds (process-wide faiss globals)."""
    old_threads = faiss.omp_get_max_threads()
    old_blas = {k: getattr(faiss.cvar, k) for k in (blas or {})}
    try:
        if threads > 0:
            faiss.omp_set_num_threads(threads)
        for k, v in (blas or {}).items():
            setattr(faiss.cvar, k, v)
        yield
    finally:
        faiss.omp_set_num_threads(old_threads)
        for k, v in old_blas.items():
            setattr(faiss.cvar, k, v)


@dataclass
class SearchResult:
    """Top-K per query. Unpacks as ``ids, scores = result``.

    ids : int64 (m, k), -1 where fewer than k items qualify
    scores : float32 (m, k), the model's exact scores b_q + <q, p> (-inf for padding)
    certified : bool (m,), True when the top k is provably the exact top k (exact index, or a
        segmented exact search whose threshold certificate holds); False for ANN indexes
    loss : the model's loss ("logistic" gives probabilities via ``proba``)
    """

    ids: np.ndarray
    scores: np.ndarray
    certified: np.ndarray
    loss: str = "logistic"

    def __iter__(self):
        return iter((self.ids, self.scores))

    @property
    def proba(self) -> np.ndarray:
        """σ(score) for the logistic loss: the model's click / interaction probability."""
        if self.loss != "logistic":
            raise ValueError(f"probabilities need the logistic loss, this model uses {self.loss!r}")
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-self.scores.astype(np.float64)))).astype(np.float32)


def _pad_width(d: int, pad: bool) -> int:
    """Dimension rounded up to a multiple of 16 (faiss's SIMD width) when that adds < 25%."""
    if not pad:
        return d
    dp = -(-d // 16) * 16
    return dp if dp <= 1.25 * d else d


class _Segment:
    """One faiss index over a contiguous range [lo, hi) of the q / p coordinates."""

    def __init__(self, kind: str, lo: int, hi: int, params: Dict[str, Any]) -> None:
        self.kind, self.lo, self.hi = kind, lo, hi
        self.params = params
        self.augment = kind == "hnsw"              # L2 augmentation for inner product (Bachrach et al.)
        self.dim = _pad_width(hi - lo + (1 if self.augment else 0), params["pad"])
        self.max_norm = 0.0
        self.index: Optional[faiss.Index] = None

    # -------- building
    def _new_index(self, n_hint: int) -> faiss.Index:
        p = self.params
        if self.kind == "exact":
            return faiss.IndexFlatIP(self.dim)
        if self.kind in ("hnsw", "hnsw-ip"):  # L2 on augmented vectors, or the raw inner product
            metric = faiss.METRIC_L2 if self.augment else faiss.METRIC_INNER_PRODUCT
            index = faiss.IndexHNSWFlat(self.dim, int(p["hnsw_m"]), metric)
            index.hnsw.efConstruction = int(p["ef_construction"])
            return index
        if self.kind == "ivf":
            nlist = p["nlist"] or max(1, min(int(4 * np.sqrt(max(n_hint, 1))), n_hint // 39 or 1))
            quantizer = faiss.IndexFlatIP(self.dim)
            return faiss.IndexIVFFlat(quantizer, self.dim, int(nlist), faiss.METRIC_INNER_PRODUCT)
        index = faiss.index_factory(self.dim, self.kind, faiss.METRIC_INNER_PRODUCT)
        hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
        if hnsw is not None:
            hnsw.efConstruction = int(p["ef_construction"])
        return index

    def _rows(self, vecs: np.ndarray) -> np.ndarray:
        """Item rows for the index: the segment's columns, augmented / padded."""
        part = vecs[:, self.lo:self.hi]
        out = np.zeros((vecs.shape[0], self.dim), dtype=np.float32)
        out[:, :part.shape[1]] = part
        if self.augment:
            sq = np.einsum("ij,ij->i", part, part, dtype=np.float64)
            out[:, part.shape[1]] = np.sqrt(np.maximum(self.max_norm ** 2 - sq, 0.0))
        return out

    def queries(self, q: np.ndarray) -> np.ndarray:
        part = q[:, self.lo:self.hi]
        if part.shape[1] == self.dim:
            return np.ascontiguousarray(part, dtype=np.float32)
        out = np.zeros((q.shape[0], self.dim), dtype=np.float32)
        out[:, :part.shape[1]] = part  # the augmented coordinate of a query is 0
        return out

    def needs_rebuild(self, vecs: np.ndarray) -> bool:
        if not self.augment or vecs.shape[0] == 0:
            return False
        part = vecs[:, self.lo:self.hi]
        return float(np.sqrt(np.einsum("ij,ij->i", part, part).max())) > self.max_norm

    def build(self, all_vecs: np.ndarray) -> None:
        """(Re)build from scratch over all stored rows (ids = row numbers)."""
        if self.augment and all_vecs.shape[0]:
            part = all_vecs[:, self.lo:self.hi]
            self.max_norm = 1.2 * float(np.sqrt(np.einsum("ij,ij->i", part, part).max()) or 1.0)
        self.index = self._new_index(all_vecs.shape[0])
        self._add(all_vecs, 0)

    def add(self, new_vecs: np.ndarray, first_row: int) -> None:
        if self.index is None:
            raise RuntimeError("segment not built")
        self._add(new_vecs, first_row)

    def _add(self, vecs: np.ndarray, first_row: int) -> None:
        n = vecs.shape[0]
        if n == 0:
            return
        if not self.index.is_trained:  # on a seeded sample, as faiss's k-means would subsample
            ivf = _ivf(self.index)
            cap = IVF_TRAIN_PER_LIST * ivf.nlist if ivf is not None else n
            sample = np.sort(np.random.default_rng(1234).choice(n, cap, replace=False)) if n > cap else slice(None)
            self.index.train(self._rows(vecs[sample]))
        ivf = _ivf(self.index)
        if ivf is None and self.index.ntotal != first_row:
            raise RuntimeError("index out of step with the stored items")
        for lo in range(0, n, ADD_CHUNK):
            rows = self._rows(vecs[lo:lo + ADD_CHUNK])
            if ivf is not None:
                self.index.add_with_ids(rows, np.arange(first_row + lo, first_row + lo + rows.shape[0], dtype=np.int64))
            else:
                self.index.add(rows)

    def truncate(self, n_rows: int) -> None:
        """Drop the rows added after the first `n_rows` (undo a failed add)."""
        if self.index is not None and self.index.ntotal > n_rows:
            self.index.remove_ids(faiss.IDSelectorRange(n_rows, self.index.ntotal))

    def set_search_params(self, kk: int) -> None:
        p = self.params
        hnsw = getattr(faiss.downcast_index(self.index), "hnsw", None)  # "hnsw" or an HNSW factory string
        if hnsw is not None:  # the graph walk stops after efSearch nodes: never fetch filler
            hnsw.efSearch = max(int(p["ef_search"]), int(kk))
        ivf = _ivf(self.index)
        if ivf is not None:
            ivf.nprobe = int(p["nprobe"])

    def search(self, q: np.ndarray, kk: int) -> Tuple[np.ndarray, np.ndarray]:
        self.set_search_params(kk)
        D, I = self.index.search(self.queries(q), int(kk))
        if self.augment:  # L2 distances -> -inf where nothing was found; scores are recomputed anyway
            D = np.where(I >= 0, -D, -np.inf).astype(np.float32)
        return D, I


def _row_range(ds: Dataset, lo: int, hi: int) -> Dataset:
    """Rows [lo, hi) of `ds` (views of its arrays; the row offsets are rebased)."""
    if lo == 0 and hi >= ds.n_rows:
        return ds
    hi = min(hi, ds.n_rows)
    a, b = int(ds.indptr[lo]), int(ds.indptr[hi])
    view = lambda x: None if x is None else x[a:b]  # noqa: E731
    return Dataset(ds.indptr[lo:hi + 1] - a, ds.fields[a:b], ds.features[a:b], view(ds.values),
                   None if ds.labels is None else ds.labels[lo:hi],
                   n_features=ds.n_features, n_fields=ds.n_fields, source=ds.source)


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError):
        return None


class Recaller:
    """Top-K items for a request, with the model's exact scores.

    Parameters
    ----------
    model : a fitted FM, FFM or HybridFM
    sides : fmrecall.Sides, or a fitted fmrecall.Schema (then items and queries may be given as
        DataFrames / dict rows and are encoded with it); defaults to the model's schema or sides
    index : "exact" (faiss IndexFlatIP, BLAS-tuned), "hnsw" (IndexHNSWFlat on L2-augmented vectors),
        "hnsw-ip" (IndexHNSWFlat on the raw inner product: on learned FM / FFM vectors with
        concentrated norms it recalls more than "hnsw", see bench/results.md),
        "ivf" (IndexIVFFlat, inner product) or any faiss index_factory string (inner product metric)
    segments : split q / p into this many contiguous parts, one index each; candidates are merged and
        re-scored exactly, and exact segment indexes give a per-query exactness certificate
    candidates : candidates fetched per query from an ANN index before exact re-scoring
        (default max(4k, 100))
    hnsw_m, ef_construction, ef_search, nlist, nprobe : index parameters (HNSW searches with
        max(ef_search, candidates): faiss stops its graph walk after ef_search nodes, so a smaller
        value would fill the candidate list with nothing; ef_construction, ef_search and nprobe also
        apply to HNSW / IVF indexes given as factory strings)
    pad : pad vectors to a multiple of 16 floats when that adds < 25% (faiss SIMD width)
    threads : threads for faiss and the vector builders (0 = all)
    """

    def __init__(self, model, sides: Union[Sides, Schema, None] = None, index: str = "exact", *, segments: int = 1,
                 candidates: Optional[int] = None, hnsw_m: int = 32, ef_construction: int = 80,
                 ef_search: int = 128, nlist: Optional[int] = None, nprobe: int = 32, pad: bool = True,
                 threads: int = 0) -> None:
        self.schema: Optional[Schema] = None
        if sides is None:
            sides = getattr(model, "schema_", None) or getattr(model, "sides", None)
        if isinstance(sides, Schema):
            self.schema = sides
            sides = sides.sides
        if sides is None:
            raise ValueError("Recaller needs sides=fmrecall.Sides(user=..., context=..., item=...)")
        if not isinstance(index, str) or not index:
            raise ValueError(f"index must be 'exact', 'hnsw', 'hnsw-ip', 'ivf' or a faiss factory string, got {index!r}")
        if not isinstance(segments, (int, np.integer)) or segments < 1:
            raise ValueError(f"segments must be a positive integer, got {segments!r}")
        self.model = model
        self.sides = sides
        self.split = model.split(sides)
        self.index_kind = index
        self.segments = int(segments)
        self.candidates = candidates
        self.threads = int(threads)
        self.params = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search,
                       "nlist": nlist, "nprobe": nprobe, "pad": bool(pad)}
        d = self.split.dim
        if self.segments > d:
            raise ValueError(f"segments={segments} exceeds the vector dimension {d}")
        if index not in ("exact", "hnsw", "hnsw-ip", "ivf"):
            try:  # validate the factory string now, not at the first add
                faiss.index_factory(16, index, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as e:
                raise ValueError(f"bad faiss index_factory string {index!r}: {e}") from None
        bounds = np.linspace(0, d, self.segments + 1).round().astype(int)
        self._segs = [_Segment(index, int(bounds[s]), int(bounds[s + 1]), self.params)
                      for s in range(self.segments)]
        # Exact item vectors, row = position. A single exact segment reads them from faiss's own
        # flat storage (no second copy); other indexes keep this float32 copy for re-scoring.
        self._own = not (self.exact and self.segments == 1)
        self._vecs = np.zeros((0, d), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)            # item id per row, -1 = removed
        self._dead = 0                                     # removed rows still in the indexes
        self._lookup: Optional[Tuple[np.ndarray, np.ndarray]] = None

    # ------------------------------------------------------------------ items
    def _vectors_view(self) -> np.ndarray:
        """float32 (rows, dim) exact item vectors by row. For "exact" a view into faiss's own storage,
        valid only until the index changes: use within one call, never hand it out."""
        if self._own:
            return self._vecs
        index = self._segs[0].index
        if index is None or index.ntotal == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        flat = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d)
        return flat.reshape(index.ntotal, index.d)[:, :self.dim]

    @property
    def vectors(self) -> np.ndarray:
        """A copy of the exact item vectors, float32 (rows, dim), row = insertion position (removed
        items' rows included until compaction; see `ids` for the live ones)."""
        return np.array(self._vectors_view(), dtype=np.float32, copy=True)

    @property
    def dim(self) -> int:
        return self.split.dim

    @property
    def exact(self) -> bool:
        return self.index_kind == "exact"

    def __len__(self) -> int:
        return int(self._ids.size - self._dead)

    @property
    def ids(self) -> np.ndarray:
        """int64 ids of the indexed items, in insertion order."""
        return self._ids[self._ids >= 0]

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of the given ids (-1 for ids not indexed)."""
        if self._lookup is None:
            alive = np.flatnonzero(self._ids >= 0)
            order = np.argsort(self._ids[alive], kind="stable")
            self._lookup = (self._ids[alive][order], alive[order])
        keys, rows = self._lookup
        ids = np.asarray(ids, dtype=np.int64).ravel()
        pos = np.searchsorted(keys, ids)
        pos_c = np.minimum(pos, max(keys.size - 1, 0))
        found = (pos < keys.size) & (keys[pos_c] == ids) if keys.size else np.zeros(ids.size, bool)
        return np.where(found, rows[pos_c] if keys.size else -1, -1)

    def _encode(self, data, side: str) -> Dataset:
        if isinstance(data, Dataset):
            return data
        if self.schema is None:
            raise ValueError("give a Dataset, or build the Recaller with a Schema to pass DataFrames")
        return self.schema.transform(data, side=side)

    def add_items(self, items, ids: Union[Sequence[int], str]) -> "Recaller":
        """Index item rows under int64 `ids` (one per row). `items` is a Dataset of item rows, or a
        DataFrame / dict rows encoded with the schema (then `ids` may name its id column). Ids
        already indexed are replaced, their old vectors dropped once the new ones are in; a failed
        call leaves the Recaller as it was. Returns self."""
        if isinstance(ids, str):
            if isinstance(items, Dataset):
                raise ValueError("ids as a column name needs items as a DataFrame")
            from .schema import _frame
            items = _frame(items)
            ids = items[ids].to_numpy()
        item_ds = self._encode(items, "item")
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size != item_ds.n_rows:
            raise ValueError(f"ids must be 1-d with one id per item row ({item_ds.n_rows}), got shape {ids.shape}")
        if ids.size and ids.dtype.kind not in "iu":
            raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        if ids.size and ids.min() < 0:
            raise ValueError(f"ids must be >= 0, got {int(ids.min())}")
        uniq, counts = np.unique(ids, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"duplicate id {int(uniq[counts > 1][0])} in one add_items call")
        self.split._check_side(item_ds, want_item=True)
        # Own copy: all vectors at once (they are kept). Exact: built and added slice by slice,
        # faiss's storage being the only full copy.
        vecs = self.split.item_vectors(item_ds) if self._own else None
        replaced = self._rows_of(ids)  # rows of ids indexed already: dropped once the add succeeded
        replaced = replaced[replaced >= 0]
        first = self._ids.size
        old_vecs, old_ids = self._vecs, self._ids
        if self._own:
            self._vecs = np.concatenate([self._vecs, vecs]) if first else vecs
        self._ids = np.concatenate([self._ids, ids]) if first else ids
        self._lookup = None
        try:
            with faiss_settings(self.threads):
                if not self._own:
                    seg = self._segs[0]
                    for lo in range(0, ids.size, ADD_CHUNK):
                        part = self.split.item_vectors(_row_range(item_ds, lo, lo + ADD_CHUNK))
                        if seg.index is None:
                            seg.build(part)
                        else:
                            seg.add(part, first + lo)
                for seg in self._segs if self._own else ():
                    if seg.index is None or seg.needs_rebuild(vecs):
                        seg.build(self._vecs)
                    else:
                        seg.add(vecs, first)
        except BaseException as e:  # e.g. an IVF index with fewer training items than lists
            self._vecs, self._ids, self._lookup = old_vecs, old_ids, None
            with faiss_settings(self.threads):
                for seg in self._segs:  # put every index back as it was
                    if not old_ids.size:
                        seg.index = None
                    elif self._own:
                        seg.build(old_vecs)
                    else:
                        seg.truncate(old_ids.size)
            if not isinstance(e, RuntimeError):
                raise
            raise ValueError(f"faiss could not index these {ids.size} items ({e}); nothing was added. "
                             f"An IVF index trains on its first batch: give it at least as many items "
                             f"as it has lists") from None
        self._drop_rows(replaced)
        return self

    def remove_items(self, ids: Sequence[int]) -> "Recaller":
        """Remove items by id (unknown ids are ignored). Flat indexes drop them at once; ANN
        indexes skip them at search time until a quarter of their rows are removed, then rebuild."""
        rows = self._rows_of(np.asarray(ids, dtype=np.int64))
        self._drop_rows(rows[rows >= 0])
        return self

    def _drop_rows(self, rows: np.ndarray) -> None:
        rows = np.unique(rows)
        if rows.size == 0:
            return
        self._ids[rows] = -1
        self._dead += rows.size
        self._lookup = None
        if self.exact or self._dead * 4 >= self._ids.size:
            self._compact()

    def _compact(self) -> None:
        keep = self._ids >= 0
        live = np.ascontiguousarray(self._vectors_view()[keep])  # a copy: the rebuild frees faiss's storage
        if self._own:
            self._vecs = live
        self._ids = self._ids[keep]
        self._dead = 0
        self._lookup = None
        with faiss_settings(self.threads):
            for seg in self._segs:
                seg.build(live)

    def item_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored exact item vectors p (float32 (n, dim)) of the given ids."""
        rows = self._rows_of(np.asarray(ids))
        if np.any(rows < 0):
            raise KeyError(f"id {int(np.asarray(ids).ravel()[np.argmax(rows < 0)])} is not indexed")
        return self._vectors_view()[rows]

    # ------------------------------------------------------------------ search
    def _exclude_keys(self, exclude, m: int) -> Optional[Tuple[np.ndarray, int]]:
        """Sorted keys query * n_rows + row of excluded items, and the largest count per query."""
        if exclude is None:
            return None
        n = max(self._ids.size, 1)
        if isinstance(exclude, np.ndarray) and exclude.ndim == 1 and exclude.dtype.kind in "iu":
            rows = self._rows_of(exclude)
            rows = np.unique(rows[rows >= 0])
            keys = (np.arange(m, dtype=np.int64)[:, None] * n + rows[None, :]).ravel()
            return np.sort(keys), int(rows.size)
        if len(exclude) != m:
            raise ValueError(f"exclude must have one entry per query ({m}) or be one id array for all")
        parts, most = [], 0
        for i, e in enumerate(exclude):
            if e is None or len(e) == 0:
                continue
            rows = self._rows_of(np.asarray(e))
            rows = np.unique(rows[rows >= 0])
            most = max(most, int(rows.size))
            parts.append(i * n + rows)
        keys = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        return keys, most

    def _finish(self, rows: np.ndarray, ip: np.ndarray, b: np.ndarray, k: int, excl) -> Tuple[np.ndarray, np.ndarray]:
        """Mask invalid / removed / excluded candidates, cut the top k by exact score."""
        m = rows.shape[0]
        valid = rows >= 0
        safe = np.where(valid, rows, 0)
        valid &= self._ids[safe] >= 0
        if excl is not None and excl[0].size:
            n = max(self._ids.size, 1)
            keys = np.arange(m, dtype=np.int64)[:, None] * n + safe
            valid &= ~np.isin(keys, excl[0])
        ip = np.where(valid, ip, -np.inf)
        kk = min(k, ip.shape[1])
        order = np.argsort(-ip, axis=1, kind="stable")[:, :kk]
        top_rows = np.take_along_axis(safe, order, axis=1)
        top_ip = np.take_along_axis(ip, order, axis=1)
        ids = np.where(np.isfinite(top_ip), self._ids[top_rows], -1)
        scores = (top_ip + b[:, None]).astype(np.float32)
        if kk < k:  # fewer candidates than k
            ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        return ids, scores

    def _rescore(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact <q, p> for candidate rows (m, c), chunked to bound memory."""
        out = np.empty(rows.shape, dtype=np.float32)
        vecs = self._vectors_view()
        safe = np.where(rows >= 0, rows, 0)
        step = max(1, (1 << 22) // max(rows.shape[1] * q.shape[1], 1))
        for s in range(0, rows.shape[0], step):
            out[s:s + step] = np.einsum("md,mcd->mc", q[s:s + step], vecs[safe[s:s + step]])
        return out

    def search(self, query_ds, k: int = 10, *, exclude: Union[None, np.ndarray, Sequence[IdList]] = None,
               restrict: Union[None, np.ndarray, Sequence[IdList]] = None, certify: bool = False) -> SearchResult:
        """Top-k items for each query row of `query_ds` (user + context fields; a Dataset, or a
        DataFrame / dict rows when the Recaller has a schema).

        exclude : ids to leave out, one array for all queries or one per query (e.g. seen items)
        restrict : only rank these ids, one array for all queries or one per query (exact scan; a
            None entry leaves that query unrestricted)
        certify : with segments > 1 and exact segment indexes, widen the per-segment K' until
            every query's top k is certified exact (DESIGN.md §5)
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q, b = self.split.query_vectors(self._encode(query_ds, "query"))
        m = q.shape[0]
        loss = getattr(self.model, "loss", "logistic")
        if m == 0 or len(self) == 0:
            return SearchResult(np.full((m, k), -1, np.int64), np.full((m, k), -np.inf, np.float32),
                                np.ones(m, bool), loss)
        excl = self._exclude_keys(exclude, m)
        if restrict is not None:
            ids, scores = self._search_restricted(q, b, k, restrict, excl)
            return SearchResult(ids, scores, np.ones(m, bool), loss)
        with faiss_settings(self.threads, EXACT_BLAS if self.exact else None):
            if self.segments == 1:
                ids, scores, cert = self._search_single(q, b, k, excl)
            else:
                ids, scores, cert = self._search_segmented(q, b, k, excl, certify)
        return SearchResult(ids, scores, cert, loss)

    def _search_single(self, q, b, k, excl):
        m = q.shape[0]
        extra = (excl[1] if excl is not None else 0) + self._dead
        if self.exact:
            kk = min(k + extra, self._ids.size)
            D, I = self._segs[0].search(q, kk)
            ids, scores = self._finish(I, D, b, k, excl)  # flat inner products are exact
            return ids, scores, np.ones(m, bool)
        cand = self.candidates or max(4 * k, 100)
        kk = min(cand + extra, self._ids.size)
        _, I = self._segs[0].search(q, kk)
        ids, scores = self._finish(I, self._rescore(q, I), b, k, excl)
        return ids, scores, np.zeros(m, bool)

    def _search_segmented(self, q, b, k, excl, certify):
        """Per-segment top-K' lists, merged and re-scored exactly. An item returned by no segment
        has <q, p> <= Σ_s τ_s (τ_s = the lowest partial score segment s returned), so the result is
        certified exact when the k-th exact score reaches that bound (exact segment indexes only)."""
        m = q.shape[0]
        n_rows = self._ids.size
        extra = (excl[1] if excl is not None else 0) + self._dead
        kprime = np.full(m, min(k + extra, n_rows), dtype=np.int64)
        ids = np.full((m, k), -1, np.int64)
        scores = np.full((m, k), -np.inf, np.float32)
        cert = np.zeros(m, bool)
        todo = np.arange(m)
        while todo.size:
            kk = int(kprime[todo].max())
            qs = q[todo]
            cand, bound = [], np.zeros(todo.size)
            everything = np.zeros(todo.size, bool)  # some segment returned every item it holds
            for seg in self._segs:
                D, I = seg.search(qs, kk)
                cand.append(I)
                full = (I >= 0).all(axis=1)
                everything |= ~full
                bound += np.where(full, D[:, -1], 0.0)  # τ_s: the lowest partial score returned
            rows = np.concatenate(cand, axis=1)
            rows = np.where(rows >= 0, rows, -1)
            # de-duplicate candidates per query
            rows_sorted = np.sort(rows, axis=1)
            dup = np.zeros_like(rows_sorted, dtype=bool)
            dup[:, 1:] = rows_sorted[:, 1:] == rows_sorted[:, :-1]
            rows_u = np.where(dup, -1, rows_sorted)
            sub_excl = None
            if excl is not None and excl[0].size:
                n = max(n_rows, 1)
                qi, r = np.divmod(excl[0], n)
                keep = np.isin(qi, todo)
                remap = np.full(m, -1, np.int64)
                remap[todo] = np.arange(todo.size)
                sub_excl = (np.sort(remap[qi[keep]] * n + r[keep]), excl[1])
            ip = self._rescore(qs, rows_u)
            t_ids, t_scores = self._finish(rows_u, ip, b[todo], k, sub_excl)
            ids[todo], scores[todo] = t_ids, t_scores
            seen_all = everything | (kk >= n_rows)
            if self.exact:
                kth = t_scores[:, k - 1].astype(np.float64) - b[todo]
                ok = seen_all | (np.isfinite(kth) & (kth >= bound))
            else:
                ok = np.zeros(todo.size, bool)  # ANN segments: no certificate
            cert[todo] = ok
            if not certify or not self.exact:
                break
            todo = todo[~ok]
            kprime[todo] = np.minimum(kprime[todo] * 2, n_rows)
        return ids, scores, cert

    def _search_restricted(self, q, b, k, restrict, excl):
        m = q.shape[0]
        if isinstance(restrict, np.ndarray) and restrict.ndim == 1 and restrict.dtype.kind in "iu":
            per_query = [restrict] * m
        else:
            if len(restrict) != m:
                raise ValueError(f"restrict must have one entry per query ({m}) or be one id array for all")
            per_query = list(restrict)
        ids = np.full((m, k), -1, np.int64)
        scores = np.full((m, k), -np.inf, np.float32)
        free = np.array([r is None for r in per_query])
        if free.any():  # None: no restriction for that query (as in exclude)
            sub = None
            if excl is not None and excl[0].size:
                n = max(self._ids.size, 1)
                qi, rr = np.divmod(excl[0], n)
                keep = free[qi]
                remap = np.cumsum(free) - 1
                sub = (np.sort(remap[qi[keep]] * n + rr[keep]), excl[1])
            with faiss_settings(self.threads, EXACT_BLAS if self.exact else None):
                search = self._search_single if self.segments == 1 else (
                    lambda q_, b_, k_, e_: self._search_segmented(q_, b_, k_, e_, False))
                got_ids, got_scores, _ = search(q[free], b[free], k, sub)
            ids[free], scores[free] = got_ids, got_scores
            if free.all():
                return ids, scores
        shared = per_query and all(r is per_query[0] for r in per_query)
        if shared:
            rows = self._rows_of(np.asarray(per_query[0]))
            rows = np.unique(rows[rows >= 0])
            cand = np.broadcast_to(rows, (m, rows.size))
            ip = q @ self._vectors_view()[rows].T if rows.size else np.zeros((m, 0), np.float32)
            return self._finish(np.ascontiguousarray(cand), ip, b, k, excl)
        for i, r in enumerate(per_query):
            if r is None or len(r) == 0:  # None: searched above; empty: nothing qualifies
                continue
            rows = self._rows_of(np.asarray(r))
            rows = np.unique(rows[rows >= 0])
            if rows.size == 0:
                continue
            ip = (self._vectors_view()[rows] @ q[i])[None, :]
            sub = None
            if excl is not None and excl[0].size:
                n = max(self._ids.size, 1)
                lo, hi = np.searchsorted(excl[0], [i * n, (i + 1) * n])
                sub = (excl[0][lo:hi] - i * n, excl[1])
            ids[i], scores[i] = (x[0] for x in self._finish(rows[None, :], ip, b[i:i + 1], k, sub))
        return ids, scores

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Union[str, os.PathLike]) -> None:
        """Write model, sides, ids, item vectors and faiss indexes into `directory`, atomically:
        everything goes to a fresh sibling directory that then replaces the old one by rename, so
        a failure leaves any previous save intact."""
        directory = os.path.abspath(os.fspath(directory))
        parent = os.path.dirname(directory)
        tmp = tempfile.mkdtemp(prefix=".tmp-", suffix="-" + os.path.basename(directory), dir=parent)
        try:
            meta_m, arrays_m = model_to_arrays(self.model)
            save_arrays(os.path.join(tmp, "model.npz"), meta_m, arrays_m)
            meta = {"format": RECALLER_FORMAT, "version": RECALLER_VERSION, "sides": self.sides.to_dict(),
                    "index": self.index_kind, "segments": self.segments, "candidates": self.candidates,
                    "threads": self.threads, "params": self.params, "dead": self._dead,
                    "max_norms": [seg.max_norm for seg in self._segs],
                    "schema": self.schema.to_dict() if self.schema is not None else None}
            arrays = {"ids": self._ids}
            if self._own:  # an exact index holds the vectors itself
                arrays["vectors"] = self._vecs
            save_arrays(os.path.join(tmp, "items.npz"), meta, arrays)
            for s, seg in enumerate(self._segs):
                if seg.index is not None:
                    faiss.write_index(seg.index, os.path.join(tmp, f"index{s}.faiss"))
            backup = None
            if os.path.exists(directory):
                backup = tempfile.mkdtemp(prefix=".old-", dir=parent)
                os.rmdir(backup)
                os.rename(directory, backup)
            os.rename(tmp, directory)
            if backup:
                shutil.rmtree(backup, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> "Recaller":
        """Load a Recaller written by save(); searches give identical results."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(2, "No such directory", directory)
        meta_m, arrays_m = load_arrays(os.path.join(directory, "model.npz"), "fmrecall.model", 1)
        model = model_from_arrays(meta_m, arrays_m, os.path.join(directory, "model.npz"))
        meta, arrays = load_arrays(os.path.join(directory, "items.npz"), RECALLER_FORMAT, RECALLER_VERSION)
        p = meta["params"]
        sides = Schema.from_dict(meta["schema"]) if meta.get("schema") else Sides.from_dict(meta["sides"])
        rec = cls(model, sides, meta["index"], segments=meta["segments"],
                  candidates=meta["candidates"], threads=meta["threads"], **p)
        rec._ids = arrays["ids"].astype(np.int64)
        if rec._own:
            if "vectors" not in arrays:
                raise ValueError(f"{directory}: missing item vectors")
            rec._vecs = np.ascontiguousarray(arrays["vectors"], dtype=np.float32)
        rec._dead = int(meta["dead"])
        for s, seg in enumerate(rec._segs):
            seg.max_norm = float(meta["max_norms"][s])
            path = os.path.join(directory, f"index{s}.faiss")
            if os.path.exists(path):
                seg.index = faiss.read_index(path)
            elif rec._ids.size:
                raise ValueError(f"{directory}: missing {os.path.basename(path)}")
        if rec._vectors_view().shape != (rec._ids.size, rec.dim):
            raise ValueError(f"{directory}: item vectors have shape {rec._vectors_view().shape}, expected "
                             f"({rec._ids.size}, {rec.dim})")
        return rec

    def __repr__(self) -> str:
        return (f"Recaller({type(self.model).__name__}, index={self.index_kind!r}, segments={self.segments}, "
                f"items={len(self)}, dim={self.dim})")
