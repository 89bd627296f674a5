"""Training on several threads with private copies of the hot parameters (cpp/fmrecall/hot.h).

A training call on more than one thread gives each thread a copy of the bias and of the most
frequent features' parameters (weights and AdaGrad state); rows point at the copy, and every
1024 / threads rows (at most 256) a thread adds what it changed since its last merge to the model. No update may be lost
and none counted twice. The per-row arithmetic through the copies is checked against numpy in
tests/test_kernels.py (the `copies` fixture); here:

* on one thread, FMRECALL_HOT=on (copies, merges every 256 rows) gives the in-place weights bit for
  bit, for every model type, multi-valued and real-valued rows, Interactions with hard negatives and BPR;
* on 2 and 4 threads, the AdaGrad state the threads accumulate equals the one-thread state. It is read
  through a probe: an epoch at a vanishing learning rate leaves the weights as they are (so every row's
  gradient is the same whatever the thread count) and adds Σ g² to each accumulator; one step at a
  normal rate on a row of the hottest features then moves each weight by −η g / √(G + g²), which
  reveals G. A merge that dropped a thread's changes (or added them twice) moves G by a large factor.
"""

from __future__ import annotations

import numpy as np
import pytest

import fmrecall

N_FIELDS = 6
PER_FIELD = 40  # feature f * 40 + z belongs to field f
TINY = 1e-30  # learning rate that leaves every weight as it is


def _skewed_rows(rng: np.random.Generator, n_rows: int, multi: bool = False):
    """CSR rows, one node per field (two in field 5 when `multi`), ids within a field drawn with a
    heavy head (a few values in most rows: the hot features), values 1 or real."""
    z = np.minimum(rng.zipf(1.6, size=(n_rows, N_FIELDS)) - 1, PER_FIELD - 1)
    feats = (np.arange(N_FIELDS) * PER_FIELD + z).astype(np.int32)
    fields = np.tile(np.arange(N_FIELDS, dtype=np.int32), (n_rows, 1))
    if multi:
        extra = (5 * PER_FIELD + rng.integers(0, PER_FIELD, size=(n_rows, 1))).astype(np.int32)
        feats = np.hstack([feats, extra])
        fields = np.hstack([fields, np.full((n_rows, 1), 5, np.int32)])
    per = feats.shape[1]
    values = rng.uniform(0.5, 1.5, size=feats.size).astype(np.float32) if multi else None
    labels = (rng.random(n_rows) < 0.3).astype(np.float32)
    indptr = np.arange(0, n_rows * per + 1, per, dtype=np.int64)
    return fmrecall.Dataset(
        indptr,
        fields.ravel(),
        feats.ravel(),
        values,
        labels,
        n_features=N_FIELDS * PER_FIELD,
        n_fields=N_FIELDS,
    )


def _model(kind: str, threads: int, lr: float = 0.1):
    hyper = dict(k=5, learning_rate=lr, threads=threads, seed=3)
    if kind == "fm":
        return fmrecall.FM(**hyper)
    if kind == "ffm":
        return fmrecall.FFM(**hyper)
    sides = fmrecall.Sides(user=[0, 1], context=[2], item=[3, 4, 5])
    return fmrecall.HybridFM(sides=sides, field_aware=kind.split("-")[1], **hyper)


def _interactions(rng: np.random.Generator, negatives: int, hard: int):
    pd = pytest.importorskip("pandas")
    from fmrecall import Categorical, Interactions, MultiCategorical, Schema

    n_users, n_items, n_events = 120, 60, 3000
    users = pd.DataFrame({"user_id": np.arange(n_users), "age": rng.integers(0, 3, n_users)})
    items = pd.DataFrame(
        {
            "item_id": np.arange(n_items),
            "cat": rng.integers(0, 4, n_items),
            "tags": [list(rng.choice(["a", "b", "c", "d"], size=2, replace=False)) for _ in range(n_items)],
        }
    )
    pick = np.minimum(rng.zipf(1.4, size=n_events) - 1, n_items - 1)  # popular items: hot features
    events = pd.DataFrame(
        {"user_id": rng.integers(0, n_users, n_events), "item_id": pick, "hour": rng.integers(0, 4, n_events)}
    )
    schema = Schema(
        [
            Categorical("user_id", "user"),
            Categorical("age", "user"),
            Categorical("hour", "context"),
            Categorical("item_id", "item"),
            Categorical("cat", "item"),
            MultiCategorical("tags", "item"),
        ]
    )
    schema.fit([users, items, events])
    inter = Interactions(users, items, events, schema, negatives=negatives, alpha=0.5, hard_negatives=hard)
    first = Interactions(users, items, events.iloc[:1], schema, negatives=1, alpha=0.5)  # a probe: one event
    return inter, first


