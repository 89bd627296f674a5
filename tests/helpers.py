"""Helpers shared by the tests (not fixtures: those live in conftest.py): random field-aware
datasets and weights, the kernel instruction sets (FMRECALL_ARCH) this CPU can run, running code in
a fresh interpreter, split / hybrid row helpers, and the Recaller test world (``World``,
``check_top``) used by test_recall*.py, test_milvus.py and stress_recall.py.

Test modules import them with ``from helpers import ...`` (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

import fmrecall

REPO_ROOT = Path(__file__).resolve().parent.parent
ARCH_NAMES = ("generic", "avx2", "avx512")


def in_ci() -> bool:
    """True when $CI is set to a true value (missing real data then fails instead of skipping)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# ---------------------------------------------------------------------------- kernel variants
def _available_archs():
    """Instruction sets the kernels can be forced to on this CPU (FMRECALL_ARCH is read per call)."""
    old = os.environ.get("FMRECALL_ARCH")
    found = []
    try:
        for name in ARCH_NAMES:
            os.environ["FMRECALL_ARCH"] = name
            if fmrecall.best_arch() == name:
                found.append(name)
    finally:
        if old is None:
            os.environ.pop("FMRECALL_ARCH", None)
        else:
            os.environ["FMRECALL_ARCH"] = old
    return found


AVAILABLE_ARCHS = _available_archs()


# ---------------------------------------------------------------------------- random data
def feature_field(n_features: int, n_fields: int) -> np.ndarray:
    """The field every synthetic feature belongs to (feature j -> field j % n_fields)."""
    return np.arange(n_features) % n_fields


def random_rows(
    rng: np.random.Generator,
    n_rows: int,
    n_features: int,
    n_fields: int,
    *,
    max_per_field: int = 3,
    field_prob: float = 0.8,
    real_values: bool = True,
    negative_values: bool = True,
):
    """CSR arrays of random rows: several fields per row, multi-valued fields (up to
    `max_per_field` distinct features of one field), nodes shuffled so fields are out of order,
    real (optionally negative) values. Every feature appears at most once per row and every row
    has at least one node."""
    owner = feature_field(n_features, n_fields)
    pools = [np.flatnonzero(owner == f) for f in range(n_fields)]
    indptr = [0]
    fields, features = [], []
    for _ in range(n_rows):
        rf, rj = [], []
        for f in range(n_fields):
            if rng.random() > field_prob or pools[f].size == 0:
                continue
            cnt = int(rng.integers(1, min(max_per_field, pools[f].size) + 1))
            rj.extend(rng.choice(pools[f], size=cnt, replace=False).tolist())
            rf.extend([f] * cnt)
        if not rj:  # at least one node per row (rows without nodes have their own tests)
            f = int(rng.integers(0, n_fields))
            rj.append(int(rng.choice(pools[f])))
            rf.append(f)
        order = rng.permutation(len(rj))
        fields.extend(np.asarray(rf, dtype=np.int64)[order].tolist())
        features.extend(np.asarray(rj, dtype=np.int64)[order].tolist())
        indptr.append(len(features))
    nnz = len(features)
    values = None
    if real_values:
        values = rng.uniform(0.2, 1.5, size=nnz)
        if negative_values:
            values *= np.where(rng.random(nnz) < 0.2, -1.0, 1.0)
        values = values.astype(np.float32)
    return (
        np.asarray(indptr, dtype=np.int64),
        np.asarray(fields, dtype=np.int32),
        np.asarray(features, dtype=np.int32),
        values,
    )


def random_labels(rng: np.random.Generator, n_rows: int, loss: str = "logistic", minus_one: bool = False) -> np.ndarray:
    if loss == "logistic":
        y = rng.integers(0, 2, size=n_rows).astype(np.float32)
        if minus_one:
            y = 2 * y - 1
        return y
    return rng.normal(0.0, 1.0, size=n_rows).astype(np.float32)


