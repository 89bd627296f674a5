"""Field kinds: how one table column becomes (row, local feature, value) triplets.

Each field has a name (its column), a side (user / context / item) and a kind:
- ``Categorical``       one value per row; vocabulary learned by fit; values seen fewer than
                         ``min_count`` times share an "other" feature; unseen values map to a reserved
                         feature that no training row uses, so it is neutral (zero weights).
- ``MultiCategorical``  a list per row (list column, or a string split on ``sep``), optional
                         per-value weights; values scaled per field (L2 by default) so a row with
                         many tags does not outweigh one with a single tag.
- ``Numeric``           the standardised raw value (one feature) or quantile buckets (one-hot).
- ``Hashed``            a categorical with ``buckets`` features chosen by a stable hash of the
                         value, inside its own field's range only (ids with 10^8 values).
- ``Vector``            a fixed-length float vector per row (pretrained collaborative factors,
                         text or image embeddings): ``dim`` real-valued features, coordinate d =
                         local feature d.

A Schema (fmrecall.schema) lists fields; field i of the schema is field index i of the model.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ._frames import Series, _hash, _is_missing, _jsonable, _pd
from .diagnostics import value_kind
from .sides import SIDES


class Field:
    """Base class: a named column on one side. Subclasses learn a vocabulary / statistics in fit()
    and turn a column into (row, local feature, value) triplets in encode()."""

    kind = "field"

    def __init__(self, name: str, side: str, *, column: Optional[str] = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a field needs a non-empty name, got {name!r}")
        if side not in SIDES:
            raise ValueError(f"field {name!r}: side must be one of {SIDES}, got {side!r}")
        self.name = name
        self.side = side
        self.column = column or name
        self.fitted = False

    @property
    def size(self) -> int:
        """Number of feature indices this field owns."""
        raise NotImplementedError

    def fit(self, values: Series) -> None:
        raise NotImplementedError

    def encode(self, values: Series) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row int64, local feature int64 in [0, size), value float32) for a pandas Series."""
        raise NotImplementedError

    def describe(self, local: int) -> str:
        """Human-readable meaning of local feature `local`."""
        return f"{self.name}#{local}"

    def kind_mismatch(self, values: Series) -> Optional[Tuple[str, str]]:
        """(kind of `values`, kind fit saw) when they differ (fmrecall.diagnostics), else None.
        Only fields matching values by identity check (categorical, hashed); numbers are parsed."""
        want = getattr(self, "value_kind", None)
        if want is None:
            return None
        got = self._request_kind(values)
        return (got, want) if got is not None and got != want else None

    def _request_kind(self, values: Series) -> Optional[str]:
        return value_kind(values)

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "side": self.side, "column": self.column}

    def _check_categorical(self, s: Series) -> None:
        """ValueError naming the row for a value a categorical cannot hold (missing, fractional, other types)."""
        pd = _pd()
        missing = s.isna().to_numpy()
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            self._fail("missing value (NaN / None) in a categorical column", s.iloc[i], s.index[i])
        if pd.api.types.is_float_dtype(s):
            frac = s.to_numpy() != np.round(s.to_numpy())
            if frac.any():
                i = int(np.flatnonzero(frac)[0])
                self._fail("non-integer number in a categorical column", s.iloc[i], s.index[i])
        elif s.dtype == object:
            ok = s.map(lambda v: isinstance(v, (str, int, np.integer, bool, np.bool_))).to_numpy()
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                self._fail(f"unsupported value of type {type(s.iloc[i]).__name__}", s.iloc[i], s.index[i])

    def _fail(self, what: str, value: Any, row: Any = None) -> None:
        at = f" (row {_jsonable(row)!r})" if row is not None else ""
        raise ValueError(f"field {self.name!r}: {what}: {_jsonable(value)!r}{at}")


