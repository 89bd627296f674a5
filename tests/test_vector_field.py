"""The Vector field (pretrained vectors as features): its encoding against a numpy reference, the
exact split with a Vector field on both sides for FM, FFM and both HybridFM orientations
(b_q + <q, p> against decision_function on the joined rows), persistence with the schema and the
model, and errors that name the field and the row."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fmrecall
from fmrecall import Categorical, MultiCategorical, Schema, Vector

pd = pytest.importorskip("pandas")


def _dense(ds, n_features):
    """(n_rows, n_features) float64 matrix of a Dataset's nodes (values summed per feature)."""
    out = np.zeros((ds.n_rows, n_features))
    rows = np.repeat(np.arange(ds.n_rows), np.diff(ds.indptr))
    np.add.at(out, (rows, ds.features), ds.values_or_ones())
    return out


def _vectors(rng, n, dim):
    """Random vectors with exact zeros: a whole zero row and scattered zero coordinates."""
    v = rng.normal(size=(n, dim))
    v[rng.random((n, dim)) < 0.2] = 0.0
    v[1] = 0.0
    return v


# ---------------------------------------------------------------------------- encoding
@pytest.mark.parametrize("scale", ["none", "l2"])
@pytest.mark.parametrize("form", ["array", "list", "tuple"])
def test_encoding_equals_numpy_reference(rng, scale, form):
    n, dim = 9, 5
    v = _vectors(rng, n, dim)
    col = {"array": list(v), "list": [r.tolist() for r in v], "tuple": [tuple(r) for r in v]}[form]
    frame = pd.DataFrame({"item_id": np.arange(n) % 4, "emb": col}, index=np.arange(100, 100 + n))
    schema = Schema([Categorical("item_id", "item"), Vector("emb", "user", dim, scale=scale)]).fit(frame)
    assert schema.field("emb").size == dim and schema.n_features == 2 + 4 + dim
    ds = schema.transform(frame)

    # reference: the categorical's one-hot block (vocabulary most frequent first, ties by first
    # appearance: ids 0..3 here) then the vector block, coordinate d at feature 6 + d
    want = np.zeros((n, 6 + dim))
    want[np.arange(n), 2 + np.arange(n) % 4] = 1.0
    ref = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300) if scale == "l2" else v
    want[:, 6:] = ref.astype(np.float32)
    np.testing.assert_array_equal(_dense(ds, schema.n_features), want)
    # one node per non-zero coordinate, in field order; the zero row has the categorical only
    np.testing.assert_array_equal(np.diff(ds.indptr), 1 + (v != 0).sum(axis=1))
    assert np.diff(ds.indptr)[1] == 1
    vec_nodes = ds.fields == 1
    np.testing.assert_array_equal(ds.features[vec_nodes] - 6, np.nonzero(v)[1])
    assert [schema.describe(6 + d) for d in range(2)] == ["emb[0]", "emb[1]"]


def test_two_dim_array_rows_and_integers(rng):
    m = rng.integers(-3, 4, size=(6, 3))
    frame = pd.DataFrame({"emb": list(m), "x": 0})
    schema = Schema([Vector("emb", "user", 3), Categorical("x", "item")]).fit(frame)
    ds = schema.transform(frame, fields=["emb"])
    np.testing.assert_array_equal(_dense(ds, schema.n_features)[:, :3], m.astype(np.float64))


# ---------------------------------------------------------------------------- exact split
def _world(rng, n_users=30, n_items=25, n_events=500):
    users = pd.DataFrame(
        {"user_id": np.arange(n_users), "uvec": list(_vectors(rng, n_users, 4)), "age": rng.integers(0, 3, n_users)}
    )
    items = pd.DataFrame(
        {
            "item_id": np.arange(n_items),
            "ivec": list(_vectors(rng, n_items, 3)),
            "tags": [list(rng.choice(["a", "b", "c", "d"], rng.integers(0, 3), replace=False)) for _ in range(n_items)],
        }
    )
    ev = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users, n_events),
            "item_id": rng.integers(0, n_items, n_events),
            "hour": rng.integers(0, 4, n_events),
        }
    )
    joined = ev.merge(users, on="user_id").merge(items, on="item_id")
    # a label that depends on the vectors, so their weights are trained away from the initial ones
    s = np.array([u[:3] @ i for u, i in zip(joined.uvec, joined.ivec)])
    joined["y"] = (s + 0.3 * rng.normal(size=s.size) > 0).astype(np.float32)
    schema = Schema(
        [
            Categorical("user_id", "user"),
            Vector("uvec", "user", 4),
            Categorical("age", "user"),
            Categorical("hour", "context"),
            Categorical("item_id", "item"),
            Vector("ivec", "item", 3, scale="l2"),
            MultiCategorical("tags", "item"),
        ]
    ).fit([users, items, ev])
    return schema, users, items, joined


