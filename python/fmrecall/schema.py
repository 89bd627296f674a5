"""Named feature fields: how table columns become field-aware sparse rows.

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

Field i of the schema is field index i of the model; every field owns a contiguous range of
feature indices, so hashing never collides across fields (DESIGN.md §6).

Growth (daily updates with new ids): ``Schema.partial_fit(frames)`` adds the new values of
Categorical / MultiCategorical fields without moving any existing feature. The new values of every
field are appended after all existing features (an *extension* segment per grown field and growth),
and the schema keeps, per field, the map from local value to global feature: so a grown field owns
its original range plus its extension segments. See ``Schema.partial_fit`` for why this layout.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .dataset import Dataset
from .sides import SIDES, Sides

Frame = Any  # a pandas DataFrame, or a list of dict rows


def _pd():
    import pandas as pd
    return pd


def _frame(data: Frame):
    """A pandas DataFrame from a DataFrame, a dict of columns or a list of dict rows."""
    pd = _pd()
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, dict):
        return pd.DataFrame(data)
    if isinstance(data, (list, tuple)):
        return pd.DataFrame(list(data))
    raise TypeError(f"expected a pandas DataFrame or a list of dict rows, got {type(data).__name__}")


def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


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

    def fit(self, values) -> None:
        raise NotImplementedError

    def encode(self, values) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row int64, local feature int64 in [0, size), value float32) for a pandas Series."""
        raise NotImplementedError

    def describe(self, local: int) -> str:
        """Human-readable meaning of local feature `local`."""
        return f"{self.name}#{local}"

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "side": self.side, "column": self.column}

    def _fail(self, what: str, value: Any, row: Any = None) -> None:
        at = f" (row {_jsonable(row)!r})" if row is not None else ""
        raise ValueError(f"field {self.name!r}: {what}: {_jsonable(value)!r}{at}")


def _hash(values) -> np.ndarray:
    """Stable 64-bit hashes of the values (same across processes and platforms)."""
    from pandas.util import hash_array
    arr = np.asarray(values)
    if arr.dtype.kind in "iub":
        arr = arr.astype(np.int64)
    else:
        arr = arr.astype(str).astype(object)
    return hash_array(arr, categorize=False)


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
        self.vocab: List[Any] = []
        self.rare = np.zeros(0, dtype=np.uint64)  # sorted hashes of the values that fell into "other"
        self._index = None

    @property
    def size(self) -> int:
        return 2 + len(self.vocab)

    def _check(self, s) -> None:
        pd = _pd()
        missing = s.isna().to_numpy()
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            self._fail("missing value (NaN / None) in a categorical column", s.iloc[i], s.index[i])
        if pd.api.types.is_float_dtype(s):
            frac = (s.to_numpy() != np.round(s.to_numpy()))
            if frac.any():
                i = int(np.flatnonzero(frac)[0])
                self._fail("non-integer number in a categorical column", s.iloc[i], s.index[i])
        elif s.dtype == object:
            ok = s.map(lambda v: isinstance(v, (str, int, np.integer, bool, np.bool_))).to_numpy()
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                self._fail(f"unsupported value of type {type(s.iloc[i]).__name__}", s.iloc[i], s.index[i])

    @staticmethod
    def _normal(s):
        pd = _pd()
        return s.astype(np.int64) if pd.api.types.is_float_dtype(s) else s

    def fit(self, values) -> None:
        self._check(values)
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

    def _grow_plan(self, values) -> Tuple[List[Any], np.ndarray]:
        """(new vocabulary values, hashes of new rare values) for `values`, changing nothing: values
        neither in the vocabulary nor already rare, counted in `values` only; those with at least
        ``min_count`` occurrences get new local features (frequent first, stable), the others go
        to "other". Known values keep their local feature (a rare value stays "other")."""
        self._check(values)
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

    def local(self, values) -> np.ndarray:
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

    def encode(self, values):
        self._check(values)
        n = len(values)
        return np.arange(n, dtype=np.int64), self.local(self._normal(values)), np.ones(n, np.float32)

    def describe(self, local: int) -> str:
        if local == self.UNSEEN:
            return f"{self.name}=<unseen>"
        if local == self.OTHER:
            return f"{self.name}=<other>"
        return f"{self.name}={self.vocab[local - 2]!r}"

    def to_dict(self) -> Dict[str, Any]:
        return {**super().to_dict(), "min_count": self.min_count, "vocab": self.vocab,
                "rare": [int(h) for h in self.rare]}

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "Categorical":
        f = cls(d["name"], d["side"], min_count=d["min_count"], column=d["column"])
        f.vocab = list(d["vocab"])
        f.rare = np.asarray(d.get("rare", []), dtype=np.uint64)
        f.fitted = True
        return f