class Categorical(Field):
    """One value per row (strings or integers). Local features: 0 = unseen value (reserved, never
    trained, so neutral), 1 = "other" (values seen fewer than ``min_count`` times in fit), 2.. = the
    vocabulary, most frequent first; values added by Schema.partial_fit follow, most frequent
    first within each growth."""

    kind = "categorical"
    UNSEEN, OTHER = 0, 1

    def __init__(self, name: str, side: str, *, min_count: int = 1, column: Optional[str] = None) -> None:
        super().__init__(name, side, column=column)
        if not isinstance(min_count, (int, np.integer)) or min_count < 1:
            raise ValueError(f"field {name!r}: min_count must be an integer >= 1, got {min_count!r}")
        self.min_count = int(min_count)
        self.value_kind: Optional[str] = None  # kind of value fit saw (fmrecall.diagnostics.value_kind)
        self.vocab: List[Any] = []
        self.rare = np.zeros(0, dtype=np.uint64)  # sorted hashes of the values that fell into "other"
        self._index: Any = None  # a pandas Index over vocab, built on first use

    @property
    def size(self) -> int:
        return 2 + len(self.vocab)

    @staticmethod
    def _normal(s: Series) -> Series:
        pd = _pd()
        return s.astype(np.int64) if pd.api.types.is_float_dtype(s) else s

    def fit(self, values: Series) -> None:
        self._check_categorical(values)
        self.value_kind = value_kind(values)
        values = self._normal(values)
        counts = values.value_counts(sort=False)
        counts = counts[counts > 0]  # a categorical dtype lists its unused categories with count 0
        c = counts.to_numpy()
        keep = c >= self.min_count
        order = np.lexsort((np.arange(int(keep.sum())), -c[keep]))  # frequent first, stable
        self.vocab = [_jsonable(v) for v in counts.index[keep][order]]
        self.rare = np.sort(_hash(counts.index[~keep].to_numpy())) if (~keep).any() else np.zeros(0, np.uint64)
        self._index = None
        self.fitted = True

    def _grow_plan(self, values: Series) -> Tuple[List[Any], np.ndarray]:
        """(new vocabulary values, hashes of new rare values) for `values`, changing nothing: values
        neither in the vocabulary nor already rare, counted in `values` only; those with at least
        ``min_count`` occurrences get new local features (frequent first, stable), the others go
        to "other". Known values keep their local feature (a rare value stays "other")."""
        self._check_categorical(values)
        values = self._normal(values)
        counts = values.value_counts(sort=False)
        counts = counts[counts > 0]
        if not len(counts):
            return [], np.zeros(0, np.uint64)
        known = self.local(counts.index.to_numpy()) != self.UNSEEN
        counts = counts[~known]
        c = counts.to_numpy()
        keep = c >= self.min_count
        order = np.lexsort((np.arange(int(keep.sum())), -c[keep]))
        new_vocab = [_jsonable(v) for v in counts.index[keep][order]]
        new_rare = _hash(counts.index[~keep].to_numpy()) if (~keep).any() else np.zeros(0, np.uint64)
        return new_vocab, new_rare

    def _grow(self, new_vocab: List[Any], new_rare: np.ndarray) -> None:
        """Commit a _grow_plan: new values take local features size.. in order."""
        self.vocab = self.vocab + list(new_vocab)
        if new_rare.size:
            self.rare = np.sort(np.concatenate([self.rare, new_rare.astype(np.uint64)]))
        self._index = None

    def local(self, values: Any) -> np.ndarray:
        if self._index is None:
            self._index = _pd().Index(self.vocab)
        pos = self._index.get_indexer(values)
        out = np.where(pos >= 0, pos + 2, self.UNSEEN).astype(np.int64)
        if self.rare.size and (pos < 0).any():
            miss = np.flatnonzero(pos < 0)
            h = _hash(np.asarray(values)[miss])
            at = np.minimum(np.searchsorted(self.rare, h), self.rare.size - 1)
            out[miss[self.rare[at] == h]] = self.OTHER
        return out

    def encode(self, values: Series) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._check_categorical(values)
        n = len(values)
        return np.arange(n, dtype=np.int64), self.local(self._normal(values)), np.ones(n, np.float32)

    def describe(self, local: int) -> str:
        if local == self.UNSEEN:
            return f"{self.name}=<unseen>"
        if local == self.OTHER:
            return f"{self.name}=<other>"
        return f"{self.name}={self.vocab[local - 2]!r}"

    def to_dict(self) -> Dict[str, Any]:
        return {
            **super().to_dict(),
            "min_count": self.min_count,
            "vocab": self.vocab,
            "rare": [int(h) for h in self.rare],
            **({"value_kind": self.value_kind} if self.value_kind is not None else {}),
        }

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "Categorical":
        f = cls(d["name"], d["side"], min_count=d["min_count"], column=d["column"])
        f.vocab = list(d["vocab"])
        f.rare = np.asarray(d.get("rare", []), dtype=np.uint64)
        f.value_kind = _saved_kind(d)
        f.fitted = True
        return f