@pytest.mark.parametrize("kind", ["FM", "FFM", "HybridFM-item", "HybridFM-query"])
def test_split_exact_with_vector_fields_on_both_sides(rng, kind):
    schema, users, items, joined = _world(rng)
    params = dict(k=4, epochs=3, learning_rate=0.1, threads=1, seed=0)
    if kind.startswith("HybridFM"):
        model = fmrecall.HybridFM(sides=schema.sides, field_aware=kind.split("-")[1], **params)
    else:
        model = getattr(fmrecall, kind)(**params)
    model.fit(schema.transform(joined, label="y"))
    split = model.split(schema.sides)
    queries = joined[["user_id", "uvec", "age", "hour"]].iloc[:12].reset_index(drop=True)
    q, b = split.query_vectors(schema.transform(queries, side="query"))
    p = split.item_vectors(schema.transform(items, side="item"))
    got = b.astype(np.float64)[:, None] + q.astype(np.float64) @ p.astype(np.float64).T
    cross = queries.merge(items, how="cross")  # query-major: row a * n_items + i
    dec = model.decision_function(schema.transform(cross)).astype(np.float64).reshape(got.shape)
    scale = max(1.0, float(np.abs(dec).max()))
    np.testing.assert_allclose(got, dec, rtol=1e-5, atol=1e-6 * scale)
    # the vector fields carry trained weights: scores move when a vector changes
    moved = items.assign(ivec=[-x for x in items.ivec])
    p2 = split.item_vectors(schema.transform(moved, side="item"))
    assert np.abs(p2 - p).max() > 1e-3


# ---------------------------------------------------------------------------- persistence
def test_schema_and_model_round_trip(rng, tmp_path):
    schema, users, items, joined = _world(rng, n_events=200)
    d = schema.to_dict()
    assert {"kind": "vector", "name": "ivec", "side": "item", "column": "ivec", "dim": 3, "scale": "l2"} in d["fields"]
    back = Schema.from_dict(json.loads(json.dumps(d)))
    assert back == schema
    want = schema.transform(joined)
    got = back.transform(joined)
    for a in ("indptr", "fields", "features"):
        np.testing.assert_array_equal(getattr(got, a), getattr(want, a))
    np.testing.assert_array_equal(got.values_or_ones(), want.values_or_ones())

    model = fmrecall.FM(k=4, epochs=1, threads=1, seed=0).fit(schema.transform(joined, label="y"))
    model.schema_ = schema
    model.save(tmp_path / "fm.npz")
    loaded = fmrecall.load(tmp_path / "fm.npz")
    assert loaded.schema_ == schema
    assert isinstance(loaded.schema_.field("uvec"), Vector)
    np.testing.assert_array_equal(
        loaded.decision_function(loaded.schema_.transform(joined)), model.decision_function(want)
    )


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "value,words",
    [
        ([1.0, 2.0], ["expected 3 numbers, got 2"]),
        ([1.0, 2.0, 3.0, 4.0], ["expected 3 numbers, got 4"]),
        ([1.0, np.nan, 3.0], ["non-finite"]),
        (np.array([1.0, 2.0, np.inf]), ["non-finite"]),
        ([[1.0, 2.0], [3.0]], ["ragged or non-numeric"]),
        ([[1.0, 2.0, 3.0]], ["flat vector"]),
        (["1", "2", "3"], ["non-numeric"]),
        ([1.0, None, 3.0], ["non-numeric"]),
        (None, ["missing value"]),
        (2.5, ["expected a list or array of 3 numbers"]),
        ("1,2,3", ["expected a list or array"]),
    ],
)
def test_bad_vectors_name_field_and_row(value, words):
    frame = pd.DataFrame({"emb": [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0], value], "x": 0}, index=["a", "b", "row7"])
    schema = Schema([Categorical("x", "user"), Vector("emb", "item", 3)]).fit(frame.iloc[:2])
    for call in (lambda: schema.fit(frame), lambda: schema.transform(frame)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "field 'emb'" in msg and "row 'row7'" in msg, msg
        for w in words:
            assert w in msg, msg


def test_bad_definitions():
    for dim in (0, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="field 'e': dim must be a positive integer"):
            Vector("e", "user", dim)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="field 'e': scale must be"):
        Vector("e", "user", 3, scale="mean")
    with pytest.raises(ValueError, match="side must be"):
        Vector("e", "query", 3)


# ---------------------------------------------------------------------------- the SVD helper
def test_svd_vectors_span_the_best_rank_d_approximation(rng):
    """experiments.collab_vectors.svd_vectors: <u, v> is proportional to the best rank-d
    approximation of the interaction matrix (here from an eigendecomposition of R Rᵀ), each side
    has mean squared coordinate 1, and a user without interactions gets the zero vector."""
    from fmrecall.experiments.collab_vectors import svd_vectors

    n_users, n_items, d = 12, 20, 4
    R = (rng.random((n_users, n_items)) < 0.3).astype(np.float64)
    R[5] = 0.0
    users, items = np.nonzero(R)
    u, v = svd_vectors(users, items, n_users, n_items, d)
    assert u.shape == (n_users, d) and v.shape == (n_items, d)
    np.testing.assert_allclose([np.mean(u * u), np.mean(v * v)], [1.0, 1.0], rtol=1e-12)
    np.testing.assert_array_equal(u[5], 0.0)
    lam, E = np.linalg.eigh(R @ R.T)
    top = E[:, np.argsort(lam)[::-1][:d]]
    best = top @ top.T @ R  # the projection of R on its top-d left singular vectors
    got = u @ v.T
    c = float(np.sum(got * best) / np.sum(best * best))
    np.testing.assert_allclose(got, c * best, atol=1e-9 * np.abs(got).max())
    with pytest.raises(ValueError, match="dim must be in"):
        svd_vectors(users, items, n_users, n_items, 13)
