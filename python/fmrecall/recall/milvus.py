"""MilvusIndex: the catalogue in Milvus (Milvus Lite in a local file, or a Milvus cluster).

One collection holds the items: the item id is the INT64 primary key ``id`` and the exact float32
item vector p is one FLOAT_VECTOR field ``vector`` of the Recaller's dimension. Milvus proposes
candidates with its ANN index (inner-product metric); every candidate comes back with its stored
vector and is re-scored here exactly (float32 <q, p>) before the top k is cut, so scores are always
the model's and the serving process holds no copy of the catalogue.

Consistency: the collection is created with, and every read asks for, Strong consistency, so a
search right after `add` / `remove` returns sees the change. Milvus has no transactions across
requests: an `add` is a sequence of upsert requests (each one applied whole by Milvus), so a
search running meanwhile may see some batches of it and not others. If a batch fails, the ids the
call inserted so far are deleted and the vectors it replaced are written back (read before each
batch is sent), i.e. the index returns to its state before the call unless Milvus itself fails
again during that repair (then the error says so).

Filters: queries with the same exclude / restrict form one search request, the filter written as
the expression ``id not in [...]`` / ``id in [...]``. A restriction no larger than the candidate
count is not searched at all: its items are read by primary key and all scored exactly (certified).
An exclude list longer than `max_filter_ids` is over-fetched instead (candidates + its length, within
Milvus's topk limit of 16384) and dropped here. Results are certified for FLAT only.

Threads: pymilvus shares one gRPC handler among the clients of one address and gRPC channels are
thread-safe, so one client serves every thread; writers (add / remove) are serialised here.

Milvus Lite (``uri`` = a file path ending in ``.db``) runs in this process and opens a file from
one process at a time; a cluster (``uri="http://host:19530"``, ``token=``) is shared by any number
of processes, which then see the same items.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from .base import IdFilter, IndexState, ItemIndex, filter_of
from .milvus_collection import check_collection, create_collection
from .milvus_search import ann_search, call_params, cut, fetch
from .milvus_support import (  # noqa: F401
    _COLLECTION_NAME,
    _METRICS,
    _PARAMS,
    _REMOTE,
    ID_FIELD,
    INSTALL_HINT,
    MAX_DIM,
    MAX_TOPK,
    TOKEN_ENV,
    VECTOR_FIELD,
    RollbackError,
    _AddLog,
    _check_params,
    _hit_arrays,
    _id_list,
    _lite_engine_collection,
    _pymilvus,
)
from .milvus_write import roll_back, upsert


class MilvusIndex(ItemIndex):
    """Item vectors in a Milvus collection; candidates from Milvus, re-scored exactly here.

    uri : a local file path ending in ".db" (Milvus Lite, embedded: tests and laptops) or a
        server address "http://host:19530" (a cluster, shared by many processes)
    collection : the collection's name; created on first use with fields ``id`` (INT64 primary
        key) and ``vector`` (FLOAT_VECTOR of the Recaller's dimension), or checked if it exists
    index_type : "HNSW" (default), "FLAT" (exact: results certified), "IVF_FLAT" or "AUTOINDEX"
    metric : "IP" (inner product; the only metric whose candidates are the top inner products)
    params : index parameters: HNSW "M", "efConstruction" (build) and "ef" (search; the search
        walks at least the candidate count); IVF_FLAT "nlist" (build), "nprobe" (search)
    token : the cluster's credentials ("user:password" or an API key); never saved or pickled
        (None: the environment variable FMRECALL_MILVUS_TOKEN, if set)
    candidates : ANN candidates per query before exact re-scoring (default max(4k, 100); never
        fewer than k; at most 16384, Milvus's topk limit)
    max_filter_ids : most ids one exclude / restrict filter expression may list (a longer exclude
        list is over-fetched instead, when candidates + its length fit Milvus's topk limit)
    """

    backend = "milvus"

    def __init__(
        self,
        uri: Any,
        collection: str = "fmrecall_items",
        index_type: str = "HNSW",
        metric: str = "IP",
        params: Optional[Dict[str, int]] = None,
        token: Optional[str] = None,
        *,
        candidates: Optional[int] = None,
        max_filter_ids: int = 100_000,
    ) -> None:
        if isinstance(uri, os.PathLike):
            uri = os.fspath(uri)
        if not isinstance(uri, str) or not uri.strip():
            raise ValueError(
                f"uri must be a Milvus Lite file path ending in '.db' or a server address "
                f"'http://host:19530', got {uri!r}"
            )
        if not uri.startswith(_REMOTE):
            if not uri.endswith(".db"):
                raise ValueError(
                    f"uri {uri!r}: a Milvus Lite file path must end in '.db' (or give a server "
                    f"address 'http://host:19530')"
                )
            uri = os.path.abspath(uri)
        if not isinstance(collection, str) or not _COLLECTION_NAME.match(collection):
            raise ValueError(
                f"collection must be a Milvus collection name (a letter or _, then letters, digits "
                f"or _, at most 255), got {collection!r}"
            )
        if index_type not in _PARAMS:
            raise ValueError(f"index_type must be one of {', '.join(_PARAMS)}, got {index_type!r}")
        if metric not in _METRICS:
            raise ValueError(f"metric must be 'IP' (inner product: the model's score is b + <q, p>), got {metric!r}")
        if token is not None and not isinstance(token, str):
            raise ValueError("token must be a string or None")
        if candidates is not None and (
            isinstance(candidates, bool)
            or not isinstance(candidates, (int, np.integer))
            or not 1 <= candidates <= MAX_TOPK
        ):
            raise ValueError(f"candidates must be an integer in [1, {MAX_TOPK}] or None, got {candidates!r}")
        if isinstance(max_filter_ids, bool) or not isinstance(max_filter_ids, (int, np.integer)) or max_filter_ids < 1:
            raise ValueError(f"max_filter_ids must be a positive integer, got {max_filter_ids!r}")
        self.uri = uri
        self.collection = collection
        self.index_type = index_type
        self.metric = metric
        self.params = _check_params(index_type, params)
        self.candidates = None if candidates is None else int(candidates)
        self.max_filter_ids = int(max_filter_ids)
        self._token = token
        self.dim = 0
        self.threads = 0
        self._client: Any = None
        self._write = threading.Lock()  # one writer at a time

    # ------------------------------------------------------------------ connection
    @property
    def lite(self) -> bool:
        """True for Milvus Lite (a local .db file)."""
        return not self.uri.startswith(_REMOTE)

    @property
    def exact(self) -> bool:
        return self.index_type == "FLAT"

    def _connect(self) -> Any:
        pymilvus = _pymilvus()
        token = self._token if self._token is not None else os.environ.get(TOKEN_ENV, "")
        try:
            return pymilvus.MilvusClient(uri=self.uri, token=token or "")
        except Exception as e:
            hint = (
                (
                    " (Milvus Lite opens a .db file from one process at a time, and needs the milvus-lite "
                    f"package: {INSTALL_HINT})"
                )
                if self.lite
                else ""
            )
            raise ConnectionError(f"cannot connect to Milvus at {self.uri!r}{hint}: {e}") from e

    @property
    def client(self) -> Any:
        """The pymilvus MilvusClient (shared by all threads)."""
        if self._client is None:
            raise RuntimeError("MilvusIndex.open() was not called (pass the index to a Recaller)")
        return self._client

    def open(self, dim: int, threads: int) -> None:
        self._open(dim, threads, create=True)

    def _open(self, dim: int, threads: int, *, create: bool) -> None:
        if not 1 <= dim <= MAX_DIM:
            raise ValueError(f"Milvus vectors have 1..{MAX_DIM} dimensions, the Recaller's have {dim}")
        self.dim, self.threads = int(dim), int(threads)
        client = self._connect()
        try:
            if client.has_collection(self.collection):
                check_collection(self, client)
            elif create:
                create_collection(self, client)
            else:
                raise ValueError(f"Milvus collection {self.collection!r} does not exist at {self.uri!r}")
            client.load_collection(self.collection)
        except BaseException:
            client.close()
            raise
        if self._client is not None:
            self._client.close()
        self._client = client

    def flush(self, wait: bool = True, timeout: float = 3600.0) -> None:
        """Seal the rows added so far, so that Milvus indexes them now (optional: Milvus seals by
        itself; until then it scans recent rows by brute force, Milvus Lite up to 128 MB of them),
        and with `wait` block until its index covers every row (TimeoutError after `timeout` s)."""
        self.client.flush(self.collection)
        if not wait:
            return
        if self.lite:  # Milvus Lite reports every row indexed at once and builds in a background thread
            engine = _lite_engine_collection(self.uri, self.collection)
            if engine is not None and hasattr(engine, "_wait_for_bg"):
                engine._wait_for_bg(timeout)
                return
        deadline = time.monotonic() + timeout
        index_name = (self.client.list_indexes(self.collection, field_name=VECTOR_FIELD) or [VECTOR_FIELD])[0]
        while True:
            info = self.client.describe_index(self.collection, index_name) or {}
            if info.get("indexed_rows", 0) >= info.get("total_rows", 0) and not info.get("pending_index_rows", 0):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Milvus collection {self.collection!r}: index covers {info.get('indexed_rows')} "
                    f"of {info.get('total_rows')} rows after {timeout} s"
                )
            time.sleep(0.05)

    def close(self) -> None:
        """Release the connection (the collection and its items stay in Milvus)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ reads (any thread)
    def __len__(self) -> int:
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(res[0]["count(*)"])

    @property
    def ids(self) -> np.ndarray:
        """int64 ids of the indexed items, ascending."""
        if self.lite:  # no result-size cap, and no timestamp service for pymilvus's query iterator
            rows = self.client.query(
                self.collection, filter=f"{ID_FIELD} >= 0", output_fields=[ID_FIELD], consistency_level="Strong"
            )
            return np.unique(np.fromiter((r[ID_FIELD] for r in rows), np.int64, len(rows)))
        it = self.client.query_iterator(
            self.collection, batch_size=MAX_TOPK, output_fields=[ID_FIELD], consistency_level="Strong"
        )
        parts: List[np.ndarray] = []
        try:
            while True:
                batch = it.next()
                if not batch:
                    break
                parts.append(np.fromiter((r[ID_FIELD] for r in batch), np.int64, len(batch)))
        finally:
            it.close()
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64).ravel()
        uniq = np.unique(ids)
        found, vecs = fetch(self, uniq)
        order = np.argsort(found, kind="stable")
        found, vecs = found[order], vecs[order]
        if ids.size == 0:
            return np.zeros((0, self.dim), np.float32)
        if found.size == 0:
            raise KeyError(f"id {int(ids[0])} is not indexed")
        pos = np.minimum(np.searchsorted(found, ids), found.size - 1)
        missing = found[pos] != ids
        if np.any(missing):
            raise KeyError(f"id {int(ids[np.argmax(missing)])} is not indexed")
        return np.ascontiguousarray(vecs[pos], dtype=np.float32)

    def search(
        self,
        q: np.ndarray,
        k: int,
        exclude: IdFilter,
        restrict: IdFilter,
        certify: bool,
        params: Optional[Mapping[str, Any]] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        call = call_params(params)
        q = np.ascontiguousarray(q, dtype=np.float32)
        m = q.shape[0]
        if k > MAX_TOPK:
            raise ValueError(f"k={k} exceeds Milvus's topk limit ({MAX_TOPK})")
        ids = np.full((m, k), -1, np.int64)
        ips = np.full((m, k), -np.inf, np.float32)
        cert = np.zeros(m, bool)
        cand = call.get("candidates", self.candidates)
        n_cand = min(max(cand if cand is not None else max(4 * k, 100), k), MAX_TOPK)
        # queries with identical filters form one request
        groups: Dict[
            Tuple[Optional[bytes], Optional[bytes]], Tuple[Optional[np.ndarray], Optional[np.ndarray], List[int]]
        ] = {}
        for i in range(m):
            ex, rs = filter_of(exclude, i), filter_of(restrict, i)
            ex = None if ex is None or ex.size == 0 else np.unique(ex)
            rs = None if rs is None else np.unique(rs)
            if rs is not None and ex is not None:
                rs = np.setdiff1d(rs, ex, assume_unique=True)
                ex = None
            key = (None if ex is None else ex.tobytes(), None if rs is None else rs.tobytes())
            if key not in groups:
                groups[key] = (ex, rs, [])
            groups[key][2].append(i)
        for ex, rs, rows_list in groups.values():
            rows = np.asarray(rows_list, np.int64)
            if rs is not None and rs.size <= n_cand:  # a small restriction: score all of its items exactly
                found, vecs = fetch(self, rs)
                for i in rows:
                    cut(found, vecs @ q[i], k, ids, ips, i)
                cert[rows] = True
                continue
            ann_search(self, q, rows, k, n_cand, ex, rs, ids, ips, call)
            cert[rows] = self.exact
        return ids, ips, cert

    # ------------------------------------------------------------------ writes (one at a time)
    def _rows_per_request(self) -> int:
        """Rows per upsert request: about 8 MB of vectors (Milvus caps a request's size)."""
        return max(1, min(MAX_TOPK, (8 << 20) // (4 * self.dim + 8)))

    def _checked(self, part: np.ndarray) -> np.ndarray:
        part = np.asarray(part)
        if part.ndim != 2 or part.shape[1] != self.dim:
            raise ValueError(f"item vectors must be (n, {self.dim}), got shape {part.shape}")
        part = np.ascontiguousarray(part, dtype=np.float32)
        if not np.isfinite(part).all():
            raise ValueError("item vectors contain non-finite values")
        return part

    def add(self, ids: np.ndarray, batches: Iterable[np.ndarray]) -> None:
        ids = np.asarray(ids, np.int64).ravel()
        with self._write:
            self.client  # raises if open() was not called
            step = self._rows_per_request()
            done = 0  # ids[:done] were written
            log = _AddLog()
            log.fresh = len(self) == 0  # nothing to replace: no need to read old vectors
            try:
                pending: List[np.ndarray] = []
                n_pending = 0
                for part in batches:
                    part = self._checked(part)
                    if done + n_pending + part.shape[0] > ids.size:
                        raise ValueError(f"{ids.size} ids but more item vectors")
                    pending.append(part)
                    n_pending += part.shape[0]
                    while n_pending >= step:
                        vecs = np.concatenate(pending) if len(pending) > 1 else pending[0]
                        done = upsert(self, ids[done : done + step], vecs[:step], log) + done
                        pending = [vecs[step:]] if vecs.shape[0] > step else []
                        n_pending = vecs.shape[0] - step
                if n_pending:
                    vecs = np.concatenate(pending) if len(pending) > 1 else pending[0]
                    done = upsert(self, ids[done : done + n_pending], vecs, log) + done
                if done != ids.size:
                    raise ValueError(f"{ids.size} ids but {done} item vectors")
            except BaseException as e:
                if log.attempted:
                    roll_back(self, ids[: log.attempted], log, e)
                raise

    def remove(self, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids, np.int64).ravel())
        if ids.size == 0:
            return
        with self._write:
            for lo in range(0, ids.size, MAX_TOPK):
                self.client.delete(self.collection, ids=ids[lo : lo + MAX_TOPK].tolist())

    # ------------------------------------------------------------------ persistence
    def config(self) -> Dict[str, Any]:
        """The collection reference (never the token)."""
        return {
            "uri": self.uri,
            "collection": self.collection,
            "index_type": self.index_type,
            "metric": self.metric,
            "params": dict(self.params),
            "candidates": self.candidates,
            "max_filter_ids": self.max_filter_ids,
        }

    def state(self) -> IndexState:
        return {**self.config(), "dim": self.dim}, {}, {}

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
    ) -> "MilvusIndex":
        unknown = sorted(set(options) - {"token", "uri"})
        if unknown:
            raise ValueError(f"unknown load options for a Milvus index: {unknown} (token=, uri=)")
        if arrays or files:
            raise ValueError(
                f"{where}: a Milvus index stores no item arrays or files, found {sorted(arrays) + sorted(files)}"
            )
        try:
            if meta.get("dim", dim) != dim:
                raise ValueError(f"the index was saved for vectors of dimension {meta['dim']}, the model's have {dim}")
            index = cls(
                options.get("uri") or meta["uri"],
                meta["collection"],
                meta["index_type"],
                meta["metric"],
                meta["params"],
                options.get("token"),
                candidates=meta.get("candidates"),
                max_filter_ids=meta.get("max_filter_ids", 100_000),
            )
            index._open(dim, threads, create=False)
        except KeyError as e:
            raise ValueError(f"{where}: index metadata lacks {e}") from None
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        return index

    def __reduce__(self) -> Any:
        return (_reopen, (self.config(), self.dim, self.threads))

    def __repr__(self) -> str:
        return f"MilvusIndex({self.uri!r}, collection={self.collection!r}, index_type={self.index_type!r})"


def _reopen(config: Dict[str, Any], dim: int, threads: int) -> MilvusIndex:
    """Unpickle: reconnect to the same collection (token from FMRECALL_MILVUS_TOKEN)."""
    index = MilvusIndex(
        config["uri"],
        config["collection"],
        config["index_type"],
        config["metric"],
        config["params"],
        candidates=config.get("candidates"),
        max_filter_ids=config.get("max_filter_ids", 100_000),
    )
    if dim:
        index._open(dim, threads, create=False)
    return index
