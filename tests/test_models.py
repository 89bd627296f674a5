"""FM / FFM estimators against the numpy reference (tests/reference.py): scores, one AdaGrad
step, gradients by finite differences, ignored nodes, parameters, determinism, kernel variants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import reference as ref
from helpers import (
    AVAILABLE_ARCHS,
    MODEL_CLASSES,
    model_from_weights,
    one_row_dataset,
    random_dataset,
    random_weights,
    run_isolated,
)

import fmrecall
from fmrecall.metrics import auc, logloss_from_scores, mse

KINDS = ["fm", "ffm"]
N_FEATURES, N_FIELDS = 30, 5


def _aware(kind, n_fields):
    return ref.fm_aware(n_fields) if kind == "fm" else ref.ffm_aware(n_fields)


def _ref_params(kind, model):
    return ref.params_from_model_weights(kind, model.weights())


def _assert_scores_match(kind, params, ds, got, normalize, n_features, n_fields):
    aware = _aware(kind, n_fields)
    for r in range(ds.n_rows):
        f, j, x = ref.dataset_row(ds, r, n_features, n_fields, normalize)
        want = ref.score(params, aware, f, j, x)
        scale = ref.score_terms_abs(params, aware, f, j, x)
        # 1e-5 relative, with an absolute floor at float32 rounding of the summed terms (a score
        # that cancels to ~0 cannot be relatively accurate in float32)
        assert abs(float(got[r]) - want) <= 1e-5 * abs(want) + 1e-6 * scale, (r, float(got[r]), want)


# ---------------------------------------------------------------------------- scores
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 4, 5, 8, 12, 16, 33])
@pytest.mark.parametrize("normalize", [False, True])
def test_scores_match_reference(rng, arch, kind, k, normalize):
    """k=1,5 (padded lanes), 4/8/16 (compile-time widths), 12/33 (run-time width)."""
    w = random_weights(rng, kind, N_FEATURES, N_FIELDS, k)
    model = model_from_weights(kind, w, N_FIELDS, normalize=normalize, threads=1)
    ds = random_dataset(rng, n_rows=40, n_features=N_FEATURES, n_fields=N_FIELDS)
    got = model.decision_function(ds)
    assert got.dtype == np.float32 and got.shape == (40,)
    _assert_scores_match(kind, ref.params_from_model_weights(kind, w), ds, got, normalize, N_FEATURES, N_FIELDS)
    # multi-threaded prediction is the same row by row
    np.testing.assert_array_equal(model.set_params(threads=2).decision_function(ds), got)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_is_labels_proba_is_sigmoid_squared_is_raw(rng, kind):
    w = random_weights(rng, kind, N_FEATURES, N_FIELDS, 4, scale=0.8)
    ds = random_dataset(rng, n_rows=30, n_features=N_FEATURES, n_fields=N_FIELDS)
    logistic = model_from_weights(kind, w, N_FIELDS, loss="logistic")
    scores = logistic.decision_function(ds)
    p = logistic.predict_proba(ds)
    assert p.shape == (30, 2)
    np.testing.assert_allclose(p[:, 1], ref.sigmoid(scores), rtol=1e-6)
    np.testing.assert_allclose(p[:, 0], 1 - ref.sigmoid(scores), rtol=1e-6, atol=1e-12)
    assert np.all((p > 0) & (p < 1))
    labels = logistic.predict(ds)
    assert 0 < labels.sum() < 30  # both classes occur in this draw
    np.testing.assert_array_equal(labels, np.where(scores > 0, 1, 0))
    squared = model_from_weights(kind, w, N_FIELDS, loss="squared")
    np.testing.assert_allclose(squared.predict(ds), scores, rtol=1e-7)
    assert not hasattr(squared, "predict_proba")


@pytest.mark.parametrize("kind", KINDS)
def test_values_none_equals_ones(rng, kind):
    w = random_weights(rng, kind, N_FEATURES, N_FIELDS, 5)
    model = model_from_weights(kind, w, N_FIELDS)
    ds = random_dataset(rng, n_rows=30, n_features=N_FEATURES, n_fields=N_FIELDS, real_values=False)
    assert ds.values is None
    ones = fmrecall.Dataset(ds.indptr, ds.fields, ds.features, np.ones(ds.nnz, np.float32), ds.labels)
    np.testing.assert_array_equal(model.decision_function(ds), model.decision_function(ones))
    _assert_scores_match(
        kind, ref.params_from_model_weights(kind, w), ds, model.decision_function(ds), False, N_FEATURES, N_FIELDS
    )


def test_fm_score_does_not_depend_on_fields(rng):
    w = random_weights(rng, "fm", N_FEATURES, N_FIELDS, 6)
    model = model_from_weights("fm", w, N_FIELDS)
    ds = random_dataset(rng, n_rows=30, n_features=N_FEATURES, n_fields=N_FIELDS)
    shuffled = fmrecall.Dataset(
        ds.indptr, rng.integers(0, N_FIELDS, ds.nnz).astype(np.int32), ds.features, ds.values, ds.labels
    )
    np.testing.assert_allclose(model.decision_function(shuffled), model.decision_function(ds), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("normalize", [False, True])
def test_unseen_indices_and_zero_values_are_ignored(rng, kind, normalize):
    w = random_weights(rng, kind, N_FEATURES, N_FIELDS, 5)
    model = model_from_weights(kind, w, N_FIELDS, normalize=normalize)
    base = random_dataset(rng, n_rows=20, n_features=N_FEATURES, n_fields=N_FIELDS)
    # the same rows with three extra nodes each: an unseen feature, an unseen field, a zero value
    indptr, fields, features, values = [0], [], [], []
    for r in range(base.n_rows):
        s, e = base.indptr[r], base.indptr[r + 1]
        fields += base.fields[s:e].tolist() + [1, N_FIELDS + 2, 0]
        features += base.features[s:e].tolist() + [N_FEATURES + 7, 3, 4]
        values += base.values[s:e].tolist() + [2.0, 1.5, 0.0]
        perm = rng.permutation(e - s + 3)  # mix them into the row
        for lst in (fields, features, values):
            lst[-(e - s + 3) :] = [lst[-(e - s + 3) :][i] for i in perm]
        indptr.append(len(features))
    extra = fmrecall.Dataset(
        np.array(indptr), np.array(fields), np.array(features), np.array(values, np.float32), base.labels
    )
    assert extra.n_features > N_FEATURES and extra.n_fields > N_FIELDS
    want = model.decision_function(base)
    np.testing.assert_allclose(model.decision_function(extra), want, rtol=1e-6, atol=1e-6)


_ISOLATED_MODEL = """
import json, numpy as np, fmrecall
cfg = json.loads({cfg!r})
cls = fmrecall.FM if cfg["kind"] == "fm" else fmrecall.FFM
w = {{"bias": cfg["bias"], "linear": np.array(cfg["linear"], np.float32),
     "factors": np.array(cfg["factors"], np.float32)}}
