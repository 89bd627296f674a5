"""FaissIndex: the catalogue in faiss on this machine (exact, HNSW, IVF or a factory string).

Concurrency: searches read one published `Snapshot` under the read side of a readers–writer
lock; a writer (add / remove) prepares its change without blocking them and holds the write side
only to change a faiss index in place (faiss indexes cannot be searched during `add`) and to
publish. Whole builds and rebuilds (the first add, compaction, a new HNSW norm bound) happen aside
on fresh indexes, so searches go on against the previous snapshot until the swap.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import faiss as _faiss
import numpy as np

from .._limits import check_int
from .base import IdFilter, IndexState, ItemIndex
from .catalogue import Catalogue
from .faiss_auto import choose, norm_spread, stale
from .faiss_config import ensure_configured, faiss_threads
from .faiss_files import _check_ids, _check_index, _read_index, _writer
from .faiss_segment import BUILTIN_KINDS, Segment, pad_width
from .faiss_tiers import Tiers
from .rwlock import ReadWriteLock
from .search import Settings, Snapshot, search

faiss: Any = _faiss  # faiss's SWIG stubs are incomplete: typed as Any here

# ANN indexes insert an add's rows in slices of this many, releasing searches in between (an
# HNSW insert costs ~1 ms per item at M = 32 on 2 cores: searches wait at most ~0.1 s).
INSERT_SLICE = 128


class FaissIndex(ItemIndex):
    """Item vectors in faiss, searched by inner product, every result re-scored exactly.

    kind : "auto" (the index is picked from the dimension, catalogue size and norm spread, see
        faiss_auto.py and the README), "exact" (IndexFlatIP), "hnsw" (IndexHNSWFlat on
        L2-augmented vectors), "hnsw-ip" (IndexHNSWFlat on the raw inner product), "ivf"
        (IndexIVFFlat), "tiered-ivf" (inverted lists per norm tier, faiss_tiers.py) or a faiss
        index_factory string (inner-product metric), validated at the real vector dimension
    segments : split q / p into this many contiguous parts, one index each; candidates are merged
        and re-scored exactly; exact segments give a per-query certificate (DESIGN.md §5)
    candidates : ANN candidates per query before exact re-scoring (default max(4k, 100), k for
        tiered-ivf, whose lists are scanned with the exact inner product; never fewer than k: a
        smaller value is raised to k)
    hnsw_m (>= 2), ef_construction, ef_search, nlist, nprobe : index parameters, passed per search
        as faiss SearchParameters (HNSW walks max(ef_search, candidates) nodes). nlist None: 4·√n
        for ivf, n / 256 for tiered-ivf; nprobe None: 32 for ivf, 2·√lists for tiered-ivf
    pad : pad vectors to a multiple of 16 floats when that adds < 25%. Default: on for the built-in
        kinds (a pure speed matter), off for factory strings, whose meaning padding would change
        (e.g. the sub-vector size of "PQ16"); pad=True with a factory string applies it to the
        padded dimension
    """

    backend = "faiss"

    def __init__(
        self,
        kind: str = "exact",
        *,
        segments: int = 1,
        candidates: Optional[int] = None,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        nlist: Optional[int] = None,
        nprobe: Optional[int] = None,
        pad: Optional[bool] = None,
    ) -> None:
        if not isinstance(kind, str) or not kind.strip():
            raise ValueError(
                f"index must be 'auto', 'exact', 'hnsw', 'hnsw-ip', 'ivf', 'tiered-ivf' or a faiss factory "
                f"string, got {kind!r}"
            )
        self.kind = kind
        self.auto = kind == "auto"
        self.built_n = 0  # auto: the catalogue size at the last (re)build (a writer's record)
        self.segments: int = check_int(segments, "segments", 1)  # type: ignore[assignment]
        self.candidates = check_int(candidates, "candidates", 1, optional=True)
        if pad is not None and not isinstance(pad, (bool, np.bool_)):
            raise ValueError(f"pad must be True, False or None, got {pad!r}")
        self.params: Dict[str, Any] = {
            "hnsw_m": check_int(hnsw_m, "hnsw_m", 2, 1024),
            "ef_construction": check_int(ef_construction, "ef_construction", 1, 1 << 20),
            "ef_search": check_int(ef_search, "ef_search", 1, 1 << 20),
            "nlist": check_int(nlist, "nlist", 1, 1 << 24, optional=True),
            "nprobe": check_int(nprobe, "nprobe", 1, 1 << 24, optional=True),
            "pad": (self.auto or kind in BUILTIN_KINDS) if pad is None else bool(pad),
        }
        self.pad_given = pad
        self.dim = 0
        self.threads = 0
        self._rw = ReadWriteLock()
        self._write = threading.Lock()  # one writer at a time
        self._snap: Optional[Snapshot] = None

    # ------------------------------------------------------------------ setup
    @property
    def exact(self) -> bool:
        """Whether searches are exact now (auto: whether it picked the exact index)."""
        return self._snap.exact if self._snap is not None else self.kind == "exact"

    @property
    def chosen(self) -> str:
        """The index kind searches use now: `kind`, or for auto the kind it picked ("exact" while
        empty)."""
        return self._snap.segments[0].kind if self._snap is not None else self.kind

    @property
    def _own(self) -> bool:
        """Keep a float32 copy of the vectors; a single exact index reads faiss's own storage
        (auto keeps its copy: it may have to rebuild as another kind)."""
        return not (self.kind == "exact" and self.segments == 1)

    def open(self, dim: int, threads: int) -> None:
        if self.segments > dim:
            raise ValueError(f"segments={self.segments} exceeds the vector dimension {dim}")
        self.dim, self.threads = int(dim), int(threads)
        ensure_configured()
        segs = self._segments("exact" if self.auto else self.kind)
        if self.kind not in BUILTIN_KINDS and not self.auto:
            for seg in segs:  # validate the factory string at the dimension it will really get
                try:
                    seg.new_index(1)
                except RuntimeError as e:
                    hint = (
                        ""
                        if self.pad_given or pad_width(seg.hi - seg.lo, True) == seg.dim
                        else (f"; with pad=True the vectors would be padded to {pad_width(seg.hi - seg.lo, True)}")
                    )
                    raise ValueError(
                        f"faiss index_factory string {self.kind!r} does not fit vectors of "
                        f"dimension {seg.dim}{hint}: {str(e).strip().splitlines()[-1]}"
                    ) from None
        self._snap = Snapshot(Catalogue.empty(), segs, np.zeros((0, dim), np.float32), segs[0].kind == "exact")

    def _segments(self, kind: str) -> Tuple[Segment, ...]:
        """Unbuilt segments of `kind` over the contiguous coordinate ranges."""
        bounds = np.linspace(0, self.dim, self.segments + 1).round().astype(int)
        return tuple(Segment(kind, int(bounds[s]), int(bounds[s + 1]), self.params) for s in range(self.segments))

    def _current(self) -> Snapshot:
        if self._snap is None:
            raise RuntimeError("FaissIndex.open() was not called (pass the index to a Recaller)")
        return self._snap

    def _publish(self, catalogue: Catalogue, segments: Sequence[Segment], vecs: Optional[np.ndarray]) -> None:
        """Make the new state the one searches read (the caller holds the write side or builds
        aside). `vecs` None: read the vectors from the single exact index's own storage."""
        if vecs is None:
            vecs = _flat_vectors(segments[0], self.dim)
        self._snap = Snapshot(catalogue, tuple(segments), vecs, segments[0].kind == "exact")

    # ------------------------------------------------------------------ reads (any thread)
    def __len__(self) -> int:
        return len(self._current().catalogue)

    @property
    def ids(self) -> np.ndarray:
        return self._current().catalogue.ids

    @property
    def dead(self) -> int:
        return self._current().catalogue.dead

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        with self._rw.read():
            snap = self._current()
            rows = snap.catalogue.rows_of(ids)
            if np.any(rows < 0):
                raise KeyError(f"id {int(np.asarray(ids).ravel()[np.argmax(rows < 0)])} is not indexed")
            return np.array(snap.vectors[rows], dtype=np.float32, copy=True)

    def parts(self) -> Tuple[Segment, ...]:
        """The segments (coordinate range, padded dimension, faiss index: None before the first
        add), for inspection only: search parameters are passed per call, nothing here is changed."""
        return self._current().segments

    def all_vectors(self) -> np.ndarray:
        """A copy of the stored vectors by row (removed rows included until compaction)."""
        with self._rw.read():
            return np.array(self._current().vectors, dtype=np.float32, copy=True)

    def search(
        self,
        q: np.ndarray,
        k: int,
        exclude: IdFilter,
        restrict: IdFilter,
        certify: bool,
        params: Optional[Mapping[str, Any]] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        settings = self.settings(params)
        with self._rw.read(), faiss_threads(self.threads):
            return search(self._current(), q, k, exclude, restrict, certify, settings)

    def settings(self, params: Optional[Mapping[str, Any]] = None) -> Settings:
        """This index's search settings, with `params` (candidates, ef_search, nprobe) overriding
        them for one call (validated like the constructor's)."""
        p = dict(params or {})
        unknown = sorted(set(p) - {"candidates", "ef_search", "nprobe"})
        if unknown:
            raise ValueError(f"unknown search parameters {unknown}; a faiss index takes candidates, ef_search, nprobe")
        cand = check_int(p["candidates"], "candidates", 1) if p.get("candidates") is not None else self.candidates
        ef = check_int(p["ef_search"], "ef_search", 1, 1 << 20) if p.get("ef_search") is not None else None
        nprobe = check_int(p["nprobe"], "nprobe", 1, 1 << 24) if p.get("nprobe") is not None else None
        return Settings(
            cand,
            int(ef if ef is not None else self.params["ef_search"]),
            nprobe if nprobe is not None else self.params["nprobe"],
        )

    # ------------------------------------------------------------------ writes (one at a time)
    def add(self, ids: np.ndarray, batches: Iterable[np.ndarray]) -> None:
        with self._write, faiss_threads(self.threads):
            snap = self._current()
            catalogue, replaced = snap.catalogue.appended(ids)
            first = snap.catalogue.n_rows
            unbuilt = snap.segments[0].index is None or len(snap.catalogue) == 0
            if not self._own and unbuilt:  # build aside, slice by slice: faiss holds the only copy
                seg = snap.segments[0].fresh()
                n = 0
                for part in batches:
                    seg.add(self._checked(part), n)
                    n += part.shape[0]
                self._check_count(n, ids.size)
                with self._rw.write():
                    self._publish(Catalogue(ids.copy()), (seg,), None)
                return
            parts = [self._checked(p) for p in batches]
            vecs = np.concatenate(parts) if ids.size else np.zeros((0, self.dim), np.float32)
            self._check_count(vecs.shape[0], ids.size)
            n_after = len(catalogue)
            rechoose = self.auto and (
                unbuilt or stale(snap.segments[0].kind, self.built_n, n_after, self.dim, self.segments)
            )
            if self._own and (rechoose or unbuilt or any(seg.needs_rebuild(vecs) for seg in snap.segments)):
                live = snap.catalogue.row_ids >= 0
                live[replaced] = False
                all_vecs = np.concatenate([snap.vectors[live], vecs])
                new_cat = Catalogue(np.concatenate([snap.catalogue.row_ids[live], ids]))
                self._rebuild_aside(new_cat, all_vecs, snap, rechoose)
                return
            # in place: searches wait while faiss inserts (faiss indexes cannot be searched during
            # add). ANN indexes take the rows in slices, searches running in between: rows beyond
            # the published catalogue stay invisible to them until the publish below.
            step = max(vecs.shape[0], 1) if snap.exact else INSERT_SLICE
            for seg in snap.segments:
                seg.checkpoint()
            try:
                for lo in range(0, vecs.shape[0], step):
                    with self._rw.write():
                        for seg in snap.segments:
                            seg.add(vecs[lo : lo + step], first + lo)
            except BaseException:
                self._undo_add(snap, first)
                raise
            with self._rw.write():
                self._publish(catalogue, snap.segments, self._append(snap.vectors, vecs) if self._own else None)
            if replaced.size:
                self._after_drop()

    def remove(self, ids: np.ndarray) -> None:
        with self._write, faiss_threads(self.threads):
            snap = self._current()
            rows = snap.catalogue.rows_of(ids)
            rows = np.unique(rows[rows >= 0])
            if rows.size == 0:
                return
            with self._rw.write():
                self._publish(snap.catalogue.dropped(rows), snap.segments, snap.vectors if self._own else None)
            self._after_drop()

    def _undo_add(self, snap: Snapshot, first: int) -> None:
        """Put every index back as the published snapshot has it (after a failed add)."""
        try:
            with self._rw.write():
                for seg in snap.segments:
                    seg.truncate(first)
        except RuntimeError:  # HNSW cannot remove: rebuild from the snapshot's vectors, aside
            if not self._own:
                raise
            self._rebuild_aside(snap.catalogue, snap.vectors, snap)

    def _after_drop(self) -> None:
        """Flat indexes drop tombstoned rows at once (in place); ANN indexes skip them at search
        time until a quarter of their rows are removed, then are rebuilt aside."""
        snap = self._current()
        cat = snap.catalogue
        if cat.dead == 0:
            return
        if snap.exact:
            gone = np.flatnonzero(cat.row_ids < 0)
            compact, keep = cat.compacted()
            with self._rw.write():
                for seg in snap.segments:
                    seg.remove_rows(gone)
                self._publish(compact, snap.segments, snap.vectors[keep] if self._own else None)
        elif cat.dead * 4 >= cat.n_rows:
            compact, keep = cat.compacted()
            self._rebuild_aside(compact, np.ascontiguousarray(snap.vectors[keep]), snap)

    def _rebuild_aside(
        self, catalogue: Catalogue, all_vecs: np.ndarray, snap: Snapshot, rechoose: bool = False
    ) -> None:
        """Build new segments over all_vecs (auto with `rechoose`: of the kind the rule picks now,
        faiss_auto.choose) while searches read `snap`, then publish them."""
        if self.auto and (rechoose or self.built_n == 0):
            kind, _ = choose(len(catalogue), self.dim, norm_spread(all_vecs), self.segments)
            segs = list(self._segments(kind))
            self.built_n = len(catalogue)
        else:
            segs = [seg.fresh() for seg in snap.segments]
        for seg in segs:
            seg.build(all_vecs)
        with self._rw.write():
            self._publish(catalogue, segs, all_vecs)

    def _append(self, vecs: np.ndarray, new: np.ndarray) -> np.ndarray:
        """vecs + new rows, written into spare capacity of vecs's buffer when there is some (the
        rows a published snapshot shows are never overwritten), else into a buffer twice as large."""
        n, extra = vecs.shape[0], new.shape[0]
        base = (
            vecs.base
            if vecs.base is not None
            and vecs.base.ndim == 2
            and vecs.base.shape[1] == self.dim
            and vecs.base.flags.c_contiguous
            and vecs.base[:n].ctypes.data == vecs.ctypes.data
            else None
        )
        if base is None or base.shape[0] < n + extra:
            base = np.empty((max(2 * n, n + extra), self.dim), np.float32)
            base[:n] = vecs
        base[n : n + extra] = new
        return base[: n + extra]

    def _checked(self, part: np.ndarray) -> np.ndarray:
        if part.ndim != 2 or part.shape[1] != self.dim:
            raise ValueError(f"item vectors must be (n, {self.dim}), got shape {part.shape}")
        return np.ascontiguousarray(part, dtype=np.float32)

    @staticmethod
    def _check_count(got: int, want: int) -> None:
        if got != want:
            raise ValueError(f"{want} ids but {got} item vectors")

    # ------------------------------------------------------------------ persistence
    def config(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "segments": self.segments,
            "candidates": self.candidates,
            **{k: v for k, v in self.params.items() if k != "pad"},
            "pad": self.pad_given,
        }

    def state(self) -> IndexState:
        with self._write:
            snap = self._current()
            meta = {**self.config(), "max_norms": [seg.max_norm for seg in snap.segments]}
            if self.auto:
                meta["chosen"], meta["built_n"] = snap.segments[0].kind, self.built_n
            arrays = {"ids": snap.catalogue.row_ids}
            if self._own:
                arrays["vectors"] = snap.vectors
            files: Dict[str, Callable[[str], None]] = {}
            tiers: List[Any] = []
            for s, seg in enumerate(snap.segments):
                if seg.index is not None:
                    files[f"index{s}.faiss"] = _writer(seg.index)
                if seg.tiers is not None:
                    table, tier_arrays = seg.tiers.state(s)
                    tiers.append(table["tiers"])
                    arrays.update(tier_arrays)
            if tiers:
                meta["tiers"] = tiers
            return meta, arrays, files

    @classmethod
    def from_state(
        cls,
        meta: Dict[str, Any],
        arrays: Dict[str, np.ndarray],
        files: Dict[str, Any],
        dim: int,
        threads: int,
        where: str,
        **options: Any,
    ) -> "FaissIndex":
        if options:
            raise ValueError(f"unknown load options for a faiss index: {sorted(options)}")
        try:
            index = cls(
                meta["kind"],
                segments=meta["segments"],
                candidates=meta["candidates"],
                hnsw_m=meta["hnsw_m"],
                ef_construction=meta["ef_construction"],
                ef_search=meta["ef_search"],
                nlist=meta["nlist"],
                nprobe=meta["nprobe"],
                pad=meta["pad"],
            )
            index.open(dim, threads)
        except KeyError as e:
            raise ValueError(f"{where}: index metadata lacks {e}") from None
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        row_ids = _check_ids(arrays.get("ids"), where)
        kind = index.kind
        if index.auto:
            chosen, built = meta.get("chosen"), meta.get("built_n")
            if chosen not in ("exact", "hnsw", "tiered-ivf") or not isinstance(built, int) or built < 0:
                raise ValueError(f"{where}: an auto index needs its chosen kind and built_n, got {chosen!r}, {built!r}")
            kind, index.built_n = str(chosen), built
        norms = meta.get("max_norms")
        if (
            not isinstance(norms, list)
            or len(norms) != index.segments
            or not all(isinstance(x, (int, float)) and np.isfinite(x) and x >= 0 for x in norms)
        ):
            raise ValueError(f"{where}: max_norms must be {index.segments} finite non-negative numbers, got {norms!r}")
        segs: List[Segment] = []
        for s, seg in enumerate(index._segments(kind)):
            seg.max_norm = float(norms[s])
            name = f"index{s}.faiss"
            if name in files:
                seg.index = _read_index(files[name], where, name)
                _check_index(seg, row_ids.size, where, name, kind)
                if seg.tiered:
                    tables = meta.get("tiers")
                    table = tables[s] if isinstance(tables, list) and len(tables) == index.segments else None
                    seg.tiers = Tiers.from_state(
                        table,
                        arrays.get(f"tiers{s}_aug"),
                        arrays.get(f"tiers{s}_radii"),
                        seg.index,
                        f"{where} ({name})",
                    )
            elif row_ids.size:
                raise ValueError(f"{where}: missing {name}")
            segs.append(seg)
        vecs: Optional[np.ndarray] = None
        if index._own:
            vecs = arrays.get("vectors")
            if vecs is None or vecs.dtype != np.float32 or vecs.shape != (row_ids.size, dim):
                raise ValueError(
                    f"{where}: item vectors must be float32 ({row_ids.size}, {dim}), got "
                    f"{None if vecs is None else (vecs.dtype, vecs.shape)}"
                )
            vecs = np.ascontiguousarray(vecs)
        elif row_ids.size == 0:
            vecs = np.zeros((0, dim), np.float32)
        catalogue = Catalogue(row_ids)
        index._publish(catalogue, segs, vecs)
        if not np.isfinite(index._current().vectors).all():
            raise ValueError(f"{where}: item vectors contain non-finite values")
        if index.exact and catalogue.dead:
            raise ValueError(f"{where}: an exact index holds no removed rows, found {catalogue.dead}")
        return index

    def __repr__(self) -> str:
        chosen = f" -> {self.chosen!r}" if self.auto and self._snap is not None else ""
        return f"FaissIndex({self.kind!r}{chosen}, segments={self.segments}, items={len(self) if self._snap else 0})"


def _flat_vectors(seg: Segment, dim: int) -> np.ndarray:
    """float32 (rows, dim) view into an IndexFlat's storage: valid until the index changes, which
    only happens under the write side of the lock, after which a new view is published."""
    index = seg.index
    if index is None or index.ntotal == 0:
        return np.zeros((0, dim), dtype=np.float32)
    flat = faiss.rev_swig_ptr(faiss.downcast_index(index).get_xb(), index.ntotal * index.d)
    return flat.reshape(index.ntotal, index.d)[:, :dim]
