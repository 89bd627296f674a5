"""fmrecall.Schema: named fields -> field-aware sparse rows. Layout (offsets, sides), categorical
vocabularies (reserved unseen 0, rare "other" 1, frequency order, min_count), multi-categorical lists
and sep strings with weights and per-field scaling, numeric standardisation and quantile buckets,
stable hashing inside the field's own range, persistence (to_dict / from_dict / JSON), and error
messages that name the field and the value. Expected values are computed here from the frames."""

from __future__ import annotations

import copy
import json
import math
import statistics

import numpy as np
import pytest
from helpers import run_isolated

import fmrecall
from fmrecall import Categorical, Hashed, MultiCategorical, Numeric, Schema

pd = pytest.importorskip("pandas")


def _nodes(ds, r):
    """{field: [(local feature, value), ...]} of row r, local = feature - offset of its field."""
    s, e = int(ds.indptr[r]), int(ds.indptr[r + 1])
    vals = ds.values_or_ones()
    out = {}
    for f, j, x in zip(ds.fields[s:e], ds.features[s:e], vals[s:e]):
        out.setdefault(int(f), []).append((int(j), float(x)))
    return out


def _local(schema, ds, r, name):
    i = schema.index(name)
    off = int(schema.offsets[i])
    return [(j - off, x) for j, x in _nodes(ds, r).get(i, [])]


def _same(a, b):
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.fields, b.fields)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.values_or_ones(), b.values_or_ones())
    assert a.n_features == b.n_features and a.n_fields == b.n_fields


def _solo(field, frames):
    """A fitted schema of `field` (field 0, offset 0) plus a filler field on the other side (a schema
    needs an item field and a query field)."""
    other = "user" if field.side == "item" else "item"
    frames = frames if isinstance(frames, list) else [frames]
    return Schema([field, Categorical("_filler", other)]).fit(frames + [pd.DataFrame({"_filler": [0]})])


def _enc(s, frame):
    return s.transform(frame, fields=[s.fields[0].name])


def _frames():
    users = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4", "u5"],
            "age": [23, 35, 35, 51, 35],
            "city": ["paris", "lyon", "paris", "nice", "paris"],
            "income": [1.5, 2.0, np.nan, 4.5, 3.0],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": [10, 11, 12, 13],
            "tags": [["a", "b"], ["b"], [], ["c", "a", "b"]],
            "tag_w": [[2.0, 1.0], [3.0], [], [1.0, 1.0, 2.0]],
            "price": [9.0, 1.0, 5.0, 3.0],
            "brand": ["x", "y", "x", "zz"],
        }
    )
    events = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u1", "u3"],
            "item_id": [10, 11, 13, 12],
            "hour": [8, 20, 8, 23],
            "clicked": [1, 0, 1, 1],
        }
    )
    return users, items, events


def _schema():
    return Schema(
        [
            Categorical("user_id", "user"),
            Categorical("age", "user", min_count=2),
            Hashed("city", "user", buckets=7),
            Numeric("income", "user"),
            Categorical("hour", "context"),
            Categorical("item_id", "item"),
            MultiCategorical("tags", "item", weights_column="tag_w"),
            Numeric("price", "item", buckets=3),
            Categorical("brand", "item"),
        ]
    )


