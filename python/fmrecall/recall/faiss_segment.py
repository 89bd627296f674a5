"""One faiss index over a contiguous range [lo, hi) of the q / p coordinates.

Search parameters travel with each call (faiss `SearchParameters*`): nothing on a shared index
is changed by a search, so concurrent searches with different k do not interfere.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import faiss as _faiss
import numpy as np

from ..progress import advance
from .faiss_tiers import Tiers

faiss: Any = _faiss  # faiss's SWIG stubs are incomplete: typed as Any here

# Items are padded and handed to faiss in slices of this many rows, so adding N items holds one
# copy of their vectors (faiss's) plus a slice, not three full copies.
ADD_CHUNK = 1 << 16
# k-means of an IVF index trains on at most this many points per list (faiss's own cap).
IVF_TRAIN_PER_LIST = 256
BUILTIN_KINDS = ("exact", "hnsw", "hnsw-ip", "ivf", "tiered-ivf")
# "ivf" probes this many lists unless told otherwise; "tiered-ivf" 2·√(its lists), at least 8
# (125 of 3,906 lists at 1M items, 40 of 390 at 100k: bench/results.md).
IVF_NPROBE = 32
TIERED_PROBE_SQRT = 2.0
TIERED_MIN_PROBE = 8
# "tiered-ivf" makes one list per this many items unless nlist is given.
TIERED_ITEMS_PER_LIST = 256


def pad_width(d: int, pad: bool) -> int:
    """Dimension rounded up to a multiple of 16 (faiss's SIMD width) when that adds < 25%."""
    if not pad:
        return d
    dp = -(-d // 16) * 16
    return dp if dp <= 1.25 * d else d


def ivf_of(index: faiss.Index) -> Any:
    """The IVF part of `index` (a factory string may wrap it), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError):
        return None


def search_params(index: faiss.Index, ef_search: int, nprobe: int, keep: List[Any]) -> Optional[Any]:
    """faiss SearchParameters for `index` and its wrapped indexes (HNSW efSearch, IVF nprobe and its
    quantizer's); `keep` holds the nested objects alive for the call (SWIG does not own them)."""
    index = faiss.downcast_index(index)
    params: Optional[Any] = None
    if isinstance(index, faiss.IndexPreTransform):
        inner = search_params(index.index, ef_search, nprobe, keep)
        params = faiss.SearchParametersPreTransform(index_params=inner) if inner is not None else None
    elif isinstance(index, faiss.IndexRefine):
        inner = search_params(index.base_index, ef_search, nprobe, keep)
        params = faiss.IndexRefineSearchParameters(base_index_params=inner) if inner is not None else None
    elif isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=int(ef_search))
    elif isinstance(index, faiss.IndexIVF):
        inner = search_params(index.quantizer, ef_search, nprobe, keep)
        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
        if inner is not None:
            params.quantizer_params = inner
    if params is not None:
        keep.append(params)
    return params


def check_structure(index: faiss.Index, what: str) -> None:
    """ValueError for settings faiss accepts at construction but crashes on later: an HNSW graph
    with fewer than 2 links per node, an IVF with no list (walks wrapped indexes too)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        check_structure(index.index, what)
    elif isinstance(index, faiss.IndexRefine):
        check_structure(index.base_index, what)
    elif isinstance(index, faiss.IndexHNSW):
        levels = index.hnsw.cum_nneighbor_per_level.size()
        m = index.hnsw.nb_neighbors(1) if levels >= 3 else 0
        if m < 2:
            raise ValueError(f"{what}: HNSW needs M >= 2 links per node, got M={m}")
    elif isinstance(index, faiss.IndexIVF):
        if index.nlist < 1:
            raise ValueError(f"{what}: IVF needs nlist >= 1 inverted lists, got {index.nlist}")
        check_structure(index.quantizer, what + " (coarse quantizer)")


class Segment:
    """A faiss index over coordinates [lo, hi): exact (IndexFlatIP), HNSW on L2-augmented vectors
    ("hnsw"), HNSW on the raw inner product ("hnsw-ip"), IVF ("ivf"), norm-tiered IVF
    ("tiered-ivf", faiss_tiers.py) or a factory string."""

    def __init__(self, kind: str, lo: int, hi: int, params: Dict[str, Any]) -> None:
        self.kind, self.lo, self.hi = kind, lo, hi
        self.params = params
        self.augment = kind == "hnsw"  # L2 augmentation for inner product (Bachrach et al.)
        self.dim = pad_width(hi - lo + (1 if self.augment else 0), bool(params["pad"]))
        self.max_norm = 0.0
        self.index: Optional[faiss.Index] = None
        self.tiers: Optional[Tiers] = None  # "tiered-ivf" only: the tier table, set with the index
        self._radii: Optional[np.ndarray] = None  # the tiers' radii before an in-place add

    @property
    def tiered(self) -> bool:
        return self.kind == "tiered-ivf"

    def nprobe(self, nprobe: Optional[int]) -> int:
        """Lists probed: `nprobe`, else the kind's default (2·√lists for tiered-ivf)."""
        if nprobe is not None:
            return int(nprobe)
        if self.tiers is not None:
            return max(TIERED_MIN_PROBE, int(np.ceil(TIERED_PROBE_SQRT * np.sqrt(self.tiers.nlist))))
        return IVF_NPROBE

    def new_index(self, n_hint: int) -> faiss.Index:
        p = self.params
        if self.kind == "exact":
            return faiss.IndexFlatIP(self.dim)
        if self.kind in ("hnsw", "hnsw-ip"):  # L2 on augmented vectors, or the raw inner product
            metric = faiss.METRIC_L2 if self.augment else faiss.METRIC_INNER_PRODUCT
            index = faiss.IndexHNSWFlat(self.dim, int(p["hnsw_m"]), metric)
            index.hnsw.efConstruction = int(p["ef_construction"])
            return index
        if self.tiered:
            raise RuntimeError("a tiered-ivf index is built from its first items (Segment.add)")
        if self.kind == "ivf":
            nlist = p["nlist"] or max(1, min(int(4 * np.sqrt(max(n_hint, 1))), n_hint // 39 or 1))
            quantizer = faiss.IndexFlatIP(self.dim)
            return faiss.IndexIVFFlat(quantizer, self.dim, int(nlist), faiss.METRIC_INNER_PRODUCT)
        index = faiss.index_factory(self.dim, self.kind, faiss.METRIC_INNER_PRODUCT)
        check_structure(index, f"faiss index_factory string {self.kind!r}")
        hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
        if hnsw is not None:
            hnsw.efConstruction = int(p["ef_construction"])
        return index

    def fresh(self) -> "Segment":
        """An unbuilt segment with the same configuration (to build aside, then swap in)."""
        return Segment(self.kind, self.lo, self.hi, self.params)

    @property
    def flat(self) -> bool:
        """Row = storage position, rows removable in place (IndexFlatIP)."""
        return self.kind == "exact"

    # -------- vectors as the index sees them
    def rows(self, vecs: np.ndarray) -> np.ndarray:
        """Item rows for the index: the segment's columns, augmented / padded."""
        part = vecs[:, self.lo : self.hi]
        out = np.zeros((vecs.shape[0], self.dim), dtype=np.float32)
        out[:, : part.shape[1]] = part
        if self.augment:
            sq = np.einsum("ij,ij->i", part, part, dtype=np.float64)
            out[:, part.shape[1]] = np.sqrt(np.maximum(self.max_norm**2 - sq, 0.0))
        return out

    def queries(self, q: np.ndarray) -> np.ndarray:
        part = q[:, self.lo : self.hi]
        if part.shape[1] == self.dim:
            return np.ascontiguousarray(part, dtype=np.float32)
        out = np.zeros((q.shape[0], self.dim), dtype=np.float32)
        out[:, : part.shape[1]] = part  # the augmented coordinate of a query is 0
        return out

    def needs_rebuild(self, vecs: np.ndarray) -> bool:
        """An augmented index must be rebuilt when an item exceeds its norm bound."""
        if not self.augment or vecs.shape[0] == 0:
            return False
        part = vecs[:, self.lo : self.hi]
        return float(np.sqrt(np.einsum("ij,ij->i", part, part).max())) > self.max_norm

    # -------- building (the caller holds the writer's side, or builds aside)
    def build(self, all_vecs: np.ndarray) -> None:
        """Build from scratch over all stored rows (ids = row numbers)."""
        if self.augment and all_vecs.shape[0]:
            part = all_vecs[:, self.lo : self.hi]
            self.max_norm = 1.2 * float(np.sqrt(np.einsum("ij,ij->i", part, part).max()) or 1.0)
        self.index, self.tiers = (None, None) if self.tiered else (self.new_index(all_vecs.shape[0]), None)
        self.add(all_vecs, 0)

    def add(self, vecs: np.ndarray, first_row: int) -> None:
        """Append rows first_row, first_row + 1, ... (a fresh index trains on the first batch)."""
        n = vecs.shape[0]
        if self.tiered:
            self._add_tiered(vecs, first_row)
            return
        if self.index is None:
            self.index = self.new_index(vecs.shape[0])
        if n == 0:
            return
        if not self.index.is_trained:  # on a seeded sample, as faiss's k-means would subsample
            ivf = ivf_of(self.index)
            cap = IVF_TRAIN_PER_LIST * ivf.nlist if ivf is not None else n
            sample = np.sort(np.random.default_rng(1234).choice(n, cap, replace=False)) if n > cap else slice(None)
            self.index.train(self.rows(vecs[sample]))
        ivf = ivf_of(self.index)
        if ivf is None and self.index.ntotal != first_row:
            raise RuntimeError("index out of step with the stored items")
        for lo in range(0, n, ADD_CHUNK):
            rows = self.rows(vecs[lo : lo + ADD_CHUNK])
            if ivf is not None:
                ids = np.arange(first_row + lo, first_row + lo + rows.shape[0], dtype=np.int64)
                self.index.add_with_ids(rows, ids)
            else:
                self.index.add(rows)
            advance(rows.shape[0])

    def _add_tiered(self, vecs: np.ndarray, first_row: int) -> None:
        """tiered-ivf: the first batch makes the tiers and their lists, later rows join them."""
        if vecs.shape[0] == 0:
            return
        if self.tiers is None:
            x = self.rows(vecs)
            nlist = self.params["nlist"] or max(1, x.shape[0] // TIERED_ITEMS_PER_LIST)
            tiers, _ = Tiers.build(x, int(nlist))
            self.index, self.tiers = tiers.new_index(self.dim), tiers
        for lo in range(0, vecs.shape[0], ADD_CHUNK):
            self.tiers.add(self.index, self.rows(vecs[lo : lo + ADD_CHUNK]), first_row + lo)

    def checkpoint(self) -> None:
        """Remember what an in-place add changes besides the rows (tiered-ivf: the list radii), for
        `truncate` to put back."""
        self._radii = self.tiers.radii.copy() if self.tiers is not None else None

    def truncate(self, n_rows: int) -> None:
        """Drop the rows added after the first `n_rows` (undo a failed add) and restore the
        checkpoint."""
        if self.index is not None and self.index.ntotal > n_rows:
            self.index.remove_ids(faiss.IDSelectorRange(n_rows, self.index.ntotal))
        saved = getattr(self, "_radii", None)
        if self.tiers is not None and saved is not None and saved.shape == self.tiers.radii.shape:
            self.tiers.radii[:] = saved

    def remove_rows(self, rows: np.ndarray) -> None:
        """Remove rows in place (flat indexes: later rows move up, as the catalogue compacts)."""
        if self.index is not None and rows.size:
            self.index.remove_ids(faiss.IDSelectorBatch(rows.astype(np.int64)))

    # -------- search (read-only: safe from many threads)
    def search(self, q: np.ndarray, kk: int, ef_search: int, nprobe: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
        """(partial inner products or -inf, rows or -1), each (m, kk); ef_search / nprobe for this
        call only (nprobe None: the kind's default)."""
        if self.index is None:
            m = q.shape[0]
            return np.full((m, kk), -np.inf, np.float32), np.full((m, kk), -1, np.int64)
        if self.tiers is not None:
            return self.tiers.search(self.index, self.queries(q), int(kk), self.nprobe(nprobe))
        keep: List[Any] = []
        # HNSW stops its graph walk after efSearch nodes: never fetch filler
        params = search_params(self.index, max(int(ef_search), int(kk)), self.nprobe(nprobe), keep)
        D, I = self.index.search(self.queries(q), int(kk), params=params)
        if self.augment:  # L2 distances -> -inf where nothing was found; scores are recomputed anyway
            D = np.where(I >= 0, -D, -np.inf).astype(np.float32)
        return D, I
