"""One-stage retrieval (fmrecall.Recaller, DESIGN.md §5): the top K of a search must be the top K of
the model's own scores of the joined (query ⊕ item) rows, computed here by brute force with
``decision_function`` on every materialised joined row; filters, padding, removal, re-adding, ANN
indexes (exact re-scoring), batches, persistence, segmented search with its exactness certificate,
and frappe end to end."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest
from helpers import (
    FRAPPE_SIDES,
    SD,
    F,
    N,
    World,
    check_top,
    dataset_rows,
    join_rows,
    keep_fields,
    random_id_lists,
    random_weights,
    rows_dataset,
    run_isolated,
)

import fmrecall
import fmrecall.recall.faiss_segment as fsegment
import fmrecall.recall.recaller as frecaller

KINDS = ["fm", "ffm", "hybrid-item", "hybrid-query"]
ANN = ["hnsw", "hnsw-ip", "ivf", "tiered-ivf", "IVF16,Flat", "HNSW16,Flat"]


# ---------------------------------------------------------------------------- exact search
@pytest.mark.parametrize("kind", KINDS)
def test_exact_search_is_brute_force_top_k(rng, kind):
    world = World(rng, kind)
    rec = world.recaller()
    split = world.model.split(fmrecall.Sides(**SD))
    assert len(rec) == world.n and rec.dim == split.dim
    np.testing.assert_array_equal(rec.ids, world.ids)
    # the stored vectors are the split's item vectors (whatever padding the index uses)
    perm = rng.permutation(world.n)
    np.testing.assert_array_equal(rec.item_vectors(world.ids[perm]), split.item_vectors(world.items)[perm])
    for k in (1, 7, 40):
        res = rec.search(world.queries, k)
        check_top(world, res, k)
        assert res.certified.dtype == bool and res.certified.all()


@pytest.mark.parametrize("kind", KINDS)
def test_exact_search_exclude(rng, kind):
    world = World(rng, kind)
    rec = world.recaller()
    k = 10
    # one array for all queries (with an unknown id and a duplicate)
    top = world.ids[np.argsort(-world.S[0])[:6]]
    excl = np.r_[top, top[:2], 424242].astype(np.int64)
    res = rec.search(world.queries, k, exclude=excl)
    check_top(world, res, k, ~world.mask_of([excl] * world.m, False))
    # one list per query (None / [] / unknown ids / duplicates); the first query excludes its true top 30
    per = random_id_lists(rng, world, world.m, size_max=40)
    per[0] = world.ids[np.argsort(-world.S[0])[:30]].tolist()
    res = rec.search(world.queries, k, exclude=per)
    check_top(world, res, k, ~world.mask_of(per, False))
    # numpy per-query arrays (int32) are honoured like lists
    per_np = [np.asarray(e if e is not None else [], dtype=np.int32) for e in per]
    res2 = rec.search(world.queries, k, exclude=per_np)
    np.testing.assert_array_equal(res2.ids, res.ids)
    # excluding everything but 3 items leaves 3 results and padding
    keep = world.ids[:3]
    res = rec.search(world.queries, k, exclude=np.setdiff1d(world.ids, keep))
    check_top(world, res, k, np.broadcast_to(np.isin(world.ids, keep), world.S.shape))
    assert np.all(res.ids[:, 3:] == -1)


@pytest.mark.parametrize("kind", KINDS)
def test_exact_search_restrict(rng, kind):
    world = World(rng, kind)
    rec = world.recaller()
    k = 8
    subset = rng.choice(world.ids, size=20, replace=False).astype(np.int64)
    res = rec.search(world.queries, k, restrict=subset)
    check_top(world, res, k, world.mask_of([subset] * world.m, True))
    # per-query lists: sizes 0..30, unknown ids, duplicates; [] gives only padding
    per = random_id_lists(rng, world, world.m, size_max=30, with_none=False)
    per[1] = world.ids[:3].tolist()  # fewer than k
    res = rec.search(world.queries, k, restrict=per)
    allowed = world.mask_of(per, True)
    check_top(world, res, k, allowed)
    for i, lst in enumerate(per):
        if not lst:
            assert np.all(res.ids[i] == -1) and np.all(res.scores[i] == -np.inf)
    # restrict and exclude together
    excl = random_id_lists(rng, world, world.m, size_max=15)
    res = rec.search(world.queries, k, restrict=per, exclude=excl)
    check_top(world, res, k, allowed & ~world.mask_of(excl, False))
    res = rec.search(world.queries, k, restrict=subset, exclude=excl)
    check_top(world, res, k, world.mask_of([subset] * world.m, True) & ~world.mask_of(excl, False))


def test_search_filters_need_one_entry_per_query(rng):
    world = World(rng, "fm", m=5, n=20)
    rec = world.recaller()
    with pytest.raises(ValueError, match="one entry per query"):
        rec.search(world.queries, 3, exclude=[[world.ids[0]]] * 4)
    with pytest.raises(ValueError, match="one entry per query"):
        rec.search(world.queries, 3, restrict=[[world.ids[0]]] * 6)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="k must be"):
            rec.search(world.queries, bad)


@pytest.mark.parametrize("kind", ["fm", "ffm"])
def test_context_only_queries(rng, kind):
    """No user side: the query is the request context alone."""
    sd = dict(context=[4, 1], item=[0, 2, 3, 5])
    world = World(rng, kind, sd=sd, m=15, n=80)
    rec = world.recaller()
    check_top(world, rec.search(world.queries, 9), 9)


@pytest.mark.parametrize("kind", ["fm", "ffm"])
def test_proba_is_sigmoid_of_score(rng, kind):
    world = World(rng, kind, m=10, n=30)
    rec = world.recaller()
    res = rec.search(world.queries, 40)  # 10 padded columns
    p = res.proba
    assert p.dtype == np.float32 and p.shape == res.scores.shape
    want = 1.0 / (1.0 + np.exp(-res.scores.astype(np.float64)))
    np.testing.assert_allclose(p, want, rtol=1e-6, atol=1e-7)
    assert np.all(p[:, 30:] == 0.0)
    # the same as the model's own predict() on the joined rows
    cols = world.cols(res.ids[0, :30])
    joined = [join_rows(world.qrows[0], world.irows[c]) for c in cols]
    np.testing.assert_allclose(
        p[0, :30], world.model.predict_proba(rows_dataset(joined, n_features=N, n_fields=F))[:, 1], rtol=1e-5, atol=1e-6
    )
    squared = (
        fmrecall.FM.from_weights(world.model.weights(), n_fields=F, loss="squared")
        if kind == "fm"
        else fmrecall.FFM.from_weights(world.model.weights(), loss="squared")
    )
    r2 = fmrecall.Recaller(squared, fmrecall.Sides(**SD))
    r2.add_items(world.items, world.ids)
    sq = r2.search(world.queries, 3)
    assert sq.loss == "squared"
    with pytest.raises(ValueError, match="logistic"):
        sq.proba


# ---------------------------------------------------------------------------- padding, empty, removal
@pytest.mark.parametrize("index,segments", [("exact", 1), ("exact", 3), ("hnsw", 1), ("ivf", 1)])
def test_k_larger_than_the_catalogue_pads(rng, index, segments):
    world = World(rng, "ffm", m=12, n=10)
    rec = world.recaller(index, segments=segments)
    res = rec.search(world.queries, 15)
    check_top(world, res, 15)
    assert np.all(res.ids[:, 10:] == -1) and np.all(np.isneginf(res.scores[:, 10:]))
    assert np.all(res.ids[:, :10] >= 0)
    excl = world.ids[:4]
    res = rec.search(world.queries, 15, exclude=excl)
    check_top(world, res, 15, np.broadcast_to(~np.isin(world.ids, excl), world.S.shape))
    assert np.all(res.ids[:, 6:] == -1)


def test_empty_queries_and_empty_catalogue(rng):
    world = World(rng, "ffm", m=6, n=20)
    empty_q = rows_dataset([], n_features=N, n_fields=F)
    for index in ("exact", "hnsw", "ivf"):
        rec = world.recaller(index)
        res = rec.search(empty_q, 5)
        assert res.ids.shape == (0, 5) and res.scores.shape == (0, 5) and res.certified.shape == (0,)
        assert res.ids.dtype == np.int64 and res.scores.dtype == np.float32
        empty = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), index)
        assert len(empty) == 0 and empty.ids.size == 0
        res = empty.search(world.queries, 4)
        assert np.all(res.ids == -1) and np.all(res.scores == -np.inf) and res.ids.shape == (6, 4)
        # everything removed: the same
        rec.remove_items(world.ids)
        assert len(rec) == 0
        res = rec.search(world.queries, 4)
        assert np.all(res.ids == -1) and np.all(res.scores == -np.inf)
        # and items can be added again afterwards
        rec.add_items(world.items, world.ids)
        check_top(world, rec.search(world.queries, 4), 4, exact=index == "exact")


@pytest.mark.parametrize("index", ["exact", "hnsw", "ivf", "tiered-ivf", "IVF16,Flat"])
def test_removed_items_are_never_returned(rng, index):
    world = World(rng, "hybrid-item", m=20, n=200)
    rec = world.recaller(index)
    gone = rng.choice(world.ids, size=30, replace=False)  # < 25%: ANN indexes keep them as dead rows
    rec.remove_items(np.r_[gone, 31337])  # unknown id ignored
    assert len(rec) == 170
    np.testing.assert_array_equal(rec.ids, world.ids[~np.isin(world.ids, gone)])
    alive = ~np.isin(world.ids, gone)
    res = rec.search(world.queries, 170)
    check_top(world, res, 170, np.broadcast_to(alive, world.S.shape), exact=index == "exact")
    assert not np.isin(res.ids, gone).any()
    res = rec.search(world.queries, 10, exclude=world.ids[:5])
    check_top(
        world,
        res,
        10,
        np.broadcast_to(alive & ~np.isin(world.ids, world.ids[:5]), world.S.shape),
        exact=index == "exact",
    )
    # more than 25% removed (ANN indexes compact); removed ids stay out, restrict cannot bring them back
    gone2 = np.r_[gone, rng.choice(world.ids[alive], size=40, replace=False)]
    rec.remove_items(gone2)
    assert len(rec) == 130
    alive = ~np.isin(world.ids, gone2)
    res = rec.search(world.queries, 12)
    check_top(world, res, 12, np.broadcast_to(alive, world.S.shape), exact=index == "exact")
    res = rec.search(world.queries, 12, restrict=gone2)
    assert np.all(res.ids == -1)
    with pytest.raises(KeyError):
        rec.item_vectors(gone2[:1])


@pytest.mark.parametrize("index", ["exact", "hnsw", "ivf"])
def test_readding_an_id_replaces_its_vector(rng, index):
    world = World(rng, "ffm", m=10, n=60)
    rec = world.recaller(index)
    split = world.model.split(fmrecall.Sides(**SD))
    # give ids 0..2 of the catalogue the item rows of columns 10..12
    target = world.ids[:3]
    new_rows = [world.irows[c] for c in (10, 11, 12)]
    rec.add_items(rows_dataset(new_rows, n_features=N, n_fields=F), target)
    assert len(rec) == world.n
    np.testing.assert_array_equal(np.sort(rec.ids), np.sort(world.ids))
    np.testing.assert_array_equal(
        rec.item_vectors(target), split.item_vectors(rows_dataset(new_rows, n_features=N, n_fields=F))
    )
    S2 = world.S.copy()
    S2[:, :3] = world.S[:, 10:13]
    world2 = World.__new__(World)
    world2.__dict__.update(world.__dict__)
    world2.S = S2
    res = rec.search(world.queries, world.n)
    check_top(world2, res, world.n, exact=index == "exact")
    res = rec.search(world.queries, 1, restrict=target[:1])
    np.testing.assert_allclose(res.scores[:, 0], world.S[:, 10], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="duplicate id"):
        rec.add_items(rows_dataset(new_rows[:2], n_features=N, n_fields=F), np.array([7, 7]))


def test_add_items_validation(rng):
    world = World(rng, "fm", m=3, n=10)
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD))
    with pytest.raises(ValueError, match="one id per item row"):
        rec.add_items(world.items, world.ids[:5])
    with pytest.raises(ValueError, match=">= 0"):
        rec.add_items(world.items, np.r_[world.ids[:9], -3])
    with pytest.raises(ValueError, match="integers"):
        rec.add_items(world.items, world.ids.astype(np.float64))
    with pytest.raises(ValueError, match="field"):  # query rows as items: a query field in item rows
        rec.add_items(world.queries, np.arange(world.m))
    for bad in ("", None, 3):
        with pytest.raises(ValueError):
            fmrecall.Recaller(world.model, fmrecall.Sides(**SD), bad)
    with pytest.raises(ValueError, match="factory"):
        fmrecall.Recaller(world.model, fmrecall.Sides(**SD), "NoSuchIndex12,Flat")
    with pytest.raises(ValueError, match="segments"):
        fmrecall.Recaller(world.model, fmrecall.Sides(**SD), segments=0)
    with pytest.raises(ValueError, match="segments"):
        fmrecall.Recaller(world.model, fmrecall.Sides(**SD), segments=rec.dim + 1)
    assert len(rec) == 0  # nothing was added by the failed calls


@pytest.mark.parametrize("index,kw", [("IVF16,Flat", {}), ("ivf", {"nlist": 32})])
def test_ivf_first_batch_smaller_than_nlist(rng, index, kw):
    """An IVF index is trained on the first batch. A first batch with fewer items than lists either
    works or fails cleanly (the Recaller unchanged); either way every item the Recaller then holds
    is found by an exhaustive probe (nprobe >= nlist): none is registered but missing from faiss."""
    world = World(rng, "fm", m=8, n=100)
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), index, nprobe=64, threads=1, **kw)
    first_ok = True
    try:
        rec.add_items(world.items.subset(np.arange(5)), world.ids[:5])
    except (RuntimeError, ValueError):
        first_ok = False
        assert len(rec) == 0 and rec.ids.size == 0, (
            f"a failed add_items left {len(rec)} items registered (ids {rec.ids.tolist()})"
        )
    rec.add_items(world.items.subset(np.arange(5, 100)), world.ids[5:])
    n = 100 if first_ok else 95
    assert len(rec) == n
    res = rec.search(world.queries, 100)
    for row in res.ids:
        assert set(row[row >= 0].tolist()) == set(rec.ids.tolist()), (
            f"{len(rec)} items registered, {int((row >= 0).sum())} findable"
        )


def test_vectors_array_stays_valid_after_changes():
    """rec.vectors is a numpy array: one obtained earlier must keep its values (own or keep alive
    its memory) when the Recaller later grows or shrinks (run in a subprocess: reading freed memory
    may crash)."""
    code = """
    import json, numpy as np, fmrecall
    rng = np.random.default_rng(0)
    n_f = 40
    w = {"bias": 0.1, "linear": rng.normal(size=n_f).astype(np.float32),
         "factors": rng.normal(size=(n_f, 8)).astype(np.float32)}
    model = fmrecall.FM.from_weights(w, n_fields=2)
    def items(n):
        return fmrecall.Dataset(np.arange(n + 1), np.ones(n, np.int32), rng.integers(20, 40, n),
                                rng.uniform(0.5, 2, n).astype(np.float32), n_features=n_f, n_fields=2)
    out = {}
    for index in ("exact", "hnsw"):
        rec = fmrecall.Recaller(model, fmrecall.Sides(user=[0], item=[1]), index)
        rec.add_items(items(30000), np.arange(30000))
        v = rec.vectors
        snap = np.array(v, copy=True)
        rec.add_items(items(30000), np.arange(30000, 60000))
        same_after_add = bool(np.array_equal(v, snap))
        rec.remove_items(np.arange(0, 60000, 2))
        out[index] = [same_after_add, bool(np.array_equal(v, snap))]
    print(json.dumps(out))
    """
    got = run_isolated(code)
    assert got == {"exact": [True, True], "hnsw": [True, True]}, got


# ---------------------------------------------------------------------------- ANN
@pytest.mark.parametrize("index", ANN)
@pytest.mark.parametrize("kind", ["ffm", "hybrid-query"])
def test_ann_scores_are_exact(rng, index, kind):
    """ANN indexes only propose candidates: every returned score is the model's score of the joined
    row, ids are distinct and unfiltered ones only; with a small candidate budget and few probes
    recall may drop but scores stay exact."""
    world = World(rng, kind, m=20, n=300)
    for kw in ({}, {"candidates": 12, "nprobe": 1, "ef_search": 12}):
        rec = world.recaller(index, **kw)
        res = rec.search(world.queries, 10)
        hits = check_top(world, res, 10, exact=False)
        assert not res.certified.any()  # no certificate for ANN
        recall = sum(h for h, _ in hits) / sum(t for _, t in hits)
        if not kw:
            assert recall >= 0.9, recall
        excl = random_id_lists(rng, world, world.m, size_max=40)
        res = rec.search(world.queries, 10, exclude=excl)
        check_top(world, res, 10, ~world.mask_of(excl, False), exact=False)
        # restrict is an exact scan, whatever the index
        sub = rng.choice(world.ids, size=25, replace=False)
        check_top(world, rec.search(world.queries, 10, restrict=sub), 10, world.mask_of([sub] * world.m, True))


# ---------------------------------------------------------------------------- batches
@pytest.mark.parametrize("index", ["exact", "hnsw", "hnsw-ip", "ivf", "HNSW16,Flat"])
def test_two_batches_equal_one(rng, index):
    """Exact: identical results. HNSW with the L2 augmentation and IVF (trained on the first batch)
    are not required to be identical, only exact in their scores with high recall."""
    world = World(rng, "fm", m=20, n=300)
    one = world.recaller(index)
    two = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), index, threads=1)
    order = rng.permutation(world.n)
    first, second = np.sort(order[:120]), np.sort(order[120:])
    two.add_items(world.items.subset(first), world.ids[first])
    two.add_items(world.items.subset(second), world.ids[second])
    assert len(two) == world.n
    np.testing.assert_array_equal(two.ids, np.r_[world.ids[first], world.ids[second]])
    np.testing.assert_array_equal(two.item_vectors(world.ids), one.item_vectors(world.ids))
    r1, r2 = one.search(world.queries, 10), two.search(world.queries, 10)
    if index == "exact":
        np.testing.assert_array_equal(r2.scores, r1.scores)
        # ids equal up to the order of exactly tied scores
        for i in range(world.m):
            for s in np.unique(r1.scores[i]):
                assert set(r1.ids[i][r1.scores[i] == s]) == set(r2.ids[i][r2.scores[i] == s])
    for r in (r1, r2):
        hits = check_top(world, r, 10, exact=index == "exact")
        assert sum(h for h, _ in hits) / sum(t for _, t in hits) >= 0.9


@pytest.mark.parametrize("index,segments", [("exact", 1), ("exact", 2), ("hnsw", 1), ("ivf", 1)])
def test_add_in_slices_equals_one_slice(rng, monkeypatch, index, segments):
    """add_items vectorises and hands items to faiss in ADD_CHUNK-row slices: with slices of 7
    rows the stored vectors, the faiss index contents and the results are those of one slice."""
    world = World(rng, "ffm", m=15, n=200)
    one = world.recaller(index, segments=segments)
    monkeypatch.setattr(frecaller, "ADD_CHUNK", 7)
    monkeypatch.setattr(fsegment, "ADD_CHUNK", 7)
    sliced = world.recaller(index, segments=segments)
    np.testing.assert_array_equal(sliced.ids, one.ids)
    np.testing.assert_array_equal(sliced.vectors, one.vectors)
    np.testing.assert_array_equal(sliced.vectors, world.model.split(fmrecall.Sides(**SD)).item_vectors(world.items))
    for a, b in zip(sliced.index.parts(), one.index.parts()):
        assert a.index.ntotal == b.index.ntotal == world.n
    r1, r2 = one.search(world.queries, 10), sliced.search(world.queries, 10)
    np.testing.assert_array_equal(r2.scores, r1.scores)
    check_top(world, r2, 10, exact=index == "exact" and segments == 1)


def test_failed_add_in_the_middle_of_the_slices_leaves_the_recaller_unchanged(rng, monkeypatch):
    """An error while the third slice of an exact add is vectorised: the slices already handed to
    faiss are removed again, so the Recaller holds exactly what it held before."""
    world = World(rng, "fm", m=10, n=100)
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), threads=1)
    rec.add_items(world.items.subset(np.arange(40)), world.ids[:40])
    before = rec.search(world.queries, 10)
    monkeypatch.setattr(frecaller, "ADD_CHUNK", 16)
    orig, calls = rec.split.item_vectors, []

    def failing(ds):
        calls.append(ds.n_rows)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return orig(ds)

    monkeypatch.setattr(rec.split, "item_vectors", failing)
    with pytest.raises(ValueError, match="nothing was added"):
        rec.add_items(world.items.subset(np.arange(40, 100)), world.ids[40:])
    assert calls == [16, 16, 16]
    assert len(rec) == 40 and rec.index.parts()[0].index.ntotal == 40
    after = rec.search(world.queries, 10)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)


@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_failed_replacement_keeps_the_old_vectors(rng, monkeypatch, index):
    """Re-adding indexed ids replaces their vectors only once the add succeeded: a failure keeps
    the old ones, and the results are those from before."""
    world = World(rng, "fm", m=10, n=60)
    rec = world.recaller(index)
    before = rec.search(world.queries, 10)
    old = rec.item_vectors(world.ids[:30]).copy()

    def failing(ds):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(rec.split, "item_vectors", failing)
    with pytest.raises((RuntimeError, ValueError), match="injected failure"):
        rec.add_items(world.items.subset(np.arange(30)), world.ids[:30])
    assert len(rec) == world.n
    np.testing.assert_array_equal(rec.item_vectors(world.ids[:30]), old)
    after = rec.search(world.queries, 10)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)


@pytest.mark.parametrize("index", ["hnsw", "ivf", "tiered-ivf", "exact"])
def test_failed_insert_in_the_middle_of_the_slices_leaves_the_recaller_unchanged(rng, monkeypatch, index):
    """ANN indexes insert an add in slices (searches run in between): faiss failing on the third
    slice leaves the published catalogue, the indexes (truncated, or rebuilt aside for HNSW, which
    cannot remove) and the results as they were; later adds work."""
    import fmrecall.recall.faiss_index as findex

    world = World(rng, "ffm", m=10, n=120)
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), index, nprobe=64, threads=1)
    rec.add_items(world.items.subset(np.arange(60)), world.ids[:60])
    before = rec.search(world.queries, 10)
    monkeypatch.setattr(findex, "INSERT_SLICE", 16)
    orig, calls = fsegment.Segment.add, []
    fail_at = 1 if index == "exact" else 3  # exact inserts in one go

    def failing(self, vecs, first_row):
        calls.append(vecs.shape[0])
        if len(calls) == fail_at:
            raise RuntimeError("injected faiss failure")
        return orig(self, vecs, first_row)

    monkeypatch.setattr(fsegment.Segment, "add", failing)
    with pytest.raises(ValueError, match="nothing was added"):
        rec.add_items(world.items.subset(np.arange(60, 120)), world.ids[60:])
    monkeypatch.setattr(fsegment.Segment, "add", orig)
    assert calls[:fail_at] == ([16, 16, 16] if index != "exact" else [60])
    assert len(rec) == 60 and rec.index.parts()[0].index.ntotal == 60
    after = rec.search(world.queries, 10)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)
    rec.add_items(world.items.subset(np.arange(60, 120)), world.ids[60:])
    check_top(world, rec.search(world.queries, 10), 10, exact=index == "exact", scores_only=True)


def test_hnsw_walk_is_at_least_the_candidate_count(rng, monkeypatch):
    """faiss stops the HNSW walk after efSearch nodes; the Recaller searches with
    max(ef_search, candidates), passed per call, so that every fetched candidate comes from the
    walk and the shared index's own efSearch is never changed."""
    world = World(rng, "fm", m=5, n=300)
    seen = []
    orig = fsegment.search_params

    def spy(index, ef_search, nprobe, keep):
        params = orig(index, ef_search, nprobe, keep)
        seen.append(params.efSearch)
        return params

    monkeypatch.setattr(fsegment, "search_params", spy)
    for index, kw, want in (
        ("hnsw", dict(ef_search=8, candidates=150), 150),
        ("hnsw", dict(ef_search=200, candidates=20), 200),
        ("HNSW16,Flat", dict(ef_search=8, candidates=120), 120),
    ):  # a factory string too
        rec = world.recaller(index, **kw)
        default = faiss.downcast_index(rec.index.parts()[0].index).hnsw.efSearch
        seen.clear()
        rec.search(world.queries, 10)
        assert seen == [want]
        assert faiss.downcast_index(rec.index.parts()[0].index).hnsw.efSearch == default == 16