# ---------------------------------------------------------------------------- layout
def test_layout_sides_and_offsets():
    users, items, events = _frames()
    s = _schema().fit([users, items, events])
    assert s.sides == fmrecall.Sides(user=[0, 1, 2, 3], context=[4], item=[5, 6, 7, 8])
    sizes = [2 + 5, 2 + 1, 7, 1, 2 + 3, 2 + 4, 2 + 3, 1 + 2 + 1, 2 + 3]  # age: only 35 reaches min_count 2
    np.testing.assert_array_equal(s.offsets, np.r_[0, np.cumsum(sizes)])
    assert s.n_features == sum(sizes) and s.n_fields == 9
    ds = s.transform(events.merge(users, on="user_id").merge(items, on="item_id"), label="clicked")
    assert ds.n_features == s.n_features and ds.n_fields == 9
    # every node lies inside its own field's range, nodes ordered by field within a row
    off = s.offsets
    assert np.all((ds.features >= off[ds.fields]) & (ds.features < off[ds.fields + 1]))
    for r in range(ds.n_rows):
        f = ds.fields[ds.indptr[r] : ds.indptr[r + 1]]
        assert np.all(np.diff(f) >= 0)
    np.testing.assert_array_equal(ds.labels, events.merge(users, on="user_id")["clicked"].to_numpy(np.float32))
    # side= and fields= select fields; the other columns need not be there
    q = s.transform(users.assign(hour=[8, 9, 20, 23, 8]), side="query")
    assert set(np.unique(q.fields)) == {0, 1, 2, 3, 4}
    it = s.transform(items, side="item")
    assert set(np.unique(it.fields)) == {5, 6, 7, 8} and it.n_rows == 4
    only = s.transform(items[["price"]], fields=["price"])
    assert set(np.unique(only.fields)) == {7}
    with pytest.raises(ValueError, match="side must be"):
        s.transform(items, side="items")


def test_unfitted_schema_and_bad_definitions():
    s = _schema()
    with pytest.raises(ValueError, match="not fitted"):
        s.transform(_frames()[0])
    with pytest.raises(ValueError, match="duplicate"):
        Schema([Categorical("a", "user"), Categorical("a", "item")])
    with pytest.raises(ValueError, match="side"):
        Categorical("a", "query")
    with pytest.raises(ValueError, match="min_count"):
        Categorical("a", "user", min_count=0)
    with pytest.raises(ValueError, match="scale"):
        MultiCategorical("a", "item", scale="max")
    with pytest.raises(ValueError, match="buckets"):
        Numeric("a", "user", buckets=1)
    with pytest.raises(ValueError, match="buckets"):
        Hashed("a", "user", buckets=0)
    with pytest.raises(ValueError, match="no frame has column 'zzz'"):
        _solo(Categorical("zzz", "user"), _frames()[0])


# ---------------------------------------------------------------------------- categorical
def test_categorical_vocabulary_unseen_and_other():
    values = ["b"] * 5 + ["a"] * 3 + ["c"] * 2 + ["d"] + ["e"]  # distinct counts except the two rare ones
    s = _solo(Categorical("x", "user", min_count=2), pd.DataFrame({"x": values}))
    f = s.field("x")
    assert f.vocab == ["b", "a", "c"]  # most frequent first
    test = pd.DataFrame({"x": ["b", "a", "c", "d", "e", "never", "B"]})
    ds = _enc(s, test)
    got = [_local(s, ds, r, "x") for r in range(ds.n_rows)]
    assert got == [[(2, 1.0)], [(3, 1.0)], [(4, 1.0)], [(1, 1.0)], [(1, 1.0)], [(0, 1.0)], [(0, 1.0)]]
    assert [s.describe(int(j)) for j in ds.features] == [
        "x='b'",
        "x='a'",
        "x='c'",
        "x=<other>",
        "x=<other>",
        "x=<unseen>",
        "x=<unseen>",
    ]


@pytest.mark.parametrize("min_count", [1, 2, 3, 4])
def test_min_count_boundary(min_count):
    counts = {"p": 4, "q": 3, "r": 2, "s": 1}
    values = [v for v, c in counts.items() for _ in range(c)]
    s = _solo(Categorical("x", "item", min_count=min_count), pd.DataFrame({"x": values[::-1]}))
    kept = [v for v, c in counts.items() if c >= min_count]
    assert s.field("x").vocab == kept
    ds = _enc(s, pd.DataFrame({"x": list(counts) + ["t"]}))
    loc = ds.features - s.offsets[0]
    want = [2 + kept.index(v) if v in kept else 1 for v in counts] + [0]
    np.testing.assert_array_equal(loc, want)


