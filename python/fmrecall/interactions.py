"""Factored interaction data: users and items encoded once, events referencing them.

The C++ core assembles each training row (user + context + item) on the fly, so user and item
features are stored once, not once per event, and implicit feedback gets its negatives sampled
inside the training loop.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _core
from ._frames import Frame, _frame, _jsonable
from .dataset import Dataset
from .fields import Categorical
from .joins import join_rows
from .progress import progress
from .schema import Schema
from .source import check_labels, labelled_metrics, pairwise_metrics


class Interactions:
    """Users, items and events, encoded with a schema.

    Parameters
    ----------
    users : frame with one row per user: ``user_key`` and the user-side columns
    items : frame with one row per item: ``item_key`` and the item-side columns
    events : frame with ``user_key``, ``item_key``, the context-side columns and, for explicit
        feedback, the ``label`` column
    schema : the Schema (fitted here on users / items / events if it is not fitted yet)
    grow : grow the (fitted) schema, in place, with the new values in users / items / events first
        (``Schema.partial_fit``): new users, items, tags get new features, existing ones keep
        theirs; then ``model.partial_fit(data)`` gives the new features their parameters. Without
        it, values the schema has not seen map to its reserved "unseen" feature
    label : label column of events; None means implicit feedback (every event is a positive)
    negatives : items sampled per positive per epoch (implicit feedback; needed by loss="bpr")
    alpha : negatives are drawn ∝ count^alpha, count = the item's number of events here
        (alpha=0: uniform over all items; alpha>0: items without events are never drawn)
    exclude_positives : never draw (up to 32 retries) an item the user has an event with here
    hard_negatives : draw this many candidates per negative and train on the one the model scores
        highest (dynamic negative sampling; like WARP it focuses on mis-ranked items). 1 = plain draws
    history : name of a user-side field listing the user's items (values = item keys), e.g. the
        items of the training events: the collaborative-filtering channel as a feature. When an
        event's row is built, its own item is left out of that field (leave-one-out), so the model
        cannot learn "the item is in the history" (FISM / SVD++ style).
    cold_start : {categorical field name: rate}: in each training row, with that probability the
        field's value is replaced by its reserved "unseen" feature, which so learns to stand for
        a value never seen in training (e.g. {"item_id": 0.1}: new items are then scored from their
        other features instead of lacking the id term every trained item has; DropoutNet-style)
    """

    def __init__(
        self,
        users: Frame,
        items: Frame,
        events: Frame,
        schema: Optional[Schema],
        *,
        user_key: str = "user_id",
        item_key: str = "item_id",
        label: Optional[str] = None,
        negatives: int = 0,
        alpha: float = 0.0,
        exclude_positives: bool = True,
        hard_negatives: int = 1,
        history: Optional[str] = None,
        cold_start: Optional[Dict[str, float]] = None,
        grow: bool = False,
    ) -> None:
        if not isinstance(negatives, (int, np.integer)) or negatives < 0:
            raise ValueError(f"negatives must be an integer >= 0, got {negatives!r}")
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        users, items, events = _frame(users), _frame(items), _frame(events)
        for frame, key, what in (
            (users, user_key, "users"),
            (items, item_key, "items"),
            (events, user_key, "events"),
            (events, item_key, "events"),
        ):
            if key not in frame.columns:
                raise ValueError(f"Interactions: {what} has no key column {key!r}")
        if not isinstance(hard_negatives, (int, np.integer)) or hard_negatives < 1:
            raise ValueError(f"hard_negatives must be an integer >= 1, got {hard_negatives!r}")
        if not isinstance(grow, (bool, np.bool_)):
            raise ValueError(f"grow must be True or False, got {grow!r}")
        if not isinstance(schema, Schema):  # e.g. model.schema_ of a model fit on a Dataset: None
            raise ValueError(f"Interactions: schema must be a fmrecall.Schema, got {schema!r}")
        self.schema = schema
        self.user_key, self.item_key, self.label = user_key, item_key, label
        self.negatives, self.alpha, self.exclude_positives = int(negatives), float(alpha), bool(exclude_positives)
        self.hard_negatives = int(hard_negatives)
        n_rows = len(users) + len(items) + len(events)
        with progress(2 * n_rows, "Interactions", "row") as bar:  # the vocabularies, then the encoding
            if not schema.fitted:
                schema.fit([users, items, events])
            elif grow:
                schema.partial_fit([users, items, events])
            bar.update(n_rows)
            self.user_ids = _unique_keys(users[user_key], "users", user_key)
            self.item_ids = _unique_keys(items[item_key], "items", item_key)
            self.users = schema.transform(users, side="user")
            self.items = schema.transform(items, side="item")
            bar.update(len(users) + len(items))
            ctx = schema.side_fields("context")
            self.context = schema.transform(events, side="context") if ctx else None
            self.ev_user = _rows_of(self.user_ids, events[user_key], "user", user_key)
            self.ev_item = _rows_of(self.item_ids, events[item_key], "item", item_key)
        self.labels = None
        if label is not None:
            if label not in events.columns:
                raise ValueError(f"Interactions: events has no label column {label!r}")
            self.labels = events[label].to_numpy(dtype=np.float32)
            if not np.all(np.isfinite(self.labels)):
                i = int(np.flatnonzero(~np.isfinite(self.labels))[0])
                raise ValueError(f"Interactions: label {self.labels[i]!r} at event {i} is not finite")
        if self.labels is None and self.negatives == 0:
            pass  # allowed for scoring / evaluation; training needs labels or negatives
        self.history = history
        self.hist_field, self.hist_feat = -1, None
        if history is not None:
            f = schema.field(history)
            if f.side != "user" or not isinstance(f, Categorical):
                raise ValueError(f"history field {history!r} must be a user-side (multi-)categorical field")
            self.hist_field = schema.index(history)
            local = f.local(self.item_ids.to_numpy())
            self.hist_feat = np.where(local >= 2, schema.feature(self.hist_field, local), -1).astype(np.int32)
        self.cold_start = dict(cold_start or {})
        self._cold = []
        for name, rate in self.cold_start.items():
            f = schema.field(name)
            if not isinstance(f, Categorical):
                raise ValueError(f"cold_start field {name!r} must be categorical (it needs a reserved unseen value)")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"cold_start rate of {name!r} must be in [0, 1], got {rate!r}")
            i = schema.index(name)
            self._cold.append((i, int(schema.feature(i, Categorical.UNSEEN)), float(rate)))
        self._fd: Optional[_core.FactoredData] = None

    # ---------------------------------------------------------------- views
    @property
    def n_events(self) -> int:
        return int(self.ev_user.size)

    def __len__(self) -> int:
        return self.n_events

    def __repr__(self) -> str:
        kind = f"label={self.label!r}" if self.label else f"implicit, negatives={self.negatives}, alpha={self.alpha}"
        return f"Interactions(users={self.users.n_rows}, items={self.items.n_rows}, events={self.n_events}, {kind})"

    def item_counts(self) -> np.ndarray:
        """Events per item row, int64 (n_items,)."""
        return np.bincount(self.ev_item, minlength=self.items.n_rows)

    def sample_weights(self) -> np.ndarray:
        """float64 (n_items,): the negative-sampling law, ∝ count^alpha (uniform for alpha = 0)."""
        if self.alpha == 0.0:
            return np.ones(self.items.n_rows)
        return self.item_counts().astype(np.float64) ** self.alpha

    def positives(self) -> Tuple[np.ndarray, np.ndarray]:
        """(pos_ptr int64 (n_users+1,), pos_items int32) per user row, sorted item rows."""
        order = np.lexsort((self.ev_item, self.ev_user))
        u, i = self.ev_user[order], self.ev_item[order]
        keep = np.r_[True, (u[1:] != u[:-1]) | (i[1:] != i[:-1])] if u.size else np.zeros(0, bool)
        u, i = u[keep], i[keep]
        ptr = np.zeros(self.users.n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(u, minlength=self.users.n_rows), out=ptr[1:])
        return ptr, i.astype(np.int32)

    def with_events(self, events: Frame, *, label: Optional[str] = None, **kwargs: Any) -> "Interactions":
        """New Interactions over the same users, items and schema with other events (e.g. a test split)."""
        new = Interactions.__new__(Interactions)
        new.__dict__.update(self.__dict__)
        events = _frame(events)
        new.label = label if label is not None else (self.label if self.label in events.columns else None)
        for k, v in kwargs.items():
            if k not in ("negatives", "alpha", "exclude_positives", "hard_negatives"):
                raise TypeError(f"with_events got an unexpected argument {k!r}")
            setattr(new, k, v)
        ctx = self.schema.side_fields("context")
        new.context = self.schema.transform(events, side="context") if ctx else None
        new.ev_user = _rows_of(self.user_ids, events[self.user_key], "user", self.user_key)
        new.ev_item = _rows_of(self.item_ids, events[self.item_key], "item", self.item_key)
        new.labels = events[new.label].to_numpy(dtype=np.float32) if new.label else None
        new._fd = None
        return new

    def materialize(self, items: Optional[np.ndarray] = None) -> Dataset:
        """The joined rows (user + context + item) of every event as one Dataset (for checks and
        small data; training never needs this). `items` replaces each event's item row."""
        it = self.ev_item if items is None else np.asarray(items, dtype=np.int64)
        parts: List[Tuple[Dataset, np.ndarray]] = [(self.users, self.ev_user)]
        if self.context is not None:
            parts.append((self.context, np.arange(self.n_events)))
        parts.append((self.items, it))
        joined = join_rows(parts)
        indptr, fields, feats, vals = joined.indptr, joined.fields, joined.features, joined.values_or_ones()
        nnz = joined.nnz
        if self.hist_feat is not None:  # leave each event's own item out of the user's history
            own = np.repeat(self.hist_feat[self.ev_item], np.diff(indptr))
            keep = ~((fields == self.hist_field) & (feats == own))
            counts = np.add.reduceat(keep, indptr[:-1]) if nnz else np.zeros(self.n_events, np.int64)
            counts = np.where(np.diff(indptr) > 0, counts, 0)
            indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
            fields, feats, vals = fields[keep], feats[keep], vals[keep]
        return Dataset(
            indptr,
            fields,
            feats,
            vals,
            self.labels if items is None else None,
            n_features=self.schema.n_features,
            n_fields=self.schema.n_fields,
        )

    def mean_sq_norm(self) -> float:
        """Mean squared L2 norm of a training row (user ⊕ context ⊕ item; an item drawn as a negative
        weighs as often as the sampling law draws it): fit's constant value scale is 1/sqrt of it."""
        if self.n_events == 0:
            return 0.0
        total = float(self.users.row_sq_norms()[self.ev_user].mean()) - self._own_history_sq()
        if self.context is not None:
            total += float(self.context.row_sq_norms().mean())
        items = self.items.row_sq_norms()
        item_sq = float(items[self.ev_item].mean())
        if self.negatives > 0:
            law = self.sample_weights()
            item_sq = (item_sq + self.negatives * float(law @ items) / float(law.sum())) / (1 + self.negatives)
        return total + item_sq

    def _own_history_sq(self) -> float:
        """Mean over events of x² of the event's own item in its user's history (left out of the row)."""
        u = self.users
        hist = u.fields == self.hist_field
        if self.hist_feat is None or self.n_events == 0 or not hist.any():
            return 0.0
        rows = np.repeat(np.arange(u.n_rows, dtype=np.int64), np.diff(u.indptr))[hist]
        keys = rows * u.n_features + u.features[hist]  # (user row, feature) of every history node
        order = np.argsort(keys, kind="stable")
        keys, vals = keys[order], u.values_or_ones()[hist][order].astype(np.float64)
        own = self.hist_feat[self.ev_item]
        want = self.ev_user.astype(np.int64) * u.n_features + own
        at = np.minimum(np.searchsorted(keys, want), keys.size - 1)
        hit = (own >= 0) & (keys[at] == want)
        return float(np.sum(vals[at[hit]] ** 2) / self.n_events)

    def feature_nodes(self) -> Dataset:
        """Every (field, feature) node that can occur in a training row, as one row (to size the model):
        the rows of users with events, the context rows, the rows of items that are in events or can
        be drawn as negatives, and the reserved values of cold_start fields. Features of users or
        items that can never occur stay neutral, as with materialised rows."""
        # presence masks, not np.unique: O(events) scatters instead of sorts (np.unique of both
        # event columns took 0.35 s, ~12% of a partial_fit epoch on 1.8M events); the same sorted rows
        users = np.zeros(self.users.n_rows, dtype=bool)
        users[self.ev_user] = True
        items = np.zeros(self.items.n_rows, dtype=bool)
        items[self.ev_item] = True
        if self.negatives > 0:
            items |= self.sample_weights() > 0
        parts = [self.users.subset(np.flatnonzero(users)), self.items.subset(np.flatnonzero(items))]
        if self.context is not None:
            parts.append(self.context)
        fields = np.concatenate([p.fields for p in parts] + [np.asarray([f for f, _, _ in self._cold], np.int32)])
        feats = np.concatenate([p.features for p in parts] + [np.asarray([j for _, j, _ in self._cold], np.int32)])
        return Dataset(
            [0, fields.size], fields, feats, n_features=self.schema.n_features, n_fields=self.schema.n_fields
        )

    def core(self) -> "_core.FactoredData":
        """The C++ view (built once; keeps the arrays alive)."""
        if self._fd is None:

            def csr(ds: Dataset) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
                return (ds.indptr, ds.fields, ds.features, ds.values)

            weights = self.sample_weights() if self.items.n_rows else None
            ptr, pos = self.positives() if self.exclude_positives else (None, None)
            self._fd = _core.FactoredData(
                csr(self.users),
                csr(self.items),
                csr(self.context) if self.context is not None else None,
                self.ev_user.astype(np.int32),
                self.ev_item.astype(np.int32),
                self.labels,
                weights,
                ptr,
                pos,
                self.hist_field,
                self.hist_feat,
                self._cold,
            )
        return self._fd

    # ---------------------------------------------------------------- TrainingSource (fmrecall.source)
    def source_schema(self) -> Schema:
        return self.schema

    def check_labels(self, loss: str, name: str) -> None:
        """ValueError unless `loss` can be trained on these events: implicit feedback (negatives > 0)
        takes logistic or BPR, labelled events (negatives = 0) logistic or squared."""
        if loss == "bpr" and self.negatives < 1:
            raise ValueError(f"loss='bpr' needs sampled negatives: build {name} with negatives >= 1")
        if self.negatives > 0:
            if loss == "squared":
                raise ValueError("implicit feedback (negatives > 0) needs loss='logistic' or 'bpr'")
            return
        if self.labels is None:
            raise ValueError(f"{name} has neither labels nor negatives: give label= or negatives=")
        check_labels(self.labels, loss, name)

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
        """The events in `order`, rows assembled in C++, `negatives` draws per positive (seeded by
        `seed` and the event): (summed loss, loss terms)."""
        draws = seed ^ 0x5DEECE66D  # negative draws: seeded per epoch and event
        total, terms = core.train_factored(
            self.core(),
            order,
            loss,
            self.negatives,
            self.hard_negatives,
            draws,
            learning_rate,
            reg_linear,
            reg_factors,
            threads,
        )
        return total, int(terms)

    def scores(self, core: "_core.Model", threads: int) -> np.ndarray:
        """Raw scores of every event's joined row, float32 (n_events,)."""
        return core.score_factored(self.core(), None, threads)

    def evaluate(self, core: "_core.Model", loss: str, seed: int, threads: int) -> Dict[str, float]:
        """Labelled events: logloss and AUC (or MSE). Implicit feedback: each event against one
        negative drawn by the core's sampler from the training law (``sample_weights``; `seed` fixed,
        so the same negatives every epoch): BPR loss or the logloss of positives and negatives, and
        AUC = P(score(positive) > score(negative))."""
        if self.labels is not None and self.negatives == 0:
            return labelled_metrics(self.labels, self.scores(core, threads), loss)
        neg = _core.sample_items(self.sample_weights().astype(np.float64), self.n_events, seed)
        fd = self.core()
        return pairwise_metrics(core.score_factored(fd, None, threads), core.score_factored(fd, neg, threads), loss)


def _unique_keys(keys: Any, what: str, column: str) -> Any:
    import pandas as pd

    idx = pd.Index(keys)
    if idx.hasnans:
        raise ValueError(f"Interactions: {what}.{column} has a missing key")
    dup = idx[idx.duplicated()]
    if len(dup):
        raise ValueError(f"Interactions: {what}.{column} has duplicate key {_jsonable(dup[0])!r}")
    return idx


def _rows_of(index: Any, keys: Any, what: str, column: str) -> np.ndarray:
    rows = index.get_indexer(keys)
    if (rows < 0).any():
        bad = keys.iloc[int(np.flatnonzero(rows < 0)[0])]
        raise ValueError(f"Interactions: event {column} {_jsonable(bad)!r} is not in the {what} table")
    return rows.astype(np.int32)