def random_dataset(
    rng: np.random.Generator,
    n_rows: int = 50,
    n_features: int = 40,
    n_fields: int = 5,
    *,
    loss: str = "logistic",
    labels: bool = True,
    **kw,
) -> fmrecall.Dataset:
    indptr, fields, features, values = random_rows(rng, n_rows, n_features, n_fields, **kw)
    y = random_labels(rng, n_rows, loss) if labels else None
    return fmrecall.Dataset(indptr, fields, features, values, y, n_features=n_features, n_fields=n_fields)


def one_row_dataset(
    fields, features, values, label: Optional[float], *, n_features: int, n_fields: int
) -> fmrecall.Dataset:
    fields = np.asarray(fields, dtype=np.int32)
    indptr = np.array([0, fields.size], dtype=np.int64)
    vals = None if values is None else np.asarray(values, dtype=np.float32)
    y = None if label is None else np.array([label], dtype=np.float32)
    return fmrecall.Dataset(
        indptr, fields, np.asarray(features, dtype=np.int32), vals, y, n_features=n_features, n_fields=n_fields
    )


def random_weights(
    rng: np.random.Generator, kind: str, n_features: int, n_fields: int, k: int, scale: float = 0.3
) -> dict:
    """Weights in the layout of FM.weights() ("fm") or FFM.weights() ("ffm"), float32."""
    shape = (n_features, k) if kind == "fm" else (n_features, n_fields, k)
    return {
        "bias": float(np.float32(rng.normal(0.0, scale))),
        "linear": rng.normal(0.0, scale, size=n_features).astype(np.float32),
        "factors": rng.normal(0.0, scale, size=shape).astype(np.float32),
    }


def compact_single(rng: np.random.Generator, w: dict, missing=()) -> dict:
    """Weights with dense "factors" (n, k) in the layout FM / HybridFM.weights() return: one row of
    factors per feature, in a shuffled order, none for the features in `missing` (single_row -1)."""
    n = len(w["linear"])
    keep = np.setdiff1d(np.arange(n), np.asarray(missing, dtype=np.int64))
    order = rng.permutation(keep.size)
    rows = np.full(n, -1, dtype=np.int32)
    rows[keep] = order
    factors = np.empty((keep.size, w["factors"].shape[1]), np.float32)
    factors[order] = w["factors"][keep]
    return {**w, "factors": factors, "single_row": rows}


MODEL_CLASSES = {"fm": fmrecall.FM, "ffm": fmrecall.FFM}


def model_from_weights(kind: str, weights: dict, n_fields: int, **hyper):
    cls = MODEL_CLASSES[kind]
    if kind == "fm":
        hyper.setdefault("n_fields", n_fields)
    return cls.from_weights(weights, **hyper)