class MultiCategorical(Categorical):
    """Several values per row: a list / tuple / array column, or strings split on ``sep``; optional
    per-value weights from ``weights_column`` (lists parallel to the values). Within the field the
    row's values are scaled by ``scale``: "l2" (unit L2 norm, default), "mean" (sum 1) or "none".
    An empty list (or empty string) gives the row no feature of this field."""

    kind = "multi_categorical"

    def __init__(self, name: str, side: str, *, sep: Optional[str] = None, weights_column: Optional[str] = None,
                 scale: str = "l2", min_count: int = 1, column: Optional[str] = None) -> None:
        super().__init__(name, side, min_count=min_count, column=column)
        if scale not in ("l2", "mean", "none"):
            raise ValueError(f"field {name!r}: scale must be 'l2', 'mean' or 'none', got {scale!r}")
        self.sep = sep
        self.weights_column = weights_column
        self.scale = scale

    def _explode(self, values, weights=None):
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
                self._fail("missing value (NaN / None) in a multi-categorical column (use [] for none)", v,
                           values.index[i])
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

    def fit(self, values) -> None:
        _, flat, _ = self._explode(values)
        if flat.size:
            self._check(flat)
        Categorical.fit(self, flat)

    def _grow_plan(self, values) -> Tuple[List[Any], np.ndarray]:
        _, flat, _ = self._explode(values)
        if not flat.size:
            return [], np.zeros(0, np.uint64)
        return Categorical._grow_plan(self, flat)

    def encode(self, values, weights=None):
        rows, flat, w = self._explode(values, weights)
        if flat.size:
            self._check(flat)
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
        f = cls(d["name"], d["side"], sep=d["sep"], weights_column=d["weights_column"], scale=d["scale"],
                min_count=d["min_count"], column=d["column"])
        f.vocab = list(d["vocab"])
        f.rare = np.asarray(d.get("rare", []), dtype=np.uint64)
        f.fitted = True
        return f


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

    def _numbers(self, values) -> np.ndarray:
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

    def fit(self, values) -> None:
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

    def encode(self, values):
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
        return {**super().to_dict(), "buckets": self.buckets, "mean": self.mean, "std": self.std,
                "edges": self.edges}

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
        self.fitted = True

    @property
    def size(self) -> int:
        return self.buckets

    def fit(self, values) -> None:
        Categorical._check(self, values)  # same value rules as a categorical
        self.fitted = True

    def encode(self, values):
        Categorical._check(self, values)
        n = len(values)
        local = (_hash(Categorical._normal(values).to_numpy()) % np.uint64(self.buckets)).astype(np.int64)
        return np.arange(n, dtype=np.int64), local, np.ones(n, np.float32)

    def to_dict(self) -> Dict[str, Any]:
        return {**super().to_dict(), "buckets": self.buckets}

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "Hashed":
        return cls(d["name"], d["side"], buckets=d["buckets"], column=d["column"])


_KINDS = {c.kind: c for c in (Categorical, MultiCategorical, Numeric, Hashed)}