def test_unobserved_category_of_a_categorical_dtype_is_unseen():
    """A pandas "category" column (e.g. pd.cut output) may declare categories that never occur in
    the fit data: such a value was never seen, so it maps to the reserved unseen feature 0, not to
    "other" (1, values seen fewer than min_count times)."""
    col = pd.Categorical(["a", "b", "a"], categories=["a", "b", "c"])
    s = _solo(Categorical("x", "user"), pd.DataFrame({"x": col}))
    assert s.field("x").vocab == ["a", "b"]
    for frame in (pd.DataFrame({"x": ["a", "b", "c", "d"]}), pd.DataFrame({"x": pd.Categorical(["a", "b", "c", "d"])})):
        loc = (_enc(s, frame).features - s.offsets[0]).tolist()
        assert loc == [2, 3, 0, 0], f"value 'c' (0 occurrences in fit) encoded as {loc[2]} (1 = other)"


def test_categorical_integers_and_integral_floats():
    s = _solo(Categorical("h", "context"), pd.DataFrame({"h": [3, 3, 7, 1, 3, 7]}))
    assert s.field("h").vocab == [3, 7, 1]
    a = _enc(s, pd.DataFrame({"h": [3, 7, 1, 9]}))
    b = _enc(s, pd.DataFrame({"h": [3.0, 7.0, 1.0, 9.0]}))  # integral floats are the same values
    c = _enc(s, pd.DataFrame({"h": np.array([3, 7, 1, 9], dtype=np.int32)}))
    _same(a, b)
    _same(a, c)
    np.testing.assert_array_equal(a.features, [2, 3, 4, 0])
    # the string "3" is not the integer 3
    assert _enc(s, pd.DataFrame({"h": ["3"]})).features.tolist() == [0]


def test_categorical_from_several_frames_pools_counts():
    a = pd.DataFrame({"k": ["x", "y", "y"]})
    b = pd.DataFrame({"k": ["x", "x", "z"], "other": [1, 2, 3]})
    s = _solo(Categorical("k", "item", min_count=2), [a, b])
    assert s.field("k").vocab == ["x", "y"]  # x: 3, y: 2, z: 1 (rare)
    assert _enc(s, pd.DataFrame({"k": ["z"]})).features.tolist() == [1]


def test_dict_rows_and_column_mapping():
    rows = [{"uid": "a", "v": 1.0}, {"uid": "b", "v": 2.0}, {"uid": "a", "v": 3.0}]
    s = Schema([Categorical("user", "user", column="uid"), Numeric("v", "item")]).fit(rows)
    ds = s.transform(rows)
    _same(ds, s.transform(pd.DataFrame(rows)))
    assert s.describe(int(ds.features[0])) == "user='a'"


# ---------------------------------------------------------------------------- multi-categorical
def test_multi_categorical_lists_and_sep_strings_encode_alike():
    lists = [["a", "b"], ["b"], [], ["c", "a", "b"], ["d"]]
    strings = ["a|b", "b", "", "c|a|b", "d"]
    s1 = _solo(MultiCategorical("t", "item"), pd.DataFrame({"t": lists}))
    s2 = _solo(MultiCategorical("t", "item", sep="|"), pd.DataFrame({"t": strings}))
    assert s1.field("t").vocab == s2.field("t").vocab == ["b", "a", "c", "d"]
    test_l = [["a", "zz", "b"], [], ["d"], ("c", "b")]
    test_s = ["a|zz|b", "", "d", "c|b"]
    d1 = _enc(s1, pd.DataFrame({"t": test_l}))
    d2 = _enc(s2, pd.DataFrame({"t": test_s}))
    _same(d1, d2)
    np.testing.assert_array_equal(d1.indptr, [0, 3, 3, 4, 6])  # the empty list gives no node
    assert [s1.describe(int(j)) for j in d1.features] == ["t='a'", "t=<unseen>", "t='b'", "t='d'", "t='c'", "t='b'"]
    # numpy arrays are lists too
    d3 = _enc(s1, pd.DataFrame({"t": [np.array(x, dtype=object) for x in test_l]}))
    _same(d1, d3)


