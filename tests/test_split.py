"""The exact query/item split (DESIGN.md §2-§4, §6): b_q + <q, p> equals the model's score of the
joined row, for FM, FFM and HybridFM (both orientations), checked against decision_function on the
materialised joined rows and against the float64 numpy reference (tests/reference.py); the block
layout and every block's content recomputed in numpy from weights(); errors and ignored indices."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from helpers import (
    FRAPPE_SIDES,
    compact_single,
    dataset_rows,
    join_rows,
    keep_fields,
    random_dataset,
    random_hybrid_weights,
    random_weights,
    ref_params_and_aware,
    rows_dataset,
    side_rows,
)

import fmrecall

KINDS = ["fm", "ffm", "hybrid-item", "hybrid-query"]
N, F = 48, 6  # feature j belongs to field j % F (plus two features shared by a query and an item field)

# fields deliberately out of order and interleaved between the sides
SIDE_CONFIGS = {
    "user-context-item": dict(user=[3, 0], context=[5], item=[4, 1, 2]),
    "no-context": dict(user=[0, 2, 5], item=[1, 3, 4]),
    "no-user": dict(context=[4, 1], item=[0, 2, 3, 5]),
}


def _pools(n=N, n_fields=F):
    pools = {f: list(range(f, n, n_fields)) for f in range(n_fields)}
    # a feature used by two fields: 47 (field 5) also in field 1, 6 (field 0) also in field 4; in
    # every configuration above these pairs of fields are on different sides
    pools[1].append(47)
    pools[4].append(6)
    return {f: np.asarray(p) for f, p in pools.items()}


def _query_fields(sd):
    return list(sd.get("user", [])) + list(sd.get("context", []))


def _random_model(rng, kind, k, sd, *, n=N, n_fields=F, missing=0.15):
    """A model with random weights (FM, hybrid: ~15% of the features have no single vector, hybrid:
    ~15% no field-aware row: they contribute their linear term only)."""
    no_vector = rng.choice(n, size=int(missing * n), replace=False)
    if kind in ("fm", "ffm"):
        w = random_weights(rng, kind, n, n_fields, k)
        model = (
            fmrecall.FM.from_weights(w := compact_single(rng, w, no_vector), n_fields=n_fields, threads=1)
            if kind == "fm"
            else fmrecall.FFM.from_weights(w, threads=1)
        )
    else:
        w = compact_single(rng, random_hybrid_weights(rng, n, n_fields, k, missing=missing), no_vector)
        model = fmrecall.HybridFM.from_weights(w, sides=fmrecall.Sides(**sd), field_aware=kind.split("-")[1], threads=1)
    return model, w


def _split(model, kind, sd):
    return model.split() if kind.startswith("hybrid") else model.split(fmrecall.Sides(**sd))


def _expected_dim(kind, k, sd):
    nq, ni = len(_query_fields(sd)), len(sd["item"])
    return {"fm": k + 1, "ffm": nq * ni * k + 1, "hybrid-item": nq * k + 1, "hybrid-query": ni * k + 1}[kind]


def _close(got, want, scale, what):
    """1e-5 relative, with an absolute floor at float32 rounding of the summed |terms| (a score that
    cancels to ~0 cannot be relatively accurate in float32)."""
    assert abs(got - want) <= 1e-5 * abs(want) + 1e-6 * scale, (what, got, want, scale)


def check_exact(model, split, params, aware, qrows, irows, *, n_features, n_fields, rng, n_ref=None, scale=1.0):
    """b + q·p against decision_function on the materialised joined rows and against the reference;
    b against the reference score of the query row alone; p[-1] against the reference score of the
    item row alone minus the bias; q[-1] == 1. `scale`: the reference's constant value scale
    (normalize="mean"). Returns (q, b, p)."""
    qds = rows_dataset(qrows, n_features=n_features, n_fields=n_fields)
    ids = rows_dataset(irows, n_features=n_features, n_fields=n_fields)
    q, b = split.query_vectors(qds)
    p = split.item_vectors(ids)
    m, n = len(qrows), len(irows)
    assert q.dtype == np.float32 and b.dtype == np.float32 and p.dtype == np.float32
    assert q.shape == (m, split.dim) and b.shape == (m,) and p.shape == (n, split.dim)
    np.testing.assert_array_equal(q[:, -1], 1.0)
    got = b.astype(np.float64)[:, None] + q.astype(np.float64) @ p.astype(np.float64).T

    joined = [join_rows(qr, ir, rng) for qr in qrows for ir in irows]
    dec = model.decision_function(rows_dataset(joined, n_features=n_features, n_fields=n_fields))
    dec = dec.astype(np.float64).reshape(m, n)

    for a in range(m):
        f, j, x = ref.row_nodes(*qrows[a], n_features, n_fields, scale=scale)
        _close(float(b[a]), ref.score(params, aware, f, j, x), ref.score_terms_abs(params, aware, f, j, x), ("b", a))
    for i in range(n):
        f, j, x = ref.row_nodes(*irows[i], n_features, n_fields, scale=scale)
        want = ref.score(params, aware, f, j, x) - params["bias"]
        _close(float(p[i, -1]), want, ref.score_terms_abs(params, aware, f, j, x), ("p[-1]", i))
    pairs = [(a, i) for a in range(m) for i in range(n)]
    if n_ref is not None and n_ref < len(pairs):
        pairs = [pairs[t] for t in rng.choice(len(pairs), size=n_ref, replace=False)]
    for a, i in pairs:
        f, j, x = ref.row_nodes(*joined[a * n + i], n_features, n_fields, scale=scale)
        want = ref.score(params, aware, f, j, x)
        terms = ref.score_terms_abs(params, aware, f, j, x)
        _close(float(got[a, i]), want, terms, ("b+q.p vs reference", a, i))
        _close(float(dec[a, i]), want, terms, ("decision_function vs reference", a, i))
    # and the two library paths agree everywhere (reference-independent)
    np.testing.assert_allclose(got, dec, rtol=2e-5, atol=2e-5 * max(1.0, float(np.max(np.abs(dec)))))
    return q, b, p


# ---------------------------------------------------------------------------- exactness, random models
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 4, 5, 8])
@pytest.mark.parametrize("config", list(SIDE_CONFIGS))
def test_split_is_exact_random_weights(rng, kind, k, config):
    sd = SIDE_CONFIGS[config]
    model, w = _random_model(rng, kind, k, sd)
    split = _split(model, kind, sd)
    assert split.dim == _expected_dim(kind, k, sd)
    params, aware = ref_params_and_aware(kind, w, F, sd)
    pools = _pools()
    qrows = side_rows(rng, 8, _query_fields(sd), pools)
    irows = side_rows(rng, 7, sd["item"], pools)
    check_exact(model, split, params, aware, qrows, irows, n_features=N, n_fields=F, rng=rng)


@pytest.mark.parametrize("kind", KINDS)
def test_split_exact_with_many_nodes_per_field(rng, kind):
    """Long multi-valued fields (up to 8 features, repeats) and k=8: float32 sums of many terms."""
    sd = SIDE_CONFIGS["user-context-item"]
    model, w = _random_model(rng, kind, 8, sd)
    params, aware = ref_params_and_aware(kind, w, F, sd)
    pools = _pools()
    qrows = side_rows(rng, 5, _query_fields(sd), pools, max_per_field=8, field_prob=1.0, dup_prob=0.8)
    irows = side_rows(rng, 5, sd["item"], pools, max_per_field=8, field_prob=1.0, dup_prob=0.8)
    check_exact(model, _split(model, kind, sd), params, aware, qrows, irows, n_features=N, n_fields=F, rng=rng)


@pytest.mark.parametrize("kind", KINDS)
def test_split_exact_same_feature_twice(rng, kind):
    """Hand-made rows: a feature twice in one field, a feature in a query field and the item side
    at once (features are global), one-node rows."""
    sd = SIDE_CONFIGS["user-context-item"]  # query 0, 3, 5; item 1, 2, 4
    model, w = _random_model(rng, kind, 5, sd, missing=0.0)
    params, aware = ref_params_and_aware(kind, w, F, sd)
    qrows = [
        (np.array([0, 0, 3]), np.array([6, 6, 9]), np.array([0.7, -1.2, 0.5], np.float32)),
        (np.array([5, 0, 5]), np.array([47, 12, 47]), np.array([1.0, 1.0, 1.0], np.float32)),
        (np.array([3]), np.array([3]), np.array([1.3], np.float32)),
    ]
    irows = [
        (np.array([1, 4, 1]), np.array([47, 6, 47]), np.array([0.4, 1.1, 0.9], np.float32)),
        (np.array([2, 2]), np.array([8, 8]), np.array([1.0, 1.0], np.float32)),
        (np.array([4]), np.array([10]), np.array([-0.8], np.float32)),
    ]
    check_exact(model, _split(model, kind, sd), params, aware, qrows, irows, n_features=N, n_fields=F, rng=rng)


# ---------------------------------------------------------------------------- exactness, trained models
_TRAIN = dict(k=5, epochs=3, learning_rate=0.2, threads=1, seed=1)


def _train(kind, sd, ds, **hyper):
    params = {**_TRAIN, **hyper}
    if kind == "fm":
        return fmrecall.FM(**params).fit(ds)
    if kind == "ffm":
        return fmrecall.FFM(**params).fit(ds)
    return fmrecall.HybridFM(sides=fmrecall.Sides(**sd), field_aware=kind.split("-")[1], **params).fit(ds)


@pytest.mark.parametrize("kind", KINDS)
def test_split_is_exact_after_training_random_data(rng, kind):
    sd = SIDE_CONFIGS["user-context-item"]
    ds = random_dataset(rng, n_rows=300, n_features=N, n_fields=F)
    model = _train(kind, sd, ds)
    params, aware = ref_params_and_aware(kind, model.weights(), F, sd)
    scale = _reference_scale(model, ds)
    pools = _pools()
    qrows = side_rows(rng, 7, _query_fields(sd), pools)
    irows = side_rows(rng, 6, sd["item"], pools)
    check_exact(
        model, _split(model, kind, sd), params, aware, qrows, irows, n_features=N, n_fields=F, rng=rng, scale=scale
    )


def _reference_scale(model, train):
    """The default normalize="mean" value scale, computed by the reference from the training rows
    (and the model's own, which must agree)."""
    scale = ref.value_scale(dataset_rows(train))
    assert model.normalize == "mean" and scale != 1.0
    assert model.scale_ == pytest.approx(scale, rel=1e-6)
    return scale


@pytest.mark.parametrize("kind", KINDS)
def test_split_is_exact_after_training_on_frappe(frappe_data, rng, kind):
    """Learned weights on real data (user=0, item=1, context=2..9): every holdout row split into its
    query part and its item part scores b + q·p = decision_function(the original row); a 25 x 25
    cross product against materialised joins and (a sample) against the reference."""
    train, holdout = frappe_data
    model = _train(kind, FRAPPE_SIDES, train, k=8, epochs=2, learning_rate=0.1)
    split = _split(model, kind, FRAPPE_SIDES)
    nq = len(_query_fields(FRAPPE_SIDES))
    assert split.dim == {"fm": 9, "ffm": nq * 8 + 1, "hybrid-item": nq * 8 + 1, "hybrid-query": 9}[kind]
    rows = np.sort(rng.choice(holdout.n_rows, size=400, replace=False))
    sub = holdout.subset(rows)
    full = dataset_rows(sub)
    qrows = [keep_fields(r, _query_fields(FRAPPE_SIDES)) for r in full]
    irows = [keep_fields(r, FRAPPE_SIDES["item"]) for r in full]
    nf, nfl = model.n_features_, model.n_fields_
    q, b = split.query_vectors(rows_dataset(qrows, n_features=nf, n_fields=nfl))
    p = split.item_vectors(rows_dataset(irows, n_features=nf, n_fields=nfl))
    diag = b.astype(np.float64) + np.einsum("ij,ij->i", q.astype(np.float64), p.astype(np.float64))
    np.testing.assert_allclose(diag, model.decision_function(sub), rtol=1e-5, atol=1e-5)
    params, aware = ref_params_and_aware(kind, model.weights(), nfl, FRAPPE_SIDES)
    scale = _reference_scale(model, train)
    check_exact(
        model,
        split,
        params,
        aware,
        qrows[:25],
        irows[25:50],
        n_features=nf,
        n_fields=nfl,
        rng=rng,
        n_ref=60,
        scale=scale,
    )


# ---------------------------------------------------------------------------- block layout and content
def _block_content(kind, w, sd, row, side, key, n_fields=F):
    """numpy: the k floats a query / item row puts into block `key` (DESIGN.md §2-§4)."""
    params, _ = ref_params_and_aware(kind, w, n_fields, sd)
    f, j, x = ref.row_nodes(*row, N, n_fields)
    if kind == "fm":  # S_Q or S_I
        return (x[:, None] * params["v"][j]).sum(0)
    W = params["W"]
    if kind == "ffm":
        a, b = key  # A_{a,b} = Σ_{i in a} x_i w_{i,b};  B_{b,a} = Σ_{j in b} x_j w_{j,a}
        sel = f == (a if side == "query" else b)
        return (x[sel, None] * W[j[sel], b if side == "query" else a]).sum(0)
    if kind == "hybrid-item":
        a = key  # query: Σ_{i in a} x_i v_i;  item: Σ_{j in I} x_j w_{j,a}
        if side == "query":
            sel = f == a
            return (x[sel, None] * params["v"][j[sel]]).sum(0)
        return (x[:, None] * W[j, a]).sum(0)
    b = key  # hybrid-query; query: Σ_{i in Q} x_i w_{i,b};  item: Σ_{j in b} x_j v_j
    if side == "query":
        return (x[:, None] * W[j, b]).sum(0)
    sel = f == b
    return (x[sel, None] * params["v"][j[sel]]).sum(0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", list(SIDE_CONFIGS))
def test_block_layout_and_content(rng, kind, config):
    sd = SIDE_CONFIGS[config]
    k = 3
    model, w = _random_model(rng, kind, k, sd)
    split = _split(model, kind, sd)
    qf, itf = sorted(_query_fields(sd)), sorted(sd["item"])
    dim = _expected_dim(kind, k, sd)
    assert split.dim == dim
    blocks = split.blocks()
    # the blocks tile [0, dim - 1) with k floats each, in vector order; the last slot is the bias slot
    assert [b[0] for b in blocks] == [t * k for t in range(len(blocks))]
    assert len(blocks) * k == dim - 1
    if kind == "fm":
        assert [b[1] for b in blocks] == ["ss"]
        keys = [None]
    elif kind == "ffm":
        assert {b[1] for b in blocks} == {"ab"}
        keys = [(b[2], b[3]) for b in blocks]
        assert sorted(keys) == [(a, b) for a in qf for b in itf]
        assert keys == sorted(keys), "FFM blocks must be query-field-major: (a, b) increasing with a, then b"
    elif kind == "hybrid-item":
        assert {b[1] for b in blocks} == {"sa"}
        keys = [b[2] for b in blocks]
        assert sorted(keys) == qf
    else:
        assert {b[1] for b in blocks} == {"bs"}
        keys = [b[3] for b in blocks]
        assert sorted(keys) == itf

    pools = _pools()
    qrows = side_rows(rng, 6, _query_fields(sd), pools)
    irows = side_rows(rng, 6, sd["item"], pools)
    q, _ = split.query_vectors(rows_dataset(qrows, n_features=N, n_fields=F))
    p = split.item_vectors(rows_dataset(irows, n_features=N, n_fields=F))
    for (off, _kind, _a, _b), key in zip(blocks, keys):
        for r, row in enumerate(qrows):
            np.testing.assert_allclose(
                q[r, off : off + k],
                _block_content(kind, w, sd, row, "query", key),
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"query row {r} block {key}",
            )
        for r, row in enumerate(irows):
            np.testing.assert_allclose(
                p[r, off : off + k],
                _block_content(kind, w, sd, row, "item", key),
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"item row {r} block {key}",
            )


def test_fm_split_is_the_design_formula(rng):
    """DESIGN.md §2 written out: q = [S_Q; 1], p = [S_I; lin(I) + intra(I)], b = w0 + lin(Q) + intra(Q)."""
    sd = SIDE_CONFIGS["no-context"]
    w = random_weights(rng, "fm", N, F, 4)
    model = fmrecall.FM.from_weights(w, n_fields=F, threads=1)
    split = model.split(fmrecall.Sides(**sd))
    pools = _pools()
    qrows = side_rows(rng, 5, _query_fields(sd), pools)
    irows = side_rows(rng, 5, sd["item"], pools)
    q, b = split.query_vectors(rows_dataset(qrows, n_features=N, n_fields=F))
    p = split.item_vectors(rows_dataset(irows, n_features=N, n_fields=F))
    v = w["factors"].astype(np.float64)
    lin = w["linear"].astype(np.float64)

    def parts(row):
        _, j, x = row
        vx = v[j] * x.astype(np.float64)[:, None]
        s = vx.sum(0)
        return s, float(lin[j] @ x), 0.5 * (s @ s - np.sum(vx * vx))

    for r, row in enumerate(qrows):
        s, l, intra = parts(row)
        np.testing.assert_allclose(q[r], np.r_[s, 1.0], rtol=1e-5, atol=1e-6)
        assert b[r] == pytest.approx(w["bias"] + l + intra, rel=1e-5, abs=1e-5)
    for r, row in enumerate(irows):
        s, l, intra = parts(row)
        np.testing.assert_allclose(p[r], np.r_[s, l + intra], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- edge rows and options
@pytest.mark.parametrize("kind", KINDS)
def test_empty_rows(rng, kind):
    """A query row with no nodes: q = (0, ..., 0, 1), b = w0. An item row with no nodes: p = 0.
    Zero-valued nodes count as absent."""
    sd = SIDE_CONFIGS["user-context-item"]
    model, w = _random_model(rng, kind, 4, sd)
    split = _split(model, kind, sd)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    zero_q = (np.array([0, 5]), np.array([0, 5]), np.array([0.0, 0.0], np.float32))
    zero_i = (np.array([1]), np.array([1]), np.array([0.0], np.float32))
    q, b = split.query_vectors(rows_dataset([empty, zero_q], n_features=N, n_fields=F))
    p = split.item_vectors(rows_dataset([empty, zero_i], n_features=N, n_fields=F))
    want_q = np.zeros(split.dim, np.float32)
    want_q[-1] = 1.0
    for r in range(2):
        np.testing.assert_array_equal(q[r], want_q)
        assert b[r] == np.float32(w["bias"])
        np.testing.assert_array_equal(p[r], np.zeros(split.dim, np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_one_hot_rows_and_no_rows(rng, kind):
    """values=None (one-hot data, as parsed from frappe) means every value is 1; a Dataset with no
    rows gives (0, dim) arrays."""
    sd = SIDE_CONFIGS["user-context-item"]
    model, _ = _random_model(rng, kind, 5, sd)
    split = _split(model, kind, sd)
    pools = _pools()
    for fields, rows in (
        (_query_fields(sd), side_rows(rng, 10, _query_fields(sd), pools)),
        (sd["item"], side_rows(rng, 10, sd["item"], pools)),
    ):
        ones = rows_dataset([(f, j, np.ones(len(j), np.float32)) for f, j, _ in rows], n_features=N, n_fields=F)
        hot = fmrecall.Dataset(ones.indptr, ones.fields, ones.features, None, n_features=N, n_fields=F)
        if fields is sd["item"]:
            np.testing.assert_array_equal(split.item_vectors(hot), split.item_vectors(ones))
        else:
            for a, b in zip(split.query_vectors(hot), split.query_vectors(ones)):
                np.testing.assert_array_equal(a, b)
    empty = fmrecall.Dataset(
        np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32), n_features=N, n_fields=F
    )
    q, b = split.query_vectors(empty)
    assert q.shape == (0, split.dim) and b.shape == (0,)
    assert split.item_vectors(empty).shape == (0, split.dim)


@pytest.mark.parametrize("kind", KINDS)
def test_indices_beyond_the_model_are_ignored(rng, kind):
    """Features >= n_features and fields >= n_fields add nothing to q, b or p (and raise nothing)."""
    sd = SIDE_CONFIGS["no-user"]
    model, _ = _random_model(rng, kind, 5, sd)
    split = _split(model, kind, sd)
    pools = _pools()
    qrows = side_rows(rng, 6, _query_fields(sd), pools)
    irows = side_rows(rng, 6, sd["item"], pools)

    def widen(rows, field):
        out = []
        for f, j, x in rows:
            # an unseen feature in an in-model field of the right side, and a node of an unseen field
            f2 = np.r_[f, field, F + 3].astype(np.int64)
            j2 = np.r_[j, N + 5, 2].astype(np.int64)
            out.append((f2, j2, np.r_[x, 1.5, 0.9].astype(np.float32)))
        return out

    q0, b0 = split.query_vectors(rows_dataset(qrows, n_features=N, n_fields=F))
    p0 = split.item_vectors(rows_dataset(irows, n_features=N, n_fields=F))
    q1, b1 = split.query_vectors(rows_dataset(widen(qrows, 4), n_features=N + 6, n_fields=F + 4))
    p1 = split.item_vectors(rows_dataset(widen(irows, 0), n_features=N + 6, n_fields=F + 4))
    np.testing.assert_allclose(q1, q0, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b1, b0, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p1, p0, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_threads_do_not_change_vectors(rng, kind):
    sd = SIDE_CONFIGS["user-context-item"]
    model, _ = _random_model(rng, kind, 8, sd)
    pools = _pools()
    qds = rows_dataset(side_rows(rng, 300, _query_fields(sd), pools), n_features=N, n_fields=F)
    ids = rows_dataset(side_rows(rng, 300, sd["item"], pools), n_features=N, n_fields=F)
    one = _split(model.set_params(threads=1), kind, sd)
    q1, b1 = one.query_vectors(qds)
    p1 = one.item_vectors(ids)
    two = _split(model.set_params(threads=2), kind, sd)
    q2, b2 = two.query_vectors(qds)
    np.testing.assert_array_equal(q2, q1)
    np.testing.assert_array_equal(b2, b1)
    np.testing.assert_array_equal(two.item_vectors(ids), p1)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kind", KINDS)
def test_rows_on_the_wrong_side_raise(rng, kind):
    sd = SIDE_CONFIGS["user-context-item"]  # query 0, 3, 5; item 1, 2, 4
    model, _ = _random_model(rng, kind, 4, sd)
    split = _split(model, kind, sd)
    # a query row holding item field 4 (after valid query nodes)
    bad_q = [
        (np.array([0, 3]), np.array([0, 3]), np.ones(2, np.float32)),
        (np.array([5, 4, 0]), np.array([5, 4, 6]), np.ones(3, np.float32)),
    ]
    with pytest.raises(ValueError, match=r"\b4\b"):
        split.query_vectors(rows_dataset(bad_q, n_features=N, n_fields=F))
    # an item row holding user field 3
    bad_i = [(np.array([1, 2, 3]), np.array([1, 2, 9]), np.ones(3, np.float32))]
    with pytest.raises(ValueError, match=r"\b3\b"):
        split.item_vectors(rows_dataset(bad_i, n_features=N, n_fields=F))
    # a context field in an item row is a query field too
    bad_c = [(np.array([2, 5]), np.array([2, 5]), np.ones(2, np.float32))]
    with pytest.raises(ValueError, match=r"\b5\b"):
        split.item_vectors(rows_dataset(bad_c, n_features=N, n_fields=F))


@pytest.mark.parametrize("normalize", [True, "row"])
@pytest.mark.parametrize("kind", KINDS)
def test_normalized_model_cannot_be_split(rng, kind, normalize):
    """Whole-row 1/||x|| normalisation couples the sides (DESIGN.md §6): split must refuse, saying
    why and what to use instead."""
    sd = SIDE_CONFIGS["no-context"]
    sides = fmrecall.Sides(**sd)
    if kind in ("fm", "ffm"):
        w = random_weights(rng, kind, N, F, 4)
        model = (
            fmrecall.FM.from_weights(w, n_fields=F, normalize=normalize)
            if kind == "fm"
            else fmrecall.FFM.from_weights(w, normalize=normalize)
        )
        with pytest.raises(ValueError, match=r"couples the query and item sides.*normalize=\"mean\""):
            model.split(sides)
    else:
        ds = random_dataset(rng, n_rows=30, n_features=N, n_fields=F)
        model = fmrecall.HybridFM(
            k=4, sides=sides, field_aware=kind.split("-")[1], normalize=normalize, epochs=1, threads=1
        ).fit(ds)
        with pytest.raises(ValueError, match=r"couples the query and item sides.*normalize=\"mean\""):
            model.split()


def test_hybrid_split_needs_its_own_sides(rng):
    sd = SIDE_CONFIGS["user-context-item"]
    model, _ = _random_model(rng, "hybrid-item", 4, sd)
    # an equal Sides object is its own sides
    assert model.split(fmrecall.Sides(**sd)).dim == model.split().dim == 3 * 4 + 1
    # user and context swapped: the same fields on the query side, but not the model's sides
    other = fmrecall.Sides(user=[5], context=[3, 0], item=[4, 1, 2])
    with pytest.raises(ValueError):
        model.split(other)
    with pytest.raises(ValueError):
        model.split(fmrecall.Sides(user=[3, 0, 5], item=[4, 1], context=[2]))


@pytest.mark.parametrize("kind", ["fm", "ffm"])
def test_split_sides_must_cover_the_model(rng, kind):
    model, _ = _random_model(rng, kind, 4, SIDE_CONFIGS["no-context"])
    with pytest.raises(ValueError, match=r"\b5\b"):  # field 5 is unassigned
        model.split(fmrecall.Sides(user=[0, 2], item=[1, 3, 4]))
    with pytest.raises(ValueError, match=r"\b7\b"):  # field 7 does not exist
        model.split(fmrecall.Sides(user=[0, 2, 5], item=[1, 3, 4, 7]))
    with pytest.raises(ValueError):
        model.split({"user": [0, 2, 5], "item": [1, 3, 4]})  # not a Sides


@pytest.mark.parametrize("cls", [fmrecall.FM, fmrecall.FFM], ids=["FM", "FFM"])
def test_split_of_unfitted_model(cls):
    with pytest.raises(fmrecall.NotFittedError):
        cls().split(fmrecall.Sides(user=[0], item=[1]))


def test_split_of_unfitted_hybrid():
    sides = fmrecall.Sides(user=[0], item=[1])
    with pytest.raises(fmrecall.NotFittedError):
        fmrecall.HybridFM(sides=sides).split()