# ---------------------------------------------------------------------------- isolation
def run_isolated(code: str, timeout: float = 120.0):
    """Run `code` in a fresh interpreter (same sys.path and environment) and return the JSON value
    it prints on its last stdout line. A crash (e.g. a segfault in the C++ core) fails the calling
    test with the exit status and stderr instead of killing the whole pytest run."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=env
    )
    if proc.returncode != 0:
        pytest.fail(
            f"subprocess exited with status {proc.returncode} "
            f"({'signal ' + str(-proc.returncode) if proc.returncode < 0 else 'error'}):\n"
            f"{proc.stderr[-3000:]}",
            pytrace=False,
        )
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


# ---------------------------------------------------------------------------- split / hybrid helpers
# (numpy only: nothing here calls the code under test except to build Datasets)
FRAPPE_FIELD_RANGES = [
    (0, 957),
    (957, 5039),
    (5039, 5046),
    (5046, 5053),
    (5053, 5055),
    (5055, 5058),
    (5058, 5060),
    (5060, 5069),
    (5069, 5149),
    (5149, 5382),
]
FRAPPE_SIDES = dict(user=[0], item=[1], context=[2, 3, 4, 5, 6, 7, 8, 9])


def aware_flags(sides_dict: dict, field_aware: str, n_fields: int) -> np.ndarray:
    """Reference `aware` flags of a HybridFM: the fields of the field-aware side ("item" or "query")."""
    item = np.isin(np.arange(n_fields), list(sides_dict.get("item", ())))
    return item if field_aware == "item" else ~item


def random_hybrid_weights(
    rng: np.random.Generator,
    n_features: int,
    n_fields: int,
    k: int,
    *,
    scale: float = 0.3,
    aware_features=None,
    missing: float = 0.0,
) -> dict:
    """Weights in the layout of HybridFM.weights(): every feature of `aware_features` (default: all)
    gets a row of field_factors, in a shuffled order; a fraction `missing` of them gets -1 instead."""
    feats = np.arange(n_features) if aware_features is None else np.unique(np.asarray(aware_features))
    feats = feats[rng.random(feats.size) >= missing]
    rows = np.full(n_features, -1, dtype=np.int32)
    rows[feats] = rng.permutation(feats.size).astype(np.int32)
    return {
        "bias": float(np.float32(rng.normal(0.0, scale))),
        "linear": rng.normal(0.0, scale, size=n_features).astype(np.float32),
        "factors": rng.normal(0.0, scale, size=(n_features, k)).astype(np.float32),
        "field_factors": rng.normal(0.0, scale, size=(feats.size, n_fields, k)).astype(np.float32),
        "aware_row": rows,
    }


def hybrid_ref_params(w: dict):
    """reference.py params of HybridFM weights: v[j] = factors[single_row[j]]; W[j] = field_factors[aware_row[j]],
    or zeros for aware_row[j] = -1 (such a feature's pairs vanish: only its linear term is left)."""
    import reference as ref

    rows = np.asarray(w["aware_row"])
    F, k = w["field_factors"].shape[1:]
    W = np.zeros((rows.size, F, k))
    W[rows >= 0] = w["field_factors"][rows[rows >= 0]]
    return ref.make_params(w["bias"], w["linear"], v=ref.dense_single(w), W=W)


def ref_params_and_aware(kind: str, w: dict, n_fields: int, sides_dict=None):
    """(reference params, aware flags) of weights of kind fm / ffm / hybrid-item / hybrid-query."""
    import reference as ref

    if kind == "fm":
        return ref.make_params(w["bias"], w["linear"], v=ref.dense_single(w)), ref.fm_aware(n_fields)
    if kind == "ffm":
        return ref.make_params(w["bias"], w["linear"], W=w["factors"]), ref.ffm_aware(n_fields)
    return hybrid_ref_params(w), aware_flags(sides_dict, kind.split("-")[1], n_fields)


def side_rows(
    rng: np.random.Generator,
    n_rows: int,
    fields,
    pools: dict,
    *,
    max_per_field: int = 3,
    field_prob: float = 0.8,
    dup_prob: float = 0.3,
):
    """Rows (list of (fields, features, values) int/int/float32 arrays) over `fields` only: a random
    subset of the fields per row, 1..max_per_field features of each (drawn from pools[f]), sometimes
    one of them twice (same feature twice in one field), real values of both signs, nodes shuffled
    so fields are out of order. At least one node per row."""
    out = []
    fields = list(fields)
    for _ in range(n_rows):
        rf, rj = [], []
        for f in fields:
            if rng.random() > field_prob:
                continue
            cnt = int(rng.integers(1, max_per_field + 1))
            js = rng.choice(pools[f], size=cnt).tolist()
            if rng.random() < dup_prob:
                js.append(js[0])
            rj += js
            rf += [f] * len(js)
        if not rj:
            f = fields[int(rng.integers(0, len(fields)))]
            rf, rj = [f], [int(rng.choice(pools[f]))]
        x = rng.uniform(0.2, 1.5, size=len(rj)) * np.where(rng.random(len(rj)) < 0.2, -1.0, 1.0)
        order = rng.permutation(len(rj))
        out.append((np.asarray(rf, np.int64)[order], np.asarray(rj, np.int64)[order], x.astype(np.float32)[order]))
    return out


def rows_dataset(rows, *, n_features: int, n_fields: int, labels=None) -> fmrecall.Dataset:
    """A Dataset of (fields, features, values) rows."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r[1]) for r in rows])
    cat = lambda i, dt: (  # noqa: E731
        np.concatenate([np.asarray(r[i]) for r in rows]).astype(dt) if indptr[-1] else np.zeros(0, dt)
    )
    return fmrecall.Dataset(
        indptr,
        cat(0, np.int32),
        cat(1, np.int32),
        cat(2, np.float32),
        None if labels is None else np.asarray(labels, np.float32),
        n_features=n_features,
        n_fields=n_fields,
    )


def dataset_rows(ds: fmrecall.Dataset, rows=None):
    """The (fields, features, values) rows of a Dataset (values of one-hot data = 1)."""
    vals = ds.values_or_ones()
    rows = range(ds.n_rows) if rows is None else rows
    out = []
    for r in rows:
        s, e = int(ds.indptr[r]), int(ds.indptr[r + 1])
        out.append((ds.fields[s:e].astype(np.int64), ds.features[s:e].astype(np.int64), vals[s:e]))
    return out


def keep_fields(row, fields):
    """The nodes of a (fields, features, values) row whose field is in `fields`."""
    f, j, x = row
    m = np.isin(f, list(fields))
    return f[m], j[m], x[m]


def join_rows(a, b, rng: Optional[np.random.Generator] = None):
    """Query row ⊕ item row as one row (nodes interleaved at random when rng is given)."""
    f = np.concatenate([a[0], b[0]])
    j = np.concatenate([a[1], b[1]])
    x = np.concatenate([a[2], b[2]]).astype(np.float32)
    if rng is not None:
        o = rng.permutation(f.size)
        f, j, x = f[o], j[o], x[o]
    return f, j, x


# ---------------------------------------------------------------------------- Recaller world
# (tests/test_recall.py, test_recall_store.py, test_recall_concurrency.py, test_milvus.py, stress_recall.py)
N, F = 48, 6  # feature j belongs to field j % F
SD = dict(user=[3, 0], context=[5], item=[4, 1, 2])  # fields out of order, a context field


def _qfields(sd):
    return list(sd.get("user", [])) + list(sd.get("context", []))


def _pools():
    return {f: np.arange(f, N, F) for f in range(F)}


def _model(rng, kind, k=4, sd=SD, scale=0.3):
    """A model with random weights (hybrid: ~15% of the features without field-aware rows)."""
    if kind == "fm":
        return fmrecall.FM.from_weights(random_weights(rng, "fm", N, F, k, scale), n_fields=F, threads=1)
    if kind == "ffm":
        return fmrecall.FFM.from_weights(random_weights(rng, "ffm", N, F, k, scale), threads=1)
    w = random_hybrid_weights(rng, N, F, k, scale=scale, missing=0.15)
    return fmrecall.HybridFM.from_weights(w, sides=fmrecall.Sides(**sd), field_aware=kind.split("-")[1], threads=1)


class World:
    """A model, query rows (user + context fields, multi-valued, real values of both signs), item rows
    under non-contiguous ids, and S[i, j] = decision_function(query i ⊕ item j) (float64)."""

    def __init__(self, rng, kind, *, m=25, n=150, k=4, sd=SD, max_per_field=3):
        self.kind, self.sd = kind, sd
        self.model = _model(rng, kind, k, sd)
        pools = _pools()
        self.qrows = side_rows(rng, m, _qfields(sd), pools, max_per_field=max_per_field)
        self.irows = side_rows(rng, n, sd["item"], pools, max_per_field=max_per_field)
        self.ids = (1000 + 7 * rng.permutation(n)).astype(np.int64)  # ids are not row numbers
        self.queries = rows_dataset(self.qrows, n_features=N, n_fields=F)
        self.items = rows_dataset(self.irows, n_features=N, n_fields=F)
        joined = [join_rows(q, it, rng) for q in self.qrows for it in self.irows]
        dec = self.model.decision_function(rows_dataset(joined, n_features=N, n_fields=F))
        self.S = dec.astype(np.float64).reshape(m, n)
        # absolute floor for float32 rounding of scores that cancel to ~0
        self.tol = 2e-6 * np.maximum(1.0, np.abs(self.S).max(axis=1))

    @property
    def m(self):
        return self.S.shape[0]

    @property
    def n(self):
        return self.S.shape[1]

    def recaller(self, index="exact", **kw):
        kw.setdefault("threads", 1)
        rec = fmrecall.Recaller(self.model, fmrecall.Sides(**self.sd), index, **kw)
        rec.add_items(self.items, self.ids)
        return rec

    def cols(self, ids):
        pos = {int(x): j for j, x in enumerate(self.ids)}
        return np.array([pos[int(x)] for x in ids], dtype=np.int64)

    def mask_of(self, per_query, default):
        """(m, n) bool: columns whose id is in per_query[i] (None -> `default`)."""
        out = np.full((self.m, self.n), default)
        for i, lst in enumerate(per_query):
            if lst is None:
                continue
            out[i] = np.isin(self.ids, np.asarray(lst, dtype=np.int64))
        return out


def check_top(world, res, k, allowed=None, *, exact=True, scores_only=False):
    """The result is the top k (by the brute-force scores S) of the allowed items of every query:
    padding with -1 / -inf where fewer than k are allowed, distinct allowed ids, scores sorted and
    equal to S of the returned id (1e-5 rel), and (exact) the sorted returned S values equal the k
    best allowed S values (the top K up to ties). Returns the per-query hit counts vs exact."""
    S = world.S
    allowed = np.ones(S.shape, bool) if allowed is None else allowed
    ids, scores = res
    assert ids.shape == (world.m, k) and scores.shape == (world.m, k)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    hits = []
    for i in range(world.m):
        n_ok = int(allowed[i].sum())
        want_n = min(k, n_ok)
        valid = ids[i] >= 0
        got_n = int(valid.sum())
        if exact:
            assert got_n == want_n, (i, got_n, want_n)
        assert np.all(valid[:got_n]) and not valid[got_n:].any(), ("padding not at the end", i, ids[i])
        assert np.all(scores[i, got_n:] == -np.inf), (i, scores[i])
        got = ids[i, :got_n]
        assert len(set(got.tolist())) == got_n, ("duplicate ids", i, got)
        cols = world.cols(got)
        assert allowed[i, cols].all(), ("returned a filtered-out id", i, got[~allowed[i, cols]])
        s = scores[i, :got_n].astype(np.float64)
        assert np.all(np.isfinite(s))
        np.testing.assert_allclose(s, S[i, cols], rtol=1e-5, atol=world.tol[i], err_msg=f"query {i}")
        assert np.all(np.diff(s) <= 0), ("scores not sorted", i, s)
        best = np.sort(S[i, allowed[i]])[::-1][:want_n]
        if exact and not scores_only:
            np.testing.assert_allclose(
                np.sort(S[i, cols])[::-1], best, rtol=1e-5, atol=world.tol[i], err_msg=f"query {i}: not the top {k}"
            )
        # hits: returned items whose exact score reaches the k-th best (ties count)
        if want_n:
            hits.append((np.sum(S[i, cols] >= best[-1] - world.tol[i]), want_n))
    return hits


def random_id_lists(rng, world, m, *, size_max, extra_unknown=True, with_none=True):
    """Per-query id lists for exclude / restrict filters: None (with_none), [] or up to `size_max`
    ids of the world (repeats allowed), plus ids that are not indexed (extra_unknown)."""
    out = []
    for i in range(m):
        r = rng.random()
        if with_none and r < 0.1:
            out.append(None)
        elif r < 0.2:
            out.append([])
        else:
            lst = rng.choice(world.ids, size=int(rng.integers(1, size_max + 1)), replace=True).tolist()
            if extra_unknown:
                lst += [5, 999_999]  # ids that are not indexed are ignored
            out.append(lst)
    return out


def run_stress(script: str, index: str, seconds: float, readers: int, save_dir: Path) -> dict:
    """Run a readers-and-a-writer stress child (tests/stress_*.py, bounded: 180 s) and return its
    counts, asserting it exited cleanly with no failed check."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        [sys.executable, os.path.join(here, script), index, str(seconds), str(readers), str(save_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    counts: dict = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["failures"] == 0, counts
    return counts


def child_env(**extra: str) -> dict:
    """os.environ for a child interpreter that imports the fmrecall under test: the folder holding
    the imported package (the source tree with its built extension, or an installed copy) first on
    PYTHONPATH, plus `extra`."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(fmrecall.__file__)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": pkg, **extra}