@pytest.mark.parametrize("scale", ["l2", "mean", "none"])
def test_multi_categorical_scaling(scale):
    tags = [["a"], ["a", "b"], list("abcdefghij"), ["c", "d", "e"]]
    weights = [[2.0], [1.0, 3.0], [float(i + 1) for i in range(10)], [-1.0, 2.0, 2.0]]
    frame = pd.DataFrame({"t": tags, "w": weights})
    s = _solo(MultiCategorical("t", "item", weights_column="w", scale=scale), frame)
    plain = _solo(MultiCategorical("t", "item", scale=scale), frame)
    ds, dp = _enc(s, frame), _enc(plain, frame)
    for r, w in enumerate(weights):
        got = np.array([x for _, x in _nodes(ds, r)[0]])
        ones = np.array([x for _, x in _nodes(dp, r)[0]])
        w = np.asarray(w)
        if scale == "l2":
            np.testing.assert_allclose(np.linalg.norm(got), 1.0, rtol=1e-6)
            np.testing.assert_allclose(got, w / math.sqrt(sum(v * v for v in w)), rtol=1e-6)
            np.testing.assert_allclose(ones, 1.0 / math.sqrt(len(w)), rtol=1e-6)
        elif scale == "mean":
            np.testing.assert_allclose(np.abs(got).sum(), 1.0, rtol=1e-6)
            np.testing.assert_allclose(got, w / sum(abs(v) for v in w), rtol=1e-6)
            np.testing.assert_allclose(ones, 1.0 / len(w), rtol=1e-6)
        else:
            np.testing.assert_allclose(got, w, rtol=1e-7)
            np.testing.assert_allclose(ones, 1.0)
        # the weights stay with their values
        names = [s.describe(int(j + s.offsets[0])) for j, _ in _nodes(ds, r)[0]]
        assert names == [f"t={t!r}" for t in tags[r]]


def test_multi_categorical_min_count_and_unseen():
    s = _solo(MultiCategorical("t", "item", sep=",", min_count=2), pd.DataFrame({"t": ["a,b", "a,c", "b,a", "d"]}))
    assert s.field("t").vocab == ["a", "b"]
    ds = _enc(s, pd.DataFrame({"t": ["c,d,a", "q"]}))
    assert [j for j, _ in _local(s, ds, 0, "t")] == [1, 1, 2]  # c, d rare -> other; a
    assert [j for j, _ in _local(s, ds, 1, "t")] == [0]  # never seen


# ---------------------------------------------------------------------------- numeric
def test_numeric_raw_standardisation_and_nan():
    fit_vals = [1.0, 2.0, np.nan, 4.0, 10.0, 7.5]
    s = _solo(Numeric("x", "user"), pd.DataFrame({"x": fit_vals}))
    clean = [v for v in fit_vals if not math.isnan(v)]
    mean, std = statistics.fmean(clean), statistics.pstdev(clean)
    test = [3.0, np.nan, -2.0, 100.0]
    ds = _enc(s, pd.DataFrame({"x": test}))
    np.testing.assert_array_equal(ds.indptr, [0, 1, 1, 2, 3])  # NaN: no node
    np.testing.assert_allclose(ds.values, [(v - mean) / std for v in test if not math.isnan(v)], rtol=1e-6)
    # numeric strings are numbers
    _same(_enc(s, pd.DataFrame({"x": ["3.0", None, "-2", "1e2"]})), ds)
    # a constant column does not divide by zero
    c = _solo(Numeric("x", "user"), pd.DataFrame({"x": [5.0, 5.0]}))
    np.testing.assert_allclose(_enc(c, pd.DataFrame({"x": [5.0, 6.0]})).values_or_ones(), [0.0, 1.0])


@pytest.mark.parametrize("buckets", [2, 4, 5])
def test_numeric_quantile_buckets(rng, buckets):
    x = rng.normal(size=1000)
    s = _solo(Numeric("x", "context", buckets=buckets), pd.DataFrame({"x": x}))
    assert s.field("x").size == buckets + 1  # + "missing"
    ds = _enc(s, pd.DataFrame({"x": x}))
    loc = ds.features - s.offsets[0]
    counts = np.bincount(loc, minlength=buckets + 1)
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:], 1000 / buckets, atol=1)  # equal-frequency buckets
    order = np.argsort(x)
    assert np.all(np.diff(loc[order]) >= 0)  # monotone in x
    t = _enc(s, pd.DataFrame({"x": [-1e9, np.nan, 1e9, float(np.median(x))]}))
    lt = (t.features - s.offsets[0]).tolist()
    assert lt[0] == 1 and lt[1] == 0 and lt[2] == buckets
    assert s.describe(int(t.features[1])) == "x=<missing>"
    # the describe() ranges contain the value
    for v, j in zip([-1e9, 1e9], (t.features[0], t.features[2])):
        lo, hi = s.describe(int(j)).split(" <= x < ")
        assert float(lo) <= v < float(hi)


