"""sklearn conventions: the estimators pass scikit-learn's own check_estimator, fit / predict on
matrices X with labels y, classifier or regressor by the loss, clone / is_classifier /
check_is_fitted / pipelines, and fmrecall imports and fits without scikit-learn.

Scores of a matrix fit are checked against the FM / FFM formulas written out in numpy on the dense
matrix (column c = feature c of field fields[c], value X[r, c]), not against the library.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import random_dataset
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import NotFittedError as SkNotFittedError
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator
from sklearn.utils.validation import check_is_fitted

import fmrecall
from fmrecall import FFM, FM, HybridFM, Sides


def _blobs(rng, n=120, d=4):
    """Two Gaussian blobs in d dimensions, labelled "no" / "yes"."""
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, d)) + np.where(y[:, None] == 1, 1.5, -1.5)
    return X, np.where(y == 1, "yes", "no")


# ---------------------------------------------------------------------------- check_estimator
# Checks inapplicable by design, with the reason sklearn reports when they are skipped:
REGRESSOR_EXCEPTIONS = {
    "check_regressors_no_decision_function": (
        "decision_function is the raw model score of every fmrecall model (the score the query / item "
        "split reproduces); for loss='squared' it equals predict"
    ),
}


@pytest.mark.parametrize(
    "estimator",
    [FM(threads=1), FFM(threads=1), FM(threads=1, loss="squared")],
    ids=["FM-classifier", "FFM-classifier", "FM-regressor"],
)
def test_check_estimator(estimator):
    """scikit-learn's full estimator check suite. threads=1: Hogwild with more threads is not
    deterministic (the tags say so), and several checks compare two fits exactly. HybridFM is left
    out: its sides name field indices, so an instance fits one column layout while the checks feed
    1 to 10 columns (its sklearn behaviour is tested below)."""
    expected = REGRESSOR_EXCEPTIONS if estimator.loss == "squared" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "does not inherit from BaseEstimator": by design
        results = check_estimator(estimator, on_fail=None, expected_failed_checks=expected)
    failed = [r for r in results if r["status"] == "failed"]
    assert not failed, [(r["check_name"], repr(r["exception"])[:300]) for r in failed]
    ran = {r["check_name"] for r in results if r["status"] == "passed"}
    assert "check_fit_idempotent" in ran and "check_estimators_pickle" in ran and len(ran) > 45
    if estimator.loss == "squared":
        assert "check_regressors_train" in ran
    else:
        assert {
            "check_classifiers_train",
            "check_classifiers_classes",
            "check_classifier_not_supporting_multiclass",
        } <= ran


# ---------------------------------------------------------------------------- kind by loss
def test_classifier_or_regressor_by_loss():
    sides = Sides(user=[0], item=[1])
    for model in (FM(), FFM(), HybridFM(sides=sides), FM(loss="bpr")):
        assert is_classifier(model) and not is_regressor(model)
    for model in (FM(loss="squared"), FFM(loss="squared"), HybridFM(sides=sides, loss="squared")):
        assert is_regressor(model) and not is_classifier(model)
        assert not hasattr(model, "predict_proba")
    assert not hasattr(FM(loss="bpr"), "predict_proba")  # bpr scores only rank
    assert is_regressor(FM().set_params(loss="squared"))


def test_clone_keeps_parameters_and_drops_weights(rng):
    X, y = _blobs(rng)
    sides = Sides(user=[0, 1], item=[2, 3])
    model = HybridFM(k=3, sides=sides, field_aware="query", epochs=2, threads=1).fit(X, y)
    copy = clone(model)
    assert copy.get_params() == model.get_params()
    assert copy.sides is not model.sides and copy.sides == sides
    assert not hasattr(copy, "classes_") and not hasattr(copy, "n_features_in_")
    with pytest.raises(SkNotFittedError):
        check_is_fitted(copy)
    np.testing.assert_array_equal(copy.fit(X, y).decision_function(X), model.decision_function(X))


def test_check_is_fitted_and_not_fitted_errors(rng):
    X, y = _blobs(rng)
    model = FM(epochs=1, threads=1)
    with pytest.raises(SkNotFittedError):
        check_is_fitted(model)
    for call in (model.predict, model.decision_function, model.predict_proba):
        with pytest.raises(fmrecall.NotFittedError) as info:
            call(X)
        # one exception, recognised by both libraries' except clauses (and as a ValueError)
        assert isinstance(info.value, SkNotFittedError) and isinstance(info.value, ValueError)
    check_is_fitted(model.fit(X, y))


# ---------------------------------------------------------------------------- matrix X, labels y
def _fm_scores(w, X):
    """numpy FM: w0 + X·w + Σ_{i<j} <v_i, v_j> x_i x_j, written as the explicit pair sum."""
    X = X * float(w["scale"])  # the model's value scale (normalize="mean": one constant for every row)
    n, d = X.shape
    out = np.full(n, float(w["bias"]), dtype=np.float64) + X @ w["linear"].astype(np.float64)
    V = w["factors"].astype(np.float64)
    for i in range(d):
        for j in range(i + 1, d):
            out += (V[i] @ V[j]) * X[:, i] * X[:, j]
    return out


def _ffm_scores(w, X, fields):
    """numpy FFM, column c in field fields[c]: Σ_{i<j} <w_{i,f(j)}, w_{j,f(i)}> x_i x_j."""
    X = X * float(w["scale"])  # the model's value scale (normalize="mean": one constant for every row)
    n, d = X.shape
    out = np.full(n, float(w["bias"]), dtype=np.float64) + X @ w["linear"].astype(np.float64)
    W = w["factors"].astype(np.float64)
    for i in range(d):
        for j in range(i + 1, d):
            out += (W[i, fields[j]] @ W[j, fields[i]]) * X[:, i] * X[:, j]
    return out


def test_matrix_fit_scores_are_the_fm_formula_and_labels_follow(rng):
    X, y = _blobs(rng, d=5)
    X[rng.random(X.shape) < 0.3] = 0.0  # zeros are left out of the rows: same score
    model = FM(k=3, epochs=5, threads=1).fit(X, y)
    s = model.decision_function(X)
    np.testing.assert_allclose(s, _fm_scores(model.weights(), X), rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(model.classes_, ["no", "yes"])
    np.testing.assert_array_equal(model.predict(X), np.where(s > 0, "yes", "no"))
    p = model.predict_proba(X)
    np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-s.astype(np.float64))), rtol=1e-6)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert model.n_features_in_ == 5
    assert model.score(X, y) == pytest.approx(accuracy_score(y, model.predict(X)))
    assert model.score(X, y) > 0.9  # separable blobs
    # scipy sparse (any format) and lists give the same scores
    for other in (sp.csr_matrix(X), sp.coo_array(X), sp.csc_matrix(X), X.tolist()):
        np.testing.assert_array_equal(model.decision_function(other), s)


def test_fields_group_columns_for_ffm(rng):
    """fields= puts several columns in one field: FFM then keeps one vector per field, not per
    column, and scores with the field of each column."""
    X, y = _blobs(rng, d=6)
    fields = [0, 0, 1, 1, 1, 2]
    model = FFM(k=2, epochs=3, threads=1).fit(X, y, fields=fields)
    w = model.weights()
    assert w["factors"].shape == (6, 3, 2)
    np.testing.assert_allclose(model.decision_function(X), _ffm_scores(w, X, fields), rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="one field per column"):
        FFM().fit(X, y, fields=[0, 1])


def test_regressor_predicts_values_and_scores_r2(rng):
    X = rng.normal(size=(200, 3))
    y = 1.0 + X @ [0.5, -1.0, 2.0] + 0.3 * X[:, 0] * X[:, 1]
    model = FM(k=2, loss="squared", epochs=40, learning_rate=0.1, threads=1).fit(X, y)
    pred = model.predict(X)
    np.testing.assert_array_equal(pred, model.decision_function(X))
    np.testing.assert_allclose(pred, _fm_scores(model.weights(), X), rtol=2e-5, atol=2e-5)
    assert model.score(X, y) == pytest.approx(r2_score(y, pred), rel=1e-6)
    assert model.score(X, y) > 0.9
    assert not hasattr(model, "classes_")


def test_bad_targets_name_the_problem(rng):
    X, y = _blobs(rng)
    with pytest.raises(ValueError, match="requires y"):
        FM().fit(X)
    with pytest.raises(ValueError, match="Only binary"):
        FM().fit(X, np.arange(X.shape[0]) % 3)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        FM().fit(X, rng.normal(size=X.shape[0]))
    with pytest.raises(ValueError, match="1 class"):
        FM().fit(X, np.ones(X.shape[0]))
    with pytest.raises(ValueError, match="y has 3 entries but X has"):
        FM().fit(X, y[:3])
    with pytest.raises(ValueError, match="NaN"):
        FM(loss="squared").fit(X, np.full(X.shape[0], np.nan))
    model = FM(epochs=1, threads=1).fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but FM is expecting 4"):
        model.predict(X[:, :3])
    with pytest.raises(ValueError, match="Reshape your data"):
        model.predict(X[0])
    with pytest.raises(ValueError, match="a Dataset / Interactions carries its own labels"):
        FM().fit(random_dataset(rng, 10, n_features=8, n_fields=2), y[:10])


def test_validation_pairs_and_early_stopping(rng):
    X, y = _blobs(rng, n=300)
    model = FM(epochs=30, patience=2, threads=1).fit(X[:200], y[:200], valid=(X[200:], y[200:]))
    assert all("valid_loss" in r for r in model.history_)
    assert model.best_epoch_ is not None


def test_partial_fit_with_classes_then_more_data(rng):
    X, y = _blobs(rng)
    only_no = y == "no"
    model = FM(threads=1).partial_fit(X[only_no], y[only_no], classes=["no", "yes"])
    np.testing.assert_array_equal(model.classes_, ["no", "yes"])
    model.partial_fit(X, y)
    assert len(model.history_) == 2
    with pytest.raises(ValueError, match="not one of classes_"):
        model.partial_fit(X, np.where(only_no, "no", "maybe"))
    with pytest.raises(ValueError, match="X has 2 features"):
        model.partial_fit(X[:, :2], y)


def test_dataset_fits_keep_their_conventions(rng):
    """A Dataset / Interactions still fits and predicts as before; predict gives labels in the
    data's own convention, score uses its labels; a matrix needs a matrix fit."""
    ds = random_dataset(rng, 80, n_features=16, n_fields=4)
    model = FM(epochs=2, threads=1).fit(ds)
    s = model.decision_function(ds)
    np.testing.assert_array_equal(model.classes_, [0, 1])
    np.testing.assert_array_equal(model.predict(ds), (s > 0).astype(int))
    assert model.score(ds) == pytest.approx(np.mean((s > 0) == (ds.labels == 1)))
    assert model.n_features_in_ == model.n_features_
    ds.labels[:] = np.where(ds.labels == 1, 1, -1)
    np.testing.assert_array_equal(FM(epochs=1, threads=1).fit(ds).classes_, [-1, 1])
    with pytest.raises(ValueError, match="was fit on a Dataset"):
        model.predict(np.ones((2, 16)))
    with pytest.warns(DeprecationWarning, match="valid=valid"):
        old_style = FM(epochs=3, threads=1).fit(ds, ds)  # fit(train, valid), the signature before 0.2
    new_style = FM(epochs=3, threads=1).fit(ds, valid=ds)
    np.testing.assert_array_equal(old_style.decision_function(ds), new_style.decision_function(ds))
    assert old_style.history_ == [
        {**r, "seconds": a["seconds"]} for r, a in zip(new_style.history_, old_style.history_)
    ]