# ---------------------------------------------------------------------------- persistence
SAVE_CONFIGS = [
    ("exact", 1),
    ("hnsw", 1),
    ("hnsw-ip", 1),
    ("ivf", 1),
    ("tiered-ivf", 1),
    ("auto", 1),
    ("exact", 3),
    ("hnsw", 2),
    ("IVF8,Flat", 1),
]


@pytest.mark.parametrize("index,segments", SAVE_CONFIGS)
def test_save_load_round_trip(rng, tmp_path, index, segments):
    world = World(rng, "hybrid-item", m=20, n=200)
    rec = world.recaller(index, segments=segments, nprobe=4)
    rec.remove_items(world.ids[:7])  # ANN indexes keep these as dead rows
    path = tmp_path / "rec"
    rec.save(path)
    back = fmrecall.Recaller.load(path)
    assert len(back) == len(rec) and back.dim == rec.dim and back.index.segments == segments
    np.testing.assert_array_equal(back.ids, rec.ids)
    excl = random_id_lists(rng, world, world.m, size_max=20)
    for kw in ({}, {"exclude": excl}, {"certify": True}):
        a, b = rec.search(world.queries, 10, **kw), back.search(world.queries, 10, **kw)
        np.testing.assert_array_equal(b.ids, a.ids)
        np.testing.assert_array_equal(b.scores, a.scores)
        np.testing.assert_array_equal(b.certified, a.certified)
        assert not np.isin(b.ids, world.ids[:7]).any()
    # the loaded recaller keeps working: the same additions / removals give the same results
    for r in (rec, back):
        r.add_items(world.items.subset([0, 1, 2]), world.ids[:3])
        r.remove_items(world.ids[50:60])
    a, b = rec.search(world.queries, 10), back.search(world.queries, 10)
    np.testing.assert_array_equal(b.ids, a.ids)
    np.testing.assert_array_equal(b.scores, a.scores)
    # saving over an existing directory replaces it
    back.save(path)
    again = fmrecall.Recaller.load(path)
    np.testing.assert_array_equal(again.search(world.queries, 10).ids, a.ids)