def test_numeric_buckets_with_ties():
    x = [0.0] * 80 + list(range(1, 21))
    s = _solo(Numeric("x", "item", buckets=4), pd.DataFrame({"x": x}))
    ds = _enc(s, pd.DataFrame({"x": [0.0, 5.0, 20.0]}))
    loc = (ds.features - s.offsets[0]).tolist()
    # tied quantiles collapse into fewer buckets (like pandas.qcut(duplicates="drop")); the buckets
    # stay monotone and inside the field
    assert 1 <= loc[0] <= loc[1] <= loc[2] < s.field("x").size
    assert s.field("x").size == 1 + len(s.field("x").edges) + 1 and len(s.field("x").edges) >= 1


# ---------------------------------------------------------------------------- hashed
def test_hashed_in_range_deterministic_and_spread():
    vals = [f"user-{i}" for i in range(5000)]
    s = Schema([Categorical("a", "user"), Hashed("h", "user", buckets=16), Categorical("i", "item")])
    frame = pd.DataFrame({"a": ["p"] * 5000, "h": vals, "i": ["q"] * 5000})
    s.fit(frame)
    ds = s.transform(frame)
    hf = ds.features[ds.fields == 1]
    lo, hi = s.offsets[1], s.offsets[2]
    assert hi - lo == 16 and np.all((hf >= lo) & (hf < hi))
    # the same value always gets the same bucket (order independent)
    perm = np.random.default_rng(0).permutation(5000)
    ds2 = s.transform(frame.iloc[perm].reset_index(drop=True))
    np.testing.assert_array_equal(ds2.features[ds2.fields == 1], hf[perm])
    # roughly uniform over the buckets: chi-square with 15 dof far below its 1e-4 tail (~42)
    c = np.bincount(hf - lo, minlength=16)
    chi2 = float(((c - 5000 / 16) ** 2 / (5000 / 16)).sum())
    assert chi2 < 42, c
    # integers hash too, inside the range
    ints = s.transform(pd.DataFrame({"a": ["p"] * 3, "h": [1, 2, 10**12], "i": ["q"] * 3}))
    f = ints.features[ints.fields == 1]
    assert np.all((f >= lo) & (f < hi))


_HASH_CODE = """
import json, pandas as pd, fmrecall
s = fmrecall.Schema([fmrecall.Hashed("h", "user", buckets=1000), fmrecall.Hashed("n", "item", buckets=97)])
vals = json.loads({vals!r})
ds = s.transform(pd.DataFrame({{"h": vals["s"], "n": vals["i"]}}))
print(json.dumps(ds.features.tolist()))
"""


def test_hashed_is_stable_across_processes():
    """Different interpreters (different PYTHONHASHSEED) give the same buckets."""
    import os

    vals = {"s": [f"id{i}" for i in range(300)] + ["", "é", "a b"], "i": list(range(300)) + [10**15, 7, 0]}
    s = Schema([Hashed("h", "user", buckets=1000), Hashed("n", "item", buckets=97)])
    here = s.transform(pd.DataFrame({"h": vals["s"], "n": vals["i"]})).features.tolist()
    code = _HASH_CODE.format(vals=json.dumps(vals))
    old = os.environ.get("PYTHONHASHSEED")
    try:
        for seed in ("1", "12345"):
            os.environ["PYTHONHASHSEED"] = seed
            assert run_isolated(code) == here
    finally:
        if old is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = old


