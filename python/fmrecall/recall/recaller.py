"""Recaller: the model's query side and an item index, answering top-K with exact scores.

Every result is scored exactly (b_q + <q, p>, the model's score on the joined row); approximate
indexes only propose candidates, which are re-scored from the stored float32 item vectors before
the top K is cut, so an ANN index can lose recall but never return a wrong score.

Concurrency contract: any number of threads may call `search`, `item_vectors`, `ids` and `len`
while one thread calls `add_items`, `remove_items` or `save` (writers are serialised). A search
sees the catalogue before or after a change, never a mix. See README "Concurrency".

Item ids: non-negative integers are the index's own ids; strings, bytes and UUIDs are mapped to
internal int64 ids by an `ItemKeys` table (recall/catalogue.py), published before an add reaches
the index and after a removal left it, so a search that saw the same table before and after its
index search translated consistently (`_under_keys`).
"""

from __future__ import annotations

import inspect
import os
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, TypeVar, Union

import numpy as np

from .._limits import check_threads
from ..dataset import Dataset
from ..progress import advance, progress
from ..schema import Schema
from ..sides import Sides
from .base import IdFilter, ItemIndex
from .catalogue import ItemKeys, key_kind
from .faiss_index import FaissIndex
from .faiss_segment import ADD_CHUNK
from .filters import parse_filter
from .result import SearchResult

T = TypeVar("T")


def row_range(ds: Dataset, lo: int, hi: int) -> Dataset:
    """Rows [lo, hi) of `ds` (views of its arrays; the row offsets are rebased)."""
    if lo == 0 and hi >= ds.n_rows:
        return ds
    hi = min(hi, ds.n_rows)
    a, b = int(ds.indptr[lo]), int(ds.indptr[hi])
    return Dataset(
        ds.indptr[lo : hi + 1] - a,
        ds.fields[a:b],
        ds.features[a:b],
        None if ds.values is None else ds.values[a:b],
        None if ds.labels is None else ds.labels[lo:hi],
        n_features=ds.n_features,
        n_fields=ds.n_fields,
        source=ds.source,
    )


