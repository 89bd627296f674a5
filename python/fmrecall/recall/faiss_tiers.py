"""Norm-tiered inverted lists for maximum inner product search (index "tiered-ivf", DESIGN.md §5).

Items are cut by norm into tiers (the highest-norm 1/64, the next 3/64, 12/64, 48/64); each tier is
clustered on its own L2-augmented vectors [p, sqrt(M_t² − ‖p‖²)] with the tier's own bound M_t
(norm-ranging: a bound close to the tier's norms keeps the augmented coordinate from swamping the
directions). All lists of all tiers live in one faiss IndexIVFFlat with the inner-product metric,
storing the raw vectors, with the list of every item chosen here (`add_core`). A query probes the
`nprobe` lists with the highest  <q, c_l> + ½‖q‖ρ_l  over all tiers at once (c_l the list's mean,
ρ_l its radius; every member has <q, p> ≤ <q, c_l> + ‖q‖ρ_l), so high-norm lists, whose members can
score far above their mean, are probed first; faiss scans them with the exact inner product.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import faiss as _faiss
import numpy as np

faiss: Any = _faiss  # faiss's SWIG stubs are incomplete: typed as Any here

# Tier sizes as fractions of the catalogue, highest norms first (geometric: ×3, ×4, ×4).
TIER_FRACTIONS = (1 / 64, 3 / 64, 12 / 64, 48 / 64)
# k-means of a tier trains on at most this many points per list, 10 iterations, seeded.
TRAIN_PER_LIST = 64
KMEANS_ITER = 10
RADIUS_WEIGHT = 0.5  # the ½ of the probe order <q, c_l> + ½‖q‖ρ_l (bench/results.md: 0, ½, 1, 2)


def augmented(x: np.ndarray, bound: float) -> np.ndarray:
    """[x, sqrt(max(bound² − ‖x‖², 0))] (float32 (n, d + 1)): L2 to [q, 0] ranks like −<q, x>."""
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    out = np.empty((x.shape[0], x.shape[1] + 1), np.float32)
    out[:, :-1] = x
    out[:, -1] = np.sqrt(np.maximum(bound**2 - sq, 0.0))
    return out


class Tiers:
    """The tier table of one tiered-ivf index: per tier (lowest norm, augmentation bound, first
    list, end list); per list the augmented coordinate of its centroid and its radius. Changed
    only by a writer (the caller holds the write side of the index's lock)."""

    def __init__(self, table: np.ndarray, aug: np.ndarray, radii: np.ndarray, centroids: np.ndarray) -> None:
        self.table = table  # float64 (T, 4): floor norm, bound, list lo, list hi
        self.aug = aug  # float32 (L,): last coordinate of each list's augmented centroid
        self.radii = radii  # float32 (L,): max ‖p − c_l‖ over the list's members (grows on add)
        self.centroids = centroids  # float32 (L, d): raw centroids (the IVF quantizer's vectors)

    @property
    def nlist(self) -> int:
        return int(self.radii.size)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, x: np.ndarray, nlist: int, seed: int = 1234) -> Tuple["Tiers", np.ndarray]:
        """(tiers, list of every row int64 (n,)) for item rows x float32 (n, d), about `nlist`
        lists in all (each tier gets lists in proportion to its size, at least one)."""
        n, d = x.shape
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        order = np.argsort(-norms, kind="stable")
        ends = np.round(np.cumsum(TIER_FRACTIONS) * n).astype(np.int64)
        ends[-1] = n
        starts = np.concatenate([[0], ends[:-1]])
        table: List[Tuple[float, float, int, int]] = []
        cents: List[np.ndarray] = []
        assign = np.empty(n, np.int64)
        lo = 0
        for a, b in zip(starts, ends):
            if b <= a:
                continue
            rows = order[a:b]
            bound = float(norms[rows[0]])
            k = int(min(max(1, round(nlist * (b - a) / n)), b - a))
            aug = augmented(x[rows], bound)
            cent = kmeans(aug, k, seed + len(table))
            assign[rows] = nearest(aug, cent) + lo
            cents.append(cent)
            table.append((float(norms[rows[-1]]), bound, lo, lo + k))
            lo += k
        full = np.concatenate(cents) if cents else np.zeros((0, d + 1), np.float32)
        radii = np.zeros(lo, np.float32)
        tiers = cls(np.asarray(table, np.float64).reshape(-1, 4), full[:, -1].copy(), radii, full[:, :-1].copy())
        tiers.widen(x, assign)
        tiers.table[-1, 0] = 0.0  # the lowest tier takes every smaller norm
        return tiers, assign

    def new_index(self, d: int) -> Any:
        """An empty IndexIVFFlat (inner product) whose quantizer holds the raw centroids."""
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(np.ascontiguousarray(self.centroids, dtype=np.float32))
        index = faiss.IndexIVFFlat(quantizer, d, self.nlist, faiss.METRIC_INNER_PRODUCT)
        index.is_trained = True  # the lists are ours: nothing to train
        return index

    # ------------------------------------------------------------------ writes
    def assign(self, x: np.ndarray) -> np.ndarray:
        """List of each row (int64 (n,)): its norm's tier (the top tier takes every larger norm),
        then the nearest augmented centroid of that tier."""
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        tier = np.searchsorted(-self.table[:, 0], -norms, side="left")  # first tier with floor <= norm
        tier = np.minimum(tier, self.table.shape[0] - 1)
        out = np.empty(x.shape[0], np.int64)
        for t in np.unique(tier):
            rows = np.flatnonzero(tier == t)
            _, bound, lo, hi = self.table[t]
            cent = np.concatenate([self.centroids[int(lo) : int(hi)], self.aug[int(lo) : int(hi), None]], axis=1)
            out[rows] = nearest(augmented(x[rows], float(bound)), cent) + int(lo)
        return out

    def widen(self, x: np.ndarray, lists: np.ndarray) -> None:
        """Grow the radii of `lists` to cover the rows x (a writer's step, before they are added)."""
        dist = np.sqrt(np.einsum("ij,ij->i", x - self.centroids[lists], x - self.centroids[lists], dtype=np.float64))
        np.maximum.at(self.radii, lists, dist.astype(np.float32))

    def add(self, index: Any, x: np.ndarray, first_row: int) -> None:
        """Add rows first_row, ... of x to `index` into their lists."""
        lists = self.assign(x)
        self.widen(x, lists)
        ids = np.arange(first_row, first_row + x.shape[0], dtype=np.int64)
        x = np.ascontiguousarray(x, dtype=np.float32)
        index.add_core(x.shape[0], faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))

    # ------------------------------------------------------------------ search (read-only)
    def search(self, index: Any, q: np.ndarray, kk: int, nprobe: int) -> Tuple[np.ndarray, np.ndarray]:
        """(inner products, rows) (m, kk) from the `nprobe` lists of highest <q, c_l> + ½‖q‖ρ_l."""
        m = q.shape[0]
        nprobe = int(min(max(nprobe, 1), self.nlist))
        q = np.ascontiguousarray(q, dtype=np.float32)
        score = q @ self.centroids.T
        score += RADIUS_WEIGHT * np.linalg.norm(q, axis=1)[:, None] * self.radii[None, :]
        if nprobe < self.nlist:
            probe = np.argpartition(-score, nprobe - 1, axis=1)[:, :nprobe]
        else:
            probe = np.broadcast_to(np.arange(self.nlist), (m, self.nlist))
        probe = np.ascontiguousarray(probe, dtype=np.int64)
        coarse = np.ascontiguousarray(np.take_along_axis(score, probe, axis=1), dtype=np.float32)
        D = np.empty((m, kk), np.float32)
        I = np.empty((m, kk), np.int64)
        params = faiss.SearchParametersIVF(nprobe=nprobe)  # this call's width; the index is not changed
        index.search_preassigned_c(
            m, faiss.swig_ptr(q), kk, faiss.swig_ptr(probe), faiss.swig_ptr(coarse),
            faiss.swig_ptr(D), faiss.swig_ptr(I), False, params,
        )  # fmt: skip
        return D, I

    # ------------------------------------------------------------------ persistence
    def state(self, s: int) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
        """(meta, arrays) of segment s; the centroids are in the faiss file's quantizer."""
        return {"tiers": self.table.tolist()}, {f"tiers{s}_aug": self.aug, f"tiers{s}_radii": self.radii}

    @classmethod
    def from_state(cls, table: Any, aug: Any, radii: Any, index: Any, where: str) -> "Tiers":
        """The tiers saved by `state`, checked against the loaded IVF index (ValueError naming where)."""
        try:
            tab = np.asarray(table, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: tiers must be a table of numbers, got {table!r}") from None
        ivf = faiss.extract_index_ivf(index)
        nlist = int(ivf.nlist)
        ok = (
            tab.ndim == 2
            and tab.shape[0] >= 1
            and tab.shape[1] == 4
            and np.isfinite(tab).all()
            and isinstance(aug, np.ndarray)
            and isinstance(radii, np.ndarray)
            and aug.shape == radii.shape == (nlist,)
            and aug.dtype == radii.dtype == np.float32
            and np.isfinite(aug).all()
            and np.isfinite(radii).all()
            and tab[0, 2] == 0
            and tab[-1, 3] == nlist
            and np.array_equal(tab[1:, 2], tab[:-1, 3])
            and (tab[:, 3] > tab[:, 2]).all()
        )
        if not ok:
            raise ValueError(f"{where}: the tier table does not match the index's {nlist} inverted lists")
        quantizer = faiss.downcast_index(ivf.quantizer)
        cent = faiss.rev_swig_ptr(quantizer.get_xb(), nlist * ivf.d).reshape(nlist, ivf.d).copy()
        return cls(tab, aug.copy(), radii.copy(), cent)


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k centroids (float32 (k, d)) of x: faiss k-means, 10 iterations on a seeded sample."""
    n = x.shape[0]
    if k >= n:
        return np.ascontiguousarray(x[:k], dtype=np.float32)
    cap = TRAIN_PER_LIST * k
    sample = x[np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))] if n > cap else x
    km = faiss.Kmeans(
        x.shape[1], k, niter=KMEANS_ITER, seed=seed, max_points_per_centroid=TRAIN_PER_LIST, min_points_per_centroid=1
    )
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (int64 (n,)) of the L2-nearest centroid of every row."""
    flat = faiss.IndexFlatL2(centroids.shape[1])
    flat.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return flat.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0].astype(np.int64)