# ---------------------------------------------------------------------------- persistence
def test_to_dict_from_dict_reproduces_encodings_exactly():
    users, items, events = _frames()
    s = _schema().fit([users, items, events])
    joined = events.merge(users, on="user_id").merge(items, on="item_id")
    # plus rows with unseen / rare / missing values
    extra = pd.DataFrame(
        {
            "user_id": ["new"],
            "age": [23],
            "city": ["rome"],
            "income": [np.nan],
            "hour": [5],
            "item_id": [99],
            "tags": [["zz", "a"]],
            "tag_w": [[1.0, 2.0]],
            "price": [np.nan],
            "brand": ["y"],
            "clicked": [0],
        }
    )
    frame = pd.concat([joined, extra], ignore_index=True)
    want = s.transform(frame, label="clicked")
    d = s.to_dict()
    back = Schema.from_dict(d)
    via_json = Schema.from_dict(json.loads(json.dumps(d)))
    for other in (back, via_json):
        assert other == s
        assert other.sides == s.sides
        np.testing.assert_array_equal(other.offsets, s.offsets)
        got = other.transform(frame, label="clicked")
        _same(got, want)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert [other.describe(j) for j in range(s.n_features)] == [s.describe(j) for j in range(s.n_features)]
    # the rare value (age 23 seen once) is still "other", not unseen, after the JSON round trip
    age = via_json.transform(pd.DataFrame({"age": [23, 99]}), fields=["age"])
    assert (age.features - via_json.offsets[1]).tolist() == [1, 0]


def test_from_dict_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown field kind"):
        Schema.from_dict({"fields": [{"kind": "embedding", "name": "x", "side": "user"}]})


# ---------------------------------------------------------------------------- errors name field and value
def _fitted():
    users, items, events = _frames()
    return _schema().fit([users, items, events])


@pytest.mark.parametrize(
    "frame,field,value",
    [
        (pd.DataFrame({"hour": [8, np.nan]}), "hour", "nan"),
        (pd.DataFrame({"hour": [8, None]}, dtype=object), "hour", "None"),
        (pd.DataFrame({"hour": [8.0, 2.5]}), "hour", "2.5"),
        (pd.DataFrame({"hour": [8, [1, 2]]}), "hour", "[1, 2]"),
        (pd.DataFrame({"hour": [8, 3.5]}, dtype=object), "hour", "3.5"),
    ],
)
def test_categorical_errors_name_field_and_value(frame, field, value):
    s = _fitted()
    with pytest.raises(ValueError) as e:
        s.transform(frame, fields=[field])
    msg = str(e.value)
    assert repr(field) in msg and value in msg, msg


def test_other_errors_name_field_and_value():
    s = _fitted()
    cases = [
        (pd.DataFrame({"price": [1.0, "cheap"]}), ["price"], ("'price'", "'cheap'")),
        (pd.DataFrame({"income": [1.0, np.inf]}), ["income"], ("'income'", "inf")),
        (pd.DataFrame({"tags": [["a"], "a,b"], "tag_w": [[1.0], [1.0]]}), ["tags"], ("'tags'", "'a,b'")),
        (pd.DataFrame({"tags": [["a"], None], "tag_w": [[1.0], []]}), ["tags"], ("'tags'", "None")),
        (pd.DataFrame({"tags": [["a", "b"]], "tag_w": [[1.0]]}), ["tags"], ("'tags'", "[1.0]")),
        (pd.DataFrame({"tags": [["a", "b"]], "tag_w": [[1.0, np.nan]]}), ["tags"], ("'tags'", "nan")),
        (pd.DataFrame({"city": ["a", None]}), ["city"], ("'city'", "None")),
        (pd.DataFrame({"tags": [["a", None]], "tag_w": [[1.0, 1.0]]}), ["tags"], ("'tags'", "None")),
    ]
    for frame, fields, words in cases:
        with pytest.raises(ValueError) as e:
            s.transform(frame, fields=fields)
        for w in words:
            assert w in str(e.value), (str(e.value), w)
    with pytest.raises(ValueError, match="missing column.*'brand'"):
        s.transform(pd.DataFrame({"item_id": [10]}), side="item")
    with pytest.raises(ValueError, match="'tag_w'"):
        s.transform(pd.DataFrame({"tags": [["a"]]}), fields=["tags"])
    with pytest.raises(ValueError, match="label column 'y'"):
        s.transform(pd.DataFrame({"price": [1.0]}), fields=["price"], label="y")
    with pytest.raises(ValueError, match="'income'"):
        _solo(Numeric("income", "user"), pd.DataFrame({"income": [np.nan, None]}))


