"""Learned query / item vectors for the retrieval benchmarks (bench/recall_bench.py).

Two models are trained on the Criteo-shaped synthetic clicks (bench/synth.py) and cached in
``bench/.cache``:

* ``fm64``  — FM k=64 on all 39 fields: 15 item fields, the other 24 are the query
              (categorical = user, numeric = context); vectors of dimension d = 65.
* ``ffm4``  — FFM k=4 trained on 20 of the fields only (renumbered 0..19): 5 query fields
              (4 user, 1 context) × 15 item fields → d = 5·15·4 + 1 = 301.

Item catalogues of N items (100k, 1M) are built from the data's item-field rows: the distinct
item rows of the training rows (shuffled), then — when more are needed — copies of random base
rows with 1-3 item fields replaced by another id of that field (drawn from the field's
empirical distribution, so it is a trained id). Queries are distinct query-field rows of the
validation rows. Everything is seeded; nothing here uses random vectors.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, Optional, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import synth  # noqa: E402

CACHE = synth.CACHE
VERSION = 1  # bump when the models / catalogue construction change

# Sides on the 39 synthetic fields. Item: an "item id" (field 16, 90k values), a second id-like
# field (33, 100k), mid- and low-cardinality categoricals and 3 numeric buckets.
ITEM_FIELDS = [16, 33, 13, 14, 19, 20, 22, 23, 25, 27, 30, 31, 2, 3, 4]
# FFM query side: a "user id" (24, 130k values), a categorical (17), two numeric buckets (user
# side) and one low-cardinality context field (29, 10 values).
FFM_USER_FIELDS = [24, 17, 0, 1]
FFM_CONTEXT_FIELDS = [29]
# FM: every other field is a query field (categorical = user, numeric = context)
FM_QUERY_FIELDS = [f for f in range(39) if f not in ITEM_FIELDS]
FM_USER_FIELDS = [f for f in FM_QUERY_FIELDS if f >= synth.N_NUMERIC]
FM_CONTEXT_FIELDS = [f for f in FM_QUERY_FIELDS if f < synth.N_NUMERIC]

MODELS = {
    # name: (kind, k, user fields, context fields) — item fields always ITEM_FIELDS
    "fm64": ("fm", 64, FM_USER_FIELDS, FM_CONTEXT_FIELDS),
    "ffm4": ("ffm", 4, FFM_USER_FIELDS, FFM_CONTEXT_FIELDS),
}
LABELS = {"fm64": "FM k=64 (d=65)", "ffm4": "FFM k=4, 5×15 fields (d=301)"}

# Environment knobs (defaults = the full run)
TRAIN_ROWS = int(os.environ.get("FMRECALL_BENCH_RECALL_TRAIN_ROWS", 0))  # 0 = all train rows
EPOCHS = int(os.environ.get("FMRECALL_BENCH_RECALL_EPOCHS", 2))
N_QUERIES = int(os.environ.get("FMRECALL_BENCH_RECALL_QUERIES", 1000))
SEED = 7


def _matrix(ds) -> np.ndarray:
    """(n, 39) int32 global feature ids of the one-hot synthetic rows (field f in column f)."""
    n, F = ds.n_rows, ds.n_fields
    if ds.nnz != n * F or not np.array_equal(np.diff(ds.indptr[: min(n, 1000) + 1]), np.full(min(n, 1000), F)):
        raise ValueError("expected one feature per field per row")
    fields = ds.fields.reshape(n, F)
    if not np.array_equal(fields[: min(n, 1000)], np.broadcast_to(np.arange(F), (min(n, 1000), F))):
        # general order: scatter
        X = np.empty((n, F), dtype=np.int32)
        X[np.repeat(np.arange(n), F), ds.fields] = ds.features
        return X
    return ds.features.reshape(n, F)


def onehot(X: np.ndarray, fields, labels=None, n_features: int = synth.TOTAL_FEATURES, n_fields: Optional[int] = None):
    """Dataset of one-hot rows: column c of X is a feature of field fields[c]."""
    from fmrecall import Dataset

    n, c = X.shape
    fields = np.asarray(fields, dtype=np.int32)
    return Dataset(
        np.arange(0, n * c + 1, c, dtype=np.int64),
        np.tile(fields, n),
        np.ascontiguousarray(X, dtype=np.int32).reshape(-1),
        None,
        labels,
        n_features=n_features,
        n_fields=n_fields if n_fields is not None else int(fields.max()) + 1,
    )


class ModelSpec:
    """Field layout of one benchmark model: which synthetic columns, renumbered how."""

    def __init__(self, name: str):
        from fmrecall import Sides

        self.name = name
        self.kind, self.k, user, context = MODELS[name]
        if self.kind == "fm":  # all 39 fields, numbered as in the data
            self.query_cols = list(user) + list(context)
            self.item_cols = list(ITEM_FIELDS)
            self.query_fields = self.query_cols
            self.item_fields = self.item_cols
            self.n_fields = 39
            self.sides = Sides(user=user, context=context, item=ITEM_FIELDS)
        else:  # only the 20 chosen fields: query 0..4, item 5..19
            self.query_cols = list(user) + list(context)
            self.item_cols = list(ITEM_FIELDS)
            nq = len(self.query_cols)
            self.query_fields = list(range(nq))
            self.item_fields = list(range(nq, nq + len(self.item_cols)))
            self.n_fields = nq + len(self.item_cols)
            self.sides = Sides(user=range(len(user)), context=range(len(user), nq), item=self.item_fields)

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def train_cols(self):
        return list(range(39)) if self.kind == "fm" else self.query_cols + self.item_cols

    def train_fields(self):
        return list(range(39)) if self.kind == "fm" else self.query_fields + self.item_fields

    def rows(self, X: np.ndarray, labels=None):
        return onehot(X[:, self.train_cols()], self.train_fields(), labels, n_fields=self.n_fields)

    def items(self, I: np.ndarray):
        """Item Dataset from (n, 15) ids of ITEM_FIELDS (columns in ITEM_FIELDS order)."""
        return onehot(I, self.item_fields, n_fields=self.n_fields)

    def queries(self, X: np.ndarray):
        return onehot(X[:, self.query_cols], self.query_fields, n_fields=self.n_fields)


class Data:
    """The synthetic data as an (n, 39) id matrix, with its train / valid cut."""

    def __init__(self, path: str, meta: Dict):
        ds = synth.load(path, meta)
        self.X = _matrix(ds)
        self.y = ds.labels
        self.meta = meta
        self.cut = synth.train_rows(ds.n_rows)
        self.n_rows = ds.n_rows


def model_path(name: str, train_rows: int, epochs: int) -> Tuple[str, str]:
    base = os.path.join(CACHE, f"recall_{name}_{train_rows}_e{epochs}_v{VERSION}")
    return base + ".npz", base + ".json"


def train_model(data: Data, name: str, verbose: bool = True):
    """(model, info): the cached model if present, else trained (fit with validation) and cached."""
    import fmrecall

    spec = ModelSpec(name)
    n_train = data.cut if TRAIN_ROWS <= 0 else min(TRAIN_ROWS, data.cut)
    path, js = model_path(name, n_train, EPOCHS)
    if os.path.exists(path) and os.path.exists(js):
        with open(js) as f:
            info = json.load(f)
        if info.get("data_rows") == data.n_rows:
            model = fmrecall.load(path)
            model.threads = 0
            return model, info
    cls = fmrecall.FFM if spec.kind == "ffm" else fmrecall.FM
    hyper = dict(common.HYPER)
    model = cls(k=spec.k, epochs=EPOCHS, threads=0, patience=None, **hyper)
    train = spec.rows(data.X[:n_train], data.y[:n_train])
    valid = spec.rows(data.X[data.cut :], data.y[data.cut :])
    if verbose:
        print(f"[recall] training {spec.label} on {n_train:,} rows, {EPOCHS} epochs", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    model.fit(train, valid=valid)
    secs = time.perf_counter() - t0
    h = model.history_[-1]
    info = {
        "name": name,
        "model": spec.label,
        "kind": spec.kind,
        "k": spec.k,
        "train_rows": n_train,
        "data_rows": data.n_rows,
        "epochs": EPOCHS,
        "seconds": secs,
        "valid_logloss": h["valid_loss"],
        "valid_auc": h["valid_auc"],
        "hyper": hyper,
        "n_fields": spec.n_fields,
        "floor_logloss": data.meta["floor_logloss_valid"],
        "base_rate_logloss": data.meta["base_rate_logloss_valid"],
    }
    os.makedirs(CACHE, exist_ok=True)
    model.save(path)
    with open(js + ".tmp", "w") as f:
        json.dump(info, f, indent=1)
    os.replace(js + ".tmp", js)
    if verbose:
        print(
            f"[recall] {spec.label}: valid logloss {info['valid_logloss']:.4f} AUC {info['valid_auc']:.4f} "
            f"({secs:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return model, info


def _unique_rows(A: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct row of A, in order of first occurrence."""
    A = np.ascontiguousarray(A)
    v = A.view(np.dtype((np.void, A.dtype.itemsize * A.shape[1]))).ravel()
    _, first = np.unique(v, return_index=True)
    return np.sort(first)


