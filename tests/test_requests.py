"""Requests as people hold them (issue 12, item 4): `exclude` / `restrict` as lists of sets, lists,
tuples, arrays, pandas / pyarrow columns, 2-d padded arrays or a scipy sparse user × item matrix;
one request as a dict of scalars; pyarrow Tables for requests and items; `SearchResult.to_frame`.
Every format must give exactly the result of the plain int64-array format, which is itself checked
against the brute-force scores of the joined rows (`check_top`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp
from helpers import World, check_top, random_id_lists, random_weights

import fmrecall


def _same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.certified, b.certified)


def _csr(lists, ids):
    """Row i holds lists[i] (None -> an empty row), plus, in row 0, a stored zero at an indexed id
    it does not list: an explicit zero is not an interaction."""
    zero = int(next(x for x in ids if x not in set(lists[0] or [])))
    indptr, indices, data = [0], [], []
    for i, lst in enumerate(lists):
        cols = sorted(set(lst or []) | ({zero} if i == 0 else set()))
        indices += cols
        data += [0.0 if (i == 0 and c == zero) else 1.0 for c in cols]
        indptr.append(len(indices))
    n_cols = max(indices) + 3
    return sp.csr_matrix((np.array(data, np.float32), np.array(indices), np.array(indptr)), shape=(len(lists), n_cols))


def _per_query_forms(per, rng):
    """The same per-query id lists (None kept) in every per-query form."""
    width = max(len(x) for x in per if x is not None)
    padded = np.full((len(per), width), -1, np.int64)
    for i, x in enumerate(per):
        padded[i, : len(x or [])] = x or []
    return {
        "list of sets": [None if x is None else set(x) for x in per],
        "list of lists": [None if x is None else list(x) for x in per],
        "tuple of tuples": tuple(None if x is None else tuple(x) for x in per),
        "list of arrays": [None if x is None else np.asarray(x, np.int32) for x in per],
        "list of Series": [None if x is None else pd.Series(x, dtype="int64") for x in per],
        "list of pyarrow arrays": [None if x is None else pa.array(x, type=pa.int64()) for x in per],
        "2-d array, -1 padding": padded if all(x is not None for x in per) else None,
    }


@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_filter_forms_give_the_array_result(rng, index):
    world = World(rng, "ffm", m=8, n=70)
    rec = world.recaller(index)
    k = 6
    exact = index == "exact"
    per = random_id_lists(rng, world, world.m, size_max=25)
    per[2] = world.ids[:65].tolist()  # leaves fewer than k
    keep = random_id_lists(rng, world, world.m, size_max=30, with_none=False)
    flat = rng.choice(world.ids, 12, replace=False)
    for name, value, ref_value in (("exclude", per, None), ("restrict", keep, None)):
        ref_value = [None if x is None else np.asarray(x, np.int64) for x in value]
        ref = rec.search(world.queries, k, **{name: ref_value})
        allowed = ~world.mask_of(value, False) if name == "exclude" else world.mask_of(value, True)
        check_top(world, ref, k, allowed, exact=exact, scores_only=not exact)
        for form, v in _per_query_forms(value, rng).items():
            if v is not None:
                _same(rec.search(world.queries, k, **{name: v}), ref)
        # implicit-style: a user × item matrix, row i = query i (None: an empty row)
        csr = _csr(value, world.ids)
        ref_csr = rec.search(world.queries, k, **{name: [np.asarray(x or [], np.int64) for x in value]})
        for matrix in (csr, sp.csr_array(csr), csr.tocoo(), csr.tocsc()):
            _same(rec.search(world.queries, k, **{name: matrix}), ref_csr)
        # one flat collection for every query
        ref = rec.search(world.queries, k, **{name: flat})
        allowed = np.broadcast_to(np.isin(world.ids, flat), world.S.shape)
        check_top(world, ref, k, ~allowed if name == "exclude" else allowed, exact=exact, scores_only=not exact)
        for v in (set(flat.tolist()), flat.tolist(), tuple(flat), pd.Series(flat), pa.array(flat), pd.Index(flat)):
            _same(rec.search(world.queries, k, **{name: v}), ref)
    # a result's ids as the next exclusion (-1 padding ignored)
    first = rec.search(world.queries, 3)
    again = rec.search(world.queries, 3, exclude=first.ids)
    check_top(world, again, 3, ~world.mask_of(list(first.ids), False), exact=exact, scores_only=not exact)


def test_filter_errors_name_the_argument_and_query(rng):
    world = World(rng, "fm", m=4, n=20)
    rec = world.recaller()
    q = world.queries
    cases = [
        (dict(exclude=[[1000]] * 3), r"exclude has 3 entries for 4 queries"),
        (dict(restrict=[[1000], None, 1007, [1014]]), r"restrict\[2\] is 1007"),
        (dict(exclude=[[1000], [2.5], None, []]), r"exclude\[1\]\[0\] is 2.5 \(float\), not an item id"),
        (dict(exclude=[[1000], np.array([2.5]), None, []]), r"exclude\[1\] must hold item ids .* float64"),
        (
            dict(exclude=[[1000], ["a"], None, []]),
            r"exclude\[1\]\[0\] is 'a' \(str\): this Recaller's item ids are int",
        ),
        (dict(exclude=sp.csr_matrix((3, 50))), r"exclude as a sparse matrix must have one row per query \(4\)"),
        (dict(restrict={0: [1000]}), r"restrict must be a collection of item ids"),
        (dict(exclude=pd.DataFrame({"a": [1000]})), r"exclude must be a collection"),
        (dict(exclude=1000), r"exclude must be a collection"),
        (dict(exclude="abc"), r"exclude must be a collection"),
        (dict(exclude=np.zeros((2, 2, 2), np.int64)), r"exclude as an array must be 1-d"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            rec.search(q, 3, **kw)


# ---------------------------------------------------------------------------- frames
@pytest.fixture(scope="module")
def shop():
    """A schema, an FFM over it, items (with string ids in "sku") and users as frames."""
    rng = np.random.default_rng(12)
    schema = fmrecall.Schema(
        [
            fmrecall.Categorical("user_id", "user"),
            fmrecall.Categorical("hour", "context"),
            fmrecall.Categorical("item_id", "item"),
            fmrecall.Numeric("price", "item"),
        ]
    )
    items = pd.DataFrame(
        {"item_id": np.arange(100, 130), "price": rng.uniform(1, 10, 30), "sku": [f"sku-{i:03d}" for i in range(30)]}
    )
    users = pd.DataFrame({"user_id": np.arange(6), "hour": np.arange(6) % 3})
    schema.fit([users, items[["item_id", "price"]]])
    model = fmrecall.FFM.from_weights(random_weights(rng, "ffm", schema.n_features, schema.n_fields, 3), threads=1)
    joined = users.merge(items, how="cross")
    S = model.decision_function(schema.transform(joined)).reshape(len(users), len(items)).astype(np.float64)
    return schema, model, items, users, S


def test_frames_dicts_and_pyarrow_give_the_same_result(shop):
    schema, model, items, users, S = shop
    rec = fmrecall.Recaller(model, schema).add_items(items, "item_id")
    ref = rec.search(users, 5, exclude=[[100, 101]] * len(users))
    for i in range(len(users)):  # exact: the model's score on the joined row of each returned item
        np.testing.assert_allclose(ref.scores[i], S[i, ref.ids[i] - 100], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ref.scores[i], np.sort(S[i, 2:])[::-1][:5], rtol=1e-5, atol=1e-6)
    _same(rec.search(pa.Table.from_pandas(users), 5, exclude=[[100, 101]] * len(users)), ref)
    _same(rec.search(users.to_dict("list"), 5, exclude=[[100, 101]] * len(users)), ref)
    _same(rec.search(users.to_dict("records"), 5, exclude=[[100, 101]] * len(users)), ref)
    # one request as a dict of scalars = that row of the frame
    for i in (0, 4):
        row = {"user_id": int(users.user_id[i]), "hour": int(users.hour[i])}
        one = rec.search(row, 5, exclude=[100, 101])
        np.testing.assert_array_equal(one.ids, ref.ids[i : i + 1])
        np.testing.assert_array_equal(one.scores, ref.scores[i : i + 1])
        assert rec.search(pa.RecordBatch.from_pylist([row]), 5, exclude=[100, 101]).ids.tolist() == one.ids.tolist()
    # items from pyarrow: the id column by name, or ids as a pyarrow array
    for rec2 in (
        fmrecall.Recaller(model, schema).add_items(pa.Table.from_pandas(items), "item_id"),
        fmrecall.Recaller(model, schema).add_items(pa.Table.from_pandas(items), pa.array(items.item_id)),
        fmrecall.Recaller(model, schema).add_items(items.to_dict("records"), items.item_id),
    ):
        _same(rec2.search(users, 5, exclude=[[100, 101]] * len(users)), ref)
    # string ids from a pyarrow column: the same items, scores and order, under their skus
    by_sku = fmrecall.Recaller(model, schema).add_items(pa.Table.from_pandas(items), "sku")
    got = by_sku.search(pa.Table.from_pandas(users), 5, exclude=[["sku-000", "sku-001"]] * len(users))
    assert got.ids.tolist() == [[f"sku-{x - 100:03d}" for x in row] for row in ref.ids]
    np.testing.assert_array_equal(got.scores, ref.scores)
    with pytest.raises(TypeError, match="pyarrow Table"):
        rec.search(object(), 5)


# ---------------------------------------------------------------------------- to_frame
def test_to_frame_is_the_long_form_of_the_result(rng):
    world = World(rng, "ffm", m=5, n=12)
    rec = world.recaller()
    res = rec.search(world.queries, 4, restrict=[world.ids[:2], None, [], world.ids, world.ids[5:9]])
    df = res.to_frame()
    assert list(df.columns) == ["query", "rank", "item_id", "score", "proba"]
    assert [str(t) for t in df.dtypes] == ["int64", "int64", "int64", "float32", "float32"]
    assert df.groupby("query").size().to_dict() == {0: 2, 1: 4, 3: 4, 4: 4}  # padding left out
    for r in df.itertuples(index=False):
        assert res.ids[r.query, r.rank - 1] == r.item_id
        assert res.scores[r.query, r.rank - 1] == r.score
        assert r.score == pytest.approx(world.S[r.query, world.cols([r.item_id])[0]], rel=1e-5, abs=1e-5)
        assert r.proba == pytest.approx(1 / (1 + np.exp(-float(r.score))), rel=1e-6)
    assert df["rank"].tolist() == [1, 2] + [1, 2, 3, 4] * 3
    with pytest.raises(TypeError, match="to_frame"):
        pd.DataFrame(res)
    ids, scores = res  # unpacking still works
    assert ids is res.ids and scores is res.scores


def test_to_frame_without_probabilities(rng):
    """Losses without a probability (squared) have no proba column."""
    world = World(rng, "fm", m=3, n=10)
    res = world.recaller().search(world.queries, 3)
    res.loss = "squared"
    assert list(res.to_frame().columns) == ["query", "rank", "item_id", "score"]
    assert len(res.to_frame()) == 9