# ---------------------------------------------------------------------------- growth (partial_fit)
def _day2():
    """New users (u6 twice, u7 once), a new age (61, twice), a rare new age (70, once), the rare old
    age 23 five times, a new hour, new items / tags / brands, and old values."""
    users = pd.DataFrame(
        {
            "user_id": ["u6", "u7", "u1", "u6"],
            "age": [61, 23, 61, 70],
            "city": ["oslo", "paris", "lyon", "oslo"],
            "income": [9.0, 1.0, 2.0, 9.0],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": [14, 10],
            "tags": [["d", "a", "d"], ["b"]],
            "tag_w": [[1.0, 1.0, 1.0], [1.0]],
            "price": [99.0, 9.0],
            "brand": ["new", "x"],
        }
    )
    events = pd.DataFrame(
        {
            "user_id": ["u6", "u7", "u1", "u6", "u6"],
            "item_id": [14, 10, 14, 10, 14],
            "hour": [3, 8, 3, 3, 8],
            "clicked": [1, 0, 1, 1, 0],
            "age": [23, 23, 23, 23, 23],
        }
    )
    return users, items, events


def test_partial_fit_appends_new_values_and_keeps_old_indices():
    users, items, events = _frames()
    s = _schema().fit([users, items, events])
    old = copy.deepcopy(s)
    joined = events.merge(users, on="user_id").merge(items, on="item_id")
    want = s.transform(joined, label="clicked")
    n0 = s.n_features
    assert not s.grown and "extensions" not in s.to_dict()
    s.partial_fit(list(_day2()))
    assert s.grown and s.extends(old) and not old.extends(s)
    # old rows: the same features (the Dataset only gets a larger n_features)
    got = s.transform(joined, label="clicked")
    for a in ("indptr", "fields", "features"):
        np.testing.assert_array_equal(getattr(got, a), getattr(want, a))
    np.testing.assert_array_equal(got.values_or_ones(), want.values_or_ones())
    np.testing.assert_array_equal(s.offsets, old.offsets)  # the original ranges do not move
    assert [s.describe(j) for j in range(n0)] == [old.describe(j) for j in range(n0)]
    # new values: one segment per grown field, after every old feature, fields in schema order,
    # values frequent first; "u6" (2 rows) before "u7" (1 row)
    ext = s.to_dict()["extensions"]
    names = [s.fields[i].name for i, *_ in ext]
    assert names == ["user_id", "age", "hour", "item_id", "tags", "brand"]
    assert [g for _, _, g, _ in ext] == list(n0 + np.r_[0, np.cumsum([c for *_, c in ext])[:-1]])
    assert s.n_features == n0 + sum(c for *_, c in ext)
    new_desc = [s.describe(j) for j in range(n0, s.n_features)]
    assert new_desc == ["user_id='u6'", "user_id='u7'", "age=61", "hour=3", "item_id=14", "tags='d'", "brand='new'"]
    # age 61 (twice) got a feature; 70 (once, min_count 2) and the old rare 23 (now 5 times) are "other"
    age = s.transform(pd.DataFrame({"age": [61, 70, 23, 35, 99]}), fields=["age"])
    assert age.features.tolist()[1:] == [s.offsets[1] + 1, s.offsets[1] + 1, s.offsets[1] + 2, s.offsets[1]]
    assert s.describe(int(age.features[0])) == "age=61"
    # the feature() map agrees with transform, for old and new locals
    uid = s.transform(pd.DataFrame({"user_id": ["u1", "u6", "u7", "zz"]}), fields=["user_id"]).features
    loc = [2 + s.field("user_id").vocab.index(v) for v in ("u1", "u6", "u7")] + [0]
    np.testing.assert_array_equal(s.feature("user_id", loc), uid)
    # Numeric keeps its statistics, Hashed its buckets
    for name in ("city", "income", "price"):
        assert s.field(name).to_dict() == old.field(name).to_dict()
    # multi-categorical with a new tag: scaled within the row as before
    t = s.transform(pd.DataFrame({"tags": [["d", "a"]], "tag_w": [[3.0, 4.0]]}), fields=["tags"])
    got = dict(zip(t.features.tolist(), t.values_or_ones().tolist()))
    assert got == pytest.approx(
        {
            int(s.feature("tags", 2 + s.field("tags").vocab.index("d"))): 0.6,
            int(s.offsets[6] + 2 + s.field("tags").vocab.index("a")): 0.8,
        }
    )
    assert int(s.feature("tags", 2 + s.field("tags").vocab.index("d"))) >= n0


