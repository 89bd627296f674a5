"""Field-aware sparse rows (CSR) shared by training, prediction and the query/item split."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from .dataset_args import (
    ArrayLike,
    _first,
    _float_array,
    _index_array,
    _indptr_array,
    _paths,
    field_map,
)
from .source import check_labels, labelled_metrics

if TYPE_CHECKING:
    from .schema import Schema


class Dataset:
    """Field-aware sparse rows: row ``r`` holds nodes ``indptr[r]:indptr[r+1]``.

    Attributes
    ----------
    indptr : int64 (n_rows + 1,)
    fields, features : int32 (nnz,)   global field / feature indices
    values : float32 (nnz,) or None   None means every value is 1 (one-hot data, half the memory)
    labels : float32 (n_rows,) or None
    n_features, n_fields : int        at least max index + 1; larger leaves room for unseen indices

    Arrays of the right dtype are used without a copy. At predict time a feature or field index
    beyond what the model was trained with is ignored (it has no weights), not an error.
    Constructors reject what they would otherwise truncate or wrap (a float 1.7 in an index array,
    an int64 2^32 feature, a float n_features) with a ValueError naming the argument.

    ``from_libffm(..., mmap=True)`` / ``from_libsvm(..., mmap=True)`` give read-only np.memmap
    arrays over a binary cache (fmrecall.cache): fit, partial_fit and predict then read the rows
    from the page cache, in chunks of rows, without copying them into the process.
    """

    __slots__ = ("indptr", "fields", "features", "values", "labels", "n_features", "n_fields", "source")

    def __init__(
        self,
        indptr: ArrayLike,
        fields: ArrayLike,
        features: ArrayLike,
        values: Optional[ArrayLike] = None,
        labels: Optional[ArrayLike] = None,
        *,
        n_features: Optional[int] = None,
        n_fields: Optional[int] = None,
        source: Optional[str] = None,
    ) -> None:
        indptr = _indptr_array(indptr)
        if indptr.ndim != 1 or indptr.size < 1:
            raise ValueError("indptr must be 1-d with n_rows + 1 entries")
        fields = _index_array(fields, "fields")
        features = _index_array(features, "features")
        nnz = features.size
        if fields.size != nnz:
            raise ValueError(f"fields has {fields.size} entries but features has {nnz}")
        if indptr[0] != 0 or indptr[-1] != nnz:
            raise ValueError(f"indptr must start at 0 and end at nnz={nnz}, got {indptr[0]}..{indptr[-1]}")
        step = _first(indptr, lambda b: np.diff(b) < 0, overlap=1)  # block [s, s+B]: rows s..s+B-1
        if step is not None:
            raise ValueError(f"indptr decreases at row {step}")
        n_rows = indptr.size - 1
        self.indptr = indptr
        self.fields = fields
        self.features = features
        self.values = None if values is None else _float_array(values, "values", nnz)
        self.labels = None if labels is None else _float_array(labels, "labels", n_rows)
        need_features = int(features.max()) + 1 if nnz else 0
        need_fields = int(fields.max()) + 1 if nnz else 0
        self.n_features = self._count(n_features, need_features, "n_features", "feature")
        self.n_fields = self._count(n_fields, need_fields, "n_fields", "field")
        self.source = source

    @staticmethod
    def _count(given: Optional[int], need: int, name: str, what: str) -> int:
        if given is None:
            return need
        if isinstance(given, (bool, np.bool_)) or not isinstance(given, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {given!r}")
        given = int(given)
        if given > 2**31:
            raise ValueError(f"{name}={given} is out of range: indices are below 2^31")
        if given < need:
            raise ValueError(f"{name}={given} but the data has {what} index {need - 1}")
        return given

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        indptr: ArrayLike,
        fields: ArrayLike,
        features: ArrayLike,
        values: Optional[ArrayLike] = None,
        labels: Optional[ArrayLike] = None,
        *,
        n_features: Optional[int] = None,
        n_fields: Optional[int] = None,
    ) -> "Dataset":
        """Build from CSR arrays (no copy when dtypes are int64 / int32 / float32 and contiguous)."""
        return cls(indptr, fields, features, values, labels, n_features=n_features, n_fields=n_fields)

    @classmethod
    def from_libffm(
        cls,
        path_or_paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
        *,
        n_features: Optional[int] = None,
        n_fields: Optional[int] = None,
        mmap: bool = False,
        cache_dir: Union[str, os.PathLike, None] = None,
    ) -> "Dataset":
        """Parse ``label field:feature:value ...`` lines (C++ parser, one pass to size, one to parse).

        ``path_or_paths`` is one path or a list of paths, whose rows are concatenated in order.
        Labels 0/1, -1/1 or real; CRLF, multi-valued and out-of-order fields are fine; blank lines
        are skipped. Numbers are decimal with at most one sign; a value or label whose magnitude is
        below float32's smallest subnormal (~1.4e-45, e.g. ``1e-50`` or ``1e-400``) reads as 0
        (underflow), one above float32's maximum (~3.4e38), inf and nan are errors. Malformed input
        raises ValueError naming ``path:line`` (bytes that are not printable ASCII are quoted as
        ``\\xNN``). Only regular files are read (a FIFO or a device such as /dev/zero is a
        ValueError) and a line may hold at most 16 MiB. Ctrl-C stops a long parse (checked every
        16 MiB).

        ``mmap=True``: the text is converted once, in one streaming pass with bounded memory, into
        a checksummed binary cache (fmrecall.cache: a directory next to the first file, or in
        ``cache_dir``) and the arrays are memory-mapped read-only from it, so training and
        prediction stream through data larger than memory. A cache whose sources changed (size or
        mtime) or whose bytes do not match their SHA-256 is rebuilt, never trusted.
        """
        paths = _paths(path_or_paths)
        if mmap:
            return cls._from_cache(paths, "libffm", None, n_features, n_fields, cache_dir)
        parts = [_core.parse_libffm(p) for p in paths]
        return cls._from_parsed(parts, paths, n_features, n_fields)

    @classmethod
    def from_libsvm(
        cls,
        path_or_paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
        fields: Union[Sequence[Tuple[int, int]], ArrayLike],
        *,
        n_features: Optional[int] = None,
        n_fields: Optional[int] = None,
        mmap: bool = False,
        cache_dir: Union[str, os.PathLike, None] = None,
    ) -> "Dataset":
        """Parse ``label feature:value ...`` (libsvm / libfm) lines with a feature -> field map.

        ``fields`` is either a list of ``[start, end)`` integer feature ranges (range i is field i;
        e.g. the frappe ranges in shared/data/README.md) or an int array ``field_of_feature``
        (-1 = none). A feature outside every range raises ValueError naming ``path:line``. Several
        paths, number syntax, file checks, ``mmap`` and ``cache_dir``: as from_libffm.
        """
        paths = _paths(path_or_paths)
        fmap = field_map(fields)
        if n_fields is None and fmap.size:
            n_fields = int(fmap.max()) + 1
        if mmap:
            return cls._from_cache(paths, "libsvm", fmap, n_features, n_fields, cache_dir)
        parts = [_core.parse_libsvm(p, fmap) for p in paths]
        return cls._from_parsed(parts, paths, n_features, n_fields)

    @classmethod
    def _from_parsed(
        cls, parts: List[dict], paths: List[str], n_features: Optional[int], n_fields: Optional[int]
    ) -> "Dataset":
        source = os.pathsep.join(paths)
        if len(parts) == 1:
            d = parts[0]
            values = d["values"]  # None when every value is 1 (one-hot): the kernels read 1
            return cls(
                d["indptr"],
                d["fields"],
                d["features"],
                values,
                d["labels"],
                n_features=n_features,
                n_fields=n_fields,
                source=source,
            )
        offsets = np.cumsum([0] + [d["features"].size for d in parts])
        indptr = np.concatenate(
            [parts[0]["indptr"][:1]] + [d["indptr"][1:] + off for d, off in zip(parts, offsets[:-1])]
        )
        cat = lambda name: np.concatenate([d[name] for d in parts])  # noqa: E731
        values = None
        if any(d["values"] is not None for d in parts):
            values = np.concatenate(
                [d["values"] if d["values"] is not None else np.ones(d["features"].size, np.float32) for d in parts]
            )
        return cls(
            indptr,
            cat("fields"),
            cat("features"),
            values,
            cat("labels"),
            n_features=n_features,
            n_fields=n_fields,
            source=source,
        )

    @classmethod
    def _from_cache(
        cls,
        paths: List[str],
        kind: str,
        fmap: Optional[np.ndarray],
        n_features: Optional[int],
        n_fields: Optional[int],
        cache_dir: Union[str, os.PathLike, None],
    ) -> "Dataset":
        from .cache import open_cache

        where = None if cache_dir is None else str(os.fspath(cache_dir))
        arrays, header, _, _ = open_cache([os.path.abspath(p) for p in paths], kind, fmap, where)
        # The arrays are the parser's own output, checksummed: no nnz-sized validation pass (it
        # would read every page and allocate temporaries as large as the data).
        ds = cls.__new__(cls)
        ds.indptr, ds.fields, ds.features = arrays["indptr"], arrays["fields"], arrays["features"]  # type: ignore
        ds.values, ds.labels = arrays["values"], arrays["labels"]
        ds.n_features = cls._count(n_features, int(header["n_features"]), "n_features", "feature")
        ds.n_fields = cls._count(n_fields, int(header["n_fields"]), "n_fields", "field")
        ds.source = os.pathsep.join(paths)
        return ds

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.indptr.size - 1

    @property
    def n_rows(self) -> int:
        return self.indptr.size - 1

    @property
    def nnz(self) -> int:
        return int(self.features.size)

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return (
            f"Dataset(n_rows={self.n_rows}, nnz={self.nnz}, n_features={self.n_features}, "
            f"n_fields={self.n_fields}{src})"
        )

    def values_or_ones(self) -> np.ndarray:
        """float32 (nnz,) values, materialising ones for one-hot data."""
        return self.values if self.values is not None else np.ones(self.nnz, dtype=np.float32)

    def subset(self, rows: ArrayLike) -> "Dataset":
        """A new Dataset with the given rows (int indices or boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.size != self.n_rows:
                raise ValueError(f"boolean mask has {rows.size} entries, dataset has {self.n_rows} rows")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False)
        if rows.size and (rows.min() < -self.n_rows or rows.max() >= self.n_rows):
            raise IndexError(f"row index out of range for {self.n_rows} rows")
        rows = np.where(rows < 0, rows + self.n_rows, rows)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # node positions: for each selected row, starts[r] + 0..len-1
        pos = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1], dtype=np.int64)
        take = lambda a: None if a is None else a[pos]  # noqa: E731
        return Dataset(
            indptr,
            self.fields[pos],
            self.features[pos],
            take(self.values),
            None if self.labels is None else self.labels[rows],
            n_features=self.n_features,
            n_fields=self.n_fields,
            source=self.source,
        )

    def holdout(self, fraction: float = 0.8, seed: int = 0) -> Tuple["Dataset", "Dataset"]:
        """Seeded random train / validation split: (a ``fraction`` of the rows, the rest), each in
        the original row order. (Not the query / item split of a model: see ``model.split``.)"""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        perm = np.random.default_rng(seed).permutation(self.n_rows)
        cut = int(round(fraction * self.n_rows))
        return self.subset(np.sort(perm[:cut])), self.subset(np.sort(perm[cut:]))

    def split(self, fraction: float = 0.8, seed: int = 0) -> Tuple["Dataset", "Dataset"]:
        """Deprecated alias of ``holdout`` ("split" is the model's query / item split)."""
        warnings.warn(
            "Dataset.split is deprecated: use Dataset.holdout(fraction, seed)", DeprecationWarning, stacklevel=2
        )
        return self.holdout(fraction, seed)

    def to_libffm(self, path: Union[str, os.PathLike]) -> None:
        """Write as libffm text (shortest round-trip floats, so parsing it back is exact)."""
        _core.write_libffm(os.fspath(path), self.indptr, self.fields, self.features, self.values, self.labels)

    def core_args(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """(indptr, fields, features, values) as the C++ core takes them."""
        return self.indptr, self.fields, self.features, self.values

    # ------------------------------------------------------------------ TrainingSource (fmrecall.source)
    def source_schema(self) -> Optional["Schema"]:
        """None: plain rows carry no Schema."""
        return None

    def check_labels(self, loss: str, name: str) -> None:
        """ValueError unless `loss` can be trained on these rows (labels present and valid)."""
        if loss == "bpr":
            raise ValueError("loss='bpr' is pairwise: train it on fmrecall.Interactions with negatives >= 1")
        check_labels(self.labels, loss, name)

    def feature_nodes(self) -> "Dataset":
        """The rows themselves: every node a training row holds."""
        return self

    def row_sq_norms(self) -> np.ndarray:
        """float64 (n_rows,): each row's squared L2 norm Σ x² (every node counted)."""
        sq = self.values_or_ones().astype(np.float64) ** 2
        csum = np.concatenate([[0.0], np.cumsum(sq)])
        return csum[self.indptr[1:]] - csum[self.indptr[:-1]]

    def mean_sq_norm(self) -> float:
        """Mean squared L2 norm of a training row (fit's constant value scale is 1/sqrt of it)."""
        return float(self.row_sq_norms().mean()) if self.n_rows else 0.0

    def train_chunk(
        self,
        core: "_core.Model",
        order: np.ndarray,
        loss: int,
        seed: int,
        learning_rate: float,
        reg_linear: float,
        reg_factors: float,
        threads: int,
    ) -> Tuple[float, int]:
        """One AdaGrad pass over the rows in `order` on `core`: (summed loss, rows)."""
        assert self.labels is not None  # check_labels ran first
        total = core.train(*self.core_args(), self.labels, order, loss, learning_rate, reg_linear, reg_factors, threads)
        return total, int(order.size)

    def scores(self, core: "_core.Model", threads: int) -> np.ndarray:
        """Raw scores of every row, float32 (n_rows,)."""
        return core.predict(*self.core_args(), threads)

    def evaluate(self, core: "_core.Model", loss: str, seed: int, threads: int) -> Dict[str, float]:
        """Logloss and AUC (logistic) or MSE (squared) of the model on these rows."""
        assert self.labels is not None
        return labelled_metrics(self.labels, self.scores(core, threads), loss)
