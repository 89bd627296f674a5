"""The one small interface every index backend implements, and the request filters it takes."""

from __future__ import annotations

import abc
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

# A filter of item ids, normalised by `filters.parse_filter`: None (no filter), one int64 array for every
# query, or one entry per query (an int64 array, or None = no filter for that query).
IdFilter = Union[None, np.ndarray, List[Optional[np.ndarray]]]
IdsLike = Union[Sequence[int], np.ndarray]

# (meta, arrays, files): what an index persists. meta is JSON and arrays go into items.npz; files
# maps a member name (e.g. "index0.faiss") to a function that writes that member to a path. All
# members are checksummed by the Recaller's store.
IndexState = Tuple[Dict[str, Any], Dict[str, np.ndarray], Dict[str, Callable[[str], None]]]


def filter_of(f: IdFilter, i: int) -> Optional[np.ndarray]:
    """The ids filter `f` gives query i (None: no filter)."""
    if f is None or isinstance(f, np.ndarray):
        return f
    return f[i]


class ItemIndex(abc.ABC):
    """Where item vectors live and how a query's top k is found: one adapter per backend.

    An index stores int64 item ids with their exact float32 item vectors p and answers the top k
    by the exact inner product <q, p>: approximate backends only propose candidates, which are
    re-scored exactly before the cut. Adapters are thread-safe: any number of `search` /
    `vectors` / `ids` calls may run while one `add` / `remove` / `state` call runs, and each search
    sees one consistent catalogue (before or after a change, never a mix).
    """

    #: the name the Recaller saves, to find the adapter class again on load
    backend: str = ""

    @abc.abstractmethod
    def open(self, dim: int, threads: int) -> None:
        """Called once by the Recaller before any other call: the vector dimension (float32 (dim,)
        item vectors, last coordinate the item's bias slot) and the thread count (0 = all)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of items indexed."""

    @property
    @abc.abstractmethod
    def ids(self) -> np.ndarray:
        """int64 (n,) ids of the indexed items."""

    @abc.abstractmethod
    def add(self, ids: np.ndarray, batches: Iterable[np.ndarray]) -> None:
        """Index `ids` (int64 (n,), distinct, >= 0); `batches` yields their vectors in order as
        float32 (n_i, dim) slices (Σ n_i = n). Ids already indexed are replaced. All or nothing: a
        failure leaves the index as it was."""

    @abc.abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Remove items by id; unknown ids are ignored."""

    @abc.abstractmethod
    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """float32 (n, dim) stored vectors of `ids` (KeyError naming an id not indexed)."""

    @abc.abstractmethod
    def search(
        self,
        q: np.ndarray,
        k: int,
        exclude: IdFilter,
        restrict: IdFilter,
        certify: bool,
        params: Optional[Mapping[str, Any]] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top k by exact <q, p> for q float32 (m, dim): (ids int64 (m, k) with -1 padding,
        inner products float32 (m, k) with -inf padding, certified bool (m,) = provably exact).
        `params` overrides search parameters for this call only (e.g. candidates, ef_search,
        nprobe): nothing shared is changed; an unknown name is a ValueError."""

    @abc.abstractmethod
    def state(self) -> IndexState:
        """What `from_state` needs to rebuild this index: (meta, arrays, member writers)."""

    @classmethod
    @abc.abstractmethod
    def from_state(
        cls,
        meta: Dict[str, Any],
        arrays: Dict[str, np.ndarray],
        files: Dict[str, Any],
        dim: int,
        threads: int,
        where: str,
        **options: Any,
    ) -> "ItemIndex":
        """The index `state` described (`files`: member name -> an open, verified binary file), opened
        and validated: ValueError naming `where` and the entry for anything inconsistent.
        `options` are backend-specific load options (e.g. MilvusIndex's token)."""