def _weights(model) -> dict:
    return {k: np.array(v, copy=True) for k, v in model.weights().items() if isinstance(v, np.ndarray)}


def _assert_same(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if tol:
            np.testing.assert_allclose(a[key], b[key], err_msg=key, **tol)
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------------------- one thread: bit for bit
@pytest.mark.parametrize("kind", ["fm", "ffm", "hybrid-item", "hybrid-query"])
@pytest.mark.parametrize("multi", [False, True], ids=["onehot", "multi"])
def test_one_thread_through_copies_gives_the_in_place_weights(monkeypatch, rng, kind, multi):
    ds = _skewed_rows(rng, 3000, multi=multi)  # 3000 rows: 11 merges within the call
    got = {}
    for mode in ("off", "on"):
        monkeypatch.setenv("FMRECALL_HOT", mode)
        m = _model(kind, threads=1)
        m.partial_fit(ds)
        m.partial_fit(ds)
        got[mode] = _weights(m)
    _assert_same(got["off"], got["on"])


@pytest.mark.parametrize("loss, hard", [("logistic", 1), ("logistic", 3), ("bpr", 1)])
@pytest.mark.parametrize("kind", ["fm", "ffm", "hybrid-item"])
def test_one_thread_through_copies_on_interactions(monkeypatch, rng, kind, loss, hard):
    """Sampled negatives (the best of `hard` draws, scored through the copies) and BPR pairs."""
    inter, _ = _interactions(rng, negatives=2, hard=hard)
    got = {}
    for mode in ("off", "on"):
        monkeypatch.setenv("FMRECALL_HOT", mode)
        m = _model(kind, threads=1)  # its sides match the schema's fields
        m.set_params(loss=loss)
        m.partial_fit(inter)
        m.partial_fit(inter)
        got[mode] = _weights(m)
    _assert_same(got["off"], got["on"])


# ---------------------------------------------------------------------------- several threads: no update lost
def _probe_steps(data, probe, kind: str, threads: int, loss: str = "logistic") -> dict:
    """Weight changes of one normal step on `probe` after an epoch at a vanishing rate on `threads`."""
    m = _model(kind, threads, lr=TINY)
    m.set_params(loss=loss)
    m.partial_fit(data)
    before = _weights(m)
    m.set_params(learning_rate=0.1, threads=1)
    m.partial_fit(probe)
    after = _weights(m)
    return {key: after[key] - before[key] for key in after}


def _hottest_row(ds: fmrecall.Dataset) -> fmrecall.Dataset:
    """One row of each field's most frequent feature (label 1)."""
    counts = np.bincount(ds.features, minlength=N_FIELDS * PER_FIELD).reshape(N_FIELDS, PER_FIELD)
    feats = (np.arange(N_FIELDS) * PER_FIELD + counts.argmax(axis=1)).astype(np.int32)
    return fmrecall.Dataset(
        np.array([0, N_FIELDS], np.int64),
        np.arange(N_FIELDS, dtype=np.int32),
        feats,
        None,
        np.ones(1, np.float32),
        n_features=N_FIELDS * PER_FIELD,
        n_fields=N_FIELDS,
    )


@pytest.mark.parametrize("threads", [2, 4])
@pytest.mark.parametrize("kind", ["fm", "ffm", "hybrid-item"])
def test_threads_lose_no_adagrad_update(monkeypatch, rng, kind, threads):
    monkeypatch.delenv("FMRECALL_HOT", raising=False)  # the default: copies on more than one thread
    ds = _skewed_rows(rng, 20000)
    probe = _hottest_row(ds)
    want = _probe_steps(ds, probe, kind, 1)
    got = _probe_steps(ds, probe, kind, threads)
    assert np.abs(want["linear"]).max() > 1e-4  # the probe moves the hot weights
    _assert_same(got, want, rtol=2e-4, atol=1e-9)


@pytest.mark.parametrize("loss", ["logistic", "bpr"])
def test_threads_lose_no_adagrad_update_on_interactions(monkeypatch, rng, loss):
    monkeypatch.delenv("FMRECALL_HOT", raising=False)
    inter, first = _interactions(rng, negatives=2, hard=1)
    want = _probe_steps(inter, first, "ffm", 1, loss)
    got = _probe_steps(inter, first, "ffm", 2, loss)
    _assert_same(got, want, rtol=2e-4, atol=1e-9)