def _tree(path):
    """{relative path: bytes} of every file below `path`."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_failed_save_leaves_the_previous_directory_intact(rng, tmp_path, monkeypatch):
    world = World(rng, "ffm", m=10, n=60)
    rec = world.recaller("hnsw")
    path = tmp_path / "rec"
    rec.save(path)
    before = _tree(path)
    want = rec.search(world.queries, 5)
    rec.remove_items(world.ids[:30])
    rec.add_items(world.items.subset([40, 41]), np.array([1, 2]))

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError, match="No space"):
        rec.save(path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["rec"]  # no temporary or backup directory left behind
    assert _tree(path) == before
    got = fmrecall.Recaller.load(path).search(world.queries, 5)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    # a failed first save leaves nothing behind either
    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError):
        rec.save(tmp_path / "fresh")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["rec"]
    with pytest.raises(FileNotFoundError):
        fmrecall.Recaller.load(tmp_path / "fresh")


# ---------------------------------------------------------------------------- segmented search
@pytest.mark.parametrize("segments", [2, 3, 4])
@pytest.mark.parametrize("kind", ["ffm", "hybrid-item"])
def test_segmented_certificate_is_honest(rng, kind, segments):
    """Whenever a query is certified its result is the exact top k; certify=True certifies every
    query and equals exact search; and without certify some queries are honestly left uncertified
    (some of them really differ from the exact result, so the certificate is needed)."""
    world = World(rng, kind, m=120, n=400, k=3)
    exact = world.recaller()
    seg = world.recaller("exact", segments=segments)
    uncertified_wrong = 0
    for k in (1, 3, 10):
        want = exact.search(world.queries, k)
        res = seg.search(world.queries, k)
        for i in np.flatnonzero(res.certified):
            np.testing.assert_allclose(
                res.scores[i],
                want.scores[i],
                rtol=1e-5,
                atol=world.tol[i],
                err_msg=f"certified query {i} is not exact (k={k})",
            )
        # uncertified results are still exactly scored (only the set may be wrong)
        check_top(world, res, k, exact=False)
        bad = ~np.all(np.isclose(res.scores, want.scores, rtol=1e-5, atol=1e-5), axis=1)
        assert not (bad & res.certified).any()
        uncertified_wrong += int(bad.sum())
        full = seg.search(world.queries, k, certify=True)
        assert full.certified.all()
        check_top(world, full, k)
        np.testing.assert_allclose(full.scores, want.scores, rtol=1e-5, atol=1e-5)
    assert uncertified_wrong > 0, "no query needed the certificate: the test has no teeth"


@pytest.mark.parametrize("segments", [2, 4])
def test_segmented_with_filters_and_certify(rng, segments):
    world = World(rng, "ffm", m=40, n=250, k=3)
    seg = world.recaller("exact", segments=segments)
    excl = random_id_lists(rng, world, world.m, size_max=60)
    excl[0] = world.ids[np.argsort(-world.S[0])[:50]].tolist()
    res = seg.search(world.queries, 5, exclude=excl, certify=True)
    assert res.certified.all()
    check_top(world, res, 5, ~world.mask_of(excl, False))
    one = world.ids[np.argsort(-world.S[3])[:20]]
    res = seg.search(world.queries, 5, exclude=one, certify=True)
    check_top(world, res, 5, np.broadcast_to(~np.isin(world.ids, one), world.S.shape))
    # removals (exact segments drop them at once)
    seg.remove_items(world.ids[:100])
    res = seg.search(world.queries, 5, certify=True)
    check_top(world, res, 5, np.broadcast_to(~np.isin(world.ids, world.ids[:100]), world.S.shape))


def test_segmented_ann_is_never_certified(rng):
    world = World(rng, "ffm", m=15, n=200, k=3)
    rec = world.recaller("hnsw", segments=2)
    res = rec.search(world.queries, 5, certify=True)
    assert not res.certified.any()
    check_top(world, res, 5, exact=False)


# ---------------------------------------------------------------------------- DataFrames via a schema
def test_recaller_with_a_schema_takes_frames(rng):
    pd = pytest.importorskip("pandas")
    schema = fmrecall.Schema(
        [
            fmrecall.Categorical("user_id", "user"),
            fmrecall.Categorical("hour", "context"),
            fmrecall.Categorical("item_id", "item"),
            fmrecall.MultiCategorical("tags", "item"),
            fmrecall.Numeric("price", "item"),
        ]
    )
    items = pd.DataFrame(
        {
            "item_id": np.arange(100, 140),
            "tags": [list("abc"[: 1 + i % 3]) for i in range(40)],
            "price": rng.uniform(1, 10, 40),
        }
    )
    users = pd.DataFrame({"user_id": np.arange(8), "hour": np.arange(8) % 3})
    schema.fit([users, items])
    nf = schema.n_features
    w = random_weights(rng, "ffm", nf, schema.n_fields, 3)
    model = fmrecall.FFM.from_weights(w, threads=1)
    rec = fmrecall.Recaller(model, schema)
    rec.add_items(items, "item_id")
    res = rec.search(users, 6, exclude=[[100, 101]] * 8)
    # brute force on frames: every (user, item) pair as one joined frame row
    joined = users.merge(items, how="cross")
    S = model.decision_function(schema.transform(joined)).reshape(8, 40).astype(np.float64)
    for i in range(8):
        s = S[i].copy()
        s[:2] = -np.inf
        best = np.sort(s)[::-1][:6]
        np.testing.assert_allclose(res.scores[i], best, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.scores[i], S[i, res.ids[i] - 100], rtol=1e-5, atol=1e-6)
    # a Dataset encoded with the schema gives the same result
    res2 = rec.search(schema.transform(users, side="query"), 6, exclude=[[100, 101]] * 8)
    np.testing.assert_array_equal(res2.ids, res.ids)
    with pytest.raises(ValueError, match="name its id column|column"):
        rec.add_items(schema.transform(items, side="item"), "item_id")


# ---------------------------------------------------------------------------- frappe end to end
@pytest.fixture(scope="module")
def frappe_fm(frappe_data):
    train, holdout = frappe_data
    model = fmrecall.FM(k=8, epochs=4, learning_rate=0.1, reg_linear=1e-4, reg_factors=1e-4, threads=1, seed=0).fit(
        train
    )  # one thread: deterministic weights, reproducible recall
    n_items = 5039 - 957
    items = fmrecall.Dataset(
        np.arange(n_items + 1),
        np.ones(n_items, np.int32),
        957 + np.arange(n_items),
        n_features=model.n_features_,
        n_fields=model.n_fields_,
    )
    return model, items, 957 + np.arange(n_items)


def _frappe_queries(holdout, rows):
    full = dataset_rows(holdout, rows)
    q = [keep_fields(r, FRAPPE_SIDES["user"] + FRAPPE_SIDES["context"]) for r in full]
    own = np.array([int(keep_fields(r, FRAPPE_SIDES["item"])[1][0]) for r in full])
    return q, own


def test_frappe_retrieved_score_is_the_models_score(frappe_data, frappe_fm, rng):
    """FM trained on 80% of frappe, the 4,082 items indexed (field 1, features 957..5038); queries are
    the user + 8 context fields of holdout rows. The retrieved score of a row's own item equals
    decision_function of the original row; a full-catalogue search finds it with that score."""
    _, holdout = frappe_data
    model, items, item_ids = frappe_fm
    rec = fmrecall.Recaller(model, fmrecall.Sides(**FRAPPE_SIDES), threads=0)
    rec.add_items(items, item_ids)
    assert len(rec) == 4082 and rec.dim == 9
    rows = np.sort(rng.choice(holdout.n_rows, size=600, replace=False))
    qrows, own = _frappe_queries(holdout, rows)
    queries = rows_dataset(qrows, n_features=model.n_features_, n_fields=model.n_fields_)
    want = model.decision_function(holdout.subset(rows)).astype(np.float64)
    res = rec.search(queries, 1, restrict=[[o] for o in own])
    np.testing.assert_array_equal(res.ids[:, 0], own)
    np.testing.assert_allclose(res.scores[:, 0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.proba[:, 0], model.predict_proba(holdout.subset(rows))[:, 1], rtol=1e-5, atol=1e-6)
    # full catalogue for 60 queries: the own item is there, with the same score
    res = rec.search(queries.subset(np.arange(60)), 4082)
    for i in range(60):
        at = np.flatnonzero(res.ids[i] == own[i])
        assert at.size == 1
        assert res.scores[i, at[0]] == pytest.approx(want[i], rel=1e-5, abs=1e-5)
    # and the top 10 are scored like the model scores the joined rows
    top = res.ids[:60, :10]
    joined = [
        join_rows(qrows[i], (np.array([1]), np.array([t]), np.array([1.0], np.float32)))
        for i in range(60)
        for t in top[i]
    ]
    dec = model.decision_function(rows_dataset(joined, n_features=model.n_features_, n_fields=model.n_fields_))
    np.testing.assert_allclose(res.scores[:60, :10].ravel(), dec, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "index,kw",
    [
        ("hnsw", {}),
        ("hnsw-ip", {}),
        ("ivf", {}),
        ("ivf", {"nprobe": 8}),
        ("IVF16,Flat", {}),
        ("HNSW16,Flat", {}),
        ("hnsw", {"ef_search": 16, "candidates": 10}),
    ],
)
def test_frappe_ann_recall_against_exact(frappe_data, frappe_fm, index, kw):
    """Learned embeddings: recall@10 of the ANN indexes against exact search (ties count as hits)
    >= 0.9, and every returned score is exact."""
    _, holdout = frappe_data
    model, items, item_ids = frappe_fm
    sides = fmrecall.Sides(**FRAPPE_SIDES)
    rows = np.arange(0, holdout.n_rows, 23)[:500]
    qrows, _ = _frappe_queries(holdout, rows)
    queries = rows_dataset(qrows, n_features=model.n_features_, n_fields=model.n_fields_)
    exact = fmrecall.Recaller(model, sides)
    exact.add_items(items, item_ids)
    want = exact.search(queries, 10)
    ann = fmrecall.Recaller(model, sides, index, **kw)
    ann.add_items(items, item_ids)
    got = ann.search(queries, 10)
    # exact scores of what the ANN returned
    vec = exact.item_vectors(got.ids.ravel()).reshape(got.ids.shape + (exact.dim,))
    q, b = model.split(sides).query_vectors(queries)
    s = b[:, None].astype(np.float64) + np.einsum("md,mkd->mk", q.astype(np.float64), vec.astype(np.float64))
    np.testing.assert_allclose(got.scores, s, rtol=1e-5, atol=1e-5)
    kth = want.scores[:, -1:].astype(np.float64)
    recall = float(np.mean(got.scores >= kth - 1e-5 * np.maximum(1, np.abs(kth))))
    print(f"\nfrappe FM {index} {kw}: recall@10 vs exact = {recall:.4f}")
    assert recall >= 0.9