def test_partial_fit_twice_round_trips_and_regrows_nothing():
    users, items, events = _frames()
    s = _schema().fit([users, items, events])
    s.partial_fit(list(_day2()))
    n1 = s.n_features
    s.partial_fit(list(_day2()))  # nothing new: no growth
    assert s.n_features == n1
    s.partial_fit([pd.DataFrame({"user_id": ["u9"], "brand": ["x"]}), pd.DataFrame({"hour": [5, 5, 3]})])
    assert s.n_features == n1 + 2 and len(s.to_dict()["extensions"]) == 8
    d = s.to_dict()
    frame = pd.concat(
        [
            events.merge(users, on="user_id").merge(items, on="item_id"),
            _day2()[2]
            .drop(columns="age")
            .merge(_day2()[0].drop_duplicates("user_id"), on="user_id")
            .merge(_day2()[1], on="item_id"),
            pd.DataFrame(
                {
                    "user_id": ["u9"],
                    "age": [35],
                    "city": ["x"],
                    "income": [1.0],
                    "hour": [5],
                    "item_id": [10],
                    "tags": [["d"]],
                    "tag_w": [[1.0]],
                    "price": [3.0],
                    "brand": ["x"],
                    "clicked": [1],
                }
            ),
        ],
        ignore_index=True,
    )
    want = s.transform(frame, label="clicked")
    for other in (Schema.from_dict(d), Schema.from_dict(json.loads(json.dumps(d)))):
        assert other == s and other.grown and other.n_features == s.n_features
        _same(other.transform(frame, label="clicked"), want)
        assert [other.describe(j) for j in range(s.n_features)] == [s.describe(j) for j in range(s.n_features)]
    with pytest.raises(IndexError):
        s.describe(s.n_features)
    # fit starts over: no extensions
    s.fit([users, items, events])
    assert not s.grown and s.to_dict() == _schema().fit([users, items, events]).to_dict()


def test_partial_fit_checks_every_field_before_changing_any():
    users, items, events = _frames()
    s = _schema().fit([users, items, events])
    before = s.to_dict()
    bad = pd.DataFrame({"user_id": ["u8"], "brand": [None]})  # user_id would grow, brand is missing
    with pytest.raises(ValueError, match="brand"):
        s.partial_fit(bad)
    assert s.to_dict() == before
    # an unfitted schema is fit
    fresh = _schema().partial_fit([users, items, events])
    assert fresh == s


def test_from_dict_rejects_bad_extensions():
    users, items, events = _frames()
    s = _schema().fit([users, items, events])
    s.partial_fit(list(_day2()))
    d = s.to_dict()
    e = d["extensions"]
    for ext, match in (
        (e[:1] + e[2:], "starts at feature"),
        ([[0, 2, e[0][2], 1]] + e[1:], "starts at local"),
        ([[3, 0, e[0][2], 2]] + e[1:], "bad extension"),
        ([[0, 2, 3]], "bad extension"),
        ([[0] + e[0][1:3] + [0]] + e[1:], "bad extension"),
        ([[0] + e[0][1:3] + [99]] + e[1:], "exceed"),
    ):
        with pytest.raises(ValueError, match=match):
            Schema.from_dict({**d, "extensions": ext})