class Schema:
    """An ordered list of fields; field i is model field i.

    >>> schema = Schema([Categorical("user_id", "user"), Categorical("hour", "context"),
    ...                  Categorical("item_id", "item"), MultiCategorical("genres", "item", sep="|")])
    >>> schema.fit([users, items, events]); ds = schema.transform(events, label="clicked")
    """

    def __init__(self, fields: Sequence[Field]) -> None:
        fields = list(fields)
        if not fields:
            raise ValueError("a Schema needs at least one field")
        names = [f.name for f in fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"Schema: duplicate field names {dup}")
        for f in fields:
            if not isinstance(f, Field):
                raise ValueError(f"Schema: {f!r} is not a Field")
        self.fields = fields
        # growth layout: per field, its extension segments [local_start, feature_start, count] in
        # growth order (empty until partial_fit adds values; see partial_fit)
        self._ext: List[List[Tuple[int, int, int]]] = [[] for _ in fields]
        self.sides = Sides(user=[i for i, f in enumerate(fields) if f.side == "user"],
                           context=[i for i, f in enumerate(fields) if f.side == "context"],
                           item=[i for i, f in enumerate(fields) if f.side == "item"])

    # ---------------------------------------------------------------- layout
    @property
    def fitted(self) -> bool:
        return all(f.fitted for f in self.fields)

    def _need_fit(self) -> None:
        todo = [f.name for f in self.fields if not f.fitted]
        if todo:
            raise ValueError(f"Schema: fields {todo} are not fitted; call schema.fit(frames) first")

    def _base_size(self, i: int) -> int:
        """Features of field i in its original range (its size when the schema was fit)."""
        return self.fields[i].size - sum(c for _, _, c in self._ext[i])

    @property
    def offsets(self) -> np.ndarray:
        """int64 (n_fields + 1,): field i owns feature indices [offsets[i], offsets[i+1]): its range
        from fit. After partial_fit a grown field also owns its extension segments (`feature()`
        maps a field's local value to its global feature either way; `grown` says whether any)."""
        self._need_fit()
        return np.concatenate([[0], np.cumsum([self._base_size(i) for i in range(len(self.fields))])]
                              ).astype(np.int64)

    @property
    def grown(self) -> bool:
        """Whether partial_fit has added features since fit (then fields are no longer contiguous)."""
        return any(self._ext)

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    @property
    def n_features(self) -> int:
        return int(self.offsets[-1]) + sum(c for ext in self._ext for _, _, c in ext)

    def feature(self, field: Union[int, str], local) -> np.ndarray:
        """Global feature indices (int64, the shape of `local`) of local values `local` of `field`
        (an index or a name): offsets[i] + local in the field's original range, the extension
        segments beyond it."""
        i = field if isinstance(field, (int, np.integer)) else self.index(field)
        shape = np.shape(local)
        loc = np.asarray(local, dtype=np.int64).reshape(-1)
        out = int(self.offsets[i]) + loc
        ext = self._ext[i]
        if ext:
            beyond = loc >= self._base_size(i)
            if beyond.any():
                starts = np.asarray([a for a, _, _ in ext], dtype=np.int64)
                feats = np.asarray([g for _, g, _ in ext], dtype=np.int64)
                seg = np.searchsorted(starts, loc[beyond], side="right") - 1
                out[beyond] = feats[seg] + (loc[beyond] - starts[seg])
        return out.reshape(shape)

    @property
    def names(self) -> List[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"Schema has no field {name!r}; fields: {self.names}")

    def index(self, name: str) -> int:
        return self.names.index(self.field(name).name)

    def side_fields(self, side: str) -> List[int]:
        if side == "query":
            return list(self.sides.query)
        return list(getattr(self.sides, side))

    def describe(self, feature: int) -> str:
        """What global feature index `feature` means, e.g. "genres='Comedy'"."""
        off = self.offsets
        if 0 <= feature < off[-1]:
            i = int(np.searchsorted(off, feature, side="right") - 1)
            return self.fields[i].describe(int(feature - off[i]))
        for i, ext in enumerate(self._ext):
            for a, g, c in ext:
                if g <= feature < g + c:
                    return self.fields[i].describe(int(a + feature - g))
        raise IndexError(f"feature {feature} is outside the schema (0..{self.n_features - 1})")

    # ---------------------------------------------------------------- fit / transform
    def fit(self, frames: Union[Frame, Sequence[Frame]]) -> "Schema":
        """Learn vocabularies, rare values, buckets from the frames that hold each field's column
        (values of a column found in several frames are pooled). Returns self."""
        frames = [_frame(f) for f in (frames if isinstance(frames, (list, tuple)) and frames
                                       and not isinstance(frames[0], dict) else [frames])]
        pd = _pd()
        for f in self.fields:
            cols = [fr[f.column] for fr in frames if f.column in fr.columns]
            if not cols:
                raise ValueError(f"Schema.fit: no frame has column {f.column!r} (field {f.name!r})")
            f.fit(pd.concat(cols, ignore_index=True) if len(cols) > 1 else cols[0])
        self._ext = [[] for _ in self.fields]
        return self

    def partial_fit(self, frames: Union[Frame, Sequence[Frame]]) -> "Schema":
        """Grow a fitted schema with the new values found in `frames` (daily updates with new users,
        items, tags), in place; returns self. An unfitted schema is fit instead.

        - Categorical / MultiCategorical: values neither in the vocabulary nor already rare,
          counted in `frames` only, get new features if they occur at least ``min_count`` times
          there; the others join "other". Known values keep their feature, and a value once rare
          stays "other" (no counts are kept from fit), so every row encodes as before.
        - Numeric keeps its statistics / buckets; Hashed needs no growth. Fields whose column no
          frame holds do not grow. Values are checked in every field before any field changes.

        Layout: the new values of each grown field form an extension segment appended after all
        existing features (fields in schema order, values frequent first). Existing indices never
        move, so the model's parameters stay where they are and it only appends (partial_fit of FM
        / FFM / HybridFM); a field's values map local -> global through its original range plus its
        segments (`feature()`), and hashing still stays inside its own field. Reserved headroom per
        field was the alternative: it wastes features on fields that never grow, must be guessed at
        fit, and cannot grow schemas saved before it existed; appending grows any schema, and one
        without growth encodes and serialises exactly as before.

        Growing a schema that a serving Recaller or model uses changes what it encodes: grow a copy
        (``copy.deepcopy(model)`` copies its ``schema_``), then partial_fit that model copy."""
        if not self.fitted:
            return self.fit(frames)
        frames = [_frame(f) for f in (frames if isinstance(frames, (list, tuple)) and frames
                                       and not isinstance(frames[0], dict) else [frames])]
        pd = _pd()
        plans = []
        for i, f in enumerate(self.fields):
            if not isinstance(f, Categorical):
                continue
            cols = [fr[f.column] for fr in frames if f.column in fr.columns]
            if cols:
                plans.append((i, f._grow_plan(pd.concat(cols, ignore_index=True) if len(cols) > 1 else cols[0])))
        nxt = self.n_features
        for i, (new_vocab, new_rare) in plans:  # every field checked: commit
            f = self.fields[i]
            assert isinstance(f, Categorical)
            if new_vocab:
                self._ext[i].append((f.size, nxt, len(new_vocab)))
                nxt += len(new_vocab)
            f._grow(new_vocab, new_rare)
        return self

    def extends(self, other: "Schema") -> bool:
        """Whether this schema is `other` or a growth of it by partial_fit: same fields, every
        feature of `other` still means the same value here."""
        if self is other:
            return True
        a, b = self.to_dict(), other.to_dict()
        if len(a["fields"]) != len(b["fields"]):
            return False
        for fa, fb in zip(a["fields"], b["fields"]):
            if "vocab" in fa and fa.keys() == fb.keys():
                va, vb = fa["vocab"], fb["vocab"]
                if (va[:len(vb)] != vb or not set(fb["rare"]) <= set(fa["rare"])
                        or {**fa, "vocab": 0, "rare": 0} != {**fb, "vocab": 0, "rare": 0}):
                    return False
            elif fa != fb:
                return False
        ea, eb = a.get("extensions", []), b.get("extensions", [])
        return ea[:len(eb)] == eb

    def transform(self, frame: Frame, *, side: Optional[str] = None, fields: Optional[Iterable[str]] = None,
                  label: Optional[str] = None) -> Dataset:
        """Encode rows of `frame` into a Dataset (one row per frame row).

        side : "user", "context", "item" or "query" (user + context): encode just those fields;
            by default every schema field (all their columns must be present)
        fields : explicit field names to encode instead
        label : column holding the label (float), if any
        """
        self._need_fit()
        df = _frame(frame)
        if fields is not None:
            chosen = [self.index(n) for n in fields]
        elif side is not None:
            if side not in SIDES + ("query",):
                raise ValueError(f"side must be one of {SIDES + ('query',)}, got {side!r}")
            chosen = self.side_fields(side)
        else:
            chosen = list(range(len(self.fields)))
        missing = [self.fields[i].column for i in chosen if self.fields[i].column not in df.columns]
        if missing:
            raise ValueError(f"Schema.transform: missing column(s) {missing}")
        off = self.offsets
        n = len(df)
        rows, fidx, feats, vals = [], [], [], []
        for i in chosen:
            f = self.fields[i]
            col = df[f.column]
            if isinstance(f, MultiCategorical) and f.weights_column:
                if f.weights_column not in df.columns:
                    raise ValueError(f"Schema.transform: missing column {f.weights_column!r} (weights of {f.name!r})")
                r, loc, v = f.encode(col, df[f.weights_column])
            else:
                r, loc, v = f.encode(col)
            rows.append(r)
            fidx.append(np.full(r.size, i, dtype=np.int32))
            feats.append(off[i] + loc if not self._ext[i] else self.feature(i, loc))
            vals.append(v)
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        fi = np.concatenate(fidx) if fidx else np.zeros(0, np.int32)
        order = np.lexsort((np.arange(r.size), fi, r))  # by row, then schema field order
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
        labels = None
        if label is not None:
            if label not in df.columns:
                raise ValueError(f"Schema.transform: missing label column {label!r}")
            labels = df[label].to_numpy(dtype=np.float32)
        values = np.concatenate(vals)[order] if vals else np.zeros(0, np.float32)
        return Dataset(indptr, fi[order], (np.concatenate(feats)[order] if feats else np.zeros(0, np.int64)),
                       None if np.all(values == 1.0) else values, labels,
                       n_features=self.n_features, n_fields=self.n_fields)

    # ---------------------------------------------------------------- persistence
    def to_dict(self) -> Dict[str, Any]:
        """{"fields": [...]}, plus "extensions": [[field, local_start, feature_start, count], ...]
        (in growth order) once partial_fit has grown it; a schema never grown has no such key, so
        its dict is what earlier versions wrote and read."""
        d: Dict[str, Any] = {"fields": [f.to_dict() for f in self.fields]}
        ext = sorted((g, i, a, c) for i, e in enumerate(self._ext) for a, g, c in e)
        if ext:
            d["extensions"] = [[i, a, g, c] for g, i, a, c in ext]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Schema":
        fields = []
        for fd in d["fields"]:
            kind = _KINDS.get(fd.get("kind"))
            if kind is None:
                raise ValueError(f"Schema: unknown field kind {fd.get('kind')!r}")
            fields.append(kind._from(fd))
        schema = cls(fields)
        ext = d.get("extensions") or []
        if ext:
            schema._set_extensions(ext)
        return schema

    def _set_extensions(self, ext: Sequence[Sequence[int]]) -> None:
        """Install saved extension segments after checking that they tile the features after the
        fields' original ranges in order, and each field's local values after its original range."""
        segs: List[List[Tuple[int, int, int]]] = [[] for _ in self.fields]
        for e in ext:
            if (not isinstance(e, (list, tuple)) or len(e) != 4
                    or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in e)):
                raise ValueError(f"Schema: bad extension {e!r} (expected [field, local, feature, count])")
            i, a, g, c = (int(x) for x in e)
            if not 0 <= i < len(self.fields) or not isinstance(self.fields[i], Categorical) or c < 1:
                raise ValueError(f"Schema: bad extension {list(e)!r}")
            segs[i].append((a, g, c))
        self._ext = segs
        nxt = int(self.offsets[-1])  # also checks each field's base size (below)
        for i, field_segs in enumerate(segs):
            if field_segs and self._base_size(i) < 2:  # a categorical keeps unseen and other
                raise ValueError(f"Schema: extensions of field {self.fields[i].name!r} exceed its vocabulary")
            at = self._base_size(i)
            for a, _, c in field_segs:
                if a != at:
                    raise ValueError(f"Schema: extension of field {self.fields[i].name!r} starts at local {a}, "
                                     f"expected {at}")
                at += c
        for i, a, g, c in sorted(((i, a, g, c) for i, fs in enumerate(segs) for a, g, c in fs),
                                 key=lambda t: t[2]):
            if g != nxt:
                raise ValueError(f"Schema: extension of field {self.fields[i].name!r} starts at feature {g}, "
                                 f"expected {nxt}")
            nxt += c

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        parts = ", ".join(f"{f.kind}({f.name!r}, {f.side!r})" for f in self.fields)
        return f"Schema([{parts}])"
