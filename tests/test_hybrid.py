"""HybridFM (DESIGN.md §4): field-aware on one side only. Scores and one AdaGrad step against the
float64 numpy reference (tests/reference.py with per-field `aware` flags), weights / persistence round
trips, the aware_row rule, parameter validation, determinism, and the frappe comparison of
FM / HybridFM / FFM (holdout AUC and split dimension)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import reference as ref
from helpers import (
    FRAPPE_SIDES,
    aware_flags,
    hybrid_ref_params,
    one_row_dataset,
    random_dataset,
    random_hybrid_weights,
    rows_dataset,
)

import fmrecall
from fmrecall.metrics import auc, logloss_from_scores

N, F = 30, 5
SIDES = dict(user=[3], context=[0], item=[4, 1, 2])  # query 0, 3; item 1, 2, 4
ORIENT = ["item", "query"]


def _hybrid(w, field_aware, sides=SIDES, **hyper):
    hyper.setdefault("threads", 1)
    return fmrecall.HybridFM.from_weights(w, sides=fmrecall.Sides(**sides), field_aware=field_aware, **hyper)


def _assert_scores(params, aware, ds, got, n_features, n_fields):
    for r in range(ds.n_rows):
        f, j, x = ref.dataset_row(ds, r, n_features, n_fields)
        want = ref.score(params, aware, f, j, x)
        scale = ref.score_terms_abs(params, aware, f, j, x)
        assert abs(float(got[r]) - want) <= 1e-5 * abs(want) + 1e-6 * scale, (r, float(got[r]), want)


# ---------------------------------------------------------------------------- scores
@pytest.mark.parametrize("field_aware", ORIENT)
@pytest.mark.parametrize("k", [1, 4, 5, 8, 12, 16])
def test_scores_match_reference(rng, arch, field_aware, k):
    """Random rows over all fields (multi-valued, out of order, real values of both signs); every
    feature has a field-aware row."""
    w = random_hybrid_weights(rng, N, F, k)
    model = _hybrid(w, field_aware)
    ds = random_dataset(rng, n_rows=40, n_features=N, n_fields=F)
    got = model.decision_function(ds)
    assert got.dtype == np.float32 and got.shape == (40,)
    _assert_scores(hybrid_ref_params(w), aware_flags(SIDES, field_aware, F), ds, got, N, F)
    np.testing.assert_array_equal(model.set_params(threads=2).decision_function(ds), got)


@pytest.mark.parametrize("field_aware", ORIENT)
def test_scores_with_features_in_two_fields_and_missing_rows(rng, field_aware):
    """A feature index used by a single field and by a field-aware field (v in one, w in the other),
    a feature twice in one field, and features without a field-aware row (-1)."""
    w = random_hybrid_weights(rng, N, F, 5, missing=0.3)
    model = _hybrid(w, field_aware)
    n_rows = 40
    indptr, fields, feats, vals = [0], [], [], []
    for _ in range(n_rows):
        f = rng.integers(0, F, size=9)
        j = rng.integers(0, N, size=9)
        j[1] = j[0]  # the same feature in two (maybe different) fields
        f[3], j[3] = f[2], j[2]  # the same feature twice in one field
        fields += f.tolist()
        feats += j.tolist()
        vals += (rng.uniform(0.2, 1.5, 9) * np.where(rng.random(9) < 0.2, -1, 1)).tolist()
        indptr.append(len(feats))
    ds = fmrecall.Dataset(
        np.array(indptr), np.array(fields), np.array(feats), np.array(vals, np.float32), n_features=N, n_fields=F
    )
    _assert_scores(hybrid_ref_params(w), aware_flags(SIDES, field_aware, F), ds, model.decision_function(ds), N, F)


@pytest.mark.parametrize("field_aware", ORIENT)
def test_the_three_pair_rules(rng, field_aware):
    """Two-node rows, written out without reference.py: single x single = <v_i, v_j>; aware x aware
    = <w_{i,f(j)}, w_{j,f(i)}>; single i x aware j = <v_i, w_{j,f(i)}>."""
    k = 4
    w = random_hybrid_weights(rng, N, F, k)
    model = _hybrid(w, field_aware)
    aware = aware_flags(SIDES, field_aware, F)
    v, W, rows, lin = w["factors"], w["field_factors"], w["aware_row"], w["linear"]
    cases = []
    for fi in range(F):
        for fj in range(F):
            if fi == fj:
                continue
            i, j = int(rng.integers(0, N)), int(rng.integers(0, N))
            if i == j:
                j = (j + 1) % N
            xi, xj = 0.8, -1.3
            a = W[rows[i], fj] if aware[fi] else v[i]
            b = W[rows[j], fi] if aware[fj] else v[j]
            want = w["bias"] + lin[i] * xi + lin[j] * xj + xi * xj * float(np.dot(a.astype(np.float64), b))
            cases.append(((fi, fj), (i, j), (xi, xj), want))
    ds = rows_dataset(
        [(np.array(f), np.array(j), np.array(x, np.float32)) for f, j, x, _ in cases], n_features=N, n_fields=F
    )
    got = model.decision_function(ds)
    for (f, j, x, want), g in zip(cases, got):
        assert g == pytest.approx(want, rel=1e-5, abs=1e-6), (f, j, x)


@pytest.mark.parametrize("field_aware", ORIENT)
def test_feature_without_field_row_contributes_only_its_linear_weight(rng, field_aware):
    """score(row + node) - score(row) == w_j x_j when j has aware_row = -1 and the node is in a
    field-aware field (here with no reference code at all)."""
    w = random_hybrid_weights(rng, N, F, 6)
    j0 = 7
    w["aware_row"][j0] = -1  # its old row of field_factors becomes unused
    model = _hybrid(w, field_aware)
    aware_fields = [f for f in range(F) if aware_flags(SIDES, field_aware, F)[f]]
    base = [
        (
            np.array([0, 1, 2, 3, 4]),
            rng.choice(np.setdiff1d(np.arange(N), [j0]), 5, replace=False),
            rng.uniform(0.5, 1.2, 5).astype(np.float32),
        )
        for _ in range(4)
    ]
    extra = []
    for t, (f, j, x) in enumerate(base):
        fa = aware_fields[t % len(aware_fields)]
        extra.append((np.r_[f, fa], np.r_[j, j0], np.r_[x, 1.7].astype(np.float32)))
    s0 = model.decision_function(rows_dataset(base, n_features=N, n_fields=F)).astype(np.float64)
    s1 = model.decision_function(rows_dataset(extra, n_features=N, n_fields=F)).astype(np.float64)
    np.testing.assert_allclose(s1 - s0, w["linear"][j0] * np.float32(1.7), rtol=1e-4, atol=2e-6)
    # and alone in a row: bias + linear
    alone = model.decision_function(one_row_dataset([aware_fields[0]], [j0], [1.7], None, n_features=N, n_fields=F))
    assert alone[0] == pytest.approx(w["bias"] + w["linear"][j0] * 1.7, rel=1e-6)


# ---------------------------------------------------------------------------- one AdaGrad step
def _step_row(rng, n_nodes=9):
    """Distinct features, every field, a multi-valued field on each side, out-of-order fields,
    real values of both signs, and a field with one node."""
    feats = rng.choice(N, size=n_nodes, replace=False)
    fields = np.array([2, 0, 4, 3, 2, 1, 0, 4, 2][:n_nodes])
    values = rng.uniform(0.3, 1.4, size=n_nodes) * np.where(rng.random(n_nodes) < 0.25, -1, 1)
    return fields, feats, values.astype(np.float32)


def _ref_step(params, state, aware, rows, f, j, x, label, **hyper):
    """reference.adagrad_step for a hybrid row, with the rule for features without a field-aware row
    (aware_row = -1) in a field-aware field: such a node is a linear-only feature. Its pairs are
    zero (reference.py sees an all-zero W row), and it is nobody's partner either, so it does not
    make W[j_p, its field] of another node "touched" (no L2 step from it alone).
    Returns (new params, new state, loss, touched masks)."""
    new, st, loss = ref.adagrad_step(params, state, aware, f, j, x, label, **hyper)
    touched = ref.touched_mask(params, aware, f, j, x)
    keep = ~(aware[f] & (rows[j] < 0))
    t_w = ref.touched_mask(params, aware, f[keep], j[keep], x[keep])["W"]
    new["W"] = np.where(t_w, new["W"], params["W"])
    st["W"] = np.where(t_w, st["W"], state["W"])
    touched["W"] = t_w
    return new, st, loss, touched


def _params_of(model):
    return hybrid_ref_params(model.weights())


def _grow_for(model, aware, fields, feats):
    """Give field-aware rows to the row's aware-field features without one, as partial_fit does
    first; returns (weights, aware_row) afterwards. Checks the growth itself: exactly those
    features get new rows, appended after the existing ones."""
    before = model.weights()["aware_row"]
    need = np.unique(feats[aware[fields].astype(bool)])
    new = need[before[need] < 0]
    model._core.grow_rows(np.zeros(0, np.int32), need.astype(np.int32), model.init_std, model.seed)
    w = model.weights()
    rows = w["aware_row"].copy()
    np.testing.assert_array_equal(np.delete(rows, new), np.delete(before, new))
    assert sorted(rows[new]) == list(range(before.max() + 1, before.max() + 1 + new.size))
    return w, rows


def _compare(model, want, old, touched, rows, *, rtol=1e-5, atol=1e-6):
    """Library weights vs the reference step: bias, linear, v everywhere; W on the features that have
    a field-aware row (the library stores no others). Untouched entries are bit-for-bit unchanged."""
    got = _params_of(model)
    assert got["bias"] == pytest.approx(want["bias"], rel=rtol, abs=atol)
    has = rows >= 0
    for key, sel in (("linear", slice(None)), ("v", slice(None)), ("W", has)):
        g, wt, o, t = got[key][sel], want[key][sel], old[key][sel], touched[key][sel]
        np.testing.assert_allclose(g, wt, rtol=rtol, atol=atol, err_msg=key)
        np.testing.assert_allclose(g - o, wt - o, rtol=1e-4, atol=atol, err_msg=key)
        np.testing.assert_array_equal(g[~t], o[~t], err_msg=key)


@pytest.mark.parametrize("field_aware", ORIENT)
@pytest.mark.parametrize("loss, label", [("logistic", 1.0), ("logistic", 0.0), ("squared", 0.7)])
@pytest.mark.parametrize("k", [1, 5, 8])
@pytest.mark.parametrize("missing", [0.0, 0.3], ids=["all-rows", "some-missing"])
def test_one_adagrad_step_matches_reference(rng, arch, field_aware, loss, label, k, missing):
    lr, reg_l, reg_f = 0.1, 0.05, 0.1  # large L2 so its part of the gradient is visible
    w = random_hybrid_weights(rng, N, F, k, missing=missing)
    model = _hybrid(w, field_aware, loss=loss, learning_rate=lr, reg_linear=reg_l, reg_factors=reg_f)
    aware = aware_flags(SIDES, field_aware, F)

    fields, feats, values = _step_row(rng)
    ds = one_row_dataset(fields, feats, values, label, n_features=N, n_fields=F)
    f, j, x = ref.dataset_row(ds, 0, N, F)
    # partial_fit first gives field-aware rows to the row's aware-field features that have none (new
    # features); do that growth here so the reference starts from the same weights
    w, rows = _grow_for(model, aware, fields, feats)
    p0 = hybrid_ref_params(w)
    st0 = ref.fresh_state(p0)
    p1, st1, loss1, t1 = _ref_step(
        p0, st0, aware, rows, f, j, x, label, loss=loss, lr=lr, reg_linear=reg_l, reg_factors=reg_f
    )
    model.partial_fit(ds)
    _compare(model, p1, p0, t1, rows)
    assert model.history_[-1]["train_loss"] == pytest.approx(loss1, rel=1e-5, abs=1e-6)
    after = model.weights()
    np.testing.assert_array_equal(after["aware_row"], rows)  # training never re-assigns rows
    assert after["field_factors"].shape == w["field_factors"].shape

    # step 2 on a row sharing three features: the AdaGrad state carries over
    fields2, _, values2 = _step_row(rng, n_nodes=6)
    others = rng.permutation(np.setdiff1d(np.arange(N), feats[:3]))[:3]
    feats2 = np.concatenate([feats[:3], others])
    ds2 = one_row_dataset(fields2, feats2, values2, label, n_features=N, n_fields=F)
    old_rows = rows
    _, rows = _grow_for(model, aware, fields2, feats2)
    np.testing.assert_array_equal(rows[old_rows >= 0], old_rows[old_rows >= 0])  # growth never moves rows
    p1 = _params_of(model)
    f2, j2, x2 = ref.dataset_row(ds2, 0, N, F)
    # the accumulators of W rows the library does not store do not matter: those entries are never compared
    p2, _, loss2, t2 = _ref_step(
        p1, st1, aware, rows, f2, j2, x2, label, loss=loss, lr=lr, reg_linear=reg_l, reg_factors=reg_f
    )
    model.partial_fit(ds2)
    _compare(model, p2, p1, t2, rows)
    assert model.history_[-1]["train_loss"] == pytest.approx(loss2, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("field_aware", ORIENT)
def test_one_step_with_feature_in_a_single_and_an_aware_field(rng, field_aware):
    """Feature 5 in field 0 (query) and field 1 (item): one node uses v_5, the other w_5; both get
    their own gradient in one step. Feature 8 twice in field 2."""
    lr, reg_l, reg_f = 0.1, 0.05, 0.1
    w = random_hybrid_weights(rng, N, F, 4)
    model = _hybrid(w, field_aware, learning_rate=lr, reg_linear=reg_l, reg_factors=reg_f)
    ds = one_row_dataset(
        [0, 1, 2, 2, 3, 4], [5, 5, 8, 8, 11, 13], [0.8, 1.1, -0.6, 1.3, 0.9, 0.7], 1.0, n_features=N, n_fields=F
    )
    aware = aware_flags(SIDES, field_aware, F)
    p0 = hybrid_ref_params(w)
    f, j, x = ref.dataset_row(ds, 0, N, F)
    assert model.decision_function(ds)[0] == pytest.approx(ref.score(p0, aware, f, j, x), rel=1e-5, abs=1e-6)
    p1, _, _ = ref.adagrad_step(
        p0, ref.fresh_state(p0), aware, f, j, x, 1.0, loss="logistic", lr=lr, reg_linear=reg_l, reg_factors=reg_f
    )
    model.partial_fit(ds)
    _compare(model, p1, p0, ref.touched_mask(p0, aware, f, j, x), w["aware_row"])


@pytest.mark.parametrize("field_aware", ORIENT)
def test_partial_fit_gives_a_new_feature_field_aware_vectors(rng, field_aware):
    """A feature without a field-aware row (new to the model) gets one, appended, when partial_fit
    meets it in a field-aware field, and is then trained like any other: the step equals the
    reference step from the grown weights. Existing rows never move."""
    w = random_hybrid_weights(rng, N, F, 4)
    j0 = 9
    w["aware_row"][j0] = -1
    model = _hybrid(w, field_aware, learning_rate=0.1, reg_linear=0.1, reg_factors=0.1)
    aware = aware_flags(SIDES, field_aware, F)
    fa = [f for f in range(F) if aware[f]][0]
    fs = [f for f in range(F) if not aware[f]][0]
    ds = one_row_dataset([fs, fa, fa], [2, j0, 4], [1.0, 1.0, 1.0], 1.0, n_features=N, n_fields=F)
    before = model.weights()
    # a feature without a row contributes only its linear term until then
    f, j, x = ref.dataset_row(ds, 0, N, F)
    assert model.decision_function(ds)[0] == pytest.approx(
        ref.score(hybrid_ref_params(before), aware, f, j, x), rel=1e-5, abs=1e-6
    )
    grown, rows = _grow_for(model, aware, np.array([fs, fa, fa]), np.array([2, j0, 4]))
    assert rows[j0] == before["aware_row"].max() + 1
    p0 = hybrid_ref_params(grown)
    p1, _, _, t1 = _ref_step(
        p0, ref.fresh_state(p0), aware, rows, f, j, x, 1.0, loss="logistic", lr=0.1, reg_linear=0.1, reg_factors=0.1
    )
    model.partial_fit(ds)
    got = model.weights()
    np.testing.assert_array_equal(got["aware_row"], rows)
    assert not np.array_equal(got["field_factors"][rows[j0]], grown["field_factors"][rows[j0]])  # trained
    _compare(model, p1, p0, t1, rows)


# ---------------------------------------------------------------------------- row maps at fit time
@pytest.mark.parametrize("field_aware", ORIENT)
def test_rows_only_for_features_in_fields_of_their_kind(rng, field_aware):
    """Field-aware rows go to exactly the features that occur in field-aware fields of the training
    data, single rows to exactly those in single fields; a feature seen only in fields of the other
    kind, or never (n_features beyond the data), gets -1 (features 0 and 1 occur in both kinds)."""
    n_model = 45  # features 30..44 never occur
    ds = random_dataset(rng, n_rows=120, n_features=N, n_fields=F)
    # features 0 and 1 also occur in the other side's fields (two fields for one feature)
    extra = one_row_dataset([0, 1, 2, 3, 4], [1, 0, 1, 0, 3], None, 1.0, n_features=N, n_fields=F)
    ds = fmrecall.Dataset(
        np.r_[ds.indptr, ds.indptr[-1] + extra.indptr[1:]],
        np.r_[ds.fields, extra.fields],
        np.r_[ds.features, extra.features],
        np.r_[ds.values, np.ones(5, np.float32)],
        np.r_[ds.labels, extra.labels],
        n_features=N,
        n_fields=F,
    )
    m = fmrecall.HybridFM(
        k=3, sides=fmrecall.Sides(**SIDES), field_aware=field_aware, epochs=1, threads=1, n_features=n_model
    ).fit(ds)
    w = m.weights()
    rows = w["aware_row"]
    assert rows.dtype == np.int32 and rows.shape == (n_model,) and w["linear"].shape == (n_model,)
    aware = aware_flags(SIDES, field_aware, F)
    single = w["single_row"]
    want_single = np.unique(ds.features[~aware[ds.fields]])
    assert single.dtype == np.int32 and single.shape == (n_model,)
    assert w["factors"].shape == (want_single.size, 3)
    np.testing.assert_array_equal(single[want_single], np.arange(want_single.size))  # feature order
    assert np.all(np.delete(single, want_single) == -1)
    assert {0, 1} <= set(want_single.tolist()) and m._core.single_rows == want_single.size
    want = np.unique(ds.features[aware[ds.fields]])
    np.testing.assert_array_equal(np.flatnonzero(rows >= 0), want)
    assert w["field_factors"].shape == (want.size, F, 3)
    np.testing.assert_array_equal(np.sort(rows[rows >= 0]), np.arange(want.size))  # a bijection
    assert np.all(rows[rows < 0] == -1)


def test_aware_row_of_a_single_side_id_field(rng):
    """The DESIGN.md §4 use case: a high-cardinality user-id field on the single side gets no
    field-aware rows at all."""
    n_users, n_items = 200, 10
    users = rng.integers(0, n_users, 300)
    items = n_users + rng.integers(0, n_items, 300)
    ctx = n_users + n_items + rng.integers(0, 3, 300)
    ds = fmrecall.Dataset(
        np.arange(0, 901, 3),
        np.tile([0, 1, 2], 300),
        np.c_[users, items, ctx].ravel(),
        None,
        rng.integers(0, 2, 300).astype(np.float32),
    )
    m = fmrecall.HybridFM(
        k=4, sides=fmrecall.Sides(user=[0], item=[1], context=[2]), field_aware="item", epochs=1, threads=1
    ).fit(ds)
    w = m.weights()
    np.testing.assert_array_equal(np.flatnonzero(w["aware_row"] >= 0), np.unique(items))
    assert w["field_factors"].shape[0] == np.unique(items).size


# ---------------------------------------------------------------------------- weights and persistence
@pytest.mark.parametrize("field_aware", ORIENT)
def test_weights_round_trip(rng, field_aware):
    ds = random_dataset(rng, n_rows=60, n_features=N, n_fields=F)
    m = fmrecall.HybridFM(k=5, sides=fmrecall.Sides(**SIDES), field_aware=field_aware, epochs=2, threads=1).fit(ds)
    w = m.weights()
    assert isinstance(w["bias"], float)
    assert set(w) == {"bias", "linear", "factors", "single_row", "field_factors", "aware_row", "scale"}
    for name in ("linear", "factors", "field_factors"):
        assert w[name].dtype == np.float32, name
    before = m.decision_function(ds)
    for name in ("linear", "factors", "field_factors"):
        w[name][...] = 100.0
    w["aware_row"][:] = -1
    w["single_row"][:] = -1
    np.testing.assert_array_equal(m.decision_function(ds), before)  # weights() returned copies
    w = m.weights()
    m2 = _hybrid(w, field_aware)
    np.testing.assert_array_equal(m2.decision_function(ds), before)
    w2 = m2.weights()
    assert w2["bias"] == w["bias"]
    for name in ("linear", "factors", "single_row", "field_factors", "aware_row"):
        np.testing.assert_array_equal(w2[name], w[name], err_msg=name)
    # the other orientation with the same arrays is a different model
    other = _hybrid(w, "query" if field_aware == "item" else "item")
    assert not np.allclose(other.decision_function(ds), before)


@pytest.mark.parametrize("field_aware", ORIENT)
def test_save_load_round_trip_is_bit_identical(rng, tmp_path, field_aware):
    sides = fmrecall.Sides(**SIDES)
    ds = random_dataset(rng, n_rows=60, n_features=N, n_fields=F)
    m = fmrecall.HybridFM(
        k=5,
        sides=sides,
        field_aware=field_aware,
        epochs=2,
        threads=1,
        seed=3,
        learning_rate=0.07,
        loss="logistic",
        n_features=N + 4,
    ).fit(ds)
    m.save(tmp_path / "h.npz")
    loaded = fmrecall.load(tmp_path / "h.npz")
    assert type(loaded) is fmrecall.HybridFM
    assert loaded.sides == sides and isinstance(loaded.sides, fmrecall.Sides)
    assert loaded.field_aware == field_aware
    for name in ("k", "loss", "learning_rate", "reg_linear", "reg_factors", "seed", "epochs", "normalize"):
        assert loaded.get_params()[name] == m.get_params()[name], name
    a, b = m.weights(), loaded.weights()
    assert a["bias"] == b["bias"]
    for name in ("linear", "factors", "single_row", "field_factors", "aware_row"):
        assert b[name].dtype == a[name].dtype, name
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    np.testing.assert_array_equal(loaded.decision_function(ds), m.decision_function(ds))
    # its split is the same, bit for bit
    q_rows = rows_dataset(
        [(np.array([3, 0]), np.array([3, 10]), np.array([1.0, 0.5], np.float32))], n_features=N, n_fields=F
    )
    i_rows = rows_dataset(
        [(np.array([4, 1, 2]), np.array([4, 6, 7]), np.array([1.0, 1.0, 2.0], np.float32))], n_features=N, n_fields=F
    )
    for x, y in zip(m.split().query_vectors(q_rows), loaded.split().query_vectors(q_rows)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(m.split().item_vectors(i_rows), loaded.split().item_vectors(i_rows))


def test_from_weights_validation(rng):
    w = random_hybrid_weights(rng, 10, 3, 4)
    sides = fmrecall.Sides(user=[0], item=[1, 2])
    m = fmrecall.HybridFM.from_weights(w, sides=sides)
    assert m.k == 4 and m.n_features_ == 10 and m.n_fields_ == 3 and m.field_aware == "item"
    with pytest.raises(ValueError, match="sides"):
        fmrecall.HybridFM.from_weights(w)
    with pytest.raises(ValueError, match="field_aware"):
        fmrecall.HybridFM.from_weights(w, sides=sides, field_aware="both")
    with pytest.raises(ValueError):
        fmrecall.HybridFM.from_weights(w, sides=fmrecall.Sides(user=[0], item=[1]))  # field 2 unassigned
    with pytest.raises(ValueError):
        fmrecall.HybridFM.from_weights({**w, "aware_row": w["aware_row"][:9]}, sides=sides)
    bad = w["aware_row"].copy()
    bad[3] = w["field_factors"].shape[0]
    with pytest.raises(ValueError):
        fmrecall.HybridFM.from_weights({**w, "aware_row": bad}, sides=sides)
    bad[3] = -2
    with pytest.raises(ValueError):
        fmrecall.HybridFM.from_weights({**w, "aware_row": bad}, sides=sides)
    with pytest.raises(ValueError, match="integers"):  # 1.7 would truncate to row 1
        fmrecall.HybridFM.from_weights({**w, "aware_row": w["aware_row"] + 0.7}, sides=sides)
    wrapped = w["aware_row"].astype(np.int64)
    wrapped[3] = 2**32  # would wrap to row 0 as int32
    with pytest.raises(ValueError, match="aware_row entries"):
        fmrecall.HybridFM.from_weights({**w, "aware_row": wrapped}, sides=sides)
    old_key = {("field_rows" if k == "aware_row" else k): v for k, v in w.items()}  # the name before 0.2
    np.testing.assert_array_equal(
        fmrecall.HybridFM.from_weights(old_key, sides=sides).weights()["aware_row"], w["aware_row"]
    )
    with pytest.raises(ValueError):
        fmrecall.HybridFM.from_weights({k: v for k, v in w.items() if k != "field_factors"}, sides=sides)
    with pytest.raises(ValueError):
        fmrecall.HybridFM.from_weights({**w, "factors": w["factors"][:, :3]}, sides=sides)  # k mismatch
    nan = w["field_factors"].copy()
    nan[0, 1, 2] = np.nan
    with pytest.raises(ValueError):
        fmrecall.HybridFM.from_weights({**w, "field_factors": nan}, sides=sides)


# ---------------------------------------------------------------------------- parameters
def test_get_params():
    p = fmrecall.HybridFM().get_params()
    assert p["field_aware"] == "item" and p["sides"] is None
    assert {n: p[n] for n in ("k", "loss", "epochs", "learning_rate", "normalize", "patience", "threads", "seed")} == {
        "k": 4,
        "loss": "logistic",
        "epochs": 30,
        "learning_rate": "auto",
        "normalize": "mean",
        "patience": 3,
        "threads": 0,
        "seed": 0,
    }
    sides = fmrecall.Sides(**SIDES)
    m = fmrecall.HybridFM(k=3, field_aware="query", sides=sides, epochs=2)
    clone = fmrecall.HybridFM(**m.get_params())
    assert clone.get_params() == m.get_params()
    assert m.set_params(field_aware="item") is m and m.field_aware == "item"


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(field_aware="both"), "field_aware"),
        (dict(field_aware=None), "field_aware"),
        (dict(sides=None), "sides"),
        (dict(sides={"user": [3], "context": [0], "item": [4, 1, 2]}), "sides"),
        (dict(k=0), "k"),
    ],
    ids=["field_aware-both", "field_aware-None", "no-sides", "sides-dict", "k0"],
)
def test_invalid_params_raise(rng, bad, match):
    ds = random_dataset(rng, n_rows=10, n_features=N, n_fields=F)
    hyper = dict(sides=fmrecall.Sides(**SIDES), field_aware="item", epochs=1)
    hyper.update(bad)
    with pytest.raises(ValueError, match=match):
        fmrecall.HybridFM(**hyper).fit(ds)
    with pytest.raises(ValueError, match=match):
        fmrecall.HybridFM(**hyper).partial_fit(ds)


def test_sides_must_fit_the_data(rng):
    ds = random_dataset(rng, n_rows=20, n_features=N, n_fields=F)
    with pytest.raises(ValueError, match=r"\b2\b"):  # field 2 unassigned
        fmrecall.HybridFM(sides=fmrecall.Sides(user=[3], context=[0], item=[4, 1]), epochs=1).fit(ds)
    with pytest.raises(ValueError, match=r"\b6\b"):  # field 6: neither in the data nor in n_fields
        fmrecall.HybridFM(sides=fmrecall.Sides(user=[3], context=[0, 5, 6], item=[4, 1, 2]), epochs=1).fit(ds)
    # with n_fields covering the extra fields the model is fine, and splits with its own sides
    m = fmrecall.HybridFM(
        k=2, sides=fmrecall.Sides(user=[3], context=[0, 5, 6], item=[4, 1, 2]), epochs=1, n_fields=7, threads=1
    ).fit(ds)
    assert m.n_fields_ == 7 and m.split().dim == 4 * 2 + 1


# ---------------------------------------------------------------------------- training behaviour
@pytest.mark.parametrize("field_aware", ORIENT)
def test_deterministic_with_one_thread(rng, field_aware):
    ds = random_dataset(rng, n_rows=80, n_features=N, n_fields=F)

    def fit(seed):
        return (
            fmrecall.HybridFM(
                k=5, sides=fmrecall.Sides(**SIDES), field_aware=field_aware, epochs=3, threads=1, seed=seed
            )
            .fit(ds)
            .weights()
        )

    a, b, c = fit(11), fit(11), fit(12)
    assert a["bias"] == b["bias"]
    for name in ("linear", "factors", "field_factors", "aware_row"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not np.array_equal(a["factors"], c["factors"])
    assert not np.array_equal(a["field_factors"], c["field_factors"])


@pytest.mark.parametrize("field_aware", ORIENT)
def test_learns_and_early_stops(rng, field_aware):
    """Labels from a random hybrid teacher: training lowers the loss; early stopping on a validation
    set restores the best epoch."""
    sides = fmrecall.Sides(**SIDES)
    teacher = _hybrid(random_hybrid_weights(rng, N, F, 3, scale=0.8), field_aware)
    train = random_dataset(rng, n_rows=600, n_features=N, n_fields=F)
    valid = random_dataset(rng, n_rows=300, n_features=N, n_fields=F)
    for ds in (train, valid):
        ds.labels[:] = teacher.decision_function(ds) > np.median(teacher.decision_function(ds))
    m = fmrecall.HybridFM(k=3, sides=sides, field_aware=field_aware, epochs=15, threads=1)
    m.fit(train, valid=valid)
    losses = [h["valid_loss"] for h in m.history_]
    assert m.best_epoch_ == int(np.argmin(losses)) + 1
    s = m.decision_function(valid)
    assert logloss_from_scores(valid.labels, s) == pytest.approx(min(losses), rel=1e-6, abs=1e-7)
    assert m.history_[-1]["train_loss"] < m.history_[0]["train_loss"]
    assert auc(valid.labels, s) > 0.75


# ---------------------------------------------------------------------------- frappe comparison
FRAPPE_MODELS = [
    # name, constructor: the defaults (issue 8), k=8, one thread
    ("FM", lambda: fmrecall.FM(k=8, threads=1)),
    (
        "HybridFM(item)",
        lambda: fmrecall.HybridFM(k=8, field_aware="item", sides=fmrecall.Sides(**FRAPPE_SIDES), threads=1),
    ),
    (
        "HybridFM(query)",
        lambda: fmrecall.HybridFM(k=8, field_aware="query", sides=fmrecall.Sides(**FRAPPE_SIDES), threads=1),
    ),
    ("FFM", lambda: fmrecall.FFM(k=8, threads=1)),
]


def test_frappe_model_comparison(frappe_data):
    """Seeded 80/20 split, early stopping on the 20%, one thread (reproducible). Prints holdout AUC,
    log loss and split dimension per model (user=0, item=1, context=2..9)."""
    train, holdout = frappe_data
    sides = fmrecall.Sides(**FRAPPE_SIDES)
    lines, results = [], {}
    for name, make in FRAPPE_MODELS:
        t0 = time.perf_counter()
        model = make().fit(train, valid=holdout)
        secs = time.perf_counter() - t0
        s = model.decision_function(holdout)
        score, ll = auc(holdout.labels, s), logloss_from_scores(holdout.labels, s)
        split = model.split() if isinstance(model, fmrecall.HybridFM) else model.split(sides)
        results[name] = score
        lines.append(
            f"{name:<16} {score:8.4f} {ll:9.4f} {split.dim:5d} "
            f"{model.best_epoch_:5d}/{len(model.history_):<3d} {secs:6.1f}s"
        )
    print("\nfrappe holdout (seeded 80/20 split)\nmodel                 AUC   logloss   dim  best/epochs  time")
    print("\n".join(lines))
    for name, score in results.items():
        assert score > 0.90, (name, score)
    assert results["FFM"] >= 0.95, results["FFM"]