class MultiCategorical(Categorical):
    """Several values per row: a list / tuple / array column, or strings split on ``sep``; optional
    per-value weights from ``weights_column`` (lists parallel to the values). Within the field the
    row's values are scaled by ``scale``: "l2" (unit L2 norm, default), "mean" (sum 1) or "none".
    An empty list (or empty string) gives the row no feature of this field."""

    kind = "multi_categorical"

    def __init__(
        self,
        name: str,
        side: str,
        *,
        sep: Optional[str] = None,
        weights_column: Optional[str] = None,
        scale: str = "l2",
        min_count: int = 1,
        column: Optional[str] = None,
    ) -> None:
        super().__init__(name, side, min_count=min_count, column=column)
        if scale not in ("l2", "mean", "none"):
            raise ValueError(f"field {name!r}: scale must be 'l2', 'mean' or 'none', got {scale!r}")
        self.sep = sep
        self.weights_column = weights_column
        self.scale = scale

    def _explode(self, values: Series, weights: Optional[Series] = None) -> Tuple[np.ndarray, Series, np.ndarray]:
        """(row, value, weight) of every listed value."""
        pd = _pd()
        lists = []
        for i, v in enumerate(values.tolist()):
            if isinstance(v, str):
                if self.sep is None:
                    self._fail("a string in a list column (give sep= to split strings)", v, values.index[i])
                lists.append([t for t in v.split(self.sep) if t != ""])
            elif isinstance(v, (list, tuple, np.ndarray)):
                lists.append(list(v))
            elif _is_missing(v):
                self._fail(
                    "missing value (NaN / None) in a multi-categorical column (use [] for none)", v, values.index[i]
                )
            else:
                self._fail(f"expected a list{' or a string' if self.sep else ''}", v, values.index[i])
        counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        rows = np.repeat(np.arange(len(lists), dtype=np.int64), counts)
        flat = pd.Series([x for lst in lists for x in lst], dtype=object)
        if weights is None:
            w = np.ones(rows.size, dtype=np.float64)
        else:
            wl = weights.tolist()
            for i, (a, b) in enumerate(zip(lists, wl)):
                if b is None or len(b) != len(a):
                    self._fail(f"weights in {self.weights_column!r} do not match the values", b, values.index[i])
            w = np.asarray([float(x) for lst in wl for x in lst], dtype=np.float64)
            if w.size and not np.all(np.isfinite(w)):
                self._fail("non-finite weight", w[~np.isfinite(w)][0])
        return rows, flat, w

    def fit(self, values: Series) -> None:
        _, flat, _ = self._explode(values)
        if flat.size:
            self._check_categorical(flat)
        Categorical.fit(self, flat)

    def _grow_plan(self, values: Series) -> Tuple[List[Any], np.ndarray]:
        _, flat, _ = self._explode(values)
        if not flat.size:
            return [], np.zeros(0, np.uint64)
        return Categorical._grow_plan(self, flat)

    def encode(self, values: Series, weights: Optional[Series] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, flat, w = self._explode(values, weights)
        if flat.size:
            self._check_categorical(flat)
        local = self.local(flat) if flat.size else np.zeros(0, np.int64)
        if self.scale != "none" and rows.size:
            norm = np.bincount(rows, weights=(w * w if self.scale == "l2" else np.abs(w)), minlength=len(values))
            norm = np.sqrt(norm) if self.scale == "l2" else norm
            w = w / np.where(norm[rows] > 0, norm[rows], 1.0)
        return rows, local, w.astype(np.float32)

    def to_dict(self) -> Dict[str, Any]:
        return {**super().to_dict(), "sep": self.sep, "weights_column": self.weights_column, "scale": self.scale}

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "MultiCategorical":
        f = cls(
            d["name"],
            d["side"],
            sep=d["sep"],
            weights_column=d["weights_column"],
            scale=d["scale"],
            min_count=d["min_count"],
            column=d["column"],
        )
        f.vocab = list(d["vocab"])
        f.rare = np.asarray(d.get("rare", []), dtype=np.uint64)
        f.value_kind = _saved_kind(d)
        f.fitted = True
        return f

    def _request_kind(self, values: Series) -> Optional[str]:
        if self.sep is not None and value_kind(values) == "string":
            return "string"  # split tokens are strings, as in fit
        return value_kind(values.explode())


class Numeric(Field):
    """A number per row. ``buckets=None``: one feature whose value is (x - mean) / std from fit;
    ``buckets=B``: B quantile buckets from fit (one-hot), plus local feature 0 for missing values.
    Missing values (NaN) give no feature in raw mode."""

    kind = "numeric"

    def __init__(self, name: str, side: str, *, buckets: Optional[int] = None, column: Optional[str] = None) -> None:
        super().__init__(name, side, column=column)
        if buckets is not None and (not isinstance(buckets, (int, np.integer)) or buckets < 2):
            raise ValueError(f"field {name!r}: buckets must be None or an integer >= 2, got {buckets!r}")
        self.buckets = None if buckets is None else int(buckets)
        self.mean, self.std = 0.0, 1.0
        self.edges: List[float] = []

    @property
    def size(self) -> int:
        return 1 if self.buckets is None else 1 + len(self.edges) + 1

    def _numbers(self, values: Series) -> np.ndarray:
        pd = _pd()
        if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
            conv = pd.to_numeric(values, errors="coerce")
            bad = conv.isna().to_numpy() & ~values.isna().to_numpy()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                self._fail("not a number", values.iloc[i], values.index[i])
            values = conv
        x = values.to_numpy(dtype=np.float64, na_value=np.nan)
        inf = np.isinf(x)
        if inf.any():
            i = int(np.flatnonzero(inf)[0])
            self._fail("infinite value", x[i], values.index[i])
        return x

    def fit(self, values: Series) -> None:
        x = self._numbers(values)
        x = x[~np.isnan(x)]
        if x.size == 0:
            self._fail("no numbers to fit", list(values[:3]))
        if self.buckets is None:
            self.mean = float(x.mean())
            self.std = float(x.std()) or 1.0
        else:
            qs = np.quantile(x, np.linspace(0, 1, self.buckets + 1)[1:-1])
            self.edges = [float(e) for e in np.unique(qs)]
        self.fitted = True

    def encode(self, values: Series) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = self._numbers(values)
        n = x.size
        ok = ~np.isnan(x)
        if self.buckets is None:
            rows = np.flatnonzero(ok).astype(np.int64)
            vals = ((x[ok] - self.mean) / self.std).astype(np.float32)
            return rows, np.zeros(rows.size, np.int64), vals
        local = np.where(ok, 1 + np.searchsorted(np.asarray(self.edges), np.where(ok, x, 0.0), side="right"), 0)
        return np.arange(n, dtype=np.int64), local.astype(np.int64), np.ones(n, np.float32)

    def describe(self, local: int) -> str:
        if self.buckets is None:
            return f"{self.name} (standardised)"
        if local == 0:
            return f"{self.name}=<missing>"
        lo = self.edges[local - 2] if local >= 2 else -np.inf
        hi = self.edges[local - 1] if local - 1 < len(self.edges) else np.inf
        return f"{lo} <= {self.name} < {hi}"

    def to_dict(self) -> Dict[str, Any]:
        return {**super().to_dict(), "buckets": self.buckets, "mean": self.mean, "std": self.std, "edges": self.edges}

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "Numeric":
        f = cls(d["name"], d["side"], buckets=d["buckets"], column=d["column"])
        f.mean, f.std, f.edges = d["mean"], d["std"], list(d["edges"])
        f.fitted = True
        return f


class Hashed(Field):
    """A categorical with ``buckets`` features picked by a stable 64-bit hash of the value, within
    this field's own range (no vocabulary to learn or store; collisions stay inside the field)."""

    kind = "hashed"

    def __init__(self, name: str, side: str, *, buckets: int, column: Optional[str] = None) -> None:
        super().__init__(name, side, column=column)
        if not isinstance(buckets, (int, np.integer)) or buckets < 1:
            raise ValueError(f"field {name!r}: buckets must be a positive integer, got {buckets!r}")
        self.buckets = int(buckets)
        self.value_kind: Optional[str] = None  # kind of value fit saw, if it was fit
        self.fitted = True

    @property
    def size(self) -> int:
        return self.buckets

    def fit(self, values: Series) -> None:
        self._check_categorical(values)  # same value rules as a categorical
        self.value_kind = value_kind(values)
        self.fitted = True

    def encode(self, values: Series) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._check_categorical(values)
        n = len(values)
        local = (_hash(Categorical._normal(values).to_numpy()) % np.uint64(self.buckets)).astype(np.int64)
        return np.arange(n, dtype=np.int64), local, np.ones(n, np.float32)

    def to_dict(self) -> Dict[str, Any]:
        kind = {"value_kind": self.value_kind} if self.value_kind is not None else {}
        return {**super().to_dict(), "buckets": self.buckets, **kind}

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "Hashed":
        f = cls(d["name"], d["side"], buckets=d["buckets"], column=d["column"])
        f.value_kind = _saved_kind(d)
        return f


def _saved_kind(d: Dict[str, Any]) -> Optional[str]:
    """The saved kind of value of a field dict (absent before 0.2: None, nothing is checked)."""
    kind = d.get("value_kind")
    if kind is not None and kind not in ("string", "number", "bool", "bytes", "mixed"):
        raise ValueError(f"field {d.get('name')!r}: unknown value_kind {kind!r}")
    return kind


class Vector(Field):
    """A fixed-length float vector per row: pretrained collaborative factors, text or image
    embeddings fed as input instead of learned per-id parameters. One field of ``dim`` real-valued
    features, local feature d = coordinate d, so the model learns ``dim`` weights / vectors for the
    field however many rows it has. The column holds lists, tuples or 1-d arrays of ``dim`` finite
    numbers. ``scale="l2"`` divides each row by its L2 norm (a zero vector stays zero), "none"
    keeps the values. Zero coordinates give no node (a value 0 adds nothing to any score). Nothing
    to learn: fitted at construction; fit() only checks the values."""

    kind = "vector"

    def __init__(self, name: str, side: str, dim: int, *, scale: str = "none", column: Optional[str] = None) -> None:
        super().__init__(name, side, column=column)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"field {name!r}: dim must be a positive integer, got {dim!r}")
        if scale not in ("none", "l2"):
            raise ValueError(f"field {name!r}: scale must be 'none' or 'l2', got {scale!r}")
        self.dim = int(dim)
        self.scale = scale
        self.fitted = True

    @property
    def size(self) -> int:
        return self.dim

    def matrix(self, values: Series) -> np.ndarray:
        """float64 (n, dim): the column's vectors, checked (ValueError naming the field and row for a
        value that is not a flat sequence of ``dim`` finite numbers), before scaling."""
        rows = values.tolist()
        if not rows:
            return np.zeros((0, self.dim), np.float64)
        try:
            m = np.array(rows) if all(isinstance(v, (list, tuple, np.ndarray)) for v in rows) else None
        except (ValueError, TypeError):  # ragged: rows of different lengths or nesting
            m = None
        if m is None or m.dtype.kind not in "biuf" or m.shape != (len(rows), self.dim):
            for i, v in enumerate(rows):  # find and name the first bad row
                self._check_row(v, values.index[i])
            m = np.stack([np.asarray(v, dtype=np.float64) for v in rows])
        out = np.asarray(m, dtype=np.float64)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            self._fail("non-finite value in a vector", rows[i], values.index[i])
        return out

    def _check_row(self, v: Any, row: Any) -> None:
        if not isinstance(v, (list, tuple, np.ndarray)):
            what = "missing value (NaN / None) in a vector column" if _is_missing(v) else "expected a list or array"
            self._fail(f"{what} of {self.dim} numbers", v, row)
        try:
            a = np.asarray(v)
        except (ValueError, TypeError):
            a = np.asarray(v, dtype=object)
        if a.ndim != 1 or a.dtype.kind not in "biuf":
            self._fail(f"expected a flat vector of {self.dim} numbers (ragged or non-numeric)", v, row)
        if a.size != self.dim:
            self._fail(f"expected {self.dim} numbers, got {a.size}", v, row)

    def fit(self, values: Series) -> None:
        self.matrix(values)

    def encode(self, values: Series) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.matrix(values)
        if self.scale == "l2":
            norm = np.sqrt(np.einsum("ij,ij->i", m, m))
            m = m / np.where(norm > 0, norm, 1.0)[:, None]
        rows, local = np.nonzero(m)
        return rows.astype(np.int64), local.astype(np.int64), m[rows, local].astype(np.float32)

    def describe(self, local: int) -> str:
        return f"{self.name}[{local}]"

    def to_dict(self) -> Dict[str, Any]:
        return {**super().to_dict(), "dim": self.dim, "scale": self.scale}

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "Vector":
        return cls(d["name"], d["side"], d["dim"], scale=d["scale"], column=d["column"])


_KINDS = {c.kind: c for c in (Categorical, MultiCategorical, Numeric, Hashed, Vector)}
