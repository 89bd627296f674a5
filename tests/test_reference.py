"""Self-checks of tests/reference.py (so the library is compared against something trustworthy),
plus the hybrid pair rule against the C++ core's generic kernel through the internal _core API, and
the benchmarks' vectorised numpy SGD baseline against the plain reference and fmrecall."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from helpers import feature_field

from fmrecall import _core


def _random_row(rng, n_features, n_fields, n_nodes):
    feats = rng.choice(n_features, size=n_nodes, replace=False)
    fields = feature_field(n_features, n_fields)[feats]
    x = rng.uniform(-1.5, 1.5, size=n_nodes)
    return fields.astype(np.int64), feats.astype(np.int64), x


def _params(rng, n, F, k, single: bool, aware: bool):
    return ref.make_params(
        rng.normal(),
        rng.normal(size=n),
        v=rng.normal(size=(n, k)) if single else None,
        W=rng.normal(size=(n, F, k)) if aware else None,
    )


AWARE_CASES = {
    "fm": np.array([0, 0, 0, 0], dtype=bool),
    "ffm": np.array([1, 1, 1, 1], dtype=bool),
    "hybrid": np.array([0, 1, 0, 1], dtype=bool),
}


def test_fm_pair_sum_equals_sum_trick(rng):
    n, F, k = 12, 4, 5
    p = _params(rng, n, F, k, True, False)
    f, j, x = _random_row(rng, n, F, 7)
    assert ref.score(p, ref.fm_aware(F), f, j, x) == pytest.approx(ref.fm_score_sum_trick(p, j, x), rel=1e-12)


def test_ffm_score_by_explicit_formula(rng):
    n, F, k = 12, 4, 3
    p = _params(rng, n, F, k, False, True)
    f, j, x = _random_row(rng, n, F, 7)
    W = p["W"]
    expected = p["bias"] + sum(p["linear"][j[a]] * x[a] for a in range(7))
    expected += sum(np.dot(W[j[a], f[b]], W[j[b], f[a]]) * x[a] * x[b] for a in range(7) for b in range(a + 1, 7))
    assert ref.score(p, ref.ffm_aware(F), f, j, x) == pytest.approx(expected, rel=1e-12)


def test_hybrid_pair_rules(rng):
    """Single i (field 0) with aware j (field 1): <v_i, w_{j,0}>; single-single <v,v>; aware-aware FFM."""
    n, F, k = 8, 2, 3
    aware = np.array([False, True])
    p = _params(rng, n, F, k, True, True)
    p["bias"] = 0.0
    p["linear"][:] = 0.0
    v, W = p["v"], p["W"]
    # one single node (feature 0, field 0) and one aware node (feature 1, field 1)
    f, j, x = np.array([0, 1]), np.array([0, 1]), np.array([0.5, 2.0])
    assert ref.score(p, aware, f, j, x) == pytest.approx(1.0 * np.dot(v[0], W[1, 0]), rel=1e-12)
    # the same pair given in the other order
    assert ref.score(p, aware, f[::-1], j[::-1], x[::-1]) == pytest.approx(np.dot(v[0], W[1, 0]), rel=1e-12)
    # two single nodes
    f, j, x = np.array([0, 0]), np.array([2, 4]), np.array([1.0, 3.0])
    assert ref.score(p, aware, f, j, x) == pytest.approx(3.0 * np.dot(v[2], v[4]), rel=1e-12)
    # two aware nodes in the same field use w_{i,1}, w_{j,1}
    f, j, x = np.array([1, 1]), np.array([3, 5]), np.array([1.0, -2.0])
    assert ref.score(p, aware, f, j, x) == pytest.approx(-2.0 * np.dot(W[3, 1], W[5, 1]), rel=1e-12)


@pytest.mark.parametrize("case", sorted(AWARE_CASES))
@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_reference_gradient_matches_finite_differences(rng, case, loss):
    aware = AWARE_CASES[case]
    n, F, k = 10, 4, 3
    p = _params(rng, n, F, k, not aware.all(), aware.any())
    for name in ("v", "W"):
        if p[name] is not None:
            p[name] *= 0.4
    f, j, x = _random_row(rng, n, F, 6)
    y = 1.0 if loss == "logistic" else 0.3
    t = ref.score(p, aware, f, j, x)
    kappa = ref.loss_grad(t, y, loss)
    ds, touched = ref.score_grad(p, aware, f, j, x)
    fd = ref.finite_difference_grad(p, aware, f, j, x, y, loss)
    assert kappa * ds["bias"] == pytest.approx(fd["bias"], rel=1e-6, abs=1e-8)
    for name in ("linear", "v", "W"):
        if p[name] is None:
            continue
        np.testing.assert_allclose(kappa * ds[name], fd[name], rtol=1e-5, atol=1e-7, err_msg=name)
        # every parameter the score depends on is marked touched
        assert np.all(touched[name][np.abs(fd[name]) > 1e-9]), name


def test_reference_loss_gradients_by_finite_differences():
    for loss, y in (("logistic", 0.0), ("logistic", 1.0), ("logistic", -1.0), ("squared", 0.7)):
        for t in (-3.0, -0.2, 0.0, 0.4, 2.5):
            h = 1e-6
            fd = (ref.objective(t + h, y, loss) - ref.objective(t - h, y, loss)) / (2 * h)
            assert ref.loss_grad(t, y, loss) == pytest.approx(fd, rel=1e-6, abs=1e-9)
    # reported squared loss is (t - y)^2, not half of it; logistic -1 labels are negatives
    assert ref.loss_value(3.0, 1.0, "squared") == 4.0
    assert ref.loss_value(0.3, -1.0, "logistic") == pytest.approx(np.log1p(np.exp(0.3)), rel=1e-12)


def test_reference_adagrad_step_by_hand():
    """A 2-node FM row with k=1, every number worked out by hand."""
    p = ref.make_params(0.1, [0.2, -0.3], v=[[0.5], [0.25]])
    st = ref.fresh_state(p)
    aware = ref.fm_aware(1)
    f, j, x = np.array([0, 0]), np.array([0, 1]), np.array([1.0, 2.0])
    new, st2, loss = ref.adagrad_step(
        p, st, aware, f, j, x, 1.0, loss="squared", lr=0.5, reg_linear=0.1, reg_factors=0.2
    )
    t = 0.1 + 0.2 - 0.6 + 0.5 * 0.25 * 2.0  # -0.05
    kappa = t - 1.0
    assert loss == pytest.approx((t - 1.0) ** 2)
    gb = kappa
    assert new["bias"] == pytest.approx(0.1 - 0.5 * gb / np.sqrt(1 + gb * gb))
    g0 = kappa * 1.0 + 0.1 * 0.2
    g1 = kappa * 2.0 + 0.1 * -0.3
    np.testing.assert_allclose(
        new["linear"], [0.2 - 0.5 * g0 / np.sqrt(1 + g0 * g0), -0.3 - 0.5 * g1 / np.sqrt(1 + g1 * g1)]
    )
    gv0 = kappa * (1.0 * 2.0 * 0.25) + 0.2 * 0.5
    gv1 = kappa * (2.0 * 1.0 * 0.5) + 0.2 * 0.25
    np.testing.assert_allclose(
        new["v"][:, 0], [0.5 - 0.5 * gv0 / np.sqrt(1 + gv0 * gv0), 0.25 - 0.5 * gv1 / np.sqrt(1 + gv1 * gv1)]
    )
    np.testing.assert_allclose(st2["v"][:, 0], [1 + gv0 * gv0, 1 + gv1 * gv1])


def test_normalize_scales_in_model_nodes_only():
    f, j, x = ref.row_nodes(
        [0, 1, 2, 9], [0, 1, 50, 2], [3.0, 4.0, 7.0, 5.0], n_features=10, n_fields=3, normalize=True
    )
    # feature 50 and field 9 are outside the model: norm over (3, 4) = 5
    np.testing.assert_array_equal(j, [0, 1])
    np.testing.assert_allclose(x, [0.6, 0.8])


# ---------------------------------------------------------------------------- hybrid kernel (internal API)
def _core_hybrid(aware, n, F, k, normalize, p):
    m = _core.Model(n, F, k, aware.astype(np.uint8), None, n, 0.0, 0, normalize)
    m.set_weights(
        np.float32(p["bias"]), p["linear"].astype(np.float32), p["v"].astype(np.float32), p["W"].astype(np.float32)
    )
    return m


@pytest.mark.parametrize("k", [3, 8])
@pytest.mark.parametrize("normalize", [False, True])
def test_core_hybrid_kernel_matches_reference(rng, arch, k, normalize):
    """The C++ core already runs one kernel for FM / FFM / hybrid; check the hybrid pair rule and
    its AdaGrad step against the reference (through the internal _core API, no public class yet)."""
    n, F = 16, 4
    aware = np.array([0, 1, 0, 1], dtype=bool)
    p = ref.make_params(
        np.float32(0.1),
        rng.normal(0, 0.3, n).astype(np.float32),
        v=rng.normal(0, 0.3, (n, k)).astype(np.float32),
        W=rng.normal(0, 0.3, (n, F, k)).astype(np.float32),
    )
    m = _core_hybrid(aware, n, F, k, normalize, p)
    rows = [_random_row(rng, n, F, int(c)) for c in (2, 5, 7, 9)]
    indptr = np.cumsum([0] + [len(r[1]) for r in rows]).astype(np.int64)
    fields = np.concatenate([r[0] for r in rows]).astype(np.int32)
    feats = np.concatenate([r[1] for r in rows]).astype(np.int32)
    vals = np.concatenate([r[2] for r in rows]).astype(np.float32)
    got = m.predict(indptr, fields, feats, vals, 1)
    for r in range(len(rows)):
        f, j, x = ref.row_nodes(
            fields[indptr[r] : indptr[r + 1]],
            feats[indptr[r] : indptr[r + 1]],
            vals[indptr[r] : indptr[r + 1]],
            n,
            F,
            normalize,
        )
        want = ref.score(p, aware, f, j, x)
        scale = ref.score_terms_abs(p, aware, f, j, x)
        assert abs(got[r] - want) <= 1e-5 * abs(want) + 1e-6 * scale, (r, got[r], want)

    # one AdaGrad step on the last row
    r = len(rows) - 1
    sl = slice(indptr[r], indptr[r + 1])
    one = (np.array([0, sl.stop - sl.start], np.int64), fields[sl].copy(), feats[sl].copy(), vals[sl].copy())
    label = np.array([1.0], np.float32)
    m.train(*one, label, np.array([0], np.int64), 0, 0.1, 0.05, 0.1, 1)
    f, j, x = ref.row_nodes(one[1], one[2], one[3], n, F, normalize)
    new, _, _ = ref.adagrad_step(
        p, ref.fresh_state(p), aware, f, j, x, 1.0, loss="logistic", lr=0.1, reg_linear=0.05, reg_factors=0.1
    )
    w = m.get_weights()
    assert w["bias"] == pytest.approx(new["bias"], rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(w["linear"], new["linear"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w["v"], new["v"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w["W"], new["W"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", sorted(AWARE_CASES))
def test_reference_gradient_with_repeated_features(rng, case):
    """A feature twice in a row (same field, or two fields) is one parameter: the reference sums
    both nodes' contributions, which must equal the finite-difference derivative."""
    aware = AWARE_CASES[case]
    n, F, k = 10, 4, 3
    p = _params(rng, n, F, k, not aware.all(), aware.any())
    f = np.array([1, 0, 1, 3, 2])
    j = np.array([5, 2, 5, 5, 7])  # feature 5: twice in field 1 and once in field 3
    x = np.array([0.8, 1.1, -0.6, 0.9, 1.3])
    t = ref.score(p, aware, f, j, x)
    kappa = ref.loss_grad(t, 1.0, "logistic")
    ds, _ = ref.score_grad(p, aware, f, j, x)
    fd = ref.finite_difference_grad(p, aware, f, j, x, 1.0, "logistic")
    for name in ("linear", "v", "W"):
        if p[name] is not None:
            np.testing.assert_allclose(kappa * ds[name], fd[name], rtol=1e-5, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------------------- the benchmarks' SGD baseline
SGD_MODELS = [("ffm", 4), ("ffm", 8), ("fm", 16)]  # bench/common.py MODELS


@pytest.mark.parametrize("kind, k", SGD_MODELS, ids=[f"{a}-k{b}" for a, b in SGD_MODELS])
def test_numpy_sgd_baseline_makes_the_library_updates(rng, kind, k):
    """The vectorised float32 SGD that bench/test_train.py times fmrecall against (reference.NumpyFFM /
    NumpyFM) makes the plain reference's update on one row, and fmrecall's over 60 one-hot rows (one
    partial_fit per row, the benchmarks' hyper-parameters), so the speed ratio compares like with like."""
    import fmrecall

    hyper = dict(learning_rate=0.02, reg_linear=2e-5, reg_factors=2e-5)
    n_rows, n, F = 60, 40, 8
    order = rng.permuted(np.tile(np.arange(F), (n_rows, 1)), axis=1)  # every field once, out of order
    feats = order + F * rng.integers(0, n // F, size=order.shape)  # feature j is in field j % F
    ds = fmrecall.Dataset(
        np.arange(n_rows + 1, dtype=np.int64) * F,
        order.ravel().astype(np.int32),
        feats.ravel().astype(np.int32),
        None,
        rng.integers(0, 2, n_rows).astype(np.float32),
        n_features=n,
        n_fields=F,
    )
    ref.check_one_hot(ds, np.arange(n_rows))
    sgd = ref.make_sgd(kind, n, F, k, seed=1, init_std=0.3, **hyper)
    start = {key: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for key, v in sgd.weights().items()}
    cls = fmrecall.FFM if kind == "ffm" else fmrecall.FM
    model = cls.from_weights(start, k=k, threads=1, n_fields=F, **hyper)

    # the first row against the plain float64 reference
    name = "W" if kind == "ffm" else "v"
    p0 = ref.make_params(start["bias"], start["linear"], **{name: start["factors"]})
    aware = ref.ffm_aware(F) if kind == "ffm" else ref.fm_aware(F)
    p1, _, _ = ref.adagrad_step(
        p0,
        ref.fresh_state(p0),
        aware,
        *ref.dataset_row(ds, 0, n, F),
        float(ds.labels[0]),
        loss="logistic",
        lr=hyper["learning_rate"],
        reg_linear=hyper["reg_linear"],
        reg_factors=hyper["reg_factors"],
    )
    sgd.train_rows(ds, [0])
    one = sgd.weights()
    assert one["bias"] == pytest.approx(p1["bias"], rel=1e-5)
    np.testing.assert_allclose(one["linear"], p1["linear"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(one["factors"], p1[name], rtol=1e-5, atol=1e-7)

    # every row against the library
    sgd.train_rows(ds, np.arange(1, n_rows))
    for r in range(n_rows):
        model.partial_fit(ds.subset([r]))
    got, want = model.weights(), sgd.weights()
    np.testing.assert_allclose(got["bias"], want["bias"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["linear"], want["linear"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["factors"], want["factors"], rtol=1e-4, atol=1e-6)