def test_pickle_save_load_keep_classes_and_columns(rng, tmp_path):
    X, y = _blobs(rng, d=6)
    model = FFM(k=2, epochs=2, threads=1).fit(X, y, fields=[0, 0, 1, 1, 2, 2])
    model.save(tmp_path / "m.npz")
    for copy in (pickle.loads(pickle.dumps(model)), fmrecall.load(tmp_path / "m.npz")):
        np.testing.assert_array_equal(copy.classes_, model.classes_)
        assert copy.classes_.dtype == model.classes_.dtype
        np.testing.assert_array_equal(copy.predict(X), model.predict(X))
        np.testing.assert_array_equal(copy.predict_proba(X), model.predict_proba(X))
        with pytest.raises(ValueError, match="X has 5 features"):
            copy.predict(X[:, :5])


def test_pipeline_and_grid_search(rng):
    X, y = _blobs(rng, n=150)
    pipe = make_pipeline(StandardScaler(), FM(epochs=3, threads=1))
    search = GridSearchCV(pipe, {"fm__k": [2, 4]}, cv=3).fit(X, y)
    assert search.best_params_["fm__k"] in (2, 4)
    assert search.score(X, y) > 0.9


def test_imports_and_fits_without_scikit_learn():
    """scikit-learn is optional: with it blocked, fmrecall imports, fits a matrix and raises its
    own NotFittedError."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["sklearn"] = None  # any import of sklearn now fails
        import numpy as np
        import fmrecall
        X = np.array([[1.0, 0.0], [0.0, 1.0]] * 20)
        y = np.array([1, 0] * 20)
        try:
            fmrecall.FM().predict(X)
        except fmrecall.NotFittedError as e:
            assert type(e) is fmrecall.NotFittedError
        m = fmrecall.FM(epochs=20, learning_rate=0.2, threads=1).fit(X, y)
        assert (m.predict(X) == y).all() and m.score(X, y) == 1.0
        print("ok", "sklearn" in sys.modules and sys.modules["sklearn"] is not None)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ok", "False"]