def catalogue(data: Data, n_items: int, seed: int = SEED) -> Tuple[np.ndarray, Dict]:
    """(n_items, 15) item-field ids (ITEM_FIELDS order), distinct rows, and how they were made."""
    rng = np.random.default_rng([seed, n_items])
    I_all = data.X[: data.cut][:, ITEM_FIELDS]
    base = I_all[_unique_rows(I_all)]
    base = base[np.random.default_rng(seed).permutation(base.shape[0])]  # same base order for every N
    if base.shape[0] >= n_items:
        return base[:n_items].copy(), {"distinct_data_rows": n_items, "perturbed": 0}
    out = [base]
    have = base.shape[0]
    F = len(ITEM_FIELDS)
    while have < n_items:
        m = int((n_items - have) * 1.05) + 16
        src = base[rng.integers(0, base.shape[0], m)].copy()
        n_change = rng.integers(1, 4, m)  # 1..3 fields replaced
        for j in range(3):
            rows = np.flatnonzero(n_change > j)
            cols = rng.integers(0, F, rows.size)  # a repeated column just re-draws: fine
            donors = rng.integers(0, I_all.shape[0], rows.size)
            src[rows, cols] = I_all[donors, cols]
        allv = np.concatenate(out + [src])
        keep = _unique_rows(allv)
        allv = allv[keep]
        out = [allv[:n_items]]
        have = out[0].shape[0]
    return out[0], {"distinct_data_rows": int(base.shape[0]), "perturbed": int(n_items - base.shape[0])}


def query_rows(data: Data, spec: ModelSpec, n: int = N_QUERIES, seed: int = SEED) -> np.ndarray:
    """(n, 39) rows of the validation part whose query fields are distinct (shuffled, seeded)."""
    V = data.X[data.cut :]
    first = _unique_rows(V[:, spec.query_cols])
    pick = np.random.default_rng([seed, 1]).permutation(first.size)[:n]
    return V[first[pick]]


if __name__ == "__main__":
    # python bench/recall_data.py: train / load both models and print catalogue stats
    path, meta = synth.ensure()
    d = Data(path, meta)
    for name in MODELS:
        m, info = train_model(d, name)
        print(json.dumps(info))
