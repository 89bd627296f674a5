"""Named feature fields: how table columns become field-aware sparse rows.

A Schema lists named fields (their kinds, Categorical, MultiCategorical, Numeric, Hashed and Vector,
are in fmrecall.fields) and encodes tables with them.

Field i of the schema is field index i of the model; every field owns a contiguous range of
feature indices, so hashing never collides across fields (DESIGN.md §6).

Growth (daily updates with new ids): ``Schema.partial_fit(frames)`` adds the new values of
Categorical / MultiCategorical fields without moving any existing feature. The new values of every
field are appended after all existing features (an *extension* segment per grown field and growth),
and the schema keeps, per field, the map from local value to global feature: so a grown field owns
its original range plus its extension segments. See ``Schema.partial_fit`` for why this layout.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._frames import Frame, _frame, _pd
from .dataset import Dataset
from .diagnostics import UNSEEN_WARN_RATE, warn_transform
from .fields import _KINDS, Categorical, Field, Hashed, MultiCategorical, Numeric, Vector
from .progress import progress
from .sides import SIDES, Sides

__all__ = ["Schema", "Field", "Categorical", "MultiCategorical", "Numeric", "Hashed", "Vector", "Frame"]


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
        self.sides = Sides(
            user=[i for i, f in enumerate(fields) if f.side == "user"],
            context=[i for i, f in enumerate(fields) if f.side == "context"],
            item=[i for i, f in enumerate(fields) if f.side == "item"],
        )

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
        return np.concatenate([[0], np.cumsum([self._base_size(i) for i in range(len(self.fields))])]).astype(np.int64)

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

    def feature(self, field: Union[int, str], local: Any) -> np.ndarray:
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
        """Schema field indices of `side` ("user", "context", "item" or "query")."""
        refs = self.sides.query if side == "query" else getattr(self.sides, side)
        return [int(i) for i in refs]  # a Schema's Sides hold field indices

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
        frames = [
            _frame(f)
            for f in (
                frames if isinstance(frames, (list, tuple)) and frames and not isinstance(frames[0], dict) else [frames]
            )
        ]
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
        - Numeric keeps its statistics / buckets; Hashed and Vector need no growth. Fields whose column no
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
        frames = [
            _frame(f)
            for f in (
                frames if isinstance(frames, (list, tuple)) and frames and not isinstance(frames[0], dict) else [frames]
            )
        ]
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
                if (
                    va[: len(vb)] != vb
                    or not set(fb["rare"]) <= set(fa["rare"])
                    or {**fa, "vocab": 0, "rare": 0} != {**fb, "vocab": 0, "rare": 0}
                ):
                    return False
            elif fa != fb:
                return False
        ea, eb = a.get("extensions", []), b.get("extensions", [])
        return ea[: len(eb)] == eb

    def transform(
        self,
        frame: Frame,
        *,
        side: Optional[str] = None,
        fields: Optional[Iterable[str]] = None,
        label: Optional[str] = None,
        unseen: Optional[Dict[str, float]] = None,
    ) -> Dataset:
        """Encode rows of `frame` into a Dataset (one row per frame row).

        side : "user", "context", "item" or "query" (user + context): encode just those fields;
            by default every schema field (all their columns must be present)
        fields : explicit field names to encode instead
        label : column holding the label (float), if any
        unseen : a dict this call fills with {field name: share of its values unseen in training}
            for every encoded (multi-)categorical field (0.0 when it has no values)

        Diagnostics (fmrecall.diagnostics): one DtypeMismatchWarning when a column holds another
        kind of value than its field was fit on (str ids where training had ints), one
        UnseenValueWarning when more than half of a categorical field's values are unseen.
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
        mismatches: List[Tuple[str, str, str, str]] = []
        many_unseen: Dict[str, Tuple[float, Any]] = {}
        with progress(n * len(chosen), "Schema.transform", "value") as bar:  # one step per field
            for i in chosen:
                f = self.fields[i]
                col = df[f.column]
                if isinstance(f, MultiCategorical) and f.weights_column:
                    if f.weights_column not in df.columns:
                        raise ValueError(
                            f"Schema.transform: missing column {f.weights_column!r} (weights of {f.name!r})"
                        )
                    r, loc, v = f.encode(col, df[f.weights_column])
                else:
                    r, loc, v = f.encode(col)
                wrong = f.kind_mismatch(col)
                if wrong is not None:
                    mismatches.append((f.name, f.column, wrong[0], wrong[1]))
                if isinstance(f, Categorical):
                    miss = loc == Categorical.UNSEEN
                    rate = float(miss.mean()) if loc.size else 0.0
                    if unseen is not None:
                        unseen[f.name] = rate
                    if rate > UNSEEN_WARN_RATE:
                        many_unseen[f.name] = (rate, _first_unseen(col, r, miss))
                rows.append(r)
                fidx.append(np.full(r.size, i, dtype=np.int32))
                feats.append(off[i] + loc if not self._ext[i] else self.feature(i, loc))
                vals.append(v)
                bar.update(n)
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
        if mismatches or many_unseen:
            warn_transform(mismatches, many_unseen)
        return Dataset(
            indptr,
            fi[order],
            (np.concatenate(feats)[order] if feats else np.zeros(0, np.int64)),
            None if np.all(values == 1.0) else values,
            labels,
            n_features=self.n_features,
            n_fields=self.n_fields,
        )

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
            if (
                not isinstance(e, (list, tuple))
                or len(e) != 4
                or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in e)
            ):
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
                    raise ValueError(
                        f"Schema: extension of field {self.fields[i].name!r} starts at local {a}, expected {at}"
                    )
                at += c
        for i, a, g, c in sorted(((i, a, g, c) for i, fs in enumerate(segs) for a, g, c in fs), key=lambda t: t[2]):
            if g != nxt:
                raise ValueError(
                    f"Schema: extension of field {self.fields[i].name!r} starts at feature {g}, expected {nxt}"
                )
            nxt += c

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        parts = ", ".join(f"{f.kind}({f.name!r}, {f.side!r})" for f in self.fields)
        return f"Schema([{parts}])"


def _first_unseen(col: Any, rows: np.ndarray, miss: np.ndarray) -> Any:
    """The value (a multi-categorical field: the list) of `col` holding the first unseen value."""
    return col.iloc[int(rows[int(np.flatnonzero(miss)[0])])]