hyper = dict(normalize=True, threads=cfg["threads"], learning_rate=0.1, reg_linear=0.1, reg_factors=0.1)
if cfg["kind"] == "fm":
    hyper["n_fields"] = cfg["n_fields"]
m = cls.from_weights(w, **hyper)
ds = fmrecall.Dataset(np.array(cfg["indptr"]), np.array(cfg["fields"], np.int32),
                      np.array(cfg["features"], np.int32), None, np.ones(len(cfg["indptr"]) - 1, np.float32),
                      n_features=cfg["ds_features"], n_fields=cfg["ds_fields"])
if cfg["train"]:
    m.partial_fit(ds)
    out = m.weights()
    print(json.dumps({{"bias": out["bias"], "linear": out["linear"].tolist(), "factors": out["factors"].tolist()}}))
else:
    print(json.dumps(m.decision_function(ds).tolist()))
"""


def _isolated(kind, w, n_fields, indptr, fields, features, *, train=False, threads=1, ds_features=None, ds_fields=None):
    cfg = dict(
        kind=kind,
        bias=w["bias"],
        linear=w["linear"].tolist(),
        factors=w["factors"].tolist(),
        n_fields=n_fields,
        indptr=indptr,
        fields=fields,
        features=features,
        train=train,
        threads=threads,
        ds_features=ds_features,
        ds_fields=ds_fields,
    )
    return run_isolated(_ISOLATED_MODEL.format(cfg=json.dumps(cfg)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("threads", [1, 2])
def test_rows_without_nodes_score_bias(rng, kind, threads):
    """Rows with no nodes at all, or only nodes the model ignores (unseen feature / field), score
    exactly the bias, also when such a row is the first one a thread sees (run in a subprocess:
    a crash must fail this test, not the whole run)."""
    n, F = 8, 3
    w = random_weights(rng, kind, n, F, 4)
    # rows: empty, empty, all-unseen (feature 20, field 5), normal, empty
    indptr = [0, 0, 0, 2, 4, 4]
    fields = [0, 5, 0, 2]
    features = [20, 3, 1, 6]
    got = _isolated(kind, w, F, indptr, fields, features, threads=threads, ds_features=21, ds_fields=6)
    assert got[0] == got[1] == got[2] == got[4] == pytest.approx(w["bias"], rel=1e-7)
    p = ref.params_from_model_weights(kind, w)
    f, j, x = ref.row_nodes([0, 2], [1, 6], None, n, F, normalize=True)
    assert got[3] == pytest.approx(ref.score(p, _aware(kind, F), f, j, x), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_single_all_unseen_row(rng, kind):
    n, F = 8, 3
    w = random_weights(rng, kind, n, F, 4)
    got = _isolated(kind, w, F, [0, 2], [0, 1], [9, 10], ds_features=11, ds_fields=3)
    assert got == [pytest.approx(w["bias"], rel=1e-7)]


@pytest.mark.parametrize("kind", KINDS)
def test_training_on_a_row_without_nodes_moves_only_the_bias(rng, kind):
    n, F = 8, 3
    w = random_weights(rng, kind, n, F, 4)
    got = _isolated(kind, w, F, [0, 0], [], [], train=True, ds_features=n, ds_fields=F)
    g = ref.loss_grad(w["bias"], 1.0, "logistic")
    assert got["bias"] == pytest.approx(w["bias"] - 0.1 * g / np.sqrt(1 + g * g), rel=1e-5)
    np.testing.assert_array_equal(np.array(got["linear"], np.float32), w["linear"])
    np.testing.assert_array_equal(np.array(got["factors"], np.float32), w["factors"])


# ---------------------------------------------------------------------------- one AdaGrad step
def _step_row(rng, n_features, n_fields, n_nodes=8):
    """One row with a multi-valued field, out-of-order fields, real values of both signs and a
    single-node field; features distinct."""
    feats = rng.choice(n_features, size=n_nodes, replace=False)
    fields = np.array([2, 0, 2, 1, 3, 0, 2, 1][:n_nodes])  # field 2 has three values, field 3 one
    values = rng.uniform(0.3, 1.4, size=n_nodes) * np.where(rng.random(n_nodes) < 0.25, -1, 1)
    return fields, feats, values.astype(np.float32)


def _compare_weights(kind, model, want, old, touched, *, rtol=1e-5, atol=1e-6):
    got = _ref_params(kind, model)
    assert got["bias"] == pytest.approx(want["bias"], rel=rtol, abs=atol)
    name = "v" if kind == "fm" else "W"
    for key in ("linear", name):
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=key)
        # the step itself, not just the weights, agrees
        np.testing.assert_allclose(got[key] - old[key], want[key] - old[key], rtol=1e-4, atol=atol, err_msg=key)
        # untouched parameters are bit-for-bit unchanged (no L2 step either)
        untouched = ~touched[key]
        np.testing.assert_array_equal(got[key][untouched], old[key][untouched], err_msg=key)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loss, label", [("logistic", 1.0), ("logistic", -1.0), ("logistic", 0.0), ("squared", 0.7)])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("k", [1, 5, 8, 12])
def test_one_adagrad_step_matches_reference(rng, arch, kind, loss, label, normalize, k):
    n, F = 16, 4
    lr, reg_l, reg_f = 0.1, 0.05, 0.1  # large L2 so its part of the gradient is visible
    w = random_weights(rng, kind, n, F, k)
    model = model_from_weights(
        kind, w, F, loss=loss, learning_rate=lr, reg_linear=reg_l, reg_factors=reg_f, normalize=normalize, threads=1
    )
    aware = _aware(kind, F)
    p0 = ref.params_from_model_weights(kind, w)
    st0 = ref.fresh_state(p0)

    # step 1
    fields, feats, values = _step_row(rng, n, F)
    ds = one_row_dataset(fields, feats, values, label, n_features=n, n_fields=F)
    f, j, x = ref.dataset_row(ds, 0, n, F, normalize)
    p1, st1, loss1 = ref.adagrad_step(
        p0, st0, aware, f, j, x, label, loss=loss, lr=lr, reg_linear=reg_l, reg_factors=reg_f
    )
    model.partial_fit(ds)
    _compare_weights(kind, model, p1, p0, ref.touched_mask(p0, aware, f, j, x))
    assert model.history_[-1]["train_loss"] == pytest.approx(loss1, rel=1e-5, abs=1e-6)

    # step 2 on another row sharing some features: the AdaGrad state carries over
    p1 = _ref_params(kind, model)  # continue from the library's float32 weights
    fields2, _, values2 = _step_row(rng, n, F, n_nodes=6)
    others = rng.permutation(np.setdiff1d(np.arange(n), feats[:3]))[:3]
    feats2 = np.concatenate([feats[:3], others])  # still distinct within the row
    ds2 = one_row_dataset(fields2, feats2, values2, label, n_features=n, n_fields=F)
    f2, j2, x2 = ref.dataset_row(ds2, 0, n, F, normalize)
    p2, _, loss2 = ref.adagrad_step(
        p1, st1, aware, f2, j2, x2, label, loss=loss, lr=lr, reg_linear=reg_l, reg_factors=reg_f
    )
    model.partial_fit(ds2)
    _compare_weights(kind, model, p2, p1, ref.touched_mask(p1, aware, f2, j2, x2))
    assert model.history_[-1]["train_loss"] == pytest.approx(loss2, rel=1e-5, abs=1e-6)
    assert [h["epoch"] for h in model.history_] == [1, 2]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["same-field", "two-fields"])
def test_one_step_with_repeated_feature(rng, kind, case):
    """A feature twice in one row (a hash collision inside a multi-valued field, or one feature
    used by two fields) is one parameter: it gets one AdaGrad step with the summed gradient,
    computed from the weights before the row (DESIGN: exact gradient step)."""
    n, F, k = 12, 3, 4
    lr, reg_l, reg_f = 0.1, 0.05, 0.1
    w = random_weights(rng, kind, n, F, k)
    model = model_from_weights(
        kind, w, F, loss="logistic", learning_rate=lr, reg_linear=reg_l, reg_factors=reg_f, threads=1
    )
    if case == "same-field":
        fields, feats = [1, 0, 1, 2], [5, 2, 5, 7]
    else:
        fields, feats = [0, 1, 2, 2], [5, 5, 7, 8]
    values = np.array([0.8, 1.1, -0.6, 1.3], np.float32)
    ds = one_row_dataset(fields, feats, values, 1.0, n_features=n, n_fields=F)
    aware = _aware(kind, F)
    p0 = ref.params_from_model_weights(kind, w)
    f, j, x = ref.dataset_row(ds, 0, n, F)
    # the score itself is right
    assert model.decision_function(ds)[0] == pytest.approx(ref.score(p0, aware, f, j, x), rel=1e-5, abs=1e-6)
    p1, _, _ = ref.adagrad_step(
        p0, ref.fresh_state(p0), aware, f, j, x, 1.0, loss="logistic", lr=lr, reg_linear=reg_l, reg_factors=reg_f
    )
    model.partial_fit(ds)
    _compare_weights(kind, model, p1, p0, ref.touched_mask(p0, aware, f, j, x))


@pytest.mark.parametrize("kind", KINDS)
def test_zero_value_and_unseen_nodes_get_no_update(rng, kind):
    """Ignored nodes are not touched: no gradient and no L2 step for their weights."""
    n, F, k = 12, 3, 4
    w = random_weights(rng, kind, n, F, k)
    model = model_from_weights(kind, w, F, learning_rate=0.1, reg_linear=0.1, reg_factors=0.1, threads=1)
    # feature 9 has value 0; the rest are ordinary
    ds = one_row_dataset([0, 1, 2, 1], [1, 4, 6, 9], [0.5, 1.0, 1.5, 0.0], 1.0, n_features=n, n_fields=F)
    model.partial_fit(ds)
    got = model.weights()
    assert got["linear"][9] == w["linear"][9]
    np.testing.assert_array_equal(got["factors"][9], w["factors"][9])
    # the other features did move
    assert np.all(got["linear"][[1, 4, 6]] != w["linear"][[1, 4, 6]])


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loss", ["logistic", "squared"])
@pytest.mark.parametrize("normalize", [False, True])
def test_gradient_matches_finite_differences(rng, kind, loss, normalize):
    """With reg = 0 and fresh accumulators (G = 1) one step moves every parameter by
    Δ = -lr g / sqrt(1 + g²); recover g from Δ and compare it with central differences of the
    float64 reference objective (logistic loss, or ½(t - y)² for squared)."""
    n, F, k = 10, 4, 3
    lr = 1e-2  # Δ/lr = -g/sqrt(1+g²) does not depend on lr; lr only sets how many float32 bits Δ keeps
    w = random_weights(rng, kind, n, F, k, scale=0.25)
    model = model_from_weights(
        kind, w, F, loss=loss, learning_rate=lr, reg_linear=0.0, reg_factors=0.0, normalize=normalize, threads=1
    )
    fields, feats, values = _step_row(rng, n, F, n_nodes=7)
    label = 1.0 if loss == "logistic" else 0.4
    ds = one_row_dataset(fields, feats, values, label, n_features=n, n_fields=F)
    aware = _aware(kind, F)
    p0 = ref.params_from_model_weights(kind, w)
    f, j, x = ref.dataset_row(ds, 0, n, F, normalize)
    fd = ref.finite_difference_grad(p0, aware, f, j, x, label, loss)
    model.partial_fit(ds)
    p1 = _ref_params(kind, model)

    assert ref.adagrad_gradient(p1["bias"] - p0["bias"], lr) == pytest.approx(fd["bias"], rel=1e-3, abs=2e-4)
    name = "v" if kind == "fm" else "W"
    for key in ("linear", name):
        np.testing.assert_allclose(
            ref.adagrad_gradient(p1[key] - p0[key], lr), fd[key], rtol=1e-3, atol=2e-4, err_msg=key
        )
    # the row really exercised the interaction gradients
    assert np.count_nonzero(np.abs(fd[name]) > 1e-3) >= 10


# ---------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("cls", [fmrecall.FM, fmrecall.FFM], ids=["FM", "FFM"])
def test_get_params_defaults(cls):
    assert cls().get_params() == {
        "k": 4,
        "loss": "logistic",
        "epochs": 30,
        "learning_rate": "auto",
        "reg_linear": 2e-5,
        "reg_factors": "auto",
        "init_std": 0.05,
        "normalize": "mean",
        "patience": 3,
        "average": 0.9,
        "threads": 0,
        "seed": 0,
        "n_features": None,
        "n_fields": None,
        "verbose": False,
    }


@pytest.mark.parametrize("cls", [fmrecall.FM, fmrecall.FFM], ids=["FM", "FFM"])
def test_set_params_and_clone(rng, cls):
    m = cls(k=3, epochs=2, threads=1)
    assert m.set_params(k=6, seed=7, loss="squared") is m
    params = m.get_params()
    assert (params["k"], params["seed"], params["loss"], params["epochs"]) == (6, 7, "squared", 2)
    clone = cls(**params)
    assert clone.get_params() == params
    assert cls.__name__ + "(" in repr(m) and "k=6" in repr(m)
    with pytest.raises(ValueError, match="no_such"):
        m.set_params(no_such=1)
    # the new k is used by the next fit
    ds = random_dataset(rng, n_rows=20, n_features=N_FEATURES, n_fields=N_FIELDS, loss="squared")
    assert m.fit(ds).weights()["factors"].shape[-1] == 6


BAD_PARAMS = [
    dict(k=0),
    dict(k=513),
    dict(k=2.5),
    dict(k="4"),
    dict(loss="hinge"),
    dict(epochs=0),
    dict(epochs=1.5),
    dict(learning_rate=0.0),
    dict(learning_rate=-0.1),
    dict(learning_rate=float("nan")),
    dict(learning_rate=float("inf")),
    dict(reg_linear=-1e-3),
    dict(reg_factors=float("nan")),
    dict(reg_factors=-1e-3),
    dict(reg_factors="2e-3"),
    dict(init_std=-0.1),
    dict(patience=0),
    dict(patience=1.5),
    dict(threads=-1),
]


@pytest.mark.parametrize("cls", [fmrecall.FM, fmrecall.FFM], ids=["FM", "FFM"])
@pytest.mark.parametrize("bad", BAD_PARAMS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_invalid_params_raise(rng, cls, bad):
    ds = random_dataset(rng, n_rows=10, n_features=N_FEATURES, n_fields=N_FIELDS)
    with pytest.raises(ValueError, match=list(bad)[0]):
        cls(**bad).fit(ds)
    with pytest.raises(ValueError, match=list(bad)[0]):
        cls(**bad).partial_fit(ds)


@pytest.mark.parametrize("cls", [fmrecall.FM, fmrecall.FFM], ids=["FM", "FFM"])
@pytest.mark.parametrize(
    "labels", [[0, 1, 0.5], [0, 2, 1], [-1, 1, 3], [0, 1, -1]], ids=["half", "two", "three", "mixed-conventions"]
)
def test_logistic_rejects_other_labels(rng, cls, labels):
    ds = random_dataset(rng, n_rows=3, n_features=N_FEATURES, n_fields=N_FIELDS)
    ds.labels[:] = labels
    with pytest.raises(ValueError, match="label"):
        cls(epochs=1).fit(ds)
    good = random_dataset(rng, n_rows=3, n_features=N_FEATURES, n_fields=N_FIELDS)
    with pytest.raises(ValueError, match="label"):
        cls(epochs=1).fit(good, valid=ds)  # bad validation labels too
    # the squared loss takes any real label
    cls(epochs=1, loss="squared").fit(ds)


@pytest.mark.parametrize("cls", [fmrecall.FM, fmrecall.FFM], ids=["FM", "FFM"])
def test_logistic_minus_one_labels_equal_zero_labels(rng, cls):
    ds = random_dataset(rng, n_rows=40, n_features=N_FEATURES, n_fields=N_FIELDS)
    pm = fmrecall.Dataset(ds.indptr, ds.fields, ds.features, ds.values, 2 * ds.labels - 1)
    a = cls(k=4, epochs=2, threads=1, seed=1).fit(ds)
    b = cls(k=4, epochs=2, threads=1, seed=1).fit(pm)
    np.testing.assert_array_equal(a.weights()["factors"], b.weights()["factors"])


@pytest.mark.parametrize("cls", [fmrecall.FM, fmrecall.FFM], ids=["FM", "FFM"])
def test_not_fitted(rng, cls):
    ds = random_dataset(rng, n_rows=5, n_features=N_FEATURES, n_fields=N_FIELDS)
    m = cls()
    for call in (lambda: m.predict(ds), lambda: m.decision_function(ds), m.weights):
        with pytest.raises(fmrecall.NotFittedError):
            call()
    with pytest.raises(ValueError):
        cls().fit(fmrecall.Dataset(ds.indptr, ds.fields, ds.features, ds.values))  # no labels


# ---------------------------------------------------------------------------- weights
@pytest.mark.parametrize("kind", KINDS)
def test_weights_shapes_copies_and_from_weights(rng, kind):
    cls = MODEL_CLASSES[kind]
    ds = random_dataset(rng, n_rows=50, n_features=N_FEATURES, n_fields=N_FIELDS)
    m = cls(k=5, epochs=2, threads=1, normalize=True).fit(ds)
    w = m.weights()
    assert isinstance(w["bias"], float)
    assert w["linear"].shape == (N_FEATURES,) and w["linear"].dtype == np.float32
    want = (N_FEATURES, 5) if kind == "fm" else (N_FEATURES, N_FIELDS, 5)
    assert w["factors"].shape == want and w["factors"].dtype == np.float32
    before = m.decision_function(ds)
    w["linear"][:] = 100.0
    w["factors"][:] = 100.0
    np.testing.assert_array_equal(m.decision_function(ds), before)  # weights() returned copies
    w = m.weights()
    m2 = model_from_weights(kind, w, N_FIELDS, normalize=True)
    np.testing.assert_array_equal(m2.decision_function(ds), before)
    np.testing.assert_array_equal(m2.weights()["factors"], w["factors"])
    assert m2.weights()["bias"] == w["bias"]


def test_from_weights_validation(rng):
    w = random_weights(rng, "fm", 10, 3, 4)
    with pytest.raises(ValueError, match="n_fields"):
        fmrecall.FM.from_weights(w)
    with pytest.raises(ValueError):
        fmrecall.FM.from_weights(w, n_fields=3, k=5)
    with pytest.raises(ValueError):
        fmrecall.FM.from_weights({**w, "factors": w["factors"][:9]}, n_fields=3)
    with pytest.raises(ValueError):
        fmrecall.FM.from_weights({**w, "factors": w["factors"][:, None, :]}, n_fields=3)
    bad = w["factors"].copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError):
        fmrecall.FM.from_weights({**w, "factors": bad}, n_fields=3)
    with pytest.raises(ValueError):
        fmrecall.FM.from_weights({"linear": w["linear"], "factors": w["factors"]}, n_fields=3)
    wf = random_weights(rng, "ffm", 10, 3, 4)
    with pytest.raises(ValueError):
        fmrecall.FFM.from_weights({**wf, "factors": wf["factors"][:, 0, :]})
    m = fmrecall.FM.from_weights(w, n_fields=3)
    assert m.k == 4 and m.n_features_ == 10 and m.n_fields_ == 3
    assert fmrecall.FFM.from_weights(wf).n_fields_ == 3


# ---------------------------------------------------------------------------- training behaviour
@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_with_one_thread(rng, kind):
    cls = MODEL_CLASSES[kind]
    ds = random_dataset(rng, n_rows=80, n_features=N_FEATURES, n_fields=N_FIELDS)
    a = cls(k=5, epochs=3, threads=1, seed=11).fit(ds).weights()
    b = cls(k=5, epochs=3, threads=1, seed=11).fit(ds).weights()
    c = cls(k=5, epochs=3, threads=1, seed=12).fit(ds).weights()
    assert a["bias"] == b["bias"]
    np.testing.assert_array_equal(a["linear"], b["linear"])
    np.testing.assert_array_equal(a["factors"], b["factors"])
    assert not np.array_equal(a["factors"], c["factors"])


@pytest.mark.parametrize("kind", KINDS)
def test_partial_fit_continues_training(rng, kind):
    """On a one-row data set the row order cannot matter, so fit(epochs=3) must equal
    fit(epochs=1) followed by two partial_fit calls (weights and AdaGrad state carried on),
    and partial_fit on an unfitted model must equal fit(epochs=1)."""
    cls = MODEL_CLASSES[kind]
    ds = one_row_dataset([0, 2, 1, 2], [3, 8, 5, 9], [0.5, 1.0, -1.5, 0.7], 1.0, n_features=12, n_fields=3)
    hyper = dict(k=5, threads=1, seed=4, learning_rate=0.3, reg_linear=0.01, reg_factors=0.01, average=0)
    three = cls(epochs=3, **hyper).fit(ds).weights()
    stepped = cls(epochs=1, **hyper).fit(ds)
    stepped.partial_fit(ds).partial_fit(ds)
    np.testing.assert_array_equal(stepped.weights()["factors"], three["factors"])
    np.testing.assert_array_equal(stepped.weights()["linear"], three["linear"])
    assert stepped.weights()["bias"] == three["bias"]
    assert [h["epoch"] for h in stepped.history_] == [1, 2, 3]
    fresh = cls(epochs=7, **hyper).partial_fit(ds)
    one = cls(epochs=1, **hyper).fit(ds)
    np.testing.assert_array_equal(fresh.weights()["factors"], one.weights()["factors"])
    assert len(fresh.history_) == 1


@pytest.mark.skipif(len(AVAILABLE_ARCHS) < 2, reason="only the generic kernel runs on this CPU")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [5, 8])
def test_arch_variants_train_alike(rng, monkeypatch, kind, k):
    cls = MODEL_CLASSES[kind]
    ds = random_dataset(rng, n_rows=150, n_features=N_FEATURES, n_fields=N_FIELDS)
    results = {}
    for arch in AVAILABLE_ARCHS:
        monkeypatch.setenv("FMRECALL_ARCH", arch)
        assert fmrecall.best_arch() == arch
        m = cls(k=k, epochs=3, threads=1, seed=2, normalize=True).fit(ds)
        results[arch] = (m.weights(), m.decision_function(ds))
    monkeypatch.delenv("FMRECALL_ARCH")
    assert fmrecall.best_arch() == AVAILABLE_ARCHS[-1]  # unset = the best this CPU has
    w0, s0 = results["generic"]
    for arch, (w, s) in results.items():
        np.testing.assert_allclose(w["factors"], w0["factors"], rtol=1e-4, atol=1e-5, err_msg=arch)
        np.testing.assert_allclose(w["linear"], w0["linear"], rtol=1e-4, atol=1e-5, err_msg=arch)
        np.testing.assert_allclose(s, s0, rtol=1e-4, atol=1e-5, err_msg=arch)


@pytest.mark.skipif(len(AVAILABLE_ARCHS) < 2, reason="only the generic kernel runs on this CPU")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 5, 8, 12, 16])
@pytest.mark.parametrize("normalize", [False, True])
def test_arch_variants_score_alike(rng, monkeypatch, kind, k, normalize):
    w = random_weights(rng, kind, N_FEATURES, N_FIELDS, k)
    model = model_from_weights(kind, w, N_FIELDS, normalize=normalize, threads=1)
    ds = random_dataset(rng, n_rows=60, n_features=N_FEATURES, n_fields=N_FIELDS)
    scores = {}
    for arch in AVAILABLE_ARCHS:
        monkeypatch.setenv("FMRECALL_ARCH", arch)  # read on every call: the same model object
        scores[arch] = model.decision_function(ds)
    for arch, s in scores.items():
        np.testing.assert_allclose(s, scores["generic"], rtol=1e-5, atol=1e-6, err_msg=arch)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_history_and_validation_metrics(rng, kind):
    cls = MODEL_CLASSES[kind]
    train = random_dataset(rng, n_rows=120, n_features=N_FEATURES, n_fields=N_FIELDS)
    valid = random_dataset(rng, n_rows=60, n_features=N_FEATURES, n_fields=N_FIELDS)
    m = cls(k=4, epochs=4, patience=None, threads=1).fit(train, valid=valid)
    assert [h["epoch"] for h in m.history_] == [1, 2, 3, 4]
    for h in m.history_:
        assert set(h) == {
            "epoch",
            "train_loss",
            "valid_loss",
            "valid_auc",
            "seconds",
            "learning_rate",
            "reg_factors",
            "averaged",
        }
        assert np.isfinite(h["train_loss"]) and h["train_loss"] > 0 and h["seconds"] >= 0
    # learning_rate="auto": 8 / mean ||x||^2 of the training rows, recorded, parameters untouched
    sq = np.add.reduceat(train.values_or_ones().astype(np.float64) ** 2, train.indptr[:-1].astype(np.int64))
    assert m.learning_rate_ == pytest.approx(8.0 / max(sq.mean(), 1.0), rel=1e-9)
    assert all(h["learning_rate"] == m.learning_rate_ for h in m.history_)
    assert m.get_params()["learning_rate"] == "auto"
    assert cls(k=4, epochs=1, learning_rate=0.03, threads=1).fit(train).learning_rate_ == 0.03
    # reg_factors="auto": 2 / (mean ||x||^2)^3 of the training rows, at most 2e-3, recorded,
    # parameters untouched
    assert m.reg_factors_ == pytest.approx(min(2.0 / sq.mean() ** 3, 2e-3), rel=1e-9)
    assert all(h["reg_factors"] == m.reg_factors_ for h in m.history_)
    assert m.get_params()["reg_factors"] == "auto"
    assert cls(k=4, epochs=1, reg_factors=0.03, threads=1).fit(train).reg_factors_ == 0.03
    small = fmrecall.Dataset(  # values of 0.1: mean ||x||^2 < 1 is floored at 1 (lr 8), reg capped
        train.indptr, train.fields, train.features, np.full(train.nnz, 0.1, np.float32), train.labels
    )
    tiny = cls(k=4, epochs=1, threads=1).fit(small)
    assert (tiny.learning_rate_, tiny.reg_factors_) == (8.0, 2e-3)
    s = m.decision_function(valid)
    assert m.history_[-1]["valid_loss"] == pytest.approx(logloss_from_scores(valid.labels, s), rel=1e-9)
    assert m.history_[-1]["valid_auc"] == pytest.approx(auc(valid.labels, s), rel=1e-9)
    losses = [h["valid_loss"] for h in m.history_]
    assert m.best_epoch_ == int(np.argmin(losses)) + 1
    no_valid = cls(k=4, epochs=3, threads=1).fit(train)
    assert [set(h) for h in no_valid.history_] == [
        {"epoch", "train_loss", "seconds", "learning_rate", "reg_factors", "averaged"}
    ] * 3
    # partial_fit goes on with the values the fit derived, not ones derived from its own rows
    lr, reg = m.learning_rate_, m.reg_factors_
    m.partial_fit(valid)
    assert (m.history_[-1]["learning_rate"], m.history_[-1]["reg_factors"]) == (lr, reg)


@pytest.mark.parametrize("kind", KINDS)
def test_early_stopping_restores_best_epoch(rng, kind):
    """Random labels and a large learning rate overfit at once: the validation loss rises after an
    early epoch, training stops `patience` epochs later, and the best epoch's weights come back."""
    cls = MODEL_CLASSES[kind]
    train = random_dataset(rng, n_rows=40, n_features=N_FEATURES, n_fields=N_FIELDS)
    valid = random_dataset(rng, n_rows=200, n_features=N_FEATURES, n_fields=N_FIELDS)
    m = cls(k=8, epochs=30, learning_rate=0.5, init_std=0.3, reg_linear=0, reg_factors=0, patience=2, threads=1).fit(
        train, valid=valid
    )
    losses = [h["valid_loss"] for h in m.history_]
    best = int(np.argmin(losses)) + 1
    assert m.best_epoch_ == best
    assert best < len(losses) == best + 2, losses  # stopped after `patience` worse epochs
    now = logloss_from_scores(valid.labels, m.decision_function(valid))
    assert now == pytest.approx(min(losses), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_squared_loss_learns_a_regression_target(rng, kind):
    cls = MODEL_CLASSES[kind]
    ds = random_dataset(rng, n_rows=300, n_features=N_FEATURES, n_fields=N_FIELDS, real_values=False)
    truth = model_from_weights(kind, random_weights(rng, kind, N_FEATURES, N_FIELDS, 3, scale=0.5), N_FIELDS)
    ds.labels[:] = truth.decision_function(ds)
    m = cls(k=3, loss="squared", epochs=30, threads=1).fit(ds)
    err = mse(ds.labels, m.predict(ds))
    assert err < 0.2 * np.var(ds.labels), (err, np.var(ds.labels))
    assert m.history_[-1]["train_loss"] < m.history_[0]["train_loss"]