class Recaller:
    """Top-K items for a request, with the model's exact scores.

    Parameters
    ----------
    model : a fitted FM, FFM or HybridFM. The Recaller scores with this model as it is now: if
        the model is trained further (fit / partial_fit), `search` and `add_items` raise, because
        the indexed item vectors no longer match it; train a copy and build a new Recaller
    sides : fmrecall.Sides, or a fitted fmrecall.Schema (then items and queries may be given as
        DataFrames / dict rows and are encoded with it); defaults to the model's schema or sides
    index : where the item vectors live. A string selects a faiss index on this machine:
        "auto" (the default: exact search for small catalogues, else the approximate index that
        suits the vectors' dimension and norm spread; README "Which index auto picks"), "exact"
        (IndexFlatIP), "hnsw" (IndexHNSWFlat on L2-augmented vectors), "hnsw-ip" (IndexHNSWFlat
        on the raw inner product), "ivf" (IndexIVFFlat), "tiered-ivf" (inverted lists per norm
        tier) or any faiss index_factory string (inner-product metric); or an index adapter
        instance: `fmrecall.FaissIndex(...)` or `fmrecall.MilvusIndex(uri, ...)` (beyond one
        machine). Every result is re-scored exactly whatever the index
    segments, candidates, hnsw_m, ef_construction, ef_search, nlist, nprobe, pad : faiss index
        parameters, see `fmrecall.FaissIndex` (only with a string `index`)
    threads : threads for faiss and the vector builders (0 = all; at most fmrecall.MAX_THREADS)
    """

    def __init__(
        self,
        model: Any,
        sides: Union[Sides, Schema, None] = None,
        index: Union[str, ItemIndex] = "auto",
        *,
        segments: int = 1,
        candidates: Optional[int] = None,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        nlist: Optional[int] = None,
        nprobe: Optional[int] = None,
        pad: Optional[bool] = None,
        threads: int = 0,
    ) -> None:
        self._bind(model, sides, threads)
        faiss_args: Dict[str, Any] = dict(
            segments=segments,
            candidates=candidates,
            hnsw_m=hnsw_m,
            ef_construction=ef_construction,
            ef_search=ef_search,
            nlist=nlist,
            nprobe=nprobe,
            pad=pad,
        )
        if isinstance(index, ItemIndex):
            defaults = {k: p.default for k, p in inspect.signature(Recaller.__init__).parameters.items()}
            changed = [k for k, v in faiss_args.items() if v != defaults[k]]
            if changed:
                raise ValueError(f"{', '.join(changed)}: give index parameters to the index adapter, not the Recaller")
            self.index = index
        elif isinstance(index, str):
            self.index = FaissIndex(index, **faiss_args)
        else:
            raise ValueError(
                f"index must be a string or an index adapter (fmrecall.FaissIndex / MilvusIndex), "
                f"got {type(index).__name__}"
            )
        self.index.open(self.split.dim, self.threads)

    def _bind(self, model: Any, sides: Union[Sides, Schema, None], threads: Any) -> None:
        """The query side: model, sides / schema, split, threads (validated); no items yet."""
        self._keys = ItemKeys(None)  # the item ids callers use <-> the index's int64 ids
        self._writing = threading.Lock()  # one writer (add, remove, save) at a time
        self.schema: Optional[Schema] = None
        if sides is None:
            sides = getattr(model, "schema_", None) or getattr(model, "sides", None)
        if isinstance(sides, Schema):
            self.schema = sides
            sides = sides.sides
        if not isinstance(sides, Sides):
            raise ValueError("Recaller needs sides=fmrecall.Sides(user=..., context=..., item=...) or a fitted Schema")
        self.threads = check_threads(threads, "threads")
        self.model = model
        self.sides = sides
        self.split = model.split(sides)
        self._generation = getattr(model, "generation_", None)
        self._last = threading.local()  # per thread: the unseen rates of its last search (last_unseen)

    def _init_loaded(self, model: Any, sides: Union[Sides, Schema], threads: Any) -> None:
        self._bind(model, sides, threads)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.split.dim

    @property
    def index_kind(self) -> str:
        """The faiss index string, or the adapter's backend name."""
        return self.index.kind if isinstance(self.index, FaissIndex) else self.index.backend

    @property
    def exact(self) -> bool:
        return isinstance(self.index, FaissIndex) and self.index.exact

    def __len__(self) -> int:
        return len(self.index)

    @property
    def ids(self) -> np.ndarray:
        """Ids of the indexed items: int64, or an object array of str / bytes / UUID."""
        return self._under_keys(lambda keys: keys.keys_of(self.index.ids))[1]

    @property
    def id_kind(self) -> Optional[str]:
        """The kind of this Recaller's item ids: "int", "str", "bytes", "uuid" (fixed by the first
        add_items), None before any."""
        return self._keys.kind

    def _under_keys(self, read: Callable[[ItemKeys], T]) -> Tuple[ItemKeys, T]:
        """`read(keys)` with the current ItemKeys, such that the index state it read matches them:
        repeated when a writer published new keys meanwhile, under the writers' lock after 3 tries."""
        for _ in range(3):
            keys = self._keys
            out = read(keys)
            if self._keys is keys:
                return keys, out
        with self._writing:
            keys = self._keys
            return keys, read(keys)

    @property
    def vectors(self) -> np.ndarray:
        """A copy of the exact item vectors, float32 (rows, dim), row = storage position (removed
        items' rows included until compaction; faiss indexes only)."""
        if not isinstance(self.index, FaissIndex):
            raise AttributeError("vectors by row exist for faiss indexes only; use item_vectors(ids)")
        return self.index.all_vectors()

    def item_vectors(self, ids: Any) -> np.ndarray:
        """The stored exact item vectors p (float32 (n, dim)) of the given ids (KeyError if one is
        not indexed)."""

        def read(keys: ItemKeys) -> np.ndarray:
            wanted = keys.parse(_listed(ids), "ids")
            internal = keys.ids_of(wanted)
            if keys.mapped and np.any(internal < 0):
                raise KeyError(f"id {wanted[np.argmax(internal < 0)]!r} is not indexed")
            return self.index.vectors(internal)

        return self._under_keys(read)[1]

    def _check_model(self) -> None:
        now = getattr(self.model, "generation_", None)
        if now != self._generation:
            raise RuntimeError(
                "the model was trained again after this Recaller was built (fit / partial_fit): its "
                "indexed item vectors no longer match the model. Build a new Recaller (train a copy, "
                "copy.deepcopy(model), to keep serving this one meanwhile)"
            )

    def _encode(self, data: Any, side: str, unseen: Optional[Dict[str, float]] = None) -> Dataset:
        if isinstance(data, Dataset):
            return data
        if self.schema is None:
            raise ValueError("give a Dataset, or build the Recaller with a Schema to pass DataFrames")
        return self.schema.transform(data, side=side, unseen=unseen)

    @property
    def last_unseen(self) -> Dict[str, float]:
        """{field name: share of its values unseen in training} of the calling thread's last
        `search` given DataFrame / dict rows, for each user / context (multi-)categorical field
        ({} before any such search, or after one given a Dataset). Kept per thread
        (threading.local): searches on other threads never change what this thread reads; read it
        on the thread that searched, after the search. A share above 0.5 also raises an
        fmrecall.UnseenValueWarning (fmrecall.diagnostics)."""
        return dict(getattr(self._last, "unseen", {}))

    # ------------------------------------------------------------------ writes
    def add_items(self, items: Any, ids: Any) -> "Recaller":
        """Index item rows under `ids` (one per row, distinct): non-negative integers, or strings,
        bytes or UUIDs (mapped to internal int64 ids; one kind per Recaller). `items` is a Dataset
        of item rows, or a pandas DataFrame / pyarrow Table / dict rows encoded with the schema
        (then `ids` may name its id column). Ids already indexed are replaced. All or nothing: a
        failed call leaves the Recaller as it was. Searches go on meanwhile (see the concurrency
        contract). Returns self."""
        self._check_model()
        if isinstance(ids, str):
            if isinstance(items, Dataset):
                raise ValueError("ids as a column name needs items as a DataFrame")
            from ..schema import _frame

            items = _frame(items)
            ids = items[ids].to_numpy()
        item_ds = self._encode(items, "item")
        if (isinstance(ids, np.ndarray) and ids.ndim != 1) or key_kind(ids) is not None:
            raise ValueError(f"ids must be 1-d with one id per item row ({item_ds.n_rows}), got {ids!r:.60}")
        self.split._check_side(item_ds, want_item=True)
        with self._writing:
            old = self._keys
            keys = old.parse(ids, "ids")
            if keys.size != item_ds.n_rows:
                raise ValueError(f"ids must hold one id per item row ({item_ds.n_rows}), got {keys.size}")
            _check_distinct(keys)
            if keys.size == 0:
                return self
            self._keys, internal = old.added(keys)  # published before the index holds them
            # one bar: item vectors built, then inserted into each faiss segment (Segment.add advances it)
            work = keys.size * (1 + (self.index.segments if isinstance(self.index, FaissIndex) else 0))
            try:
                with progress(work, "add_items", "item"):
                    self.index.add(internal, self._vector_batches(item_ds))
            except RuntimeError as e:  # faiss, e.g. an IVF index with fewer training items than lists
                self._keys = old
                if not isinstance(self.index, FaissIndex):
                    raise
                raise ValueError(
                    f"faiss could not index these {keys.size} items ({str(e).strip().splitlines()[-1]}); "
                    f"nothing was added. An IVF index trains on its first batch: give it at least as many "
                    f"items as it has lists"
                ) from None
            except BaseException:
                self._keys = old
                raise
        return self

    def _vector_batches(self, item_ds: Dataset) -> Iterator[np.ndarray]:
        """Item vectors in slices of ADD_CHUNK rows, built when the index asks for them."""
        for lo in range(0, item_ds.n_rows, ADD_CHUNK):
            vecs = self.split.item_vectors(row_range(item_ds, lo, lo + ADD_CHUNK))
            advance(vecs.shape[0])
            yield vecs

    def remove_items(self, ids: Any) -> "Recaller":
        """Remove items by id (unknown ids are ignored). Returns self."""
        with self._writing:
            old = self._keys
            new, internal = old.removed(old.parse(_listed(ids), "ids"))
            self.index.remove(internal)
            self._keys = new  # published after the index let them go
        return self

    # ------------------------------------------------------------------ search
    def search(
        self,
        query_ds: Any,
        k: int = 10,
        *,
        exclude: Any = None,
        restrict: Any = None,
        certify: bool = False,
        candidates: Optional[int] = None,
        ef_search: Optional[int] = None,
        nprobe: Optional[int] = None,
    ) -> SearchResult:
        """Top-k items for each query row of `query_ds` (user + context fields; a Dataset, or, when
        the Recaller has a schema, a pandas DataFrame, a pyarrow Table, dict rows, or one request as
        a dict of scalars).

        exclude : ids to leave out: one collection of ids for all queries; one entry per query
            (a set, list or array of ids, or None); or a scipy sparse user × item matrix whose row
            i's non-zero columns are query i's ids (implicit-style). E.g. the items each user has
            seen. See recall/filters.py
        restrict : only rank these ids, in the same forms (exact scan; a None entry leaves that
            query unrestricted, an empty one leaves nothing)
        certify : with segments > 1 and exact segment indexes, widen the per-segment K' until
            every query's top k is certified exact (DESIGN.md §5)
        candidates, ef_search, nprobe : this call's search parameters, overriding the index's
            (ANN candidates re-scored exactly, HNSW walk depth, IVF lists probed); passed to the
            index with the call, so concurrent searches with different values do not interfere
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        self._check_model()
        unseen: Dict[str, float] = {}
        encoded = self._encode(query_ds, "query", unseen)
        self._last.unseen = unseen  # this thread's own (last_unseen)
        q, b = self.split.query_vectors(encoded)
        m = q.shape[0]
        loss = getattr(self.model, "loss", "logistic")
        params = {
            name: value
            for name, value in (("candidates", candidates), ("ef_search", ef_search), ("nprobe", nprobe))
            if value is not None
        }

        def run(keys: ItemKeys) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
            excl: IdFilter = parse_filter(exclude, m, "exclude", keys)
            allow: IdFilter = parse_filter(restrict, m, "restrict", keys)
            return self.index.search(q, k, excl, allow, bool(certify), params or None) if m else None

        keys, found = self._under_keys(run)
        if found is None:
            empty = SearchResult.empty(m, k, loss)
            return SearchResult(keys.keys_of(empty.ids), empty.scores, empty.certified, loss)
        ids, ip, cert = found
        scores = (ip + b[:, None]).astype(np.float32)  # b_q + <q, p>: the model's score on the joined row
        return SearchResult(keys.keys_of(ids), scores, cert, loss)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Union[str, os.PathLike]) -> None:
        """Write model, sides / schema, ids, item vectors and indexes into `directory`: a new
        version sub-directory, checksummed, then an atomic switch of the pointer to it, so a
        reader always loads a complete version and a killed save leaves the previous one."""
        from .store import save_recaller

        with self._writing:  # the id table and the index as one state
            save_recaller(self, directory)

    @classmethod
    def load(cls, directory: Union[str, os.PathLike], **options: Any) -> "Recaller":
        """Load a Recaller written by save(); searches give identical results. Every member is
        verified against its SHA-256 and every parameter validated (ValueError naming the file)."""
        from .store import load_recaller

        return load_recaller(directory, **options)

    def __reduce__(self) -> Any:
        from .store import recaller_from_bytes, recaller_to_bytes

        with self._writing:
            payload = recaller_to_bytes(self)
        return (recaller_from_bytes, (payload,))

    def __repr__(self) -> str:
        return f"Recaller({type(self.model).__name__}, index={self.index_kind!r}, items={len(self)}, dim={self.dim})"


def recaller_config(rec: Recaller) -> Dict[str, Any]:
    """The Recaller's own settings as saved (the index's are in its state)."""
    return {
        "sides": rec.sides.to_dict(),
        "threads": rec.threads,
        "backend": rec.index.backend,
        "schema": rec.schema.to_dict() if rec.schema is not None else None,
        "item_keys": rec._keys.kind,
    }


def _listed(ids: Any) -> Any:
    """One id as a list of one; collections as they are."""
    return [ids] if key_kind(ids) is not None else ids


def _check_distinct(keys: np.ndarray) -> None:
    """ValueError naming the first id given twice."""
    if keys.dtype == np.int64:
        uniq, counts = np.unique(keys, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"duplicate id {int(uniq[counts > 1][0])} in one add_items call")
        return
    seen: set = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"duplicate id {key!r} in one add_items call")
        seen.add(key)


__all__ = ["Recaller", "SearchResult", "row_range", "recaller_config"]
